"""Reading judge answers: strict JSON first, then a tolerant fallback; verdicts, single verdicts and ratings.

Every parser returns what it could read plus a list of problems. It never raises on a bad answer: the caller decides
whether to retry.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from .prompts import RATING_MAX, RATING_MIN

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
_TRUE = {"true", "yes", "met", "1"}
_FALSE = {"false", "no", "not met", "unmet", "0"}


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


def extract_json(text: str | None) -> tuple[Any, str | None]:
    """Find the JSON object in a judge's answer.

    Tries, in order: the whole text as JSON; each fenced code block; the span from the first `{` to the last `}`;
    the first object that decodes from any `{`. Duplicated keys are kept visible (see `duplicates` on the returned
    dict) instead of being merged silently.

    Returns:
        `(object, None)` on success, or `(None, reason)` when no JSON object could be read.
    """
    if text is None or not text.strip():
        return None, "empty answer"
    text = text.strip()
    candidates = [text, *(m.group(1).strip() for m in _FENCE.finditer(text))]
    start, end = text.find("{"), text.rfind("}")
    if start != -1 and end > start:
        candidates.append(text[start : end + 1])
    for candidate in candidates:
        try:
            obj = _loads(candidate)
        except (json.JSONDecodeError, ValueError):
            continue
        if isinstance(obj, dict):
            return obj, None
    decoder = json.JSONDecoder(object_pairs_hook=_object_pairs)
    for match in re.finditer(r"\{", text):
        try:
            obj, _ = decoder.raw_decode(text, match.start())
        except (json.JSONDecodeError, ValueError):
            continue
        if isinstance(obj, dict):
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


def verdict_value(value: Any) -> bool | None:
    """A verdict from `true`/`false`, `{"met": true}`, or the strings "true"/"false"/"yes"/"no"; else `None`."""
    if isinstance(value, dict):
        return _as_bool(value.get("met"))
    return _as_bool(value)


def parse_verdicts(text: str | None, num_criteria: int) -> tuple[list[bool | None], list[str]]:
    """Read a batched answer `{"1": verdict, ..., "K": verdict}` into one verdict per criterion.

    Keys outside 1..K are ignored. A key given twice makes that criterion unknown, since the judge contradicted or
    repeated itself and we cannot tell which one it meant. Criteria left out are unknown.

    Returns:
        `(verdicts, problems)`: K verdicts (`None` where unknown) and human-readable reasons for the unknowns.
    """
    verdicts: list[bool | None] = [None] * num_criteria
    obj, reason = extract_json(text)
    if obj is None:
        return verdicts, [reason]
    # Some judges wrap the object: {"verdicts": {...}} or {"criteria": {...}}.
    if len(obj) == 1:
        (only,) = obj.values()
        if isinstance(only, dict) and not any(_criterion_id(k, num_criteria) for k in obj):
            obj = only
    problems = []
    duplicated = {_criterion_id(k, num_criteria) for k in getattr(obj, "duplicates", ())} - {None}
    ignored, unreadable = [], []
    for key, value in obj.items():
        index = _criterion_id(key, num_criteria)
        if index is None:
            ignored.append(key)
        elif index not in duplicated:
            verdicts[index - 1] = verdict_value(value)
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
    return verdicts, problems


def _criterion_id(key: Any, num_criteria: int) -> int | None:
    try:
        index = int(str(key).strip())
    except ValueError:
        return None
    return index if 1 <= index <= num_criteria else None


def parse_single_verdict(text: str | None) -> tuple[bool | None, str | None]:
    """Read a per-criterion answer `{"met": true}` (or a bare JSON `true`/`false`)."""
    obj, reason = extract_json(text)
    if obj is None:
        stripped = (text or "").strip().strip("`").strip().lower()
        if stripped in ("true", "false"):
            return stripped == "true", None
        return None, reason
    verdict = verdict_value(obj)
    return (verdict, None) if verdict is not None else (None, f"no boolean 'met' in {dict(obj)!r:.120}")


def parse_rating(text: str | None) -> tuple[float | None, str | None]:
    """Read an implicit-mode answer `{"rating": r}` with `r` a number in [1, 10]; returns the raw rating."""
    obj, reason = extract_json(text)
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
