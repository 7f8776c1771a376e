"""The initial-policy anchor of `RGSDConfig.anchor_weight`: a divergence between the student and the policy it started
from, both shown the student's own prompt, added to the distillation loss token by token.

Why: a rubric-conditioned teacher also teaches what comes with reading a rubric (talk about "the requirements",
repeated or empty list items), which the initial policy never writes. The anchor pulls the student's next-token
distribution back towards the initial policy's, on the tokens `anchor_tokens` selects: `"content"` (the default) only
where the student wrote a word (a token with a letter), so list markers, line breaks and punctuation, the format the
teacher asks for, follow the teacher alone; `"all"` on every distilled token.

The initial policy is the frozen "base" teacher model run on the student's prompt instead of the teacher's: the policy
with its adapters disabled (or the frozen initial adapter) under PEFT, else the frozen copy `teacher_model_kind="base"`
builds. A separately given teacher model is not the initial policy, so the anchor refuses it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .. import losses

#: The distillation's divergence settings the anchor shares (the divergence, temperature, chunking and the models'
#: logit scaling); the support and the teacher shaping are its own.
ANCHOR_DIVERGENCE_KEYS = (
    "beta",
    "temperature",
    "chunk_size",
    "student_logit_scale",
    "student_final_logit_softcapping",
    "teacher_logit_scale",
    "teacher_final_logit_softcapping",
)


def check_anchor(args: Any, separate_teacher_given: bool) -> None:
    """Refuse an anchor with no initial policy to anchor to (called before the models load)."""
    if args.anchor_weight > 0 and separate_teacher_given:
        raise ValueError(
            f"anchor_weight is {args.anchor_weight}, which anchors the student to the initial policy, but a separate "
            "teacher_model was given: that model is not the policy the student started from. Drop teacher_model "
            "(the frozen initial policy then teaches and anchors), or set anchor_weight=0."
        )


def content_table(content_tokens: frozenset[int], vocab_size: int) -> Tensor:
    """`[V]` bool: which token ids are content tokens (`teacher_bias.content_token_ids`), built once per run."""
    table = torch.zeros(vocab_size, dtype=torch.bool)
    table[torch.tensor(sorted(i for i in content_tokens if i < vocab_size), dtype=torch.long)] = True
    return table


def anchor_token_mask(completion_ids: Tensor, loss_mask: Tensor, content: Tensor | None) -> Tensor:
    """`[B, T]` bool: the distilled tokens that carry the anchor, all of `loss_mask` when `content` is None (the
    `"all"` policy), else those whose sampled token is a content token (`content`, a [`content_table`])."""
    keep = loss_mask.bool()
    if content is None:
        return keep
    return keep & content.to(completion_ids.device)[completion_ids]


def anchor_divergence(
    student_tokens: Tensor,
    student_head: Any,
    anchor_tokens: Tensor,
    anchor_weight: Tensor,
    anchor_bias: Tensor | None,
    divergence_kwargs: dict[str, Any],
) -> Tensor:
    """Per-token full-vocabulary divergence (`distillation_beta`'s generalised JSD) from the student to the initial
    policy, `[N]`, differentiable in the student. The initial policy's distribution is taken as it is: no teacher
    shaping (temperature, top-k), no teacher penalties, no clip."""
    out = losses.token_divergence(
        student_tokens, student_head.weight, student_head.bias, anchor_tokens.to(student_tokens.dtype), anchor_weight,
        anchor_bias, support="full", **divergence_kwargs,
    )  # fmt: skip
    return out.divergence


def add_anchor(per_token: Tensor, anchored: Tensor, term: Tensor, weight: float) -> tuple[Tensor, Tensor]:
    """`per_token + weight * term` on the `anchored` positions of the `[B, T]` loss (`term` holds one value per
    anchored position, in row-major order); a non-finite term adds nothing. Returns `(per_token, stats)`, `stats` =
    `[sum of the unweighted finite terms, their count]` for the logs."""
    finite = torch.isfinite(term)
    term = torch.where(finite, term, torch.zeros_like(term)).to(per_token.dtype)
    per_token = per_token + torch.zeros_like(per_token).masked_scatter(anchored, weight * term)
    return per_token, torch.stack([term.detach().sum(), finite.sum().to(term.dtype)])
