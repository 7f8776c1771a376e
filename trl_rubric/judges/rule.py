"""`RuleJudge`: deterministic, offline checks per criterion. Used by tests, the toy world and rule-checkable data."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from ..rubric import RULE_KINDS, Criterion, Rubric, split_rule_tag
from .base import Grade, JudgeUsage, RubricJudge

Check = Callable[[str], bool | None]
RuleSpec = Check | Mapping[str, Any] | str

_WORD = re.compile(r"[\w']+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _spec_check(spec: Mapping[str, Any]) -> Check:
    """Build a check from a spec dict with exactly one of the known keys."""
    if len(spec) != 1:
        raise ValueError(f"rule spec {dict(spec)!r} must have exactly one key")
    ((kind, arg),) = spec.items()
    if kind == "contains":
        word = str(arg).lower()
        return lambda r: word in _words(r) if _WORD.fullmatch(word) else word in r.lower()
    if kind == "not_contains":
        inner = _spec_check({"contains": arg})
        return lambda r: not inner(r)
    if kind == "regex":
        pattern = re.compile(str(arg), re.IGNORECASE | re.DOTALL)
        return lambda r: pattern.search(r) is not None
    if kind == "max_words":
        return lambda r: len(_words(r)) <= int(arg)
    if kind == "min_words":
        return lambda r: len(_words(r)) >= int(arg)
    if kind == "ends_with":
        word = str(arg).lower()
        return lambda r: bool(_words(r)) and _words(r)[-1] == word
    if kind == "starts_with":
        word = str(arg).lower()
        return lambda r: bool(_words(r)) and _words(r)[0] == word
    raise ValueError(f"unknown rule kind {kind!r}; known: {', '.join(RULE_KINDS)}")


def parse_rule_tag(tag: str) -> Check | None:
    """Read a check from a criterion tag such as `rule:contains:fever` or `rule:max_words:12`."""
    parts = split_rule_tag(tag)
    if parts is None:
        return None
    kind, arg = parts
    return _spec_check({kind: arg})


class RuleJudge(RubricJudge):
    """Grades each criterion with a deterministic check; never calls a model.

    A criterion's check is found, in order:
    1. `rules[criterion.text]` or `rules[criterion.title]`: a callable `response -> bool | None`, a spec dict such as
       `{"contains": "fever"}`, `{"not_contains": "x"}`, `{"regex": "..."}`, `{"max_words": 12}`,
       `{"ends_with": "done"}`, or a bare string meaning `{"contains": string}`;
    2. a `rule:<kind>:<arg>` tag on the criterion (so normalised datasets can carry their own checks);
    3. `resolver(criterion)`, if given, returning a check or `None`.

    A criterion with no check gets an unknown verdict (`None`), which is counted, never scored as 0.

    Args:
        rules: Checks keyed by criterion text or title.
        resolver: Fallback that builds a check from a `Criterion`.
    """

    name = "rule"

    def __init__(
        self, rules: Mapping[str, RuleSpec] | None = None, resolver: Callable[[Criterion], Check | None] | None = None
    ):
        super().__init__()
        self.rules = {k: self._compile(v) for k, v in (rules or {}).items()}
        self.resolver = resolver

    @staticmethod
    def _compile(spec: RuleSpec) -> Check:
        if callable(spec):
            return spec
        if isinstance(spec, str):
            return _spec_check({"contains": spec})
        if isinstance(spec, Mapping):
            return _spec_check(spec)
        raise TypeError(f"rule {spec!r} is neither a callable, a spec dict nor a string")

    def check_for(self, criterion: Criterion) -> Check | None:
        for key in (criterion.text, criterion.title):
            if key is not None and key in self.rules:
                return self.rules[key]
        for tag in criterion.tags:
            check = parse_rule_tag(tag)
            if check is not None:
                return check
        return self.resolver(criterion) if self.resolver is not None else None

    def verdicts(self, response: str, rubric: Rubric) -> list[bool | None]:
        """Synchronous verdicts, one per criterion."""
        out = []
        for criterion in rubric:
            check = self.check_for(criterion)
            verdict = check(response) if check is not None else None
            out.append(None if verdict is None else bool(verdict))
        return out

    async def _grade(self, prompt: Any, response: str, rubric: Rubric) -> Grade:
        verdicts = self.verdicts(response, rubric)
        missing = [i + 1 for i, v in enumerate(verdicts) if v is None]
        error = f"no rule for criteria {missing}" if missing else None
        # One grade stands in for one batched judge request, so call counts compare with LLM judges.
        return Grade.from_verdicts(rubric, verdicts, usage=JudgeUsage(calls=1, attempts=1), error=error)
