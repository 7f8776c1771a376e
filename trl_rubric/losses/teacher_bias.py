"""Teacher-side logit penalties for the divergence: shape what the teacher prefers without touching the student.

The rubric-conditioned teacher of a small model prefers degenerate answers: list items repeated under new numbers,
criterion text copied into the answer. RGSD distils the teacher's distribution, so the student learns them. These
functions find, for every completion position, the tokens that would

- complete an n-gram already present earlier in the completion (`no_repeat_ngram_size`, the rule of transformers'
  `NoRepeatNGramLogitsProcessor`, restricted to the completion), or
- extend a copy of an n-gram that only the teacher was shown (`copy_ngram_size`: n-grams of the teacher prompt that
  are not in the student prompt, i.e. the rubric and the template around it), or
- end a line that holds only list markers, or add a second marker to it (`empty_items`: "2." alone on a line,
  "1. 1. Plan ...": the empty list items a student keeps writing once the n-gram bans are on, which no n-gram ban
  catches because markers are not words),

as sparse `(position, token)` bans, pure functions of token ids. [`bias_columns`] turns the bans into a `[N, K]`
block of extra teacher hidden columns and a `[V, K]` one-hot block of extra LM-head columns (K = distinct banned
tokens): concatenated to the teacher's hidden states and head, they add `-penalty` to exactly the banned
`(position, token)` logits, so every support (`"full"`, `"topk"`, `"sampled_token"`) and TRL's fused CUDA kernel
apply the penalty unchanged, at the cost of K more columns in the teacher's projection.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import Tensor

Ban = tuple[int, int]  # (position in the completion, token id)

# A line of list markers only: bullets ("-", "*", "•", "+") and numbers ("2.", "3)"), any number of them, with spaces.
_MARKERS_ONLY = re.compile(r"\s*(?:(?:[-*•+]|\d{1,3}[.)])\s*)+")
# A token that begins another marker: a number or a bullet, maybe after a space ("*" is left out: bold text).
_MARKER_START = re.compile(r"\s*(?:\d{1,3}|[-•+])")


def _counts(gram: Sequence[int], content_tokens: frozenset[int] | None) -> bool:
    # With `content_tokens` (ids whose text has a letter), an n-gram counts only if at least min(2, n) of its tokens
    # are content: list markers, numbering and line breaks repeat in every sound list and must not be banned
    return content_tokens is None or sum(tok in content_tokens for tok in gram) >= min(2, len(gram))


def _prefix_table(ids: Sequence[int], n: int, limit: int | None = None) -> dict[tuple[int, ...], set[int]]:
    # {(n-1)-token prefix: tokens that followed it} over the n-grams of ids[:limit]
    table: dict[tuple[int, ...], set[int]] = {}
    end = len(ids) if limit is None else limit
    for i in range(end - n + 1):
        table.setdefault(tuple(ids[i : i + n - 1]), set()).add(ids[i + n - 1])
    return table


def repeated_ngram_bans(completion: Sequence[int], n: int, content_tokens: frozenset[int] | None = None) -> list[Ban]:
    """`(t, token)` for every position t and token that would complete an n-gram already in `completion[:t]`.

    The rule of transformers' `NoRepeatNGramLogitsProcessor` at every prefix of the completion (the prompt is not
    searched), computed in one pass: the n-gram ending at `t - 1` joins the table before position t is looked up.
    With `content_tokens`, only n-grams with at least two content tokens count (see [`content_token_ids`]).
    """
    if n < 1:
        raise ValueError(f"no_repeat_ngram_size={n}: expected a positive number of tokens")
    ids = list(completion)
    table: dict[tuple[int, ...], set[int]] = {}
    bans: list[Ban] = []
    for t in range(len(ids)):
        if t >= n:
            table.setdefault(tuple(ids[t - n : t - 1]), set()).add(ids[t - 1])
        if t >= n - 1:
            prefix = tuple(ids[t - n + 1 : t])
            bans.extend((t, tok) for tok in sorted(table.get(prefix, ())) if _counts((*prefix, tok), content_tokens))
    return bans


def teacher_only_ngrams(
    teacher_prompt: Sequence[int], student_prompt: Sequence[int], n: int, content_tokens: frozenset[int] | None = None
):
    """Prefix table of the n-grams of the teacher prompt that are not in the student prompt (the rubric, the
    template): `{(n-1)-token prefix: next tokens}`."""
    if n < 1:
        raise ValueError(f"copy_ngram_size={n}: expected a positive number of tokens")
    student = {tuple(student_prompt[i : i + n]) for i in range(len(student_prompt) - n + 1)}
    teacher = list(teacher_prompt)
    table: dict[tuple[int, ...], set[int]] = {}
    for i in range(len(teacher) - n + 1):
        gram = tuple(teacher[i : i + n])
        if gram not in student and _counts(gram, content_tokens):
            table.setdefault(gram[:-1], set()).add(gram[-1])
    return table


def copy_ngram_bans(completion: Sequence[int], table: dict[tuple[int, ...], set[int]], n: int) -> list[Ban]:
    """`(t, token)` for every position t and token that would make `completion[t-n+1 : t+1]` an n-gram of `table`
    (from [`teacher_only_ngrams`])."""
    ids = list(completion)
    bans: list[Ban] = []
    for t in range(n - 1, len(ids)):
        bans.extend((t, tok) for tok in sorted(table.get(tuple(ids[t - n + 1 : t]), ())))
    return bans


def line_ender_ids(token_texts: Sequence[str]) -> list[int]:
    """Ids of the tokens that end a line without adding a word or a number to it: their text holds a line break, and
    nothing before the first break is a letter or a digit ("\n", ".\n", ":\n\n")."""
    return [i for i, text in enumerate(token_texts) if "\n" in text and not _has_alnum(text.split("\n", 1)[0])]


def _has_alnum(text: str) -> bool:
    return any(c.isalnum() for c in text)


def marker_start_ids(token_texts: Sequence[str]) -> list[int]:
    """Ids of the tokens that would begin another list marker: a number of up to three digits or a bullet ("-", "•",
    "+"), with or without a leading space ("1", " 2", " -")."""
    return [i for i, text in enumerate(token_texts) if _MARKER_START.fullmatch(text)]


def empty_item_bans(
    completion: Sequence[int],
    token_texts: Sequence[str],
    line_enders: Sequence[int],
    marker_starts: Sequence[int] = (),
) -> list[Ban]:
    """`(t, token)` for every position t where the completion's current line, up to t, holds only list markers
    (see `_MARKERS_ONLY`), and every token that would leave an empty list item there:

    - every token of `line_enders` ([`line_ender_ids`]): ending the line ("2." alone on its line);
    - every token of `marker_starts` ([`marker_start_ids`]) when a space separates it from the marker: a second
      marker ("1. 1. Plan ...", "2. - Rest"). "1.5 cups" (no space) is left alone.

    A line starts after the last line break of the text so far; an empty line is not banned from ending (paragraph
    breaks stay free)."""
    bans: list[Ban] = []
    enders = sorted(set(line_enders))
    starts = sorted(set(marker_starts))
    line = ""
    for t, tok in enumerate(completion):
        if _MARKERS_ONLY.fullmatch(line):
            bans.extend((t, e) for e in enders)
            spaced = line[-1:].isspace()
            bans.extend((t, m) for m in starts if spaced or token_texts[m][:1].isspace())
        text = token_texts[tok] if 0 <= tok < len(token_texts) else ""
        line = text.rsplit("\n", 1)[1] if "\n" in text else line + text
    return bans


def row_bans(
    completion: Sequence[int],
    teacher_prompt: Sequence[int] | None = None,
    student_prompt: Sequence[int] | None = None,
    *,
    no_repeat_ngram_size: int | None = None,
    copy_ngram_size: int | None = None,
    content_tokens: frozenset[int] | None = None,
    empty_items: tuple[Sequence[str], Sequence[int], Sequence[int]] | None = None,
) -> list[Ban]:
    """The union of one completion's repeat, copy and empty-item bans, sorted by position then token, without
    duplicates. `empty_items` is `(token_texts, line_enders, marker_starts)` for [`empty_item_bans`]."""
    bans: set[Ban] = set()
    if empty_items is not None:
        bans.update(empty_item_bans(completion, *empty_items))
    if no_repeat_ngram_size:
        bans.update(repeated_ngram_bans(completion, no_repeat_ngram_size, content_tokens))
    if copy_ngram_size:
        if teacher_prompt is None or student_prompt is None:
            raise ValueError("copy bans need the teacher and the student prompt ids")
        table = teacher_only_ngrams(teacher_prompt, student_prompt, copy_ngram_size, content_tokens)
        bans.update(copy_ngram_bans(completion, table, copy_ngram_size))
    return sorted(bans)


def batch_bans(
    completion_ids: Tensor,
    completion_mask: Tensor,
    teacher_prompt_ids: Tensor | None = None,
    teacher_prompt_mask: Tensor | None = None,
    prompt_ids: Tensor | None = None,
    prompt_mask: Tensor | None = None,
    *,
    no_repeat_ngram_size: int | None = None,
    copy_ngram_size: int | None = None,
    content_tokens: frozenset[int] | None = None,
    empty_items: tuple[Sequence[str], Sequence[int], Sequence[int]] | None = None,
) -> list[list[Ban]]:
    """[`row_bans`] of every row of a padded batch (masks pick the real tokens, whichever side is padded)."""

    def real(ids: Tensor | None, mask: Tensor | None, b: int) -> list[int] | None:
        return None if ids is None else ids[b][mask[b].bool()].tolist()

    return [
        row_bans(
            real(completion_ids, completion_mask, b),
            real(teacher_prompt_ids, teacher_prompt_mask, b),
            real(prompt_ids, prompt_mask, b),
            no_repeat_ngram_size=no_repeat_ngram_size,
            copy_ngram_size=copy_ngram_size,
            content_tokens=content_tokens,
            empty_items=empty_items,
        )
        for b in range(completion_ids.size(0))
    ]


def token_texts(tokenizer) -> list[str]:
    """Every token id's decoded text, indexed by id."""
    return [tokenizer.decode([i]) for i in range(len(tokenizer))]


def content_token_ids(tokenizer, texts: Sequence[str] | None = None) -> frozenset[int]:
    """Ids of the tokens whose decoded text contains a letter (words, word pieces), for `content_tokens`."""
    texts = token_texts(tokenizer) if texts is None else texts
    return frozenset(i for i, text in enumerate(texts) if any(c.isalpha() for c in text))


def banned_target_mask(bans: list[list[Ban]], completion_ids: Tensor) -> Tensor:
    """`[B, T]` bool: the sampled token at (b, t) is itself banned there (it completes a repeat or a copy)."""
    out = torch.zeros(completion_ids.shape, dtype=torch.bool, device=completion_ids.device)
    ids = completion_ids.tolist()
    for b, row in enumerate(bans):
        for t, tok in row:
            if ids[b][t] == tok:
                out[b, t] = True
    return out


def bias_columns(
    bans: list[list[Ban]], mask: Tensor, penalty: float, vocab_size: int, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor]:
    """Extra teacher hidden columns `[N, K]` and LM-head columns `[V, K]` adding `-penalty` to the banned logits.

    `mask` is the `[B, T]` selection of the scored tokens (N = `mask.sum()`, row-major, as `hidden[mask]` orders
    them); bans at unselected positions are dropped. K is the number of distinct banned tokens (at least 1, so the
    shapes stay valid with no bans). `penalty` must be finite: the columns are multiplied, and `0 * inf` is NaN.
    """
    if not (penalty > 0 and penalty != float("inf")):
        raise ValueError(f"teacher penalty={penalty!r}: expected a finite positive number")
    flat = torch.full(mask.shape, -1, dtype=torch.long)
    selected = mask.bool().cpu()
    flat[selected] = torch.arange(int(selected.sum()))
    entries = [(int(flat[b, t]), tok) for b, row in enumerate(bans) for t, tok in row if selected[b, t]]
    tokens = sorted({tok for _, tok in entries}) or [0]
    column = {tok: k for k, tok in enumerate(tokens)}
    cols = torch.zeros(int(selected.sum()), len(tokens), dtype=dtype)
    for f, tok in entries:
        cols[f, column[tok]] = -penalty
    table = torch.zeros(vocab_size, len(tokens), dtype=dtype)
    table[torch.tensor(tokens), torch.arange(len(tokens))] = 1.0
    return cols.to(mask.device), table.to(mask.device)


def penalized_teacher(
    teacher_hidden: Tensor, teacher_weight: Tensor, bans: list[list[Ban]], penalty: float
) -> tuple[Tensor, Tensor]:
    """The teacher's `[B, T, H]` hidden states and `[V, H]` LM head with the bans' columns appended (see
    [`bias_columns`]): `[B, T, H + K]` and a detached full `[V, H + K]` head (gathered under ZeRO-3, a full copy of an
    FSDP2 shard), whose logits are the teacher's minus `penalty` at every banned `(row, position, token)`."""
    from .chunked_head import _gather_zero3
    from .head_divergence import full_lm_head

    with torch.no_grad(), _gather_zero3(teacher_weight):
        weight, _ = full_lm_head(teacher_weight, None)
        weight = weight.detach()
        B, T = teacher_hidden.shape[:2]
        cols, table = bias_columns(bans, torch.ones(B, T, dtype=torch.bool), penalty, weight.shape[0])
        hidden = torch.cat([teacher_hidden, cols.view(B, T, -1).to(teacher_hidden)], dim=-1)
        return hidden, torch.cat([weight, table.to(weight)], dim=-1)
