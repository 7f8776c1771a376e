"""Several teachers per rollout: how their per-token divergences combine into one per-token loss.

A teacher-context provider may give K contexts per rollout (e.g. K retrieved skills, as in "Skill-Conditioned Gated
Self-Distillation", SGSD, arXiv 2605.28791). All K teachers score the same student tokens in one batched forward; the
functions here turn their `[K, N]` divergences into `[N]` per-token losses. Two rules:

- `"mean"`: the weighted average `sum_k w_k d_k` with the weights normalised per rollout.
- `"sgsd_gate"`: the SGSD objective as published (arXiv 2605.28791; checked against the authors' code,
  `walawalagoose/SGSD`, `skill/sgsd_trainer.py`). On each sampled token, `delta = log p_teacher(y) - log p_student(y)`
  (teacher detached). Each (teacher, rollout) pair gets a *polarity*: the rollout's verifier outcome (+1 success,
  -1 failure) times the sign of the mean over the rollout's loss tokens of `delta` clipped to `[-clip, clip]`, or 0
  when that mean is within `confidence` of 0. The per-token loss is `log 2 - softplus(-delta^2 / (2 tau))` (0 when the
  student agrees with the teacher, below log 2 always); the rollout's loss is `sum_k w_k polarity_k` times it, averaged
  over the rollout's tokens by the trainer (`loss_type="grpo"`, as the paper's per-row mean). A right teacher
  (polarity +1) pulls the student's log-prob towards its own, a wrong one (-1) pushes it away; an unsure one is off.

Pure tensor functions, matched against a plain loop in `tests/test_multi_teacher.py` on values and gradients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
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


def sgsd_token_loss(delta: Tensor, tau: float = 1.0) -> Tensor:
    """SGSD's per-token loss `log 2 - softplus(-delta^2 / (2 tau))`, in `[0, log 2)`, differentiable in `delta`."""
    return math.log(2.0) - F.softplus(-delta.square() / (2.0 * tau))


def teacher_polarity(
    delta: Tensor, rollout: Tensor, outcome: Tensor, clip: float = 3.0, confidence: float = 0.05
) -> Tensor:
    """Per-token polarity in {-1, 0, +1} of each teacher, constant over a rollout (SGSD's polarity).

    Args:
        delta: `[K, N]` sampled-token log-ratios `log p_teacher - log p_student` of the loss tokens (detached here).
        rollout: `[N]` the rollout (row) each token belongs to.
        outcome: `[N]` the rollout's verifier outcome: +1 success, -1 failure, 0 unknown (polarity 0, no signal).
        clip: Each token's delta is clipped to `[-clip, clip]` before the rollout's mean.
        confidence: A mean whose size is not above this gives polarity 0.
    """
    delta = delta.detach().clamp(-clip, clip)
    rows, index = torch.unique(rollout, return_inverse=True)
    sums = delta.new_zeros(delta.size(0), rows.numel()).index_add_(1, index, delta)
    counts = torch.bincount(index, minlength=rows.numel()).to(delta.dtype)
    score = (sums / counts)[:, index]
    sign = torch.where(score.abs() > confidence, torch.sign(score), torch.zeros_like(score))
    return sign * torch.sign(outcome).to(delta.dtype)


def sgsd_gate(
    delta: Tensor,
    divergence: Tensor,
    rollout: Tensor,
    outcome: Tensor,
    weights: Tensor,
    tau: float = 1.0,
    clip: float = 3.0,
    confidence: float = 0.05,
) -> tuple[Tensor, Tensor]:
    """SGSD's gated per-token loss `sum_k w_k polarity_k (log 2 - softplus(-delta_k^2 / (2 tau)))` (module docstring).

    Args:
        delta: `[K, N]` sampled-token log-ratios `log p_teacher - log p_student` (values; detached here).
        divergence: `[K, N]` the sampled-token divergence of `losses.sampled_token_reverse_kl`, whose gradient is
            `-delta * grad log p_student`: it carries the gradient, so the loss's gradient is exactly that of the
            formula with `delta` differentiable through the student.
        rollout, outcome, clip, confidence: As in [`teacher_polarity`].
        weights: `[K, N]` teacher weights, summing to 1 over K.
        tau: The gate's temperature.

    Returns:
        `(per_token [N], active [K, N])`: the loss per token and which teachers have a polarity (not 0).
    """
    delta = delta.detach()
    polarity = teacher_polarity(delta, rollout, outcome, clip, confidence)
    value = sgsd_token_loss(delta, tau)
    # d loss / d delta = sigmoid(-delta^2 / 2 tau) * delta / tau, and the divergence's gradient is -delta times the
    # student's: scaling it by sigmoid(.) / tau gives the formula's gradient, with no division by delta.
    slope = torch.sigmoid(-delta.square() / (2.0 * tau)) / tau
    per_teacher = value + slope * (divergence - divergence.detach())
    return (weights * polarity * per_teacher).sum(dim=0), polarity != 0


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
    rollout: Tensor | None = None,
    tau: float = 1.0,
    clip: float = 3.0,
    confidence: float = 0.05,
) -> CombinedTeachers:
    """Fold K teachers' `[K * N]` outputs of `losses.token_divergence` (teacher-major) into `[N]` per-token values.

    Args:
        out: The divergence call on the student's tokens repeated K times against the K teachers.
        clipped, clipped_mask: `losses.clip_token_divergence` of `out.divergence`.
        weights: `[K, N]` teacher weights, summing to 1 over K.
        combine: `"mean"` or `"sgsd_gate"` (needs `outcome`, `rollout` and `out` from the `"sampled_token"` support).
        outcome, rollout: `[N]` verifier outcome and row of each token, for `"sgsd_gate"`.
        tau, clip, confidence: The SGSD gate's settings (see [`sgsd_gate`]).
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
        if out.teacher_logps is None or outcome is None or rollout is None:
            raise ValueError("teacher_combine='sgsd_gate' needs the sampled tokens' log-probs and a verifier outcome")
        delta = (fold(out.teacher_logps) - fold(out.student_logps)).nan_to_num()
        loss, active = sgsd_gate(
            delta, fold(out.divergence), rollout, outcome, weights, tau=tau, clip=clip, confidence=confidence
        )
        active_frac = active.float().mean(dim=0)
        clipped_mask = (delta.abs() > clip).flatten()  # SGSD's clipped share: tokens whose delta the polarity clips
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
    "sgsd_token_loss",
    "softmax_teacher_weights",
    "teacher_polarity",
    "verifier_outcome",
    "weighted_teacher_average",
]
