"""Reduction of a `[B, T]` per-token loss to a scalar, exactly as GRPO's `loss_type` normalisations."""

from __future__ import annotations

import torch
from torch import Tensor

# GRPO loss types whose normalisation applies to any per-token loss. The others ("cispo", "sapo", "vespo") define
# their own per-token policy-gradient objective on importance ratios, which a distillation loss does not have.
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")
POLICY_ONLY_LOSS_TYPES = ("cispo", "sapo", "vespo")


def reduce_token_loss(
    per_token_loss: Tensor,
    mask: Tensor,
    loss_type: str,
    num_items_in_batch: Tensor | int | None = None,
    max_completion_length: int | None = None,
    *,
    num_processes: int = 1,
    gradient_accumulation_steps: int = 1,
    steps_per_generation: int = 1,
) -> Tensor:
    """Reduce a `[B, T]` per-token loss to a scalar exactly as `GRPOTrainer._compute_loss` (TRL 1.16) does.

    - `"grpo"`: mean over each sequence's tokens, then mean over sequences;
    - `"bnpo"`: mean over all tokens of the local batch;
    - `"dr_grpo"`: sum over all tokens / (B * max_completion_length);
    - `"dapo"`: sum over all tokens / the token count of the whole generation batch across processes, rescaled to one
      process and one accumulation window (`num_items_in_batch / num_processes * gradient_accumulation_steps /
      steps_per_generation`);
    - `"luspo"`: sum over each sequence's tokens, then mean over sequences.

    For `"grpo"`, `"dr_grpo"` and `"luspo"`, B counts only the sequences that still have a token in `mask`: a row
    dropped from the loss (a failed critique, a completion entirely inside `<think>`) leaves the loss of the other
    rows as it would be without it, instead of shrinking it by the dropped share. `"bnpo"` and `"dapo"` count tokens,
    so a dropped row already has no weight.

    All but `"dapo"` are divided by `gradient_accumulation_steps`, as TRL's trainer expects (`loss_is_scaled_for_ga`).
    `"cispo"`, `"sapo"` and `"vespo"` change the per-token policy-gradient objective rather than its normalisation,
    so they have no meaning for a distillation loss and raise.

    Args:
        per_token_loss: `[B, T]` loss per token.
        mask: `[B, T]` bool or 0/1 mask of the tokens that count.
        loss_type: One of `"grpo"`, `"bnpo"`, `"dr_grpo"`, `"dapo"`, `"luspo"`.
        num_items_in_batch: Masked-token count of the generation batch summed over processes (the batch key of the same
            name); required for `"dapo"`.
        max_completion_length: Required for `"dr_grpo"`.
        num_processes: `accelerator.num_processes`.
        gradient_accumulation_steps: `trainer.current_gradient_accumulation_steps` in training, 1 in evaluation.
        steps_per_generation: `args.steps_per_generation` in training, 1 in evaluation.

    Returns:
        Scalar loss.
    """
    mask = mask.to(per_token_loss.dtype)
    masked = per_token_loss * mask
    rows = (mask.sum(-1) > 0).sum().clamp(min=1).to(per_token_loss.dtype)  # sequences with a loss token
    if loss_type == "grpo":
        loss = (masked.sum(-1) / mask.sum(-1).clamp(min=1.0)).sum() / rows
    elif loss_type == "bnpo":
        loss = masked.sum() / mask.sum().clamp(min=1.0)
    elif loss_type == "dr_grpo":
        if max_completion_length is None:
            raise ValueError("loss_type='dr_grpo' needs max_completion_length")
        loss = masked.sum() / (rows * max_completion_length)
    elif loss_type == "dapo":
        if num_items_in_batch is None:
            raise ValueError(
                "loss_type='dapo' needs num_items_in_batch (the batch's masked-token count across processes)"
            )
        items = torch.as_tensor(num_items_in_batch, dtype=per_token_loss.dtype, device=per_token_loss.device)
        normalizer = items.clamp(min=1.0) / num_processes * gradient_accumulation_steps / steps_per_generation
        return masked.sum() / normalizer
    elif loss_type == "luspo":
        loss = masked.sum(-1).sum() / rows
    elif loss_type in POLICY_ONLY_LOSS_TYPES:
        raise ValueError(
            f"loss_type={loss_type!r} reshapes GRPO's importance-ratio objective and has no distillation analogue; "
            f"use one of {LOSS_TYPES}"
        )
    else:
        raise ValueError(f"loss_type={loss_type!r} is unknown; use one of {LOSS_TYPES}")
    return loss / gradient_accumulation_steps
