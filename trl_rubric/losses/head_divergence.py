"""[`token_divergence`]: one divergence per completion token from two models' hidden states and LM heads.

- `support="full"`: the whole vocabulary, through TRL's `ChunkedDivergenceFunction` (CUDA, no entry clip) or
  [`ChunkedHeadDivergence`] on token chunks;
- `support="topk"`: the teacher's (or student's) top-k tokens, optionally with a tail bucket for the leftover mass;
- `support="sampled_token"`: the single-sample reverse-KL estimate on the sampled token (cheapest).

This module checks inputs and dispatches; the math lives in `divergence.py`, the chunking in `chunked_head.py`.
"""

from __future__ import annotations

import functools
import logging

import torch
from torch import Tensor
from torch.distributed.tensor import DTensor
from trl.kernels.chunked_divergence import ChunkedDivergenceFunction

from .chunked_head import (
    ChunkedHeadDivergence,
    _full_chunk,
    _gather_zero3,
    _target_logps,
    _teacher_target_logps,
    _token_chunks,
    _topk_chunk,
)
from .divergence import (
    DEFAULT_TEACHER_TOP_K_FLOOR,
    SUPPORTS,
    TOP_K_SOURCES,
    Support,
    TokenDivergence,
    TopKSource,
    sampled_token_reverse_kl,
)
from .masks import finite_token_mask, sanitize_hidden

logger = logging.getLogger("trl_rubric.losses")

# Elements of one `[chunk, V]` fp32 tile when `chunk_size=None` on the torch path (512 MiB): large chunks for a GPU, no
# `[N, V]` tensor however long the batch
_AUTO_TILE_ELEMENTS = 1 << 27

_warned_sampled_token_beta = False


def token_divergence(
    student_hidden: Tensor,
    student_weight: Tensor,
    student_bias: Tensor | None,
    teacher_hidden: Tensor,
    teacher_weight: Tensor,
    teacher_bias: Tensor | None,
    *,
    beta: float = 0.5,
    support: Support = "full",
    target_ids: Tensor | None = None,
    top_k: int = 20,
    top_k_source: TopKSource = "teacher",
    top_k_tail: bool = True,
    temperature: float = 1.0,
    chunk_size: int | None = 128,
    student_logit_scale: float = 1.0,
    teacher_logit_scale: float = 1.0,
    student_final_logit_softcapping: float | None = None,
    teacher_final_logit_softcapping: float | None = None,
    entry_clip: float | None = None,
    teacher_temperature: float = 1.0,
    teacher_top_k: int | None = None,
    teacher_top_k_floor: float = DEFAULT_TEACHER_TOP_K_FLOOR,
) -> TokenDivergence:
    """Per-token divergence between the student's and the teacher's next-token distributions, from hidden states.

    Neither model's `[N, V]` logits are materialised. `"full"` and `"topk"` run as one autograd function
    ([`ChunkedHeadDivergence`]) over `chunk_size` tokens at a time (at most `[chunk_size, V]` logits per model), with
    one fp32 LM-head gradient buffer for all chunks; on CUDA, `"full"` without `entry_clip` is one call to TRL's fused
    `ChunkedDivergenceFunction`, which tiles by itself. Rows whose hidden states or target log-probs are not finite are
    zeroed first and reported in `finite`, with divergence 0 and no gradient; leave them out of the loss and count
    them. (A row with finite hidden states whose logits overflow is flagged too, but its LM-head gradient may still be
    NaN.) On CPU, chunks of 128 keep peak memory flat in N; with `chunk_size=None` the tiles are about 512 MiB.

    Args:
        student_hidden: `[N, H_s]` last hidden states of the student at the completion positions.
        student_weight: `[V, H_s]` student LM head.
        student_bias: `[V]` or None.
        teacher_hidden: `[N, H_t]` teacher hidden states at the same positions. No gradient flows to the teacher.
        teacher_weight: `[V, H_t]` teacher LM head (same vocabulary as the student).
        teacher_bias: `[V]` or None.
        beta: `0` = forward KL(teacher‖student), `1` = reverse KL(student‖teacher), in between the generalized JSD
            `beta KL(p_teacher‖m) + (1 - beta) KL(p_student‖m)`, `m = (1 - beta) p_student + beta p_teacher`.
            RGSD uses 0.5. Ignored by `"sampled_token"`, which is always the reverse-KL estimate.
        support: `"full"` (whole vocabulary), `"topk"` (top-k tokens, see `top_k*`) or
            `"sampled_token"` (single-sample reverse-KL estimate on `target_ids`, with the score-function gradient
            `(log p_s - log p_t).detach() * ∇ log p_s`; see [`sampled_token_reverse_kl`]).
        target_ids: `[N]` sampled completion tokens. Needed for `"sampled_token"`; when given, the target log-probs of
            both models are returned too.
        top_k: Support size for `"topk"`.
        top_k_source: Whose top-k tokens form the support: `"teacher"` or `"student"`.
        top_k_tail: Add a bucket with the mass outside the top-k (approximates the full divergence); otherwise both
            distributions are renormalised over the top-k.
        temperature: Both distributions are `softmax(logits / temperature)`.
        chunk_size: Tokens per chunk, on every path: where TRL's kernel applies (CUDA, `"full"`, no `entry_clip`)
            one call of it per chunk, each with its own fp32 LM-head gradient. None: one call to TRL's kernel where
            it applies, otherwise chunks of about `2**27 / V` tokens (a 512 MiB fp32 `[chunk, V]` tile).
        student_logit_scale, teacher_logit_scale: Multipliers applied to the logits first (models with logit scaling).
        student_final_logit_softcapping, teacher_final_logit_softcapping: `c` in `c * tanh(z / c)` (e.g. Gemma), or
            None.
        entry_clip: Per-vocabulary-entry clip tau for `"full"` and `"topk"` (the OPSD clip, tau = 0.05 there): each
            entry's term of the divergence (see [`per_entry_divergence`]: `p_t (log p_t - log p_s)` at beta 0,
            `p_s (log p_s - log p_t)` at beta 1, `beta p_t (log p_t - log m) + (1 - beta) p_s (log p_s - log m)` in
            between) becomes `min(term, tau)` before the sum over the support, so entries above tau give no gradient
            and a token's value can be negative. None (default) clips nothing.
        teacher_temperature: The teacher's logits are further divided by this (its distribution is
            `softmax(z_t / (temperature * teacher_temperature))`), on every support and in the target log-probs: below
            1 sharpens the teacher's preferences, above 1 flattens them. 1.0 (default) leaves every number unchanged.
        teacher_top_k: The teacher's distribution renormalised over its `teacher_top_k` most likely tokens (ties at
            the k-th included), probability 0 elsewhere: forward KL and the JSD then ignore the teacher's tail, and
            where a log-probability of a token outside is read (reverse KL, the sampled token, the target log-probs)
            it is `teacher_top_k_floor`, never -inf. None (default): the whole distribution.
        teacher_top_k_floor: That log-probability ([`DEFAULT_TEACHER_TOP_K_FLOOR`], -10).

    Returns:
        A [`TokenDivergence`].
    """
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size}: expected a positive number of tokens, or None")
    if entry_clip is not None:
        if support == "sampled_token":
            raise ValueError(
                "entry_clip needs a support with vocabulary entries: 'full' or 'topk', not 'sampled_token'"
            )
        if not entry_clip > 0:
            raise ValueError(f"entry_clip={entry_clip!r}: expected a positive number, or None to disable it")
    if not 0 < teacher_temperature < float("inf"):
        raise ValueError(f"teacher_temperature={teacher_temperature!r}: expected a finite number > 0")
    if teacher_top_k is not None and (isinstance(teacher_top_k, bool) or not isinstance(teacher_top_k, int)
                                      or not 1 <= teacher_top_k <= teacher_weight.shape[0]):  # fmt: skip
        raise ValueError(f"teacher_top_k={teacher_top_k!r}: expected None or 1 <= k <= vocabulary size")
    if not -float("inf") < teacher_top_k_floor <= 0:
        raise ValueError(f"teacher_top_k_floor={teacher_top_k_floor!r}: expected a finite log-probability (<= 0)")

    # Under DeepSpeed ZeRO-3 the heads are empty partitions outside their module's forward: gather them (TRL's helper,
    # a no-op otherwise). Under FSDP2 they are sharded DTensors: one full copy each, as TRL's distillation loss does.
    with _gather_zero3(student_weight, student_bias, teacher_weight, teacher_bias):
        student_weight, student_bias = full_lm_head(student_weight, student_bias)
        with torch.no_grad():
            teacher_weight, teacher_bias = full_lm_head(teacher_weight, teacher_bias)
        return _token_divergence(
            student_hidden,
            student_weight,
            student_bias,
            teacher_hidden,
            teacher_weight,
            teacher_bias,
            beta=beta,
            support=support,
            target_ids=target_ids,
            top_k=top_k,
            top_k_source=top_k_source,
            top_k_tail=top_k_tail,
            temperature=temperature,
            chunk_size=chunk_size,
            student_logit_scale=student_logit_scale,
            teacher_logit_scale=teacher_logit_scale,
            student_final_logit_softcapping=student_final_logit_softcapping,
            teacher_final_logit_softcapping=teacher_final_logit_softcapping,
            entry_clip=entry_clip,
            teacher_temperature=teacher_temperature,
            teacher_top_k=None if teacher_top_k is None else (teacher_top_k, float(teacher_top_k_floor)),
        )


def _fused_kernel_applies(hidden: Tensor) -> bool:
    """Whether `"full"` without an entry clip runs TRL's fused `ChunkedDivergenceFunction` (CUDA tensors)."""
    return hidden.is_cuda


def full_lm_head(weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """A full copy of an FSDP2-sharded (DTensor) LM head, differentiable back to the shards; other tensors as is."""
    if isinstance(weight, DTensor):
        weight = weight.full_tensor()
    if isinstance(bias, DTensor):
        bias = bias.full_tensor()
    return weight, bias


def _token_divergence(
    student_hidden, student_weight, student_bias, teacher_hidden, teacher_weight, teacher_bias, *, beta, support,
    target_ids, top_k, top_k_source, top_k_tail, temperature, chunk_size, student_logit_scale, teacher_logit_scale,
    student_final_logit_softcapping, teacher_final_logit_softcapping, entry_clip, teacher_temperature, teacher_top_k,
) -> TokenDivergence:  # fmt: skip
    # Shapes are read here, after the gather: a ZeRO-3 partition has none
    _check_inputs(
        student_hidden, student_weight, teacher_hidden, teacher_weight, beta, support, target_ids, top_k, top_k_source
    )
    student_hidden, student_finite = sanitize_hidden(student_hidden)
    teacher_hidden, teacher_finite = sanitize_hidden(teacher_hidden.detach())
    student_args = (temperature, student_logit_scale, student_final_logit_softcapping)
    teacher_args = (temperature * teacher_temperature, teacher_logit_scale, teacher_final_logit_softcapping)

    student_logps = teacher_logps = None
    if support == "sampled_token":
        _warn_sampled_token_beta(beta)
        student_logps, entropy = _target_logps(
            student_hidden,
            student_weight,
            student_bias,
            target_ids,
            *student_args,
            chunk_size,
            outputs=("entropy",),
            grad=True,
        )
        teacher_logps = _teacher_target_logps(
            teacher_hidden, teacher_weight, teacher_bias, target_ids, teacher_args, chunk_size, teacher_top_k
        )
        divergence = sampled_token_reverse_kl(student_logps, teacher_logps)
        student_logps, entropy = student_logps.detach(), entropy.detach()
    else:
        if target_ids is not None:
            with torch.no_grad():
                student_logps, _ = _target_logps(
                    student_hidden.detach(),
                    student_weight.detach(),
                    _detach(student_bias),
                    target_ids,
                    *student_args,
                    chunk_size,
                )
                teacher_logps = _teacher_target_logps(
                    teacher_hidden, teacher_weight, teacher_bias, target_ids, teacher_args, chunk_size, teacher_top_k
                )
        # TRL's kernel takes one temperature for both models and no top-k teacher: those run the chunked path below
        plain_teacher = teacher_temperature == 1.0 and teacher_top_k is None
        if support == "full" and entry_clip is None and plain_teacher and _fused_kernel_applies(student_hidden):
            # TRL's fused kernel tiles tokens and vocabulary itself and keeps one fp32 LM-head gradient: one call, or
            # one per `chunk_size` tokens when set (each call then costs its own fp32 LM-head gradient buffer)
            fused_args = (
                float(beta),
                temperature,
                student_logit_scale,
                student_final_logit_softcapping,
                teacher_logit_scale,
                teacher_final_logit_softcapping,
            )
            parts = [
                ChunkedDivergenceFunction.apply(
                    student_hidden[rows],
                    student_weight,
                    student_bias,
                    teacher_hidden[rows],
                    teacher_weight,
                    teacher_bias,
                    *fused_args,
                )
                for rows in _token_chunks(student_hidden.shape[0], chunk_size)
            ]
            divergence = torch.cat([d for d, _ in parts]) if len(parts) > 1 else parts[0][0]
            entropy = torch.cat([e for _, e in parts]) if len(parts) > 1 else parts[0][1]
        else:
            math_kwargs = {
                "beta": float(beta),
                "entry_clip": entry_clip,
                "student_args": student_args,
                "teacher_args": teacher_args,
                "teacher_top_k": teacher_top_k,
            }
            if support == "full":
                chunk_math = functools.partial(_full_chunk, **math_kwargs)
            else:
                chunk_math = functools.partial(
                    _topk_chunk, **math_kwargs, top_k=top_k, top_k_source=top_k_source, tail=top_k_tail
                )
            divergence, entropy = ChunkedHeadDivergence.apply(
                student_hidden,
                student_weight,
                student_bias,
                teacher_hidden,
                teacher_weight,
                teacher_bias,
                chunk_math,
                chunk_size or max(1, _AUTO_TILE_ELEMENTS // student_weight.shape[0]),
            )
        entropy = entropy.detach()

    finite = student_finite & teacher_finite & finite_token_mask(divergence.detach(), student_logps, teacher_logps)
    if not bool(finite.all()):
        # where() sends a zero gradient to the dropped rows, so no NaN reaches the student
        divergence = torch.where(finite, divergence, divergence.new_zeros(()))
    return TokenDivergence(divergence, student_logps, teacher_logps, entropy, finite)


def _detach(t: Tensor | None) -> Tensor | None:
    return t.detach() if t is not None else None


def _warn_sampled_token_beta(beta: float) -> None:
    global _warned_sampled_token_beta
    if beta != 1.0 and not _warned_sampled_token_beta:
        _warned_sampled_token_beta = True
        logger.warning(
            "support='sampled_token' always estimates the reverse KL(student‖teacher); beta=%s is ignored. "
            "Set beta=1.0 to silence this, or use support='full' or 'topk' for a JSD.",
            beta,
        )


def _check_inputs(
    student_hidden: Tensor,
    student_weight: Tensor,
    teacher_hidden: Tensor,
    teacher_weight: Tensor,
    beta: float,
    support: str,
    target_ids: Tensor | None,
    top_k: int,
    top_k_source: str,
) -> None:
    if support not in SUPPORTS:
        raise ValueError(f"support={support!r}: expected one of {SUPPORTS}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta={beta}: expected 0 <= beta <= 1 (0 = forward KL, 1 = reverse KL, between = JSD)")
    if student_hidden.dim() != 2 or teacher_hidden.dim() != 2:
        raise ValueError(
            f"hidden states must be [N, H]; got student {tuple(student_hidden.shape)}, "
            f"teacher {tuple(teacher_hidden.shape)}. Flatten the completion tokens first."
        )
    if student_hidden.shape[0] != teacher_hidden.shape[0]:
        raise ValueError(
            f"student has {student_hidden.shape[0]} tokens but teacher has {teacher_hidden.shape[0]}; "
            "both must score the same completion tokens"
        )
    if student_weight.shape[0] != teacher_weight.shape[0]:
        raise ValueError(
            f"student vocabulary {student_weight.shape[0]} != teacher vocabulary {teacher_weight.shape[0]}; "
            "the teacher must share the student's tokenizer"
        )
    if student_weight.shape[1] != student_hidden.shape[1] or teacher_weight.shape[1] != teacher_hidden.shape[1]:
        raise ValueError("LM-head weight must be [V, H] with H matching the hidden states")
    if target_ids is not None and target_ids.shape != (student_hidden.shape[0],):
        raise ValueError(f"target_ids must be [N]={student_hidden.shape[0]}; got {tuple(target_ids.shape)}")
    if support == "sampled_token" and target_ids is None:
        raise ValueError("support='sampled_token' needs target_ids (the sampled completion tokens)")
    if support == "topk":
        if top_k_source not in TOP_K_SOURCES:
            raise ValueError(f"top_k_source={top_k_source!r}: expected one of {TOP_K_SOURCES}")
        if not 1 <= top_k <= student_weight.shape[0]:
            raise ValueError(f"top_k={top_k}: expected 1 <= top_k <= vocabulary size {student_weight.shape[0]}")
