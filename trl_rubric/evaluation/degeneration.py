"""Degeneration flags for one answer: repeated lines, rubric text copied in, talk about the requirements.

Self-distillation from a rubric-conditioned teacher copies what the teacher does with the rubric in view, including
its failures: on SmolLM2-135M the teacher (and then the student) wrote numbered lists whose items repeat under new
numbers, lists of empty items, criterion text pasted into the answer, and lines about "the requirements". A rule judge
rewards some of these; a user would not. These checks are pure string functions, cheap enough for every training
step (about 0.3 ms of CPU per 96-token answer), and the one definition that `trl-rubric eval`, `gap`, the trainers'
logs and the benchmarks share.

- **repeats_line**: the answer is cut into units (lines, inline numbered items such as "1. ... 2. ...", and sentences);
  each unit is compared after stripping list markers ("1.", "2)", "1.1.", "-", "*", "•", "a)"), Markdown emphasis,
  punctuation, case and whitespace. Flagged when two units of at least `min_words` words are equal, when two units of
  at least `near_min_words` words differ by one substituted word ("What to make scrambled eggs." / "What to eat
  scrambled eggs."), or when the answer holds `min_empty_items` or more list markers with nothing after them
  ("1.1. 2.1 3.1"), when a shorter unit occurs three times ("Saturday!" / "1st!" / "1st!" / "1st!"), or when a unit
  loops on a phrase ("of the growth of the growth of the growth", a phrase three
  times in a row, or one word five times), or a word loops on a piece of itself ("FaceFaceFaceFace", "ateateateate":
  a piece of 1 to 8 letters four or more times in a row, 8 letters or more in all; case ignored). One trailing empty
  marker (an answer cut off at the token limit) is not enough.
  Also a **form of empty fields**: `min_empty_fields` (3) or more lines that are only a label of 1 to 4 words and a
  colon ("- Date:", "2. Human factor:") followed by a sibling with nothing in between: the next line at the same or a
  shallower indent with the same kind of list marker (bullet, number, letter, none) that is itself such a label, or
  a list item when the label is one ("- Steps:" / "- Save: $4"). A heading with its list under it is not empty
  ("Ingredients:" / "- 2 eggs"; "1. Yoga stretches:" / "a. Cobra"). And **stacked labels**: the same label (1 to 4
  words and a colon) opening `stacked_labels` (4) or more lines in a row ("Subject: ..." four times). GRPO paid by a
  rule judge on SmolLM2 wrote both (docs/benchmarks.md, "Against GRPO at equal wall-clock"): forms of labels whose
  fields stay empty or hold whatever a rule matches, and emails of stacked "Subject:" lines; on the saved answers of
  every sweep, 1 of 2,914 RGSD students' answers sampled plainly (7 of 2,142 decoded under the guard, all lists of
  labels or label loops) and 1 of 310 base answers are flagged by these two checks alone.
- **copies_rubric**: the longest run of consecutive words that the answer shares with one criterion text (same
  normalisation, every word counted) is at least `copy_min_words` long and covers at least `copy_threshold` of that
  criterion's words. Why a run and not any shared n-gram: criteria name the key terms a good answer uses ("mentions
  aloe vera"), so a few shared words are what meeting the criterion looks like; pasting most of a criterion's own
  sentence is not. A criterion shorter than 5 words (but of 3 or more) counts only when pasted whole ("1. Ends with
  'Happy gardening!'."). Defaults 5 words and 0.7, set on SmolLM2 teacher answers: pasted criteria ("1. Gives an everyday
  example that starts with ...", 7 of 10 words) reach 0.7 or more, while "A doctor should be consulted if the
  symptoms persist or get worse." (7 of the 11 words of "Advises seeing a doctor if the symptoms persist or get
  worse.", 0.64) reads as advice and stays unflagged. A restatement that keeps still more of a criterion's wording in
  order ("see a doctor if the symptoms persist or get worse", 0.82) counts as copying by this rule.
- **meta_talk**: any of [`META_TALK_PATTERNS`] matches (case-insensitive): "criteria", "rubric", "the / every / three
  requirements", "meets the requirements", "Here's your answer:", "your answer should ...", "the answer below ...",
  word-count talk ("in under 60 words"), "The answer is:" lines, an answer describing itself ("This is a
  well-structured answer"; "This is a natural physical response" is not one, nor "This response" after the answer
  spoke of the body's "stress response"), "as requested" and "the requested format" ("the most commonly requested
  sleep needs" is not), "meets / follows all the instructions"
  (the everyday advice "follow the instructions on the label" is not), a quoted word announced as used ("I'll use the word "baking" twice"). "Requirement"
  alone is not enough: SmolLM2's base answers say "a fundamental requirement for any living organism", and an
  everyday answer may say "nutritional requirements".
- **degenerate**: any of the three.

[`degeneration_spans`] gives the same checks as character ranges of the answer (what `degenerate_rollouts=
"unlikelihood"` in RGSD pushes the student away from): a repeated unit after its first occurrence, empty list items with
their markers, the repeated part of a loop, the pasted criterion run, the sentence holding meta-talk. A flag's spans are
non-empty exactly when the flag is set.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from difflib import SequenceMatcher
from typing import Any

from ..judges.base import completion_to_text, strip_thinking
from ..rubric import Rubric

#: Flag names, in the order reports list them; `degenerate` is "any of the others".
DEGENERATION_FLAGS = ("repeats_line", "copies_rubric", "meta_talk", "degenerate")

#: Meta-talk patterns: `(name, regex)`, matched case-insensitively anywhere in the answer. Each is phrasing an answer
#: to the user has no reason to contain but a model that read its rubric does.
META_TALK_PATTERNS: tuple[tuple[str, str], ...] = (
    ("rubric words", r"\b(criteri(on|a)|rubrics?)\b"),
    # "the requirements", "every requirement", "three requirements"; not "a fundamental requirement" or
    # "nutritional requirements", which an everyday answer may say.
    (
        "the requirements",
        r"\b(the|all|every|each|any|these|those|your|specified|listed|given|stated|above|following|"
        r"other|two|three|four|five|six|\d+) requirements?\b",
    ),  # fmt: skip
    # "meets the instructions", "follows all the rules"; not the everyday advice "follow the instructions on the
    # label" or "follow these guidelines" (a bare "follow" needs "all / every / each").
    (
        "meets / follows the instructions",
        r"\b(meets?|meeting|satisf(y|ies|ying)|fulfil+s?) (all |every |each )?"
        r"(of )?(the |your |these |those )?(instructions?|guidelines?|constraints?|rules?)\b"
        r"|\b(follows?|following) (all|every|each) (of )?(the |your |these |those )?"
        r"(instructions?|guidelines?|constraints?|rules?)\b",
    ),  # fmt: skip
    ("here is your answer", r"(^|\n)\W*here('s| is| are) (is )?(your|the|my|an?) (\w+ )?(answers?|responses?)\b"),
    ("the answer is:", r"(^|\n)\W*(so, )?the (answer|response) (to (this|your|the) question )?(is|would be)\s*:"),
    ("your answer should", r"\b(your|the|my|this) (answer|response) (should|must|needs? to|has to|will)\b"),
    # Before "this answer", so that "this response above" is matched whole (a bare "this response" may be
    # skipped as anaphoric).
    ("the answer below", r"\b(the|this) (answer|response) (below|above)\b"),
    # "This answer is correct", "this is a well-structured answer"; not "This is a natural physical response" (a
    # response of the body, which health answers describe), nor "this response" pointing back at a response the
    # answer has already named ("... the body's stress response. This response includes ...": see `_anaphoric`).
    ("this answer", r"\b(this|my) (answer|response)\b|\bthis is an? ([\w-]+,? ){0,4}answer\b"),
    # "formatted as requested", "the requested format"; not "the most commonly requested sleep needs" or "your
    # requested number of guests", where the request is the reader's, not the rubric's.
    (
        "as requested",
        r"\b(as (requested|required|instructed)|(the|your) requested (format|words?|length|style|structure|"
        r"information|details|items?|answer|response))\b",
    ),  # fmt: skip
    ("word count", r"\b(word (limit|count)|(under|fewer than|less than|within|at most) \d+ words)\b"),
    ("do not mention", r"\b(do not|don't|without) mention(ing)?\b"),
    # A criterion's "Uses the word 'amazing'" said back as a plan: "I'll use the word "baking" twice."
    (
        "uses the word",
        r"\b(use|uses|using|include|includes|including|say|says|mention|mentions) the (word|phrase|term)s? [\"'“‘]",
    ),
)

_MARKER = re.compile(
    r"^(?:[-*•·+–—>]|#+|\(?\d{1,3}(?:\.\d{1,3})*[.):]?\)?|\(?[a-zA-Z][.)]|\*\*\d+[.)]\*\*)(?=\s|$)\s*"
)
_INLINE_ITEM = re.compile(r"(?:^|(?<=\s))(?=\d{1,2}[.)]\s)")
_SENTENCE_END = re.compile(r"(?<=[A-Za-z)\]\"'][.!?])\s+(?=[A-Z\"'*(])")
_WORD = re.compile(r"[^\W_]+")


@dataclass(frozen=True)
class Degeneration:
    """The flags of one answer (see the module docstring for the definitions)."""

    repeats_line: bool
    copies_rubric: bool
    meta_talk: bool

    @property
    def degenerate(self) -> bool:
        return self.repeats_line or self.copies_rubric or self.meta_talk

    def to_dict(self) -> dict[str, bool]:
        return {**asdict(self), "degenerate": self.degenerate}


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _strip_markers(text: str) -> tuple[str, int]:
    """The text without its leading list markers, and how many were stripped ("1.1. 2.1 3.1" -> ("", 3))."""
    text = text.strip().replace("**", "").replace("__", "")
    n = 0
    while text:
        m = _MARKER.match(text)
        if not m or not m.group(0):
            break
        text = text[m.end() :]
        n += 1
    return text, n


def _units(answer: str) -> tuple[list[tuple[str, ...]], int]:
    """Normalised word tuples of the answer's lines, inline numbered items and sentences; and the count of empty
    list items (markers with no words after them)."""
    units: list[tuple[str, ...]] = []
    empty = 0
    for line in answer.splitlines():
        for item in _INLINE_ITEM.split(line):
            rest, n_markers = _strip_markers(item)
            if not _words(rest):
                if n_markers and not rest.strip(" .:;,!?"):
                    empty += n_markers
                continue
            for sentence in _SENTENCE_END.split(rest):
                words = tuple(_words(_strip_markers(sentence)[0]))
                if words:
                    units.append(words)
    return units, empty


def stripped_words(line: str) -> tuple[tuple[str, ...], int]:
    """One line compared as the checks compare units: its words (lower case, list markers and emphasis stripped),
    and how many leading list markers it had."""
    rest, n_markers = _strip_markers(line)
    return tuple(_words(rest)), n_markers


def line_units(text: str) -> list[tuple[str, ...]]:
    """Every unit of `text` the repeat check compares: each line whole (markers stripped), and its inline numbered
    items and sentences, as word tuples."""
    units, _ = _units(text)
    lines = [stripped_words(line)[0] for line in text.splitlines()]
    return [*units, *(words for words in lines if words)]


# A word that loops on a piece of itself: 1-8 letters, four or more times in a row ("facefaceface", "ateateateate").
# A lookahead, so that a short loop ("aaaa") does not hide a longer one that starts inside it ("aaaabcabcabcabc").
PIECE_LOOP_MAX_PIECE, PIECE_LOOP_MIN_REPEATS, PIECE_LOOP_MIN_CHARS = 8, 4, 8
_PIECE_LOOP = re.compile(rf"(?=(([^\W\d_]{{1,{PIECE_LOOP_MAX_PIECE}}}?)\2{{{PIECE_LOOP_MIN_REPEATS - 1},}}))")


def _piece_loops(word: str) -> bool:
    """Whether `word` (lower-cased) holds a piece of 1-8 letters repeated four or more times in a row, 8 letters or
    more in all: a model stuck on word pieces writes them with no space between, one 'word' the phrase loop misses."""
    return any(len(m.group(1)) >= PIECE_LOOP_MIN_CHARS for m in _PIECE_LOOP.finditer(word))


def _loops(words: tuple[str, ...], max_period: int = 8) -> bool:
    """Whether a phrase repeats three times in a row ("of the growth of the growth of the growth"), or one word five
    times: a stretch where `words[i] == words[i + p]` holds for at least `max(2 p, 4)` consecutive `i`."""
    for p in range(1, min(max_period, len(words) // 3) + 1):
        run = 0
        for i in range(len(words) - p):
            run = run + 1 if words[i] == words[i + p] else 0
            if run >= max(2 * p, 4):
                return True
    return False


# A line that is only a label: 1-4 words (checked after the match) and a colon, nothing after it.
_LABEL_ONLY = re.compile(r"^([^\W\d_][^:\n]{0,40}?)\s*:\s*$")
# The label that opens a line: up to the first colon, starting with a letter.
_LEADING_LABEL = re.compile(r"^([^\W\d_][^:\n]{0,40}?)\s*:")
_MAX_LABEL_WORDS = 4


@dataclass(frozen=True)
class _FormLine:
    start: int  # character offsets of the line's text (without its line break) in the answer
    end: int
    indent: int
    marker: str  # the kind of its leading list marker: "bullet", "number", "letter", "heading" or "none"
    label_only: bool
    label: tuple[str, ...] | None  # the words of the label that opens it, if any


def _marker_kind(marker: str) -> str:
    marker = marker.strip().strip("*").lstrip("(")
    if not marker:
        return "none"
    if marker[0] == "#":
        return "heading"
    if marker[0].isdigit():
        return "number"
    return "letter" if marker[0].isalpha() else "bullet"


def _form_lines(answer: str) -> list[_FormLine]:
    """The answer's non-blank lines as the form checks see them."""
    out, offset = [], 0
    for raw in answer.splitlines(keepends=True):
        line = raw.splitlines()[0]
        if line.strip():
            text = line.strip().replace("**", "").replace("__", "")
            m = _MARKER.match(text)
            marker = m.group(0) if m else ""
            rest = text[len(marker) :].strip()
            only, lead = _LABEL_ONLY.match(rest), _LEADING_LABEL.match(rest)
            lead_words = tuple(_words(lead.group(1))) if lead else ()
            lead_start = len(line) - len(line.lstrip())
            out.append(
                _FormLine(
                    start=offset + lead_start,
                    end=offset + len(line.rstrip()),
                    indent=lead_start,
                    marker=_marker_kind(marker),
                    label_only=bool(only) and 1 <= len(_words(only.group(1))) <= _MAX_LABEL_WORDS,
                    label=lead_words if 1 <= len(lead_words) <= _MAX_LABEL_WORDS else None,
                )
            )
        offset += len(raw)
    return out


def _empty_fields(lines: list[_FormLine]) -> list[_FormLine]:
    """Label-only lines followed by a sibling (same or shallower indent, same marker kind) that is itself a label, or
    a list item when the label is one: fields left empty (see the module docstring)."""
    return [
        line
        for line, after in zip(lines, lines[1:], strict=False)
        if line.label_only
        and after.indent <= line.indent
        and after.marker == line.marker
        and (after.label_only or line.marker != "none")
    ]


def _stacks(lines: list[_FormLine], stacked_labels: int) -> list[list[_FormLine]]:
    """Runs of `stacked_labels` or more consecutive lines opened by the same label."""
    runs: list[list[_FormLine]] = []
    current: list[_FormLine] = []
    for line in lines:
        if current and line.label is not None and line.label == current[-1].label:
            current.append(line)
        else:
            current = [line] if line.label is not None else []
            runs.append(current)
    return [run for run in runs if len(run) >= stacked_labels]


def _form_spans(answer: str, min_empty_fields: int, stacked_labels: int) -> list[Span]:
    """The empty fields (when there are `min_empty_fields` of them) and every stacked line after a stack's first."""
    lines = _form_lines(answer)
    empty = _empty_fields(lines)
    spans = [(line.start, line.end) for line in empty] if min_empty_fields and len(empty) >= min_empty_fields else []
    if stacked_labels:
        spans += [(line.start, line.end) for run in _stacks(lines, stacked_labels) for line in run[1:]]
    return spans


def repeats_line(
    answer: str,
    min_words: int = 3,
    near_min_words: int = 5,
    min_empty_items: int = 2,
    short_repeats: int = 3,
    min_empty_fields: int = 3,
    stacked_labels: int = 4,
) -> bool:
    """Whether the answer repeats a line, list item or sentence, or lists empty items (see the module docstring).

    Args:
        answer: The answer text.
        min_words: Units shorter than this are ignored for exact repeats (headings such as "Tips:").
        near_min_words: Units at least this long also count as repeats when they differ by one substituted word;
            `0` turns near-repeats off.
        min_empty_items: Empty list items needed to flag (one trailing marker of a truncated answer is not enough).
        short_repeats: A unit shorter than `min_words` counts when it occurs this many times ("1st!" as items 9 to
            12); `0` turns it off.
        min_empty_fields: Empty fields of a form ("- Date:" then "- Time:") needed to flag; `0` turns it off.
        stacked_labels: Lines in a row opened by the same label ("Subject: ...") needed to flag; `0` turns it off.
    """
    units, empty = _units(answer)
    if min_empty_items and empty >= min_empty_items:
        return True
    if (min_empty_fields or stacked_labels) and _form_spans(answer, min_empty_fields, stacked_labels):
        return True
    seen: set[tuple[str, ...]] = set()
    short: dict[tuple[str, ...], int] = {}
    near: dict[tuple[Any, ...], None] = {}
    for words in units:
        if _loops(words) or any(_piece_loops(word) for word in words):
            return True
        if len(words) >= min_words:
            if words in seen:
                return True
            seen.add(words)
        elif short_repeats:
            short[words] = short.get(words, 0) + 1
            if short[words] >= short_repeats:
                return True
        if near_min_words and len(words) >= near_min_words:
            # Two units equal up to one substituted word share one of these masked keys.
            for i in range(len(words)):
                key = (i, words[:i], words[i + 1 :])
                if key in near:
                    return True
                near[key] = None
    return False


def _criterion_texts(rubric: Any) -> list[str]:
    if rubric is None:
        return []
    if isinstance(rubric, str):
        # A rubric stored as JSON text (some datasets keep it so), else one criterion's text.
        try:
            return [c.text for c in Rubric.from_any(rubric) if c.text]
        except (ValueError, TypeError):
            return [rubric]
    if isinstance(rubric, Sequence) and all(isinstance(c, str) for c in rubric):
        return [c for c in rubric if c]
    if isinstance(rubric, Sequence) and all(isinstance(c, Mapping) and isinstance(c.get("text"), str) for c in rubric):
        return [c["text"] for c in rubric if c["text"]]  # the normalised dataset form: skip re-validating it
    return [c.text for c in Rubric.from_any(rubric) if c.text]


#: Criteria shorter than this many words are never checked for copying ("Mentions aloe vera." is 3).
_MIN_CRITERION_WORDS = 3


def copied_rubric_fraction(answer: str, rubric: Any, min_words: int = 5) -> float:
    """The largest share of one criterion's words that the answer repeats as one consecutive run (0 when no run of
    `min_words` words is shared). A criterion shorter than `min_words` (but of 3 words or more, such as "Ends with
    'Happy gardening!'.") counts only when pasted whole. `rubric`: a `Rubric`, a list of criterion dicts or texts, or
    one text."""
    shares = [match.size / n for n, match in _criterion_runs(_words(answer), rubric, min_words)]
    return max(shares, default=0.0)


def _criterion_runs(answer_words: list[str], rubric: Any, min_words: int):
    """`(criterion word count, longest run it shares with the answer)` for each criterion whose run is long enough
    to count (see [`copied_rubric_fraction`]); `match.b` indexes `answer_words`."""
    matcher = SequenceMatcher(None, autojunk=False)
    matcher.set_seq2(answer_words)  # indexed once, matched against every criterion
    for text in _criterion_texts(rubric):
        words = _words(text)
        need = min(min_words, len(words))
        if len(words) < _MIN_CRITERION_WORDS or len(answer_words) < need:
            continue
        matcher.set_seq1(words)
        match = matcher.find_longest_match(0, len(words), 0, len(answer_words))
        if match.size >= need:
            yield len(words), match


def copies_rubric(answer: str, rubric: Any, threshold: float = 0.7, min_words: int = 5) -> bool:
    """Whether the answer pastes most of a criterion's text (see [`copied_rubric_fraction`])."""
    if not 0 < threshold <= 1:
        raise ValueError(f"copy threshold is {threshold}; expected a share in (0, 1]")
    return copied_rubric_fraction(answer, rubric, min_words) >= threshold


def _compiled(patterns: Iterable[tuple[str, str] | str]) -> re.Pattern:
    # One alternation, one scan of the answer.
    return re.compile("|".join(f"(?:{p[1] if isinstance(p, tuple) else p})" for p in patterns), re.IGNORECASE)


_META_DEFAULT = _compiled(META_TALK_PATTERNS)
_THIS_RESPONSE = re.compile(r"this response", re.IGNORECASE)
_RESPON = re.compile(r"\brespon", re.IGNORECASE)


def _anaphoric(answer: str, match: re.Match) -> bool:
    """Whether a match is a bare "this response" that points back at a response the answer already spoke of
    ("... recognize and respond to allergens. This response is called tolerance"): "respond", "response" or
    "responses" earlier in the answer. Such an answer is describing the body, not itself."""
    return (
        _THIS_RESPONSE.fullmatch(match.group(0)) is not None and _RESPON.search(answer, 0, match.start()) is not None
    )


def _meta_matches(answer: str, patterns: Sequence[tuple[str, str] | str] | None) -> Iterator[re.Match]:
    compiled = _META_DEFAULT if patterns is None else _compiled(patterns)
    return (m for m in compiled.finditer(answer) if not _anaphoric(answer, m))


def meta_talk(answer: str, patterns: Sequence[tuple[str, str] | str] | None = None) -> bool:
    """Whether the answer talks about its requirements: any of `patterns` (default [`META_TALK_PATTERNS`]) matches,
    except a bare "this response" that refers back to a response the answer already named (see `_anaphoric`)."""
    return next(_meta_matches(answer, patterns), None) is not None


def degeneration_flags(
    answer: str,
    rubric: Any = None,
    copy_threshold: float = 0.7,
    copy_min_words: int = 5,
    meta_patterns: Sequence[tuple[str, str] | str] | None = None,
) -> Degeneration:
    """The three flags of one answer against its rubric (the criteria it was written for; `None` skips copying).

    Only the answer is checked, as the judges grade it: a `<think>...</think>` block is removed first, so a thinking
    model's reasoning about "the requirements" is not meta-talk.

    Args:
        answer: The completion (text, or TRL's list of assistant messages; never the prompt).
        rubric: A `Rubric`, a list of criterion dicts or texts, or `None`.
        copy_threshold: Share of a criterion's words an answer must repeat in one run to count as copying.
        copy_min_words: Shortest shared run that counts.
        meta_patterns: Meta-talk regular expressions (default [`META_TALK_PATTERNS`]).
    """
    answer = strip_thinking(completion_to_text(answer or ""))
    return Degeneration(
        repeats_line=repeats_line(answer),
        copies_rubric=copies_rubric(answer, rubric, copy_threshold, copy_min_words),
        meta_talk=meta_talk(answer, meta_patterns),
    )


def degeneration_rates(answers: Sequence[Any], rubrics: Sequence[Any] | None = None, **kwargs) -> dict[str, Any]:
    """Shares of `answers` flagged by each check, plus `n` (answers counted); each share is `None` when there are no
    answers. `kwargs` go to [`degeneration_flags`]."""
    if rubrics is not None and len(rubrics) != len(answers):
        raise ValueError(f"degeneration_rates got {len(answers)} answers and {len(rubrics)} rubrics")
    return flag_rates(
        [
            degeneration_flags(a or "", rubrics[i] if rubrics is not None else None, **kwargs)
            for i, a in enumerate(answers)
        ]
    )


def flag_rates(flags: Sequence[Degeneration]) -> dict[str, Any]:
    """[`degeneration_rates`] of answers already checked: the share of `flags` with each flag set, plus `n`."""
    flags = [f.to_dict() for f in flags]
    n = len(flags)
    out: dict[str, Any] = {name: (sum(f[name] for f in flags) / n if n else None) for name in DEGENERATION_FLAGS}
    out["n"] = n
    return out


def log_degeneration(
    metrics: Mapping[str, list[float]],
    prefix: str,
    answers: Sequence[Any],
    rubrics: Sequence[Any] | None,
    reduce: Callable[[list[float]], Sequence[float]] | None = None,
    **kwargs,
) -> list[dict[str, bool]]:
    """Append the step's degeneration rates to a trainer's metric lists as `{prefix}/{flag}` (`rgsd/degenerate`, ...),
    and return this process's flags, one dict per answer (`Degeneration.to_dict`), for a trainer that acts on them.

    Trainers call this once per generation batch on its completions and their rubrics. With several processes, pass
    `reduce`: it gets this process's counts `[n, repeats_line, copies_rubric, meta_talk, degenerate]` and returns
    their sum over processes, so every process logs the rates of the whole batch. `kwargs` go to [`degeneration_flags`].
    """
    flags = [
        degeneration_flags(a, rubrics[i] if rubrics is not None else None, **kwargs).to_dict()
        for i, a in enumerate(answers)
    ]
    counts = [float(len(flags))] + [float(sum(f[name] for f in flags)) for name in DEGENERATION_FLAGS]
    if reduce is not None:
        counts = [float(c) for c in reduce(counts)]
    if counts[0] > 0:
        for name, count in zip(DEGENERATION_FLAGS, counts[1:], strict=True):
            metrics[f"{prefix}/{name}"].append(count / counts[0])
    return flags


# ---------------------------------------------------------------------------------------------------------------------
# Spans: where in the answer each flag comes from, as character ranges `[start, end)` of the answer text. A trainer
# that acts on the tokens of a degenerate answer (`RGSDConfig.degenerate_rollouts="unlikelihood"`) needs these; each
# span function is non-empty exactly when its boolean check flags the answer (tests/test_degeneration.py checks this
# on the labelled corpus).
# ---------------------------------------------------------------------------------------------------------------------

Span = tuple[int, int]


def _merge(spans: Iterable[Span]) -> list[Span]:
    """Sorted, non-empty spans with overlapping or touching ones joined."""
    out: list[list[int]] = []
    for start, end in sorted(s for s in spans if s[1] > s[0]):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(s, e) for s, e in out]


def _unit_spans(answer: str) -> tuple[list[tuple[tuple[str, ...], list[Span]]], list[tuple[Span, int]]]:
    """[`_units`] with positions: each unit's words with the character span of every word, and the span of each
    empty list item with its marker count ("1.1. 2.1 3.1" is one item of 3 markers). Words are found by the same steps as `_units`; their positions
    by aligning them, in order, with the words of the original line."""
    units: list[tuple[tuple[str, ...], list[Span]]] = []
    empty: list[tuple[Span, int]] = []
    offset = 0
    for raw in answer.splitlines(keepends=True):
        line = raw.splitlines()[0]  # without its line break, as `_units` sees it
        found = [(m.group(0).lower(), m.span()) for m in _WORD.finditer(line)]
        cursor = 0
        starts = [m.start() for m in _INLINE_ITEM.finditer(line)] + [len(line)]
        bounds = list(zip([0, *starts[:-1]], starts, strict=True))
        for item_start, item_end in bounds:
            item = line[item_start:item_end]
            if not item:
                continue
            rest, n_markers = _strip_markers(item)
            if not _words(rest):
                if n_markers and not rest.strip(" .:;,!?"):
                    lead = len(item) - len(item.lstrip())
                    empty.append(((offset + item_start + lead, offset + item_start + len(item.rstrip())), n_markers))
                continue
            for sentence in _SENTENCE_END.split(rest):
                words = tuple(_words(_strip_markers(sentence)[0]))
                if not words:
                    continue
                spans: list[Span] = []
                for word in words:
                    while cursor < len(found) and found[cursor][0] != word:
                        cursor += 1
                    if cursor < len(found):
                        start, end = found[cursor][1]
                        cursor += 1
                    else:  # not aligned (a word whose lower case changes length): the item's span stands in
                        start, end = item_start, item_end
                    spans.append((offset + start, offset + end))
                units.append((words, spans))
        offset += len(raw)
    return units, empty


def _loop_spans(words: tuple[str, ...], max_period: int = 8) -> list[tuple[int, int]]:
    """Word ranges `[i, j)` that [`_loops`] finds: the copies of the phrase after its first occurrence."""
    out = []
    for p in range(1, min(max_period, len(words) // 3) + 1):
        run = 0
        for i in range(len(words) - p):
            run = run + 1 if words[i] == words[i + p] else 0
            if run >= max(2 * p, 4):
                # words[i - run + 1 .. i] equal the words p later: the repeat covers [i - run + 1 + p, i + p].
                out.append((i - run + 1 + p, i + p + 1))
    return out


_UNIT_END = frozenset(".!?;:,)*\"'")


def repeated_line_spans(
    answer: str,
    min_words: int = 3,
    near_min_words: int = 5,
    min_empty_items: int = 2,
    short_repeats: int = 3,
    min_empty_fields: int = 3,
    stacked_labels: int = 4,
) -> list[Span]:
    """Character spans of what [`repeats_line`] flags (same arguments): the second and later occurrences of a repeated
    (or near-repeated) unit, every occurrence but the first of a short unit seen `short_repeats` times, the repeated
    part of a looping phrase, every empty list item (markers included) when there are `min_empty_items` of them,
    every empty field of a form when there are `min_empty_fields`, and each stacked line after a stack's first.
    Empty exactly when `repeats_line` is false."""
    units, empty = _unit_spans(answer)
    n_empty = sum(n for _, n in empty)
    spans: list[Span] = [span for span, _ in empty] if min_empty_items and n_empty >= min_empty_items else []
    spans += _form_spans(answer, min_empty_fields, stacked_labels)
    seen: set[tuple[str, ...]] = set()
    short: dict[tuple[str, ...], list[Span]] = {}
    near: dict[tuple[Any, ...], None] = {}
    for words, word_spans in units:
        end = word_spans[-1][1]
        while end < len(answer) and answer[end] in _UNIT_END:  # the unit's closing punctuation repeats with it
            end += 1
        whole = (word_spans[0][0], end)
        for i, j in _loop_spans(words):
            spans.append((word_spans[i][0], word_spans[j - 1][1]))
        spans.extend(span for word, span in zip(words, word_spans, strict=False) if _piece_loops(word))
        repeated = False
        if len(words) >= min_words:
            repeated = words in seen
            seen.add(words)
        elif short_repeats:
            short.setdefault(words, []).append(whole)
        if near_min_words and len(words) >= near_min_words:
            for i in range(len(words)):
                key = (i, words[:i], words[i + 1 :])
                repeated = repeated or key in near
                near[key] = None
        if repeated:
            spans.append(whole)
    for occurrences in short.values():
        if len(occurrences) >= short_repeats:
            spans.extend(occurrences[1:])
    return _merge(spans)


def copied_rubric_spans(answer: str, rubric: Any, threshold: float = 0.7, min_words: int = 5) -> list[Span]:
    """Character spans of the word runs [`copies_rubric`] finds (same arguments): for each criterion whose longest run
    shared with the answer reaches `threshold`, that run in the answer. Empty exactly when `copies_rubric` is false."""
    if not 0 < threshold <= 1:
        raise ValueError(f"copy threshold is {threshold}; expected a share in (0, 1]")
    answer_words = _words(answer)
    positions = [m.span() for m in _WORD.finditer(answer)]
    if len(positions) != len(answer_words):  # a character whose lower case changes the word split
        positions = [(0, len(answer))] * len(answer_words)
    spans = [
        (positions[match.b][0], positions[match.b + match.size - 1][1])
        for n, match in _criterion_runs(answer_words, rubric, min_words)
        if match.size / n >= threshold
    ]
    return _merge(spans)


_SENTENCE_BREAK = re.compile(r"[.!?](?=\s)|\n")


def meta_talk_spans(answer: str, patterns: Sequence[tuple[str, str] | str] | None = None) -> list[Span]:
    """Character spans of the sentences in which a [`meta_talk`] pattern matches (the sentence, not only the match:
    "Your answer should contain a bullet point." is meta-talk as a whole). A sentence ends at `.`, `!` or `?` before
    white space, or at a line break. Empty exactly when `meta_talk` is false."""
    breaks = [m.end() for m in _SENTENCE_BREAK.finditer(answer)]
    spans: list[Span] = []
    for m in _meta_matches(answer, patterns):
        start, end = m.span()
        start += len(m.group(0)) - len(m.group(0).lstrip())  # a pattern anchored on the line break before it
        if end == start:
            end = min(start + 1, len(answer))
        sentence_start = max([b for b in breaks if b <= start] + [0])
        sentence_end = min([b for b in breaks if b >= end] + [len(answer)])
        text = answer[sentence_start:sentence_end]
        lead = len(text) - len(text.lstrip())
        spans.append((sentence_start + lead, sentence_start + len(text.rstrip())))
    return _merge(spans)


def degeneration_spans(
    answer: str,
    rubric: Any = None,
    copy_threshold: float = 0.7,
    copy_min_words: int = 5,
    meta_patterns: Sequence[tuple[str, str] | str] | None = None,
) -> dict[str, list[Span]]:
    """[`degeneration_flags`] as character spans of `answer` (a text): `{flag: [(start, end), ...]}` for each of
    [`DEGENERATION_FLAGS`], `degenerate` being the union. A `<think>...</think>` block is skipped as the flags skip
    it, and the spans still index the full `answer`."""
    start, end = 0, len(answer)
    if "</think>" in answer:
        start = answer.rindex("</think>") + len("</think>")
    elif "<think>" in answer:
        end = answer.index("<think>")
    part = answer[start:end]
    start += len(part) - len(part.lstrip())
    part = part.strip()
    found = {
        "repeats_line": repeated_line_spans(part),
        "copies_rubric": copied_rubric_spans(part, rubric, copy_threshold, copy_min_words),
        "meta_talk": meta_talk_spans(part, meta_patterns),
    }
    out = {name: [(s + start, e + start) for s, e in spans] for name, spans in found.items()}
    out["degenerate"] = _merge(s for spans in out.values() for s in spans)
    return out
