"""The chunked LM-head divergence as one autograd function, and the per-chunk math it runs.

[`ChunkedHeadDivergence`] projects hidden states through both LM heads one token chunk at a time, never holding
`[N, V]` logits, and folds the head's gradient into a single fp32 buffer in backward. The per-chunk math
([`_full_chunk`], [`_topk_chunk`]) works on raw `[c, V]` logits and writes its gradient out.
"""

from __future__ import annotations

import torch
from torch import Tensor
from trl.kernels.chunked_logprob import ChunkedLogProbFunction
from trl.trainer.utils import maybe_gather_lm_head_ctx

from .divergence import add_tail_bucket, generalized_jsd, renormalize, teacher_top_k_logps, transform_logits

# Budget for one `[rows, vocab]` projection tile of `ChunkedLogProbFunction`, in elements per token of `chunk_size`
_LOGPROB_MIN_VOCAB_CHUNK = 256


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


def _teacher_target_logps(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    teacher_args: tuple,
    chunk_size: int | None,
    teacher_top_k: tuple[int, float] | None,
) -> Tensor:
    """The teacher's log-probs of `targets` (no gradient): [`_target_logps`], or with `teacher_top_k = (k, floor)` the
    top-k renormalised ones of [`teacher_top_k_logps`] (a token outside the top k reads `floor`), a chunk at a time."""
    if teacher_top_k is None:
        return _target_logps(hidden, weight, bias, targets, *teacher_args, chunk_size)[0]
    k, floor = teacher_top_k
    out = hidden.new_empty(targets.shape, dtype=torch.float32)
    with torch.no_grad():
        w = weight.detach().float()
        b = bias.detach() if bias is not None else None
        for rows in _token_chunks(hidden.shape[0], chunk_size):
            z = transform_logits(_project(hidden[rows].detach(), w, b), *teacher_args)
            logps, _ = teacher_top_k_logps(z, k, floor)
            out[rows] = logps.gather(-1, targets[rows, None])[:, 0]
    return out


def _teacher_logps(teacher_logits: Tensor, teacher_args: tuple, teacher_top_k: tuple[int, float] | None):
    """`(log-probs, probs or None)` of the teacher on a chunk: the softmax, or the top-k renormalised distribution."""
    z = transform_logits(teacher_logits, *teacher_args)
    if teacher_top_k is None:
        return torch.log_softmax(z, dim=-1), None
    return teacher_top_k_logps(z, *teacher_top_k)


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
    teacher_top_k: tuple[int, float] | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The math of one token chunk on the whole vocabulary, with its gradient written out.

    Raw `[c, V]` logits in; `(divergence [c], student entropy [c], gradient)` out, the gradient being that of
    `(divergence * grad_output).sum()` with respect to `student_logits` (None without `grad_output`). Each entry's term
    `e_v` depends on the student through `log p_s(v)` only, with `de_v / dlog p_s(v)` equal to `-p_t` (beta 0),
    `p_s (log p_s - log p_t + 1)` (beta 1) and `(1 - beta) p_s (log p_s - log m)` (in between); clipped entries give 0;
    then `dL/dz_j = g_j - p_s(j) sum_v g_v` through the softmax. Written out rather than autograd because autograd
    keeps about ten `[c, V]` intermediates and runs several times slower on CPU.

    `teacher_top_k = (k, floor)` replaces the teacher by its top-k renormalised distribution ([`teacher_top_k_logps`]):
    entries outside carry probability 0 (their forward-KL and teacher JSD terms are 0) and log-probability `floor`
    (read by the reverse KL only).
    """
    s_logps = torch.log_softmax(transform_logits(student_logits, *student_args), dim=-1)
    t_logps, t_probs = _teacher_logps(teacher_logits, teacher_args, teacher_top_k)
    s_probs = s_logps.exp()
    entropy = -(s_probs * s_logps).sum(-1) if grad_output is None else None  # forward only
    if beta == 0.0:
        t_probs = t_logps.exp() if t_probs is None else t_probs
        terms = (t_logps - s_logps).mul_(t_probs)
        slope = t_probs.neg_() if grad_output is not None else None
    elif beta == 1.0:
        terms = (s_logps - t_logps).mul_(s_probs)
        slope = terms + s_probs if grad_output is not None else None
    else:
        # log m from m itself: the floor keeps log m finite where both probabilities underflow (their terms are 0)
        t_probs = t_logps.exp() if t_probs is None else t_probs
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
    teacher_top_k: tuple[int, float] | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The math of one token chunk on the top-k support (plus the tail bucket, or renormalised); same contract as
    [`_full_chunk`], with the gradient from autograd (the support is small, the `[c, V]` work is one logsumexp).
    With `teacher_top_k = (k, floor)` the teacher's log-probs on the support are those of its top-k renormalised
    distribution, `floor` on entries outside its top k."""
    want_grad = grad_output is not None
    raw = student_logits.detach().requires_grad_(want_grad)
    with torch.set_grad_enabled(want_grad):
        zs = transform_logits(raw, *student_args)
        zt = transform_logits(teacher_logits, *teacher_args)
        # Top-k of the logits is top-k of the log-probs; the support carries no gradient
        support_ids = (zt if top_k_source == "teacher" else zs).detach().topk(top_k, dim=-1).indices
        s_k = zs.gather(-1, support_ids) - torch.logsumexp(zs, dim=-1, keepdim=True)
        if teacher_top_k is None:
            t_k = zt.gather(-1, support_ids) - torch.logsumexp(zt, dim=-1, keepdim=True)
        else:
            t_k = teacher_top_k_logps(zt.detach(), *teacher_top_k)[0].gather(-1, support_ids)
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


def _gather_zero3(*tensors: Tensor | None):
    # TRL's helper, given only ZeRO-3 partitioned parameters (it reads `ds_status`; plain tensors need no gather)
    return maybe_gather_lm_head_ctx(*(t for t in tensors if hasattr(t, "ds_status")))
