"""Token-level unlikelihood on the student's own sampled tokens, `-log(1 - p_student(token))`, and the sampled tokens'
log-probs it is computed from.

"Neural Text Generation with Unlikelihood Training" (Welleck et al., arXiv 1908.04319) lowers the probability of the
tokens of a model's own degenerate continuations (its sequence-level loss, there on repeated n-grams). RGSD uses it on
the spans the degeneration checks flag in a sampled answer (`RGSDConfig.degenerate_rollouts="unlikelihood"`): the
distillation loss only stops pulling inside such an answer; this term pushes the student away from it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .chunked_head import _gather_zero3, _target_logps

#: Floor on `1 - p` (so the term is at most `-log(1e-6)`, about 13.8): a token the student is sure of gets no
#: infinite loss; its gradient is zero until its probability drops below `1 - 1e-6`.
UNLIKELIHOOD_MIN_COMPLEMENT = 1e-6


def unlikelihood_from_logps(logps: Tensor, min_complement: float = UNLIKELIHOOD_MIN_COMPLEMENT) -> Tensor:
    """`-log(1 - exp(logps))`, computed as `-log(-expm1(logps))` (exact near p = 0), with `1 - p` floored at
    `min_complement`."""
    return -torch.log((-torch.expm1(logps)).clamp(min=min_complement))


def sampled_token_logps(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    target_ids: Tensor,
    *,
    temperature: float = 1.0,
    logit_scale: float = 1.0,
    final_logit_softcapping: float | None = None,
    chunk_size: int | None = 128,
) -> Tensor:
    """Log-prob of each sampled token under the student's hidden states and LM head, with gradients.

    The log-prob is taken from the logits the student samples from (scaled, soft-capped, divided by `temperature`,
    as GRPO's log-probs), through TRL's chunked log-prob kernel: no `[N, V]` logits are held, and ZeRO-3 partitioned
    head weights are gathered. Gradients reach `hidden`, `weight` and `bias`. Used by the unlikelihood term below and
    by the negative log-likelihood of teacher-sampled answers (`RGSDConfig.teacher_rollouts`).

    Args:
        hidden: `[N, H]` student hidden states that predict the tokens.
        weight, bias: The student's LM head.
        target_ids: `[N]` sampled tokens.
        chunk_size: Token budget of one logits tile (`None`: one tile of the whole vocabulary).

    Returns:
        `[N]` log-probs.
    """
    if hidden.shape[0] == 0:
        return hidden.sum(-1).float() * 0.0  # `[0]`, attached to the graph
    with _gather_zero3(weight, bias):
        logps, _ = _target_logps(
            hidden, weight, bias, target_ids, temperature, logit_scale, final_logit_softcapping, chunk_size, grad=True
        )
    return logps


def sampled_token_unlikelihood(
    hidden: Tensor, weight: Tensor, bias: Tensor | None, target_ids: Tensor, **logits_kwargs
) -> tuple[Tensor, Tensor]:
    """Unlikelihood of each sampled token and its log-prob, `(unlikelihood [N], log-probs [N] detached)`;
    `logits_kwargs` (temperature, logit scale, soft-capping, chunk size) as [`sampled_token_logps`] takes them."""
    logps = sampled_token_logps(hidden, weight, bias, target_ids, **logits_kwargs)
    return unlikelihood_from_logps(logps), logps.detach()


def token_char_ends(tokenizer, ids: Sequence[int]) -> list[int]:
    """End offset, in `tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)`, of the
    text of each token: the length of the decoded prefix that ends with it (cumulative decoding, so byte-level BPE
    tokens that split a character and special tokens, which decode to nothing, are handled). Kept non-decreasing."""
    prefixes = tokenizer.batch_decode(
        [list(ids[: i + 1]) for i in range(len(ids))], skip_special_tokens=True, clean_up_tokenization_spaces=False
    )
    ends, last = [], 0
    for text in prefixes:
        last = max(last, len(text))
        ends.append(last)
    return ends


def char_spans_to_token_mask(tokenizer, ids: Sequence[int], spans: Sequence[tuple[int, int]]) -> list[bool]:
    """Which tokens of `ids` hold text inside one of `spans` (character ranges `[start, end)` of the decoded text, as
    [`token_char_ends`] decodes it). A token whose text overlaps a span counts; a token with no text never does."""
    ends = token_char_ends(tokenizer, ids)
    starts = [0, *ends[:-1]]
    return [
        any(s < span_end and e > span_start for span_start, span_end in spans)
        for s, e in zip(starts, ends, strict=True)
    ]
