"""Token-level losses for Rubric-Guided Self-Distillation (RGSD, arXiv 2606.12507): divergences, clipping, masks.

The student sees the prompt, the teacher sees the prompt plus the rubric, and both score the student's sampled
completion. [`token_divergence`] turns their last hidden states and LM heads into one divergence per completion token
without ever holding `[N, V]` logits:

- `support="full"`: the whole vocabulary, through TRL's `ChunkedDivergenceFunction`, called on token chunks;
- `support="topk"`: the teacher's (or student's) top-k tokens, optionally with a tail bucket for the leftover mass;
- `support="sampled_token"`: the single-sample reverse-KL estimate on the sampled token (cheapest).

Beta follows TRL and the RGSD paper: `beta=0` is the forward KL(teacher‖student), `beta=1` the reverse
KL(student‖teacher), and `0 < beta < 1` the generalized JSD with mixture `m = (1 - beta) p_student + beta p_teacher`:
`JSD_beta = beta KL(p_teacher‖m) + (1 - beta) KL(p_student‖m)`. (Liger-Kernel's beta runs the other way.)

The rest are the small pieces the trainer applies around it: per-token clipping, the thinking-block and
skip-first-tokens masks, non-finite detection, and GRPO-style reduction to a scalar.
"""

from __future__ import annotations

import bisect
import functools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor
from torch.distributed.tensor import DTensor
from trl.kernels.chunked_divergence import ChunkedDivergenceFunction
from trl.kernels.chunked_logprob import ChunkedLogProbFunction
from trl.trainer.utils import maybe_gather_lm_head_ctx

logger = logging.getLogger(__name__)

Support = Literal["full", "topk", "sampled_token"]
TopKSource = Literal["teacher", "student"]
ClipMode = Literal["clamp", "scale"]

SUPPORTS = ("full", "topk", "sampled_token")
TOP_K_SOURCES = ("teacher", "student")
CLIP_MODES = ("clamp", "scale")
# GRPO loss types whose normalisation applies to any per-token loss. The others ("cispo", "sapo", "vespo") define
# their own per-token policy-gradient objective on importance ratios, which a distillation loss does not have.
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")
POLICY_ONLY_LOSS_TYPES = ("cispo", "sapo", "vespo")

# Budget for one `[rows, vocab]` projection tile of `ChunkedLogProbFunction`, in elements per token of `chunk_size`
_LOGPROB_MIN_VOCAB_CHUNK = 256

# Elements of one `[chunk, V]` fp32 tile when `chunk_size=None` on the torch path (512 MiB): large chunks for a GPU, no
# `[N, V]` tensor however long the batch
_AUTO_TILE_ELEMENTS = 1 << 27

_warned_sampled_token_beta = False


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


# ---------------------------------------------------------------------------------------------------------------------
# Clipping and masks
# ---------------------------------------------------------------------------------------------------------------------


def clip_token_divergence(
    divergence: Tensor, tau: float | None, mode: ClipMode = "clamp", signed: bool = False
) -> tuple[Tensor, Tensor]:
    """Bound each token's divergence at `tau`, so a few tokens the teacher finds very unlikely cannot dominate a step.

    `"clamp"` replaces values above `tau` by `tau`; those tokens then give no gradient. `"scale"` also reports
    `min(divergence, tau)` but keeps their gradient direction, scaled by `tau / divergence` so its size is bounded.

    With `signed=True` (the `sampled_token` estimate `log p_s(y) - log p_t(y)`, which is negative wherever the teacher
    likes the sampled token more than the student), the bound is symmetric, `[-tau, tau]`: clipping only the positive
    side would drop the tokens that push probability down and keep those that push it up, biasing the gradient. For
    that estimate `"scale"` is a clip of the policy-gradient coefficient to `[-tau, tau]`.

    Args:
        divergence: Per-token divergence, any shape.
        tau: Positive threshold, or None to leave the divergence unchanged.
        mode: `"clamp"` or `"scale"`.
        signed: Bound `|divergence|` instead of `divergence`.

    Returns:
        `(clipped, clipped_mask)`: the clipped divergence and a bool tensor, True where the value exceeded `tau`.
    """
    if tau is None:
        return divergence, torch.zeros_like(divergence, dtype=torch.bool)
    if not tau > 0:
        raise ValueError(f"clip tau={tau!r}: expected a positive number, or None to disable clipping")
    if mode not in CLIP_MODES:
        raise ValueError(f"clip mode={mode!r}: expected one of {CLIP_MODES}")
    size = divergence.detach().abs() if signed else divergence.detach()
    clipped_mask = size > tau
    if mode == "clamp":
        if not signed:
            return torch.clamp(divergence, max=tau), clipped_mask
        bound = divergence.detach().clamp(-tau, tau)  # a constant: no gradient beyond the bound, on either side
        return torch.where(clipped_mask, bound, divergence), clipped_mask
    # tau > 0, so clipped tokens have a nonzero size and the factor keeps the gradient's sign
    factor = torch.where(clipped_mask, tau / size, torch.ones_like(divergence))
    return divergence * factor, clipped_mask


def _find_subsequence(ids: Tensor, pattern: Tensor) -> Tensor:
    # [B, T] bool, True where `pattern` starts at that position
    batch, length = ids.shape
    n = pattern.numel()
    starts = torch.zeros((batch, length), dtype=torch.bool, device=ids.device)
    if n <= length:
        windows = ids.unfold(1, n, 1)  # [B, T - n + 1, n]
        starts[:, : length - n + 1] = (windows == pattern).all(-1)
    return starts


def _as_id_tensor(ids: Sequence[int] | Tensor, name: str, device: torch.device) -> Tensor:
    ids = torch.as_tensor(ids, dtype=torch.long, device=device).flatten()
    if ids.numel() == 0:
        raise ValueError(f"thinking_mask: {name} is empty; pass the token ids of the delimiter, e.g. tokenizer.encode")
    return ids


def thinking_mask(
    completion_ids: Tensor,
    start_ids: Sequence[int] | Tensor,
    end_ids: Sequence[int] | Tensor,
    *,
    open_at_start: bool = False,
) -> Tensor:
    """Mask that leaves thinking blocks out of the loss: the teacher's reasoning there may quote the rubric.

    Tokens from each start delimiter through its matching end delimiter (both inclusive) are False. A block that is
    never closed runs to the end of the row. A start delimiter inside a block and an end delimiter outside one are
    ordinary tokens.

    Args:
        completion_ids: `[B, T]` completion token ids.
        start_ids: Token ids of the opening delimiter, e.g. `tokenizer.encode("<think>", add_special_tokens=False)`.
        end_ids: Token ids of the closing delimiter, e.g. for `"</think>"`.
        open_at_start: True when the prompt already opened the block (chat templates that end the generation prompt
            with `<think>`), so each row starts inside it.

    Returns:
        `[B, T]` bool, True for tokens to keep.
    """
    start = _as_id_tensor(start_ids, "start_ids", completion_ids.device)
    end = _as_id_tensor(end_ids, "end_ids", completion_ids.device)
    start_len, end_len = start.numel(), end.numel()
    starts = _find_subsequence(completion_ids, start).cpu()
    ends = _find_subsequence(completion_ids, end).cpu()
    keep = torch.ones(completion_ids.shape, dtype=torch.bool)
    for row in range(completion_ids.shape[0]):
        # Visit delimiter positions only, so long rows cost nothing extra
        start_pos = starts[row].nonzero().flatten().tolist()
        end_pos = ends[row].nonzero().flatten().tolist()
        block_start, cursor = (0, 0) if open_at_start else (None, 0)
        while True:
            if block_start is None:
                i = bisect.bisect_left(start_pos, cursor)
                if i == len(start_pos):
                    break
                block_start, cursor = start_pos[i], start_pos[i] + start_len
            else:
                j = bisect.bisect_left(end_pos, cursor)
                if j == len(end_pos):
                    keep[row, block_start:] = False
                    break
                cursor = end_pos[j] + end_len
                keep[row, block_start:cursor] = False
                block_start = None
    return keep.to(completion_ids.device)


def skip_first_tokens_mask(mask: Tensor, n: int) -> Tensor:
    """Drop the first `n` completion tokens of each row from a `[B, T]` loss mask (`num_loss_tokens_to_skip`).

    Completions are right-padded, so column `j` is the row's `j`-th token.
    """
    if n < 0:
        raise ValueError(f"num_loss_tokens_to_skip={n}: expected 0 or more")
    if n == 0:
        return mask
    kept = torch.arange(mask.shape[-1], device=mask.device) >= n
    return mask & kept if mask.dtype == torch.bool else mask * kept.to(mask.dtype)


def finite_token_mask(*tensors: Tensor | None, token_dims: int = 1) -> Tensor:
    """True for tokens where every given per-token value is finite.

    Args:
        *tensors: Tensors whose first `token_dims` dimensions index tokens (e.g. `[N]` log-probs, `[N, H]` hidden
            states); trailing dimensions are reduced. None entries are skipped.
        token_dims: How many leading dimensions index tokens (2 for `[B, T]` or `[B, T, H]`).

    Returns:
        Bool tensor of the common token shape.
    """
    given = [t for t in tensors if t is not None]
    if not given:
        raise ValueError("finite_token_mask needs at least one tensor")
    finite = None
    for t in given:
        ok = t.isfinite()
        if ok.dim() > token_dims:
            ok = ok.flatten(token_dims).all(-1)
        finite = ok if finite is None else finite & ok
    return finite


def sanitize_hidden(hidden: Tensor) -> tuple[Tensor, Tensor]:
    """Zero the rows of `[N, H]` hidden states that hold a NaN or inf, so the chunked kernels stay finite.

    Gradients reaching the zeroed rows are zero, so they do not turn the LM-head gradient into NaN.

    Returns:
        `(clean_hidden, finite_rows)` with `finite_rows` `[N]` bool.
    """
    finite_rows = hidden.detach().isfinite().all(-1)
    if bool(finite_rows.all()):
        return hidden, finite_rows
    return torch.where(finite_rows.unsqueeze(-1), hidden, hidden.new_zeros(())), finite_rows


# ---------------------------------------------------------------------------------------------------------------------
# Reduction (GRPO's loss_type normalisations)
# ---------------------------------------------------------------------------------------------------------------------


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
    if loss_type == "grpo":
        loss = (masked.sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif loss_type == "bnpo":
        loss = masked.sum() / mask.sum().clamp(min=1.0)
    elif loss_type == "dr_grpo":
        if max_completion_length is None:
            raise ValueError("loss_type='dr_grpo' needs max_completion_length")
        loss = masked.sum() / (per_token_loss.size(0) * max_completion_length)
    elif loss_type == "dapo":
        if num_items_in_batch is None:
            raise ValueError(
                "loss_type='dapo' needs num_items_in_batch (the batch's masked-token count across processes)"
            )
        items = torch.as_tensor(num_items_in_batch, dtype=per_token_loss.dtype, device=per_token_loss.device)
        normalizer = items.clamp(min=1.0) / num_processes * gradient_accumulation_steps / steps_per_generation
        return masked.sum() / normalizer
    elif loss_type == "luspo":
        loss = masked.sum(-1).mean()
    elif loss_type in POLICY_ONLY_LOSS_TYPES:
        raise ValueError(
            f"loss_type={loss_type!r} reshapes GRPO's importance-ratio objective and has no distillation analogue; "
            f"use one of {LOSS_TYPES}"
        )
    else:
        raise ValueError(f"loss_type={loss_type!r} is unknown; use one of {LOSS_TYPES}")
    return loss / gradient_accumulation_steps


# ---------------------------------------------------------------------------------------------------------------------
# Chunking machinery
# ---------------------------------------------------------------------------------------------------------------------


def _token_chunks(n: int, chunk_size: int | None):
    if n == 0:
        # One empty chunk, so an empty selection still returns a `[0]` divergence attached to the student's graph
        yield slice(0, 0)
        return
    step = n if chunk_size is None else chunk_size
    for start in range(0, n, step):
        yield slice(start, min(start + step, n))


def _project(hidden: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    # fp32 logits, as TRL's kernels do, so the log-softmax is not rounded to bf16
    logits = hidden.float() @ weight.float().t()
    return logits + bias.float() if bias is not None else logits


def _target_logps(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    temperature: float,
    logit_scale: float,
    softcap: float | None,
    chunk_size: int | None,
    outputs: tuple[str, ...] = (),
    grad: bool = False,
) -> tuple[Tensor, Tensor | None]:
    # One `ChunkedLogProbFunction` call. It tiles `[min(N, 4096), vocab_chunk]`; pick the vocabulary chunk so a tile
    # holds about `chunk_size * V` elements, the same budget as the divergence.
    n, vocab = hidden.shape[0], weight.shape[0]
    rows = max(min(n, 4096), 1)
    budget = vocab if chunk_size is None else chunk_size * vocab // rows
    vocab_chunk = min(vocab, max(_LOGPROB_MIN_VOCAB_CHUNK, budget))
    with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
        logps, entropy, *_ = ChunkedLogProbFunction.apply(
            hidden, weight, bias, targets, temperature, vocab_chunk, softcap, logit_scale, outputs
        )
    return logps, entropy


def _transform_backward(raw: Tensor, grad: Tensor, temperature: float, logit_scale: float, softcap: float | None):
    # Chain rule through `transform_logits`, in place on `grad`: dz/draw = scale / T, times 1 - tanh² with soft-capping
    if softcap is not None:
        grad.mul_(1 - torch.tanh(raw * (logit_scale / softcap)).square())
    factor = logit_scale / temperature
    return grad.mul_(factor) if factor != 1.0 else grad


def _full_chunk(
    student_logits: Tensor,
    teacher_logits: Tensor,
    grad_output: Tensor | None = None,
    *,
    beta: float,
    entry_clip: float | None,
    student_args: tuple,
    teacher_args: tuple,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The math of one token chunk on the whole vocabulary, with its gradient written out.

    Raw `[c, V]` logits in; `(divergence [c], student entropy [c], gradient)` out, the gradient being that of
    `(divergence * grad_output).sum()` with respect to `student_logits` (None without `grad_output`). Each entry's term
    `e_v` depends on the student through `log p_s(v)` only, with `de_v / dlog p_s(v)` equal to `-p_t` (beta 0),
    `p_s (log p_s - log p_t + 1)` (beta 1) and `(1 - beta) p_s (log p_s - log m)` (in between); clipped entries give 0;
    then `dL/dz_j = g_j - p_s(j) sum_v g_v` through the softmax. Written out rather than autograd because autograd
    keeps about ten `[c, V]` intermediates and runs several times slower on CPU.
    """
    s_logps = torch.log_softmax(transform_logits(student_logits, *student_args), dim=-1)
    t_logps = torch.log_softmax(transform_logits(teacher_logits, *teacher_args), dim=-1)
    s_probs = s_logps.exp()
    entropy = -(s_probs * s_logps).sum(-1) if grad_output is None else None  # forward only
    if beta == 0.0:
        t_probs = t_logps.exp()
        terms = (t_logps - s_logps).mul_(t_probs)
        slope = t_probs.neg_() if grad_output is not None else None
    elif beta == 1.0:
        terms = (s_logps - t_logps).mul_(s_probs)
        slope = terms + s_probs if grad_output is not None else None
    else:
        # log m from m itself: the floor keeps log m finite where both probabilities underflow (their terms are 0)
        t_probs = t_logps.exp()
        log_m = (s_probs * (1 - beta)).add_(t_probs, alpha=beta).clamp_(min=torch.finfo(torch.float32).tiny).log_()
        student_part = (s_logps - log_m).mul_(s_probs).mul_(1 - beta)
        terms = log_m.neg_().add_(t_logps).mul_(t_probs).mul_(beta).add_(student_part)  # reuses log_m's memory
        slope = student_part
    if entry_clip is not None and slope is not None:
        slope = slope.masked_fill_(terms > entry_clip, 0.0)
    if entry_clip is not None:
        terms = terms.clamp_(max=entry_clip)
    divergence = terms.sum(-1)
    if grad_output is None:
        return divergence, entropy, None
    grad = slope.sub_(s_probs * slope.sum(-1, keepdim=True)).mul_(grad_output.unsqueeze(-1))
    return divergence, entropy, _transform_backward(student_logits, grad, *student_args)


def _topk_chunk(
    student_logits: Tensor,
    teacher_logits: Tensor,
    grad_output: Tensor | None = None,
    *,
    beta: float,
    entry_clip: float | None,
    student_args: tuple,
    teacher_args: tuple,
    top_k: int,
    top_k_source: str,
    tail: bool,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The math of one token chunk on the top-k support (plus the tail bucket, or renormalised); same contract as
    [`_full_chunk`], with the gradient from autograd (the support is small, the `[c, V]` work is one logsumexp)."""
    want_grad = grad_output is not None
    raw = student_logits.detach().requires_grad_(want_grad)
    with torch.set_grad_enabled(want_grad):
        zs = transform_logits(raw, *student_args)
        zt = transform_logits(teacher_logits, *teacher_args)
        # Top-k of the logits is top-k of the log-probs; the support carries no gradient
        support_ids = (zt if top_k_source == "teacher" else zs).detach().topk(top_k, dim=-1).indices
        s_k = zs.gather(-1, support_ids) - torch.logsumexp(zs, dim=-1, keepdim=True)
        t_k = zt.gather(-1, support_ids) - torch.logsumexp(zt, dim=-1, keepdim=True)
        s_k, t_k = (add_tail_bucket(s_k), add_tail_bucket(t_k)) if tail else (renormalize(s_k), renormalize(t_k))
        divergence = generalized_jsd(s_k, t_k, beta, entry_clip)
        grad = torch.autograd.grad(divergence, raw, grad_outputs=grad_output)[0] if want_grad else None
    entropy = None if want_grad else _entropy(zs)
    return divergence.detach(), entropy, grad


def _entropy(logits: Tensor) -> Tensor:
    logps = torch.log_softmax(logits, dim=-1)
    return -(logps.exp() * logps).sum(-1)


class ChunkedHeadDivergence(torch.autograd.Function):
    """Per-token divergence from two models' hidden states and LM heads, in token chunks, as one autograd function.

    `chunk_math(student_logits, teacher_logits, grad_output=None) -> (divergence, entropy, grad_logits)` is the pure
    per-chunk math on raw `[c, V]` logits ([`_full_chunk`], [`_topk_chunk`]); this class only chunks. Forward keeps no
    logits. Backward recomputes each chunk's logits, asks `chunk_math` for the gradient with respect to them, and
    folds it into one fp32 LM-head gradient buffer (and one for the bias), cast once at the end: the head's gradient
    costs one `[V, H]` fp32 buffer whatever the number of chunks. (Liger-Kernel's chunked losses compute the gradient
    in forward instead; that needs the upstream gradient in advance, i.e. a scalar loss, while this returns per-token
    values that the trainer still clips, masks and normalises.)

    Inputs: `student_hidden [N, H_s]`, `student_weight [V, H_s]`, `student_bias [V] | None`, the teacher's three (no
    gradient), `chunk_math` and `chunk_size` (tokens per chunk, None for one). Returns `(divergence [N], entropy [N])`
    in fp32; the entropy has no gradient.
    """

    @staticmethod
    def forward(ctx, s_hidden, s_weight, s_bias, t_hidden, t_weight, t_bias, chunk_math, chunk_size):
        ctx.set_materialize_grads(False)
        n = s_hidden.shape[0]
        divergence = s_hidden.new_empty((n,), dtype=torch.float32)
        entropy = s_hidden.new_empty((n,), dtype=torch.float32)
        # Once, not per chunk (no-ops in fp32). The teacher's head may be a parameter (the policy's own head), passed
        # undetached so that ZeRO-3 can gather it again in backward
        s_w, t_w = s_weight.float(), t_weight.detach().float()
        t_b = t_bias.detach() if t_bias is not None else None
        for rows in _token_chunks(n, chunk_size):
            s_logits = _project(s_hidden[rows], s_w, s_bias)
            t_logits = _project(t_hidden[rows], t_w, t_b)
            divergence[rows], entropy[rows], _ = chunk_math(s_logits, t_logits)
        ctx.save_for_backward(s_hidden, s_weight, s_bias, t_hidden, t_weight, t_bias)
        ctx.chunk_math, ctx.chunk_size = chunk_math, chunk_size
        ctx.mark_non_differentiable(entropy)
        return divergence, entropy

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_divergence, _):
        s_hidden, s_weight, s_bias, t_hidden, t_weight, t_bias = ctx.saved_tensors
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        if grad_divergence is None:
            return (None,) * 8

        # Under ZeRO-3 the heads were re-partitioned after forward; gather them again for the recomputation
        with _gather_zero3(s_weight, s_bias, t_weight, t_bias):

            def fp32_zeros(t: Tensor) -> Tensor:
                return torch.zeros(t.shape, dtype=torch.float32, device=t.device)

            grad_hidden = fp32_zeros(s_hidden) if need_hidden else None
            grad_weight = fp32_zeros(s_weight) if need_weight else None  # the one buffer all chunks add into
            grad_bias = fp32_zeros(s_bias) if need_bias else None
            s_w, t_w = s_weight.detach().float(), t_weight.detach().float()
            s_b = s_bias.detach() if s_bias is not None else None
            t_b = t_bias.detach() if t_bias is not None else None
            grad_divergence = grad_divergence.float()
            for rows in _token_chunks(s_hidden.shape[0], ctx.chunk_size):
                h = s_hidden[rows].detach().float()
                t_logits = _project(t_hidden[rows], t_w, t_b)
                _, _, grad_logits = ctx.chunk_math(_project(h, s_w, s_b), t_logits, grad_divergence[rows])
                if grad_hidden is not None:
                    grad_hidden[rows] = grad_logits @ s_w
                if grad_weight is not None:
                    grad_weight.addmm_(grad_logits.t(), h)
                if grad_bias is not None:
                    grad_bias += grad_logits.sum(0)
        return (
            grad_hidden.to(s_hidden.dtype) if grad_hidden is not None else None,
            grad_weight.to(s_weight.dtype) if grad_weight is not None else None,
            grad_bias.to(s_bias.dtype) if grad_bias is not None else None,
            *(None,) * 5,
        )


# ---------------------------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------------------------


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
        chunk_size: Tokens per chunk. None: one call to TRL's kernel where that path applies (CUDA, `"full"`, no
            `entry_clip`), otherwise chunks of about `2**27 / V` tokens (a 512 MiB fp32 `[chunk, V]` tile).
        student_logit_scale, teacher_logit_scale: Multipliers applied to the logits first (models with logit scaling).
        student_final_logit_softcapping, teacher_final_logit_softcapping: `c` in `c * tanh(z / c)` (e.g. Gemma), or
            None.
        entry_clip: Per-vocabulary-entry clip tau for `"full"` and `"topk"` (the OPSD clip, tau = 0.05 there): each
            entry's term of the divergence (see [`per_entry_divergence`]: `p_t (log p_t - log p_s)` at beta 0,
            `p_s (log p_s - log p_t)` at beta 1, `beta p_t (log p_t - log m) + (1 - beta) p_s (log p_s - log m)` in
            between) becomes `min(term, tau)` before the sum over the support, so entries above tau give no gradient
            and a token's value can be negative. None (default) clips nothing.

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
        )


def _gather_zero3(*tensors: Tensor | None):
    # TRL's helper, given only ZeRO-3 partitioned parameters (it reads `ds_status`; plain tensors need no gather)
    return maybe_gather_lm_head_ctx(*(t for t in tensors if hasattr(t, "ds_status")))


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
    student_final_logit_softcapping, teacher_final_logit_softcapping, entry_clip,
) -> TokenDivergence:  # fmt: skip
    # Shapes are read here, after the gather: a ZeRO-3 partition has none
    _check_inputs(
        student_hidden, student_weight, teacher_hidden, teacher_weight, beta, support, target_ids, top_k, top_k_source
    )
    student_hidden, student_finite = sanitize_hidden(student_hidden)
    teacher_hidden, teacher_finite = sanitize_hidden(teacher_hidden.detach())
    student_args = (temperature, student_logit_scale, student_final_logit_softcapping)
    teacher_args = (temperature, teacher_logit_scale, teacher_final_logit_softcapping)

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
        teacher_logps, _ = _target_logps(
            teacher_hidden, teacher_weight, teacher_bias, target_ids, *teacher_args, chunk_size
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
                teacher_logps, _ = _target_logps(
                    teacher_hidden, teacher_weight, teacher_bias, target_ids, *teacher_args, chunk_size
                )
        if support == "full" and entry_clip is None and student_hidden.is_cuda:
            # TRL's fused kernel tiles tokens and vocabulary itself and keeps one fp32 LM-head gradient: one call
            divergence, entropy = ChunkedDivergenceFunction.apply(
                student_hidden,
                student_weight,
                student_bias,
                teacher_hidden,
                teacher_weight,
                teacher_bias,
                float(beta),
                temperature,
                student_logit_scale,
                student_final_logit_softcapping,
                teacher_logit_scale,
                teacher_final_logit_softcapping,
            )
        else:
            math_kwargs = {
                "beta": float(beta),
                "entry_clip": entry_clip,
                "student_args": student_args,
                "teacher_args": teacher_args,
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


def moe_load_balancing_fn(model):
    """The architecture's own transformers `load_balancing_loss_func` for an MoE causal LM (Qwen-MoE, Mixtral,
    GPT-OSS, ...), found next to its model class.

    Raises:
        ValueError: when the model has no such function or lacks `num_experts` / `num_experts_per_tok`.
    """
    import sys

    fn = getattr(sys.modules.get(type(model).__module__), "load_balancing_loss_func", None)
    if fn is None or not hasattr(model, "num_experts") or not hasattr(model, "num_experts_per_tok"):
        raise ValueError(
            f"{type(model).__name__} declares output_router_logits but its module has no load_balancing_loss_func "
            "(or the model no num_experts / num_experts_per_tok), so RGSD cannot add the router loss; set "
            "router_aux_loss_coef=0.0 to train without it"
        )
    return fn


def router_load_balancing_loss(model, router_logits: Sequence[Tensor], attention_mask: Tensor) -> Tensor:
    """MoE router load-balancing loss (Switch Transformer, arXiv 2101.03961) over a backbone pass, computed by the
    model's own transformers implementation, as its causal-LM forward would with `output_router_logits=True`."""
    fn = moe_load_balancing_fn(model)
    return fn(tuple(router_logits), model.num_experts, model.num_experts_per_tok, attention_mask)
