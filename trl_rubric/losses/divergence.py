"""Divergence math on log-probabilities over a support (the last dimension): pure functions, no chunking.

Beta follows TRL and the RGSD paper: `beta=0` is the forward KL(teacher‖student), `beta=1` the reverse
KL(student‖teacher), and `0 < beta < 1` the generalized JSD with mixture `m = (1 - beta) p_student + beta p_teacher`:
`JSD_beta = beta KL(p_teacher‖m) + (1 - beta) KL(p_student‖m)`. (Liger-Kernel's beta runs the other way.) Also the
logit transform a model samples from (scale, soft-cap, temperature) and where to read it from a model config.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

Support = Literal["full", "topk", "sampled_token"]
TopKSource = Literal["teacher", "student"]

SUPPORTS = ("full", "topk", "sampled_token")
TOP_K_SOURCES = ("teacher", "student")


@dataclass
class TokenDivergence:
    """Per-token outputs of [`token_divergence`], all of shape `[N]`.

    Args:
        divergence: Per-token divergence. Differentiable with respect to the student's hidden states, LM-head weight
            and bias only; `0` (and no gradient) where `finite` is False.
        student_logps: `log p_student(target)` (detached) when `target_ids` was given, else None.
        teacher_logps: `log p_teacher(target)` (detached) when `target_ids` was given, else None.
        entropy: Student entropy (detached) over the full vocabulary.
        finite: False for tokens whose hidden states, target log-probs or divergence were not finite. Leave them out of
            the loss (multiply the mask by it) and count them.
    """

    divergence: Tensor
    student_logps: Tensor | None
    teacher_logps: Tensor | None
    entropy: Tensor | None
    finite: Tensor


# ---------------------------------------------------------------------------------------------------------------------
# Math: small pure functions on log-probabilities over a support (the last dimension)
# ---------------------------------------------------------------------------------------------------------------------


def per_entry_divergence(student_logps: Tensor, teacher_logps: Tensor, beta: float) -> Tensor:
    """Each support entry's term of the beta-divergence; their sum over the last dimension is [`generalized_jsd`].

    With `p_s`, `p_t` the two distributions and `m = (1 - beta) p_s + beta p_t`, the term of entry `v` is

    - `beta = 0` (forward KL(teacher‖student)): `p_t(v) (log p_t(v) - log p_s(v))`;
    - `beta = 1` (reverse KL(student‖teacher)): `p_s(v) (log p_s(v) - log p_t(v))`;
    - otherwise: `beta p_t(v) (log p_t(v) - log m(v)) + (1 - beta) p_s(v) (log p_s(v) - log m(v))`.

    A single term can be negative (an entry the first distribution puts less mass on); only their sum is `>= 0`.

    Args:
        student_logps: `[..., K]` log-probabilities of the student (each row sums to 1 in probability).
        teacher_logps: `[..., K]` log-probabilities of the teacher.
        beta: `0` = forward KL(teacher‖student), `1` = reverse KL(student‖teacher), in between the generalized JSD.

    Returns:
        `[..., K]` terms.
    """
    if beta == 0.0:
        return teacher_logps.exp() * (teacher_logps - student_logps)
    if beta == 1.0:
        return student_logps.exp() * (student_logps - teacher_logps)
    log_m = torch.logaddexp(student_logps + math.log(1 - beta), teacher_logps + math.log(beta))
    return beta * teacher_logps.exp() * (teacher_logps - log_m) + (1 - beta) * student_logps.exp() * (
        student_logps - log_m
    )


def generalized_jsd(
    student_logps: Tensor, teacher_logps: Tensor, beta: float, entry_clip: float | None = None
) -> Tensor:
    """Beta-divergence between two distributions given as log-probabilities over the last dimension.

    Same definition as TRL's `ChunkedDivergenceFunction` and `trl.experimental.sdft`'s `compute_divergence`.

    Args:
        student_logps: `[..., K]` log-probabilities of the student (each row sums to 1 in probability).
        teacher_logps: `[..., K]` log-probabilities of the teacher.
        beta: `0` = forward KL(teacher‖student), `1` = reverse KL(student‖teacher), in between the generalized JSD
            `beta KL(p_teacher‖m) + (1 - beta) KL(p_student‖m)` with `m = (1 - beta) p_student + beta p_teacher`.
        entry_clip: If given, each entry's term ([`per_entry_divergence`]) is replaced by `min(term, entry_clip)`
            before the sum (the OPSD clip); the result can then be negative.

    Returns:
        `[...]` divergence per row.
    """
    terms = per_entry_divergence(student_logps, teacher_logps, beta)
    if entry_clip is not None:
        terms = terms.clamp(max=entry_clip)
    return terms.sum(-1)


def add_tail_bucket(logps: Tensor) -> Tensor:
    """Append one category holding the probability mass left outside a top-k support.

    Top-k log-probabilities sum to the captured mass `P <= 1`; the extra bucket `log(1 - P)` makes the support a proper
    distribution, so the divergence on it approximates the full-vocabulary one. The same construction as
    `trl.experimental.sdft`'s helper, which we do not import because `trl.experimental` warns on import.

    Args:
        logps: `[..., K]` true log-probabilities of the top-k tokens.

    Returns:
        `[..., K + 1]` log-probabilities.
    """
    # Keep the tail above ~1e-7 so log(tail) and its gradient stay finite when top-k holds all the mass
    captured = torch.logsumexp(logps, dim=-1, keepdim=True).clamp(max=-1e-7)
    return torch.cat([logps, torch.log(-torch.expm1(captured))], dim=-1)


def renormalize(logps: Tensor) -> Tensor:
    """Log-probabilities conditioned on the support: `logps - logsumexp(logps)` over the last dimension."""
    return logps - torch.logsumexp(logps, dim=-1, keepdim=True)


def sampled_token_reverse_kl(student_logps: Tensor, teacher_logps: Tensor) -> Tensor:
    """Single-sample reverse-KL estimate on the sampled token, with the score-function gradient.

    For `y ~ p_student`, `log p_s(y) - log p_t(y)` is an unbiased estimate of KL(student‖teacher). Its value is
    returned as is; its gradient is the policy-gradient surrogate `(log p_s(y) - log p_t(y)).detach() * ∇ log p_s(y)`,
    as in on-policy distillation, which is unbiased for the gradient of the reverse KL (the `∇ log p_s` inside the
    expectation has mean zero).

    Args:
        student_logps: `[N]` `log p_student(y_t)`, differentiable.
        teacher_logps: `[N]` `log p_teacher(y_t)`, no gradient needed.

    Returns:
        `[N]` estimate, with the surrogate gradient.
    """
    estimate = (student_logps - teacher_logps).detach()
    # Adds 0 to the value and `estimate * ∇ log p_s` to the gradient
    return estimate + estimate * (student_logps - student_logps.detach())


def transform_logits(
    logits: Tensor, temperature: float = 1.0, logit_scale: float = 1.0, final_logit_softcapping: float | None = None
) -> Tensor:
    """The logits a model samples from: scaled, soft-capped (`c * tanh(z / c)`), then divided by the temperature.

    Same order as TRL's chunked kernels.
    """
    # No-op steps are skipped: each would copy a `[c, V]` tile
    if logit_scale != 1.0:
        logits = logits * logit_scale
    if final_logit_softcapping is not None:
        logits = final_logit_softcapping * torch.tanh(logits / final_logit_softcapping)
    return logits / temperature if temperature != 1.0 else logits


#: Log-probability a token outside the teacher's top k reads where a log-probability is needed (`teacher_top_k`): the
#: sampled-token estimate, the logged log-ratio and the reverse KL (beta 1). About 4.5e-5: below what a teacher's top
#: 20 usually hold, so such a token still counts as one the teacher disfavours, without an infinite log-ratio.
DEFAULT_TEACHER_TOP_K_FLOOR = -10.0


def top_k_member(logits: Tensor, top_k: int) -> Tensor:
    """`[..., V]` bool: the entries at or above the k-th largest logit (ties at the k-th all count as in)."""
    return logits >= logits.topk(top_k, dim=-1).values[..., -1:]


def teacher_top_k_logps(
    logits: Tensor, top_k: int, floor: float = DEFAULT_TEACHER_TOP_K_FLOOR
) -> tuple[Tensor, Tensor]:
    """The teacher's distribution renormalised over its top-k tokens, as `(log-probs, probs)` over the last dimension.

    Inside the top k: `log p(v) - log sum_{top k} p`. Outside: probability exactly 0, and log-probability `floor`
    (finite), read only where a divergence needs the log of a token the teacher left out (reverse KL, the sampled
    token); forward KL and the JSD weigh those entries by the teacher's probability 0, or by the mixture, and never
    read it.

    Args:
        logits: `[..., V]` transformed teacher logits (scale, soft-cap, temperature applied).
        top_k: k, at least 1.
        floor: The log-probability of a token outside the top k.
    """
    inside = top_k_member(logits, top_k)
    logps = torch.log_softmax(logits.masked_fill(~inside, float("-inf")), dim=-1)
    probs = logps.exp()  # exactly 0 outside
    return logps.masked_fill_(~inside, floor), probs


def logit_processing(config: Any) -> tuple[float, float | None]:
    """`(logit_scale, final_logit_softcapping)` that a model applies to its LM head's output, read from its config.

    Reads the same fields as TRL's fused LM head (`trl.trainer.utils.add_fused_lm_head`): Cohere's `logit_scale`,
    `output_multiplier`, Falcon-H1's `lm_head_multiplier`, Granite's `logits_scaling` (a divisor; HyperCLOVA X
    multiplies by it), and `final_logit_softcapping` (Gemma-2 and others). Without them the divergence would be taken
    between distributions the models never sample from.
    """
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    scale = getattr(config, "logit_scale", None)
    for name in ("output_multiplier", "lm_head_multiplier"):
        if scale is None:
            scale = getattr(config, name, None)
    if scale is None and getattr(config, "logits_scaling", None) is not None:
        scaling = config.logits_scaling
        scale = scaling if getattr(config, "model_type", None) == "hyperclovax" else 1.0 / scaling
    return (1.0 if scale is None else float(scale)), getattr(config, "final_logit_softcapping", None)
