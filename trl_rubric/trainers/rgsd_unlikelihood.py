"""The tokens of a batch that `RGSDConfig.degenerate_rollouts="unlikelihood"` pushes the student away from.

A flagged answer is decoded from its completion tokens, the degeneration checks give the character spans of what they
flagged (`trl_rubric.evaluation.degeneration.degeneration_spans`: repeated units after their first occurrence, empty
list items, the pasted criterion run, the meta-talk sentence), and the spans are mapped back to token positions. The
loss math is `trl_rubric.losses.unlikelihood`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..evaluation.degeneration import degeneration_spans
from ..losses.unlikelihood import char_spans_to_token_mask, sampled_token_unlikelihood


def unlikelihood_token_mask(
    tokenizer,
    completion_ids: Tensor,
    completion_mask: Tensor,
    loss_mask: Tensor,
    flagged: Tensor,
    rubrics: Sequence[Any],
) -> Tensor:
    """`[B, T]` bool: the tokens of the flagged rows that fall in a flagged span, within `loss_mask` (so tool output,
    thinking blocks and skipped first tokens stay out). The spans are found on the text decoded from the row's own
    completion tokens (`skip_special_tokens=True`), the text the positions index; a flagged row whose decoded text
    gives no span (the trainer's text differed) has no unlikelihood tokens."""
    out = torch.zeros(completion_ids.shape, dtype=torch.bool, device=completion_ids.device)
    for row in flagged.nonzero().flatten().tolist():
        positions = completion_mask[row].bool().nonzero().flatten()
        ids = completion_ids[row, positions].tolist()
        text = tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        spans = degeneration_spans(text, rubrics[row])["degenerate"]
        if not spans:
            continue
        hit = torch.tensor(char_spans_to_token_mask(tokenizer, ids, spans), dtype=torch.bool, device=out.device)
        out[row, positions] = hit
    return out & loss_mask.bool()


def add_unlikelihood(
    per_token: Tensor, loss_mask: Tensor, student_hidden: Tensor, head, inputs: dict, weight: float, **logits_kwargs
) -> tuple[Tensor, Tensor, Tensor]:
    """Add `weight * -log(1 - p_student(token))` on the batch's `rgsd_unlikelihood_mask` tokens to the `[B, T]`
    distillation loss `per_token`, and those tokens to its `loss_mask` (the flagged rows are already out of it).

    Normalisation: one reduction of the joint `per_token` over the joint mask by `loss_type`, so each unlikelihood
    token weighs as one distilled token; the batch-wide token count (`rgsd_num_items_in_batch`, used by `dapo`) counts
    both kinds. With `grpo`, a flagged row is one sequence whose loss is the mean term over its span tokens.

    Returns `(per_token, loss_mask, stats)` with `stats = [sum of the unweighted term, token count]` for the logs. A
    batch without the key (another `degenerate_rollouts` policy) comes back unchanged. `logits_kwargs` go to
    [`~trl_rubric.losses.unlikelihood.sampled_token_unlikelihood`] (temperature, logit scale, soft-capping, chunk).
    """
    stats = per_token.new_zeros(2).detach()
    unlikely = inputs.get("rgsd_unlikelihood_mask")
    if unlikely is None or not unlikely.any():
        return per_token, loss_mask, stats
    unlikely = unlikely.bool() & ~loss_mask.bool()
    term, _ = sampled_token_unlikelihood(
        student_hidden[unlikely], head.weight, head.bias, inputs["completion_ids"][unlikely], **logits_kwargs
    )
    finite = torch.isfinite(term)
    term = torch.where(finite, term, torch.zeros_like(term)).to(per_token.dtype)
    per_token = per_token.masked_scatter(unlikely, weight * term)
    loss_mask = loss_mask.masked_scatter(unlikely, finite.to(loss_mask.dtype))
    stats = torch.stack([term.detach().sum(), finite.sum().to(term.dtype)])
    return per_token, loss_mask, stats
