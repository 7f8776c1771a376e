"""A decoding-time guard against list loops: [`DegenerationGuard`], a transformers `LogitsProcessor`.

A small model trained to write the numbered lists its rubric pays for loops inside them: items repeated under new
numbers, "1. 1. Plan ...", lines of bare markers (`docs/benchmarks.md`: on SmolLM2-135M every student that learned
lists repeated a line in 16-46% of them, whatever the training signal). The guard forbids, at each decoding step,
the next tokens that would

- complete an n-gram of the answer already written earlier in the answer, counting only n-grams with at least two
  tokens that hold a letter (numbering, punctuation and line breaks repeat in every sound list) and never searching
  the prompt, so the answer can quote the question; this is transformers' `no_repeat_ngram_size` restricted to the
  answer's words;
- end a line that holds only list markers, or add a second marker after a spaced one ("2." alone on its line,
  "1. 1. Plan");
- end a line (or the answer) that repeats an earlier line, list item or sentence, or that holds list markers and no
  word ("1. Never." / "2. Never.", "3. (IV)"), compared the way the degeneration checks compare them
  (`trl_rubric.evaluation.degeneration`: markers, emphasis, punctuation and case stripped), so short items the
  n-gram bans cannot reach are covered;
- make the word being written loop on a piece of itself ("FaceFaceFaceFace", "ateateateate": a piece of 1-8 letters
  four or more times in a row, 8 letters or more, case ignored), the check `degeneration.repeats_line` applies to
  words. A policy collapsed by a reward writes these with no space between; a loop whose pieces split into tokens
  differently each time ("Face", "face", "F" + "ace") repeats no token n-gram, and it is one line, so neither the
  n-gram nor the line bans reach it. Letters split over byte tokens (rare characters) are not seen.

The n-gram bans treat tokens that differ only in case or surrounding spaces (" Oh" / "oh" / " OH") as one token.

The bans are the ones RGSD's teacher-side penalties use (`trl_rubric.losses.teacher_bias`), applied here to the
model's own sampling. It is first an inference setting: apply it to every model being compared (base and trained),
as `trl-rubric eval --degeneration_guard 3` does. RGSD can also sample its training rollouts through it
(`RGSDConfig.rollout_degeneration_guard`, `trainers/rollout_guard.py`). Cost: O(answer length) Python per row and step, and
one decode of the vocabulary when built.
"""

from __future__ import annotations

import bisect
from typing import Any

from transformers import LogitsProcessor

from ..losses import teacher_bias
from .degeneration import (
    PIECE_LOOP_MAX_PIECE,
    PIECE_LOOP_MIN_CHARS,
    PIECE_LOOP_MIN_REPEATS,
    line_units,
    stripped_words,
)
from .errors import EvaluationError


def _tables(tokenizer) -> tuple[list[str], frozenset[int], list[int], list[int]]:
    """`(token texts, content ids, line enders, marker starts)` of a tokenizer."""
    texts = teacher_bias.token_texts(tokenizer)
    content = teacher_bias.content_token_ids(tokenizer, texts)
    return texts, content, teacher_bias.line_ender_ids(texts), teacher_bias.marker_start_ids(texts)


def next_token_bans(
    completion: list[int],
    no_repeat_ngram_size: int,
    content_tokens: frozenset[int] | None,
    empty_items: tuple[list[str], list[int], list[int]] | None,
) -> list[int]:
    """The token ids banned as the next token of `completion` (the answer so far, without its prompt)."""
    t = len(completion)
    # A placeholder token at position t: the ban functions report position t's bans from completion[:t] only.
    bans = teacher_bias.row_bans(
        [*completion, -1], no_repeat_ngram_size=no_repeat_ngram_size or None, content_tokens=content_tokens,
        empty_items=empty_items,
    )  # fmt: skip
    return [tok for pos, tok in bans if pos == t]


def line_end_banned(text: str) -> bool:
    """Whether the answer so far (`text`) must not end its current line here: that line, compared as the
    degeneration checks compare units (list markers, emphasis, punctuation and case stripped), repeats an earlier
    line, inline item or sentence of the answer, or holds list markers and no word."""
    earlier, _, line = text.rpartition("\n")
    words, markers = stripped_words(line)
    if not words:
        return markers > 0
    return words in set(line_units(earlier))


def letter_tail(text: str) -> str:
    """The letters at the end of `text` (lower case): the word being written, up to its last non-letter."""
    i = len(text)
    while i and text[i - 1].isalpha():
        i -= 1
    return text[i:].lower()


def piece_loop_continuations(word: str) -> set[str]:
    """The shortest strings that, written right after `word` (lower-case letters), make it loop on a piece of itself
    as `degeneration.repeats_line` counts a loop: for each piece length L (1-8), the word's last L letters continued
    periodically until a run of period L holds `max(4, ceil(8 / L))` whole pieces. Empty when `word` is empty; a
    word that already loops gets no continuation for that length (the check flags it whatever comes next)."""
    out: set[str] = set()
    n = len(word)
    for size in range(1, min(PIECE_LOOP_MAX_PIECE, n) + 1):
        run = size  # the longest suffix of `word` with period `size`
        while run < n and word[n - run - 1] == word[n - run - 1 + size]:
            run += 1
        need = size * max(PIECE_LOOP_MIN_REPEATS, -(-PIECE_LOOP_MIN_CHARS // size))
        if run < need:
            out.add("".join(word[n - size + j % size] for j in range(need - run)))
    return out


class _PrefixIndex:
    """Token ids by lower-cased text, for "every token whose text starts with s" by binary search."""

    def __init__(self, texts: list[str]):
        pairs = sorted((text.lower(), i) for i, text in enumerate(texts) if text[:1].isalpha())
        self.keys = [key for key, _ in pairs]
        self.ids = [i for _, i in pairs]

    def starting_with(self, prefix: str) -> list[int]:
        lo = bisect.bisect_left(self.keys, prefix)
        hi = lo
        while hi < len(self.keys) and self.keys[hi].startswith(prefix):
            hi += 1
        return self.ids[lo:hi]


def _case_classes(texts: list[str]) -> list[int]:
    """Each token's class id: the smallest id with the same text once case and surrounding spaces are dropped
    (tokens that are all spaces keep their own id)."""
    first: dict[str, int] = {}
    classes = []
    for i, text in enumerate(texts):
        key = text.strip().lower()
        classes.append(first.setdefault(key, i) if key else i)
    return classes


class DegenerationGuard(LogitsProcessor):
    """A `LogitsProcessor` that forbids repeated n-grams of the answer, empty or doubled list markers, and line ends
    that would repeat an earlier line (see the module docstring).

    Args:
        tokenizer: The model's tokenizer (token texts decide what a marker, a line end and a word are).
        no_repeat_ngram_size: Forbid completing an n-gram of this many tokens already in the answer (counted only
            with at least two word tokens); `0` turns this part off.
        ban_empty_items: Forbid ending a line of bare list markers.
        ban_doubled_markers: Forbid a second marker after a spaced one ("1. 1.").
        ban_repeated_lines: Forbid ending a line, or the answer, where the line repeats an earlier line, item or
            sentence, or holds markers and no word ([`line_end_banned`]).
        ignore_case: Compare n-grams on tokens with case and surrounding spaces dropped.
        ban_piece_loops: Forbid tokens that continue the word being written (no space before them) so that it loops
            on a piece of itself ([`piece_loop_continuations`]).
        eos_token_ids: The ids that end the answer, banned with the line ends under `ban_repeated_lines` (default:
            the tokenizer's `eos_token_id`).

    The answer starts where the first call's sequences end (the prompt, left-padded, as `model.generate` passes it).
    Pass it as `model.generate(..., logits_processor=LogitsProcessorList([guard]))`, and call [`reset`] before the
    next `generate` call (building the guard decodes the vocabulary once; a reset costs nothing).
    """

    def __init__(
        self,
        tokenizer,
        no_repeat_ngram_size: int = 3,
        ban_empty_items: bool = True,
        ban_doubled_markers: bool = True,
        ban_repeated_lines: bool = True,
        ignore_case: bool = True,
        ban_piece_loops: bool = True,
        eos_token_ids: list[int] | None = None,
    ):
        if no_repeat_ngram_size < 0:
            raise EvaluationError(f"no_repeat_ngram_size is {no_repeat_ngram_size}; expected 0 (off) or more")
        if not (
            no_repeat_ngram_size or ban_empty_items or ban_doubled_markers or ban_repeated_lines or ban_piece_loops
        ):
            raise EvaluationError("DegenerationGuard with every ban off does nothing; turn one on")
        texts, content, enders, starts = _tables(tokenizer)
        self.no_repeat_ngram_size = no_repeat_ngram_size
        self.ban_repeated_lines = ban_repeated_lines
        self.ignore_case = ignore_case
        self.texts = texts
        self.piece_index = _PrefixIndex(texts) if ban_piece_loops else None
        if eos_token_ids is None:
            eos = getattr(tokenizer, "eos_token_id", None)
            eos_token_ids = [] if eos is None else [eos]
        self.line_enders = sorted({*teacher_bias.line_ender_ids(texts), *eos_token_ids})
        self.classes = _case_classes(texts) if ignore_case else None
        self.members: dict[int, list[int]] = {}
        if self.classes is not None:
            for i, c in enumerate(self.classes):
                self.members.setdefault(c, []).append(i)
        # A class's representative has the same letters as its members, so `content` holds for classes too.
        self.content_tokens = content
        self.empty_items = (
            (texts, enders if ban_empty_items else [], starts if ban_doubled_markers else [])
            if ban_empty_items or ban_doubled_markers
            else None
        )
        self._start: int | None = None
        self.eos_token_ids = frozenset(eos_token_ids)
        #: Probability the bans took away, summed over every row and step so far: in expectation, how many banned
        #: tokens the model would have sampled without the guard (its own probabilities: transformers applies
        #: custom processors before temperature, top-k and top-p).
        self.mass_removed = 0.0

    def settings(self) -> dict[str, Any]:
        """The guard's options, as recorded in `results.json`."""
        return {
            "no_repeat_ngram_size": self.no_repeat_ngram_size,
            "ban_empty_items": bool(self.empty_items and self.empty_items[1]),
            "ban_doubled_markers": bool(self.empty_items and self.empty_items[2]),
            "ban_repeated_lines": self.ban_repeated_lines,
            "ignore_case": self.ignore_case,
            "ban_piece_loops": self.piece_index is not None,
        }

    def bans(self, completion: list[int]) -> set[int]:
        """The token ids banned as the next token of `completion` (the answer so far, without its prompt)."""
        if self.classes is None:
            banned = set(next_token_bans(completion, self.no_repeat_ngram_size, self.content_tokens, self.empty_items))
        else:
            banned = set(next_token_bans(completion, 0, None, self.empty_items)) if self.empty_items else set()
            if self.no_repeat_ngram_size:
                # Ids past the tokenizer's vocabulary (a model head padded wider) are their own class.
                classes = [self.classes[tok] if tok < len(self.classes) else tok for tok in completion]
                for c in next_token_bans(classes, self.no_repeat_ngram_size, self.content_tokens, None):
                    banned.update(self.members.get(c, (c,)))
        if self.ban_repeated_lines or self.piece_index is not None:
            text = "".join(self.texts[tok] for tok in completion if tok < len(self.texts))
            if self.ban_repeated_lines and line_end_banned(text):
                banned.update(self.line_enders)
            if self.piece_index is not None:
                for tail in piece_loop_continuations(letter_tail(text)):
                    banned.update(self.piece_index.starting_with(tail))
        return banned

    def reset(self) -> None:
        """Forget where the answer starts: the next call begins a new generation."""
        self._start = None

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if self._start is None:
            self._start = input_ids.shape[1]
        for row in range(input_ids.shape[0]):
            completion = input_ids[row, self._start :].tolist()
            if self.eos_token_ids.intersection(completion):
                continue  # a finished row: generate pads it from here on
            banned = [tok for tok in self.bans(completion) if tok < scores.shape[1]]
            if banned:
                self.mass_removed += float(scores[row].float().softmax(-1)[banned].sum())
                scores[row, banned] = float("-inf")
        return scores
