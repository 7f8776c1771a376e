"""Reading an author model's reply into a rubric, leniently in form and strictly in content.

Accepted forms: a JSON array of criteria (`{title, description, weight}`, or any criterion form
[`Rubric.from_any`] reads), bare or inside a fenced ```json block, or a JSON object that holds that array under
`criteria` or `rubric`. Anything else, an empty list, a criterion without text, a non-numeric weight, a rubric with no
positive weight, too few or too many criteria, or a criterion that copies the reference, is a *problem*: the caller
asks again and, after its retry budget, skips the row and reports why. A partial rubric is never returned.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..rubric import Rubric, RubricError

_FENCE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n(.*?)```", re.DOTALL)
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
#: Keys of an object reply that may hold the criteria list.
LIST_KEYS = ("criteria", "rubric")


@dataclass
class ParsedRubric:
    """A reply read as a rubric: `rubric` is set, or `problem` says why it is not usable."""

    rubric: Rubric | None
    problem: str | None


def _json_values(text: str):
    """Every JSON array or object found in `text`: fenced blocks first, then values starting at a `[` or `{`."""
    decoder = json.JSONDecoder()
    for block in _FENCE.findall(text):
        try:
            yield json.loads(block.strip())
        except json.JSONDecodeError:
            pass
    for i, ch in enumerate(text):
        if ch in "[{":
            try:
                value, _ = decoder.raw_decode(text, i)
            except json.JSONDecodeError:
                continue
            yield value


def _criteria_list(value: Any) -> list | None:
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        for key in LIST_KEYS:
            if isinstance(value.get(key), list):
                return value[key]
    return None


def _to_rubric(items: list, ordered: bool) -> Rubric:
    for i, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            raise RubricError(f"criterion {i} is {item!r}; expected an object with title, description and weight")
    # RaR's {title, description, weight} (what our prompts ask for) or any other form Rubric.from_any detects.
    criteria = list(Rubric.from_any(items).criteria)
    if ordered:
        # Process checkpoints: kept in order, named as checkpoints, and tagged with their position.
        criteria = [
            type(c)(
                text=c.text,
                weight=c.weight,
                category="checkpoint",
                title=c.title,
                tags=(*c.tags, f"checkpoint:{i}"),
            )
            for i, c in enumerate(criteria, start=1)
        ]
    return Rubric(tuple(criteria))


def words(text: str) -> list[str]:
    """Lower-cased words, for overlap checks."""
    return _WORD.findall(text.lower())


def longest_shared_run(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest run of consecutive words that `a` and `b` share (dynamic programming, O(len a * len b))."""
    best = 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, start=1):
            if x == y:
                cur[j] = prev[j - 1] + 1
                if cur[j] > best:
                    best = cur[j]
        prev = cur
    return best


def copied_criteria(rubric: Rubric, reference: str | None, max_copy_words: int) -> list[tuple[int, int]]:
    """`(criterion number, shared words)` for each criterion sharing more than `max_copy_words` consecutive words
    with the reference: such a criterion pastes the reference instead of stating a checkable point."""
    if not reference or max_copy_words <= 0:
        return []
    ref = words(reference)
    out = []
    for i, c in enumerate(rubric, start=1):
        run = longest_shared_run(words(c.text), ref)
        if run > max_copy_words:
            out.append((i, run))
    return out


def parse_rubric_reply(
    text: str | None,
    min_criteria: int = 1,
    max_criteria: int = 50,
    reference: str | None = None,
    max_copy_words: int = 12,
    ordered: bool = False,
) -> ParsedRubric:
    """Read an author's reply as a rubric.

    Args:
        text: The reply.
        min_criteria, max_criteria: Bounds on the number of criteria; outside them the reply is a problem.
        reference: The reference answer the author saw, for the copy check (`None`: no check).
        max_copy_words: Most consecutive words a criterion may share with the reference; 0 disables the check.
        ordered: Read the criteria as ordered process checkpoints (category `checkpoint`, tag `checkpoint:<n>`).

    Returns:
        [`ParsedRubric`]: the rubric, or the problem (naming the criterion and value at fault).
    """
    if not text or not text.strip():
        return ParsedRubric(None, "empty reply")
    problem = "no JSON array of criteria (nor an object with 'criteria' or 'rubric') in the reply"
    for value in _json_values(text):
        items = _criteria_list(value)
        if items is None:
            continue
        if not items:
            problem = "the reply's criteria list is empty"
            continue
        try:
            rubric = _to_rubric(items, ordered)
        except RubricError as e:
            problem = f"the reply's criteria are not a valid rubric: {e}"
            continue
        if not min_criteria <= len(rubric) <= max_criteria:
            return ParsedRubric(None, f"{len(rubric)} criteria; expected {min_criteria} to {max_criteria}")
        copies = copied_criteria(rubric, reference, max_copy_words)
        if copies:
            listed = ", ".join(f"criterion {i} ({n} words)" for i, n in copies)
            return ParsedRubric(
                None, f"copies the reference: {listed} share more than {max_copy_words} consecutive words with it"
            )
        return ParsedRubric(rubric, None)
    return ParsedRubric(None, problem)
