"""Several teachers per rollout: how their per-token divergences combine into one per-token loss.

A teacher-context provider may give K contexts per rollout (e.g. K retrieved skills, as in "Skill-Conditioned Gated
Self-Distillation", SGSD, arXiv 2605.28791). All K teachers score the same student tokens in one batched forward; the
functions here turn their `[K, N]` divergences into `[N]` per-token losses. Two rules:

- `"mean"`: the weighted average `sum_k w_k d_k` with the weights normalised per rollout.
- `"sgsd_gate"`: our reading of the SGSD gate. A teacher's *support* for a sampled token is its log-ratio
  `s = log p_teacher(y) - log p_student(y)`. Its sign, times the rollout's verifier outcome `o` (+1 success,
  -1 failure), is the teacher's *polarity*: a teacher that raises a successful token, or lowers a failed one, is
  right and the student is pulled towards it (+1); the opposite stance is reversed (-1, the student is pushed away).
  Teachers whose support is tiny (uncertain) or huge (extreme) are gated off. The per-token loss is
  `sum_k w_k gate_k polarity_k d_k`, bounded because each `d_k` is already clipped at tau.

Pure tensor functions, matched against a plain loop in `tests/test_multi_teacher.py` on values and gradients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from .losses import TokenDivergence

TeacherCombine = Literal["mean", "sgsd_gate"]
TEACHER_COMBINES = ("mean", "sgsd_gate")


def normalize_teacher_weights(weights: Tensor) -> Tensor:
    """`[B, K]` non-negative teacher weights scaled so that each rollout's sum is 1 (an error if a sum is not > 0)."""
    if (weights < 0).any() or not torch.isfinite(weights).all():
        raise ValueError(f"teacher context weights must be finite and non-negative; got {weights.tolist()}")
    total = weights.sum(dim=-1, keepdim=True)
    if (total <= 0).any():
        rows = (total.squeeze(-1) <= 0).nonzero().flatten().tolist()
        raise ValueError(f"teacher context weights sum to 0 for rollouts {rows}; give at least one positive weight")
    return weights / total


def softmax_teacher_weights(scores: Tensor, temperature: float = 1.0) -> Tensor:
    """Weights from retrieval scores, a softmax over each rollout's K teachers (SGSD's weighting)."""
    return torch.softmax(scores / temperature, dim=-1)


def weighted_teacher_average(divergence: Tensor, weights: Tensor) -> Tensor:
    """`sum_k w_k d_k`: `divergence` and `weights` are `[K, N]`, weights summing to 1 over K; returns `[N]`."""
    return (weights * divergence).sum(dim=0)


def teacher_polarity(support: Tensor, outcome: Tensor) -> Tensor:
    """`sign(support) * outcome`, in {-1, 0, +1}: `support` is `[K, N]`, `outcome` `[N]` (+1, -1, or 0 = unknown)."""
    return torch.sign(support) * outcome.to(support.dtype)


def sgsd_gate(
    divergence: Tensor,
    support: Tensor,
    outcome: Tensor,
    weights: Tensor,
    min_support: float = 0.1,
    max_support: float = 5.0,
) -> tuple[Tensor, Tensor]:
    """Gated multi-teacher per-token loss (see the module docstring).

    Args:
        divergence: `[K, N]` per-teacher divergences, already bounded (clipped at tau); differentiable.
        support: `[K, N]` sampled-token log-ratios `log p_teacher - log p_student` (detached here).
        outcome: `[N]` the rollout's verifier outcome per token: +1 success, -1 failure, 0 unknown (no signal).
        weights: `[K, N]` teacher weights, summing to 1 over K.
        min_support: Teachers with `|support|` below this are uncertain and gated off.
        max_support: Teachers with `|support|` above this are extreme and gated off.

    Returns:
        `(per_token [N], active [K, N])`: the loss per token and which teachers passed the gate.
    """
    support = support.detach()
    magnitude = support.abs()
    active = (magnitude >= min_support) & (magnitude <= max_support) & (outcome != 0)
    polarity = teacher_polarity(support, outcome)
    per_token = (weights * active.to(divergence.dtype) * polarity * divergence).sum(dim=0)
    return per_token, active


def verifier_outcome(rewards_per_func: Tensor, reward_weights: Tensor, threshold: float) -> Tensor:
    """Each rollout's outcome from its rewards: +1 when the weighted sum reaches `threshold`, -1 below it, and 0 when
    every reward function failed (NaN), so an unscorable rollout gives no gated signal rather than a false failure."""
    unscorable = torch.isnan(rewards_per_func).all(dim=1)
    total = (rewards_per_func * reward_weights.to(rewards_per_func.device).unsqueeze(0)).nansum(dim=1)
    outcome = torch.where(total >= threshold, 1.0, -1.0)
    return outcome.masked_fill(unscorable, 0.0)


@dataclass
class CombinedTeachers:
    """`[N]` per-token results of [`combine_teachers`]; `divergence`, `clipped`, `teacher_logps` for metrics."""

    loss: Tensor
    divergence: TokenDivergence
    clipped_frac: Tensor
    active_frac: Tensor | None


def combine_teachers(
    out: TokenDivergence,
    clipped: Tensor,
    clipped_mask: Tensor,
    weights: Tensor,
    combine: TeacherCombine = "mean",
    outcome: Tensor | None = None,
    min_support: float = 0.1,
    max_support: float = 5.0,
) -> CombinedTeachers:
    """Fold K teachers' `[K * N]` outputs of `losses.token_divergence` (teacher-major) into `[N]` per-token values.

    Args:
        out: The divergence call on the student's tokens repeated K times against the K teachers.
        clipped, clipped_mask: `losses.clip_token_divergence` of `out.divergence`.
        weights: `[K, N]` teacher weights, summing to 1 over K.
        combine: `"mean"` or `"sgsd_gate"` (needs `outcome` and the sampled-token log-probs in `out`).
        outcome: `[N]` verifier outcome per token for `"sgsd_gate"`.
    """
    k = weights.size(0)

    def fold(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.view(k, -1)

    finite = fold(out.finite).all(dim=0)
    divergence = fold(clipped)
    active_frac = None
    if combine == "mean":
        loss = weighted_teacher_average(divergence, weights)
    elif combine == "sgsd_gate":
        if out.teacher_logps is None or outcome is None:
            raise ValueError("teacher_combine='sgsd_gate' needs the sampled tokens' log-probs and a verifier outcome")
        support = fold(out.teacher_logps) - fold(out.student_logps)
        loss, active = sgsd_gate(divergence, support.nan_to_num(), outcome, weights, min_support, max_support)
        active_frac = active.float().mean(dim=0)
    else:
        raise ValueError(f"teacher_combine is {combine!r}; expected one of {TEACHER_COMBINES}")
    reduced = TokenDivergence(
        divergence=weighted_teacher_average(fold(out.divergence).detach(), weights),
        student_logps=None if out.student_logps is None else fold(out.student_logps)[0],
        teacher_logps=None
        if out.teacher_logps is None
        else weighted_teacher_average(fold(out.teacher_logps), weights),
        entropy=None if out.entropy is None else fold(out.entropy)[0],
        finite=finite,
    )
    return CombinedTeachers(loss, reduced, weighted_teacher_average(fold(clipped_mask).float(), weights), active_frac)


__all__ = [
    "TEACHER_COMBINES",
    "CombinedTeachers",
    "combine_teachers",
    "normalize_teacher_weights",
    "sgsd_gate",
    "softmax_teacher_weights",
    "teacher_polarity",
    "verifier_outcome",
    "weighted_teacher_average",
]
