"""Plain references for RGSD loss tests: full-softmax log-probs from an ordinary forward, and the check that a
trainer's loss equals a per-token reference reduced the way the trainer reduces it, in value and gradient."""

from __future__ import annotations

import torch

from trl_rubric import losses


def completion_log_softmax(model, ids, mask, T, temperature=1.0):
    """`[B, T, V]` log-probs predicting the last `T` tokens, positions taken from the mask (as the trainer does), from
    the logits divided by `temperature` (what the trainer's losses read)."""
    position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits
    return torch.log_softmax(logits[:, -T - 1 : -1].float() / temperature, -1)


def student_log_softmax(model, batch, temperature=1.0):
    """`completion_log_softmax` on a batch's student view: its prompts followed by the completions."""
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    return completion_log_softmax(model, ids, mask, batch["completion_ids"].size(1), temperature)


def trainer_loss_and_grads(trainer, batch):
    """The trainer's loss on `batch`, its trainable parameters and their gradients (for `assert_matches_reference`)."""
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    loss = trainer._compute_loss(trainer.model, batch)
    return loss, torch.autograd.grad(loss, params), params


def assert_matches_reference(trainer, batch, loss, grads, params, per_token, loss_mask, loss_type):
    """Reduce `per_token` over `loss_mask` by `loss_type` as the trainer would, and compare the loss and the gradients
    of `params` with the trainer's `loss` and `grads`."""
    expected = losses.reduce_token_loss(
        per_token, loss_mask, loss_type, num_items_in_batch=batch["rgsd_num_items_in_batch"],
        max_completion_length=trainer.max_completion_length,
        gradient_accumulation_steps=trainer.args.gradient_accumulation_steps,
        steps_per_generation=trainer.args.steps_per_generation,
    )  # fmt: skip
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=1e-4)
    for got, ref in zip(grads, torch.autograd.grad(expected, params), strict=True):
        torch.testing.assert_close(got, ref, atol=1e-6, rtol=2e-3)
