"""The EMA teacher's part of an RGSD checkpoint: saved next to the policy's, restored on resume under any engine
(plain, DDP, FSDP2, DeepSpeed ZeRO-3), with the fp32 EMA average of a low-precision teacher per process.

A separate EMA model is saved whole in `rgsd_teacher.pt`; the EMA adapter of a PEFT policy (`teacher.AdapterEMACallback`)
is saved there as its adapter weights alone (PEFT's keys), and PEFT's `save_pretrained` also writes it, loadable, into
the `rgsd_teacher/` folder of every checkpoint and of the final save."""

from __future__ import annotations

import os

import torch
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..teacher import AdapterEMACallback

TEACHER_STATE_FILE = "rgsd_teacher.pt"
#: The fp32 EMA average of a low-precision teacher, one file per process (see `teacher.EMATeacherCallback`).
TEACHER_SHADOW_FILE = "rgsd_teacher_fp32_rank{rank}.pt"


def save_teacher_state(trainer, trial) -> None:
    """Save the EMA teacher (and each process's fp32 average) into the checkpoint folder just written."""
    adapter = _adapter_callback(trainer)
    if trainer.args.teacher_model_kind == "ema" and (trainer.teacher_model is not None or adapter is not None):
        # Every process joins: under ZeRO-3 and FSDP, get_state_dict gathers the shards collectively
        state = (
            adapter.teacher_state()
            if adapter is not None
            else trainer.accelerator.get_state_dict(trainer.teacher_model)
        )
        if trainer.args.should_save:
            folder = os.path.join(
                trainer._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{trainer.state.global_step}"
            )
            torch.save({k: v.detach().cpu() for k, v in state.items()}, os.path.join(folder, TEACHER_STATE_FILE))
        shadow = getattr(trainer, "_ema_callback", None)
        if shadow is not None and shadow.shadow:
            # A low-precision teacher is the fp32 average rounded; resuming from the rounded weights alone would
            # drift from the uninterrupted run, so each process saves the fp32 average it holds.
            folder = os.path.join(
                trainer._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{trainer.state.global_step}"
            )
            os.makedirs(folder, exist_ok=True)
            torch.save(
                {i: t.detach().cpu() for i, t in shadow.shadow.items()},
                os.path.join(folder, TEACHER_SHADOW_FILE.format(rank=trainer.accelerator.process_index)),
            )


def load_teacher_state(trainer, checkpoint: str) -> None:
    """Restore the EMA teacher saved in `checkpoint`, on every process, whatever the engine."""
    path = os.path.join(checkpoint, TEACHER_STATE_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"resuming an EMA-teacher run from {checkpoint}, but it holds no {TEACHER_STATE_FILE}; the EMA "
            "teacher cannot be restored"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    callback = getattr(trainer, "_ema_callback", None)
    shadow_path = os.path.join(checkpoint, TEACHER_SHADOW_FILE.format(rank=trainer.accelerator.process_index))
    adapter = _adapter_callback(trainer)
    if adapter is not None:
        adapter.load_teacher_state(state)
        if os.path.exists(shadow_path):
            adapter.load_shadow(torch.load(shadow_path, map_location="cpu", weights_only=True))
        return
    teacher = trainer.accelerator.unwrap_model(trainer.teacher_model)
    if trainer.is_fsdp_enabled and getattr(trainer.accelerator, "is_fsdp2", False):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        # Full tensors in, each process keeps its shard
        set_model_state_dict(teacher, state, options=StateDictOptions(full_state_dict=True))
    elif is_deepspeed_zero3_enabled():
        import deepspeed

        # Gathered, loaded on rank 0, re-partitioned from it on exit
        with deepspeed.zero.GatheredParameters(list(teacher.parameters()), modifier_rank=0):
            if trainer.accelerator.is_main_process:
                teacher.load_state_dict(state)
    else:
        teacher.load_state_dict(state)
    if callback is not None and os.path.exists(shadow_path):
        callback.load_shadow(torch.load(shadow_path, map_location="cpu", weights_only=True))


def _adapter_callback(trainer) -> AdapterEMACallback | None:
    """The EMA teacher adapter's callback of a PEFT policy, or None (no EMA teacher, or a separate EMA model)."""
    callback = getattr(trainer, "_ema_callback", None)
    return callback if isinstance(callback, AdapterEMACallback) else None
