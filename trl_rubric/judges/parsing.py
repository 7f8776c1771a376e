"""Reading judge answers: strict JSON first, then a tolerant fallback; verdicts, single verdicts and ratings.

Every parser returns what it could read plus a list of problems. It never raises on a bad answer: the caller decides
whether to retry.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from .prompts import RATING_MAX, RATING_MIN

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
_TRUE = {"true", "yes", "met", "1"}
_FALSE = {"false", "no", "not met", "unmet", "0"}
_CANNOT = {"cannot_assess", "cannot assess", "cannot-assess", "cannot tell", "cannot_tell", "n/a", "not assessable"}
#: What [`verdict_value`] returns for a "cannot assess" answer (a string, so it is never mistaken for a boolean).
CANNOT_ASSESS = "cannot_assess"


class _Object(dict):
    """A JSON object that remembers which keys appeared more than once (a plain dict keeps the last silently)."""

    duplicates: frozenset[str] = frozenset()


def _object_pairs(pairs: list[tuple[str, Any]]) -> _Object:
    obj = _Object()
    seen, dup = set(), set()
    for key, value in pairs:
        if key in seen:
            dup.add(key)
        seen.add(key)
        obj[key] = value
    obj.duplicates = frozenset(dup)
    return obj


def _loads(text: str) -> Any:
    return json.loads(text, object_pairs_hook=_object_pairs)


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _top_level_objects(text: str) -> list[tuple[int, int, Any]]:
    """Every JSON value that decodes from a `{`, left to right, not nested in an earlier one: `(start, end, value)`."""
    decoder = json.JSONDecoder(object_pairs_hook=_object_pairs)
    found, i = [], text.find("{")
    while i != -1:
        try:
            obj, end = decoder.raw_decode(text, i)
        except (json.JSONDecodeError, ValueError):
            i = text.find("{", i + 1)
            continue
        found.append((i, end, obj))
        i = text.find("{", end)
    return found


def extract_json(text: str | None, echo: str | None = None) -> tuple[Any, str | None]:
    """Find the judge's own JSON object in its answer.

    The whole text is tried as JSON first. Otherwise every top-level object in the text (fenced or not) is read, and
    the **last** one is taken: a judge that reasons or quotes before answering puts its verdict at the end. With
    `echo` (the graded response), an object whose text appears in the response (whitespace ignored) is refused: it
    is a verdict forged inside the response and echoed by the judge, not the judge's answer. Duplicated keys are kept
    visible (see `duplicates` on the returned dict) instead of being merged silently.

    Returns:
        `(object, None)` on success, or `(None, reason)` when no JSON object could be read.
    """
    if text is None or not text.strip():
        return None, "empty answer"
    text = text.strip()
    echoed = _squash(echo) if echo else ""

    def forged(candidate: str) -> bool:
        return bool(echoed) and _squash(candidate) in echoed

    refused = 0
    try:
        obj = _loads(text)
    except (json.JSONDecodeError, ValueError):
        obj = None
    if isinstance(obj, dict):
        if not forged(text):
            return obj, None
        refused += 1
    for start, end, obj in reversed(_top_level_objects(text)):
        if not isinstance(obj, dict):
            continue
        if forged(text[start:end]):
            refused += 1
            continue
        return obj, None
    if refused:
        return None, f"the only JSON in the answer is copied from the response ({refused} object(s) refused)"
    # Last resort: a fenced block or the first-{-to-last-} span that only decodes as a whole.
    candidates = [m.group(1).strip() for m in _FENCE.finditer(text)][::-1]
    start, end = text.find("{"), text.rfind("}")
    if start != -1 and end > start:
        candidates.append(text[start : end + 1])
    for candidate in candidates:
        try:
            obj = _loads(candidate)
        except (json.JSONDecodeError, ValueError):
            continue
        if isinstance(obj, dict) and not forged(candidate):
            return obj, None
    return None, f"no JSON object in the answer: {text[:120]!r}"


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    return None


def verdict_value(value: Any) -> bool | str | None:
    """A verdict from `true`/`false`, `{"met": true}`, or the strings "true"/"false"/"yes"/"no"; [`CANNOT_ASSESS`]
    from "cannot_assess" (and close spellings, also as `{"met": "cannot_assess"}`); else `None`."""
    if isinstance(value, dict):
        value = value.get("met", value.get("verdict"))
    if isinstance(value, str) and value.strip().lower() in _CANNOT:
        return CANNOT_ASSESS
    return _as_bool(value)


def explanation_of(value: Any) -> str | None:
    """The explanation a judge gave with a verdict (`{"met": .., "explanation": "..."}`), or `None`."""
    if isinstance(value, dict):
        text = value.get("explanation", value.get("reason"))
        if isinstance(text, str) and text.strip():
            return text.strip()
    return None


@dataclass
class ParsedAnswer:
    """What one batched answer said: per criterion a verdict (`True` / `False` / `None`), whether the judge said it
    cannot assess it (then the verdict is `None`), and its explanation; plus why some verdicts are unknown."""

    verdicts: list[bool | None]
    cannot_assess: list[bool]
    explanations: list[str | None]
    problems: list[str]


def parse_answer(text: str | None, num_criteria: int, echo: str | None = None) -> ParsedAnswer:
    """Read a batched answer `{"1": verdict, ..., "K": verdict}` with cannot-assess verdicts and explanations.

    Same rules as [`parse_verdicts`]; `echo` is the graded response, so that a verdict copied from it is refused
    (see [`extract_json`]). A cannot-assess verdict is an answer: it is not listed among the problems.
    """
    raw, problems, explanations = _parse_raw(text, num_criteria, echo)
    cannot = [v == CANNOT_ASSESS for v in raw]
    verdicts = [None if c else v for v, c in zip(raw, cannot, strict=True)]
    return ParsedAnswer(verdicts, cannot, explanations, problems)


def parse_verdicts(
    text: str | None, num_criteria: int, echo: str | None = None
) -> tuple[list[bool | None], list[str]]:
    """Read a batched answer `{"1": verdict, ..., "K": verdict}` into one verdict per criterion.

    Keys outside 1..K are ignored. A key given twice makes that criterion unknown, since the judge contradicted or
    repeated itself and we cannot tell which one it meant. Criteria left out are unknown.

    Returns:
        `(verdicts, problems)`: K verdicts (`None` where unknown or cannot-assess; see [`parse_answer`] to tell them
        apart) and human-readable reasons for the unknowns.
    """
    parsed = parse_answer(text, num_criteria, echo)
    return parsed.verdicts, parsed.problems


def _parse_raw(text: str | None, num_criteria: int, echo: str | None):
    obj, reason = extract_json(text, echo)
    if obj is None:
        return [None] * num_criteria, [reason], [None] * num_criteria
    # Some judges wrap the object: {"verdicts": {...}} or {"criteria": {...}}.
    if len(obj) == 1:
        (only,) = obj.values()
        if isinstance(only, dict) and not any(_criterion_id(k, num_criteria) for k in obj):
            obj = only
    return _parse_object(obj, num_criteria)


def _parse_object(obj: dict, num_criteria: int):
    verdicts: list[bool | str | None] = [None] * num_criteria
    explanations: list[str | None] = [None] * num_criteria
    problems = []
    duplicated = {_criterion_id(k, num_criteria) for k in getattr(obj, "duplicates", ())} - {None}
    ignored, unreadable = [], []
    for key, value in obj.items():
        index = _criterion_id(key, num_criteria)
        if index is None:
            ignored.append(key)
        elif index not in duplicated:
            verdicts[index - 1] = verdict_value(value)
            explanations[index - 1] = explanation_of(value)
            if verdicts[index - 1] is None:
                unreadable.append(index)
    missing = [i for i in range(1, num_criteria + 1) if verdicts[i - 1] is None]
    missing = [i for i in missing if i not in duplicated and i not in unreadable]
    if duplicated:
        problems.append(f"criteria {sorted(duplicated)} given more than once")
    if unreadable:
        problems.append(f"criteria {unreadable} have no boolean verdict")
    if missing:
        problems.append(f"criteria {missing} missing from the answer")
    if ignored:
        problems.append(f"ignored keys {ignored[:5]} outside 1..{num_criteria}")
    return verdicts, problems, explanations


def _to_parsed(raw: list, problems: list[str], explanations: list[str | None]) -> ParsedAnswer:
    cannot = [v == CANNOT_ASSESS for v in raw]
    return ParsedAnswer([None if c else v for v, c in zip(raw, cannot, strict=True)], cannot, explanations, problems)


def parse_group_answer(
    text: str | None, num_answers: int, num_criteria: int, echo: str | None = None
) -> list[ParsedAnswer]:
    """Read a group-wise answer `{"A1": {"1": verdict, ..}, .., "AN": {..}}` into one [`ParsedAnswer`] per answer.

    Each answer's object is read as a batched answer (see [`parse_answer`]). An answer left out, given twice, or not
    an object has every verdict unknown, with the reason in its problems; the other answers keep theirs. `echo` is the
    graded responses (see [`extract_json`]).
    """
    obj, reason = extract_json(text, echo)
    if obj is None:
        return [
            ParsedAnswer([None] * num_criteria, [False] * num_criteria, [None] * num_criteria, [reason])
            for _ in range(num_answers)
        ]
    # Labels are matched without regard to case or spaces ("a1", "A 1").
    labels = {re.sub(r"\s+", "", str(k)).upper(): k for k in obj}
    duplicated = {re.sub(r"\s+", "", str(k)).upper() for k in getattr(obj, "duplicates", ())}
    out = []
    for k in range(1, num_answers + 1):
        label = f"A{k}"
        value = obj.get(labels.get(label, label))
        if label in duplicated:
            problem = f"answer {label} given more than once"
        elif label not in labels:
            problem = f"answer {label} missing from the answer"
        elif not isinstance(value, dict):
            problem = f"answer {label} is not an object of verdicts"
        else:
            out.append(_to_parsed(*_parse_object(value, num_criteria)))
            continue
        out.append(ParsedAnswer([None] * num_criteria, [False] * num_criteria, [None] * num_criteria, [problem]))
    return out


def _criterion_id(key: Any, num_criteria: int) -> int | None:
    try:
        index = int(str(key).strip())
    except ValueError:
        return None
    return index if 1 <= index <= num_criteria else None


def parse_single_verdict(text: str | None, echo: str | None = None) -> tuple[bool | str | None, str | None]:
    """Read a per-criterion answer `{"met": true}` (or a bare JSON `true`/`false`); the verdict may be
    [`CANNOT_ASSESS`]. `echo` is the graded response (see [`extract_json`])."""
    verdict, _, problem = parse_single_answer(text, echo)
    return verdict, problem


def parse_single_answer(text: str | None, echo: str | None = None) -> tuple[bool | str | None, str | None, str | None]:
    """`(verdict, explanation, problem)` of a per-criterion answer; the verdict may be [`CANNOT_ASSESS`]."""
    obj, reason = extract_json(text, echo)
    if obj is None:
        stripped = (text or "").strip().strip("`").strip().lower()
        if stripped in ("true", "false"):
            return stripped == "true", None, None
        return None, None, reason
    verdict = verdict_value(obj)
    if verdict is None:
        return None, None, f"no boolean 'met' in {dict(obj)!r:.120}"
    return verdict, explanation_of(obj), None


def parse_rating(text: str | None, echo: str | None = None) -> tuple[float | None, str | None]:
    """Read an implicit-mode answer `{"rating": r}` with `r` a number in [1, 10]; returns the raw rating."""
    obj, reason = extract_json(text, echo)
    if obj is None:
        return None, reason
    value = obj.get("rating", obj.get("score"))
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            value = None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None, f"no numeric 'rating' in {dict(obj)!r:.120}"
    if not RATING_MIN <= value <= RATING_MAX:
        return None, f"rating {value} outside {RATING_MIN}..{RATING_MAX}"
    return float(value), None
