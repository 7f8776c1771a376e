"""Rubrics: weighted per-prompt criteria, parsed from every public format we know, rendered and scored.

A rubric is a list of [`Criterion`]. [`Rubric.from_any`] reads:

- RaR (`{title, description, weight}`, category prefix such as "Essential Criteria:" inside `description`);
- HealthBench (`{criterion, points, tags}`, points may be negative);
- RubricHub (`{criterion, points}`);
- ResearchRubrics (`{criterion, weight, axis}`);
- our normalised form (`{text, weight, category, title, tags}`);
- a plain list of strings (weight 1 each);
- a JSON string of any of these, or a `Rubric`.

Scoring follows HealthBench: the sum of the weights of met criteria (negative weights included) divided by the sum of
positive weights. Unknown verdicts (`None`) are left out of both sums.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

RubricFormat = Literal["auto", "rar", "healthbench", "rubrichub", "researchrubrics", "normalized", "strings"]
PitfallPolarity = Literal["as_is", "negative", "positive"]
RenderStyle = Literal["numbered", "weighted", "json"]

RUBRIC_FORMATS = ("auto", "rar", "healthbench", "rubrichub", "researchrubrics", "normalized", "strings")
PITFALL_POLARITIES = ("as_is", "negative", "positive")
RENDER_STYLES = ("numbered", "weighted", "json")

#: Headings of the two lists a rubric with penalties is rendered as (see [`Rubric.render`]).
GOOD_ANSWER_CONTAINS = "A good answer contains:"
GOOD_ANSWER_AVOIDS = "A good answer avoids:"
#: Heading of a rubric's guidelines (a note on applying the whole rubric) in [`Rubric.render`].
GUIDELINES_HEADING = "Guidelines for the whole rubric:"

# RaR writes the category as a prefix of `description`: "Essential Criteria: Identifies ..."
_RAR_PREFIX = re.compile(r"^\s*(essential|important|optional|pitfall)(?:\s+criteria)?\s*:\s*", re.IGNORECASE)


#: Kinds of the `rule:<kind>:<arg>` criterion tags that `RuleJudge` checks offline (docs/judges.md lists what each
#: does). Kept here, in the bottom layer, so dataset loading can refuse a misspelled kind before any generation.
RULE_KINDS = ("contains", "not_contains", "regex", "max_words", "min_words", "ends_with", "starts_with")
RULE_TAG_PREFIX = "rule:"


def split_rule_tag(tag: str) -> tuple[str, str] | None:
    """`(kind, arg)` of a `rule:<kind>:<arg>` tag, or `None` for any other tag."""
    if not tag.startswith(RULE_TAG_PREFIX):
        return None
    kind, _, arg = tag[len(RULE_TAG_PREFIX) :].partition(":")
    return kind, arg


def rule_tag_problem(tag: str) -> str | None:
    """Why a `rule:` tag cannot be checked (unknown kind, missing or malformed argument), or `None` if it can.

    Tags that do not start with `rule:` are free-form and never a problem.
    """
    parts = split_rule_tag(tag)
    if parts is None:
        return None
    kind, arg = parts
    if kind not in RULE_KINDS:
        return f"tag {tag!r} has unknown rule kind {kind!r}; known: {', '.join(RULE_KINDS)}"
    if not arg:
        return f"tag {tag!r} has no argument; expected rule:{kind}:<argument>"
    if kind in ("max_words", "min_words"):
        try:
            int(arg)
        except ValueError:
            return f"tag {tag!r} has {kind} {arg!r}; expected a whole number of words"
    if kind == "regex":
        try:
            re.compile(arg)
        except re.error as e:
            return f"tag {tag!r} has an invalid regular expression ({e})"
    return None


class RubricError(ValueError):
    """A rubric that cannot be parsed or used. The message names the criterion, the field and the value."""


@dataclass(frozen=True)
class Criterion:
    """One weighted rubric item.

    Args:
        text: What the response must do (or, with a negative weight, must not do).
        weight: Points for meeting it. Negative weights are penalties (HealthBench "points", RaR pitfalls).
        category: Grouping used in reports: RaR category ("essential", "pitfall", ...), ResearchRubrics axis, or the
            HealthBench `axis:` tag.
        title: Short name when the source has one (RaR `title`).
        tags: Free-form tags (HealthBench `tags`).
    """

    text: str
    weight: float = 1.0
    category: str | None = None
    title: str | None = None
    tags: tuple[str, ...] = field(default_factory=tuple)

    def is_named(self, names: Sequence[str]) -> bool:
        """Whether its title, text, category or one of its tags is in `names` (how [`Rubric.select`] picks)."""
        return bool(set(names) & {self.title, self.text, self.category, *self.tags})

    def to_dict(self) -> dict[str, Any]:
        """The normalised dict form stored in datasets: `{text, weight, category, title, tags}`."""
        return {
            "text": self.text,
            "weight": float(self.weight),
            "category": self.category,
            "title": self.title,
            "tags": list(self.tags),
        }


def _number(value: Any, where: str, key: str) -> float:
    # bool is an int subclass; a weight of `True` is almost certainly a schema mix-up.
    if isinstance(value, bool) or value is None:
        raise RubricError(f"{where} has {key} {value!r}; expected a number")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise RubricError(f"{where} has {key} {value!r}; expected a number") from None
    else:
        raise RubricError(f"{where} has {key} {value!r}; expected a number")
    if not math.isfinite(number):
        raise RubricError(f"{where} has {key} {value!r}; expected a finite number")
    return number


def _text(value: Any, where: str, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RubricError(f"{where} has {key} {value!r}; expected a non-empty string")
    return value.strip()


def _tags(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Sequence):
        return tuple(str(t) for t in value)
    raise RubricError(f"{where} has tags {value!r}; expected a list of strings")


def _detect_format(item: Mapping[str, Any]) -> str:
    keys = set(item)
    if "text" in keys:
        return "normalized"
    if "description" in keys:
        return "rar"
    if "criterion" in keys and "axis" in keys:
        return "researchrubrics"
    if "criterion" in keys and "tags" in keys:
        return "healthbench"
    if "criterion" in keys and "points" in keys:
        return "rubrichub"
    if "criterion" in keys and "weight" in keys:
        return "researchrubrics"
    if "criterion" in keys:
        return "rubrichub"
    raise RubricError(
        f"has keys {sorted(keys)}, which match no known rubric format; expected one of "
        "{text, weight}, {title, description, weight} (RaR), {criterion, points, tags} (HealthBench), "
        "{criterion, points} (RubricHub) or {criterion, weight, axis} (ResearchRubrics)"
    )


def _apply_polarity(weight: float, category: str | None, polarity: str) -> float:
    if category != "pitfall" or polarity == "as_is":
        return weight
    return -abs(weight) if polarity == "negative" else abs(weight)


def _criterion_from_dict(item: Mapping[str, Any], fmt: str, where: str, pitfall_polarity: str) -> Criterion:
    if fmt == "auto":
        try:
            fmt = _detect_format(item)
        except RubricError as e:
            raise RubricError(f"{where} {e}") from None
    if fmt == "normalized":
        category = item.get("category")
        weight = _number(item.get("weight", 1.0), where, "weight")
        return Criterion(
            text=_text(item.get("text"), where, "text"),
            weight=_apply_polarity(weight, category, pitfall_polarity),
            category=category,
            title=item.get("title"),
            tags=_tags(item.get("tags"), where),
        )
    if fmt == "rar":
        description = _text(item.get("description"), where, "description")
        match = _RAR_PREFIX.match(description)
        category = match.group(1).lower() if match else None
        text = description[match.end() :].strip() if match else description
        if not text:
            raise RubricError(f"{where} has description {description!r}; nothing follows the category prefix")
        weight = _number(item.get("weight", 1.0), where, "weight")
        return Criterion(
            text=text,
            weight=_apply_polarity(weight, category, pitfall_polarity),
            category=category,
            title=item.get("title"),
            tags=_tags(item.get("tags"), where),
        )
    if fmt in ("healthbench", "rubrichub"):
        tags = _tags(item.get("tags"), where)
        # HealthBench tags look like "axis:accuracy", "level:example"; the axis is the natural report grouping.
        axis = next((t.split(":", 1)[1] for t in tags if t.startswith("axis:")), None)
        return Criterion(
            text=_text(item.get("criterion"), where, "criterion"),
            weight=_number(item.get("points", item.get("weight", 1.0)), where, "points"),
            category=item.get("category", axis),
            title=item.get("title"),
            tags=tags,
        )
    if fmt == "researchrubrics":
        return Criterion(
            text=_text(item.get("criterion"), where, "criterion"),
            weight=_number(item.get("weight", item.get("points", 1.0)), where, "weight"),
            category=item.get("axis", item.get("category")),
            title=item.get("title"),
            tags=_tags(item.get("tags"), where),
        )
    raise RubricError(f"unknown rubric format {fmt!r}; expected one of {RUBRIC_FORMATS}")


@dataclass(frozen=True)
class Rubric:
    """An ordered list of criteria for one prompt. Build one with [`Rubric.from_any`].

    `guidelines` is an optional note on how to apply the whole rubric (autorubric files carry one: "judge against a
    grade 8-12 level"). [`Rubric.render`] shows it after the criteria. It is not stored in a dataset's `rubric` column
    ([`Rubric.to_list`] holds criteria only).
    """

    criteria: tuple[Criterion, ...]
    guidelines: str | None = None

    def __post_init__(self):
        if self.guidelines is not None and not isinstance(self.guidelines, str):
            raise RubricError(f"rubric has guidelines {self.guidelines!r}; expected a string")
        if not self.criteria:
            raise RubricError("rubric is empty; expected at least one criterion")
        if not any(c.weight > 0 for c in self.criteria):
            weights = [c.weight for c in self.criteria]
            raise RubricError(
                f"rubric has no criterion with a positive weight (weights {weights}); it cannot be scored"
            )

    def __len__(self) -> int:
        return len(self.criteria)

    def __iter__(self):
        return iter(self.criteria)

    def __getitem__(self, index: int) -> Criterion:
        return self.criteria[index]

    @classmethod
    def from_any(
        cls,
        obj: Any,
        format: RubricFormat = "auto",
        pitfall_polarity: PitfallPolarity = "as_is",
    ) -> Rubric:
        """Parse a rubric from any supported form.

        Args:
            obj: A `Rubric`, a list of criterion dicts (any known format) or strings, or a JSON string of those.
            format: Force a source format instead of detecting it per criterion.
            pitfall_polarity: How to sign RaR "Pitfall" criteria. `"as_is"` keeps the source weight. `"negative"`
                reads the criterion as the mistake (meeting it costs points). `"positive"` reads it as avoiding the
                mistake (meeting it earns points). Sources disagree, so check your data.

        Raises:
            RubricError: naming the criterion (1-based), the field and the offending value.
        """
        if format not in RUBRIC_FORMATS:
            raise RubricError(f"unknown rubric format {format!r}; expected one of {RUBRIC_FORMATS}")
        if pitfall_polarity not in PITFALL_POLARITIES:
            raise RubricError(f"unknown pitfall_polarity {pitfall_polarity!r}; expected one of {PITFALL_POLARITIES}")
        if isinstance(obj, Rubric):
            if pitfall_polarity == "as_is":
                return obj
            obj = {"criteria": [c.to_dict() for c in obj.criteria], "guidelines": obj.guidelines}
        if isinstance(obj, str):
            try:
                obj = json.loads(obj)
            except json.JSONDecodeError as e:
                raise RubricError(
                    f"rubric string is not valid JSON ({e.msg} at position {e.pos}): {obj[:80]!r}"
                ) from None
        if isinstance(obj, Mapping):
            # Some dumps wrap the list: {"rubrics": [...]} or {"criteria": [...]}, with optional "guidelines".
            for key in ("rubrics", "rubric", "criteria"):
                if key in obj:
                    rubric = cls.from_any(obj[key], format=format, pitfall_polarity=pitfall_polarity)
                    guidelines = obj.get("guidelines")
                    if guidelines is not None and not isinstance(guidelines, str):
                        raise RubricError(f"rubric has guidelines {guidelines!r}; expected a string")
                    if guidelines and guidelines.strip():
                        rubric = cls(rubric.criteria, guidelines=guidelines.strip())
                    return rubric
            raise RubricError(f"rubric is a dict with keys {sorted(obj)}; expected a list of criteria")
        if obj is None or not isinstance(obj, Iterable):
            raise RubricError(f"rubric is {obj!r}; expected a list of criteria")
        criteria = []
        for i, item in enumerate(obj, start=1):
            where = f"criterion {i}"
            if isinstance(item, Criterion):
                criteria.append(item)
            elif isinstance(item, str):
                if format not in ("auto", "strings"):
                    raise RubricError(f"{where} is a string, but format={format!r} expects dicts")
                criteria.append(Criterion(text=_text(item, where, "text")))
            elif isinstance(item, Mapping):
                fmt = "auto" if format == "strings" else format
                criteria.append(_criterion_from_dict(item, fmt, where, pitfall_polarity))
            else:
                raise RubricError(f"{where} is {item!r}; expected a dict or a string")
        return cls(tuple(criteria))

    def select(self, names: Sequence[str]) -> Rubric:
        """The criteria whose title, text, category or one of whose tags is in `names`, in their order (guidelines
        kept). Titles are what reports group by (`EvalMetrics.by_criterion`, the text when there is no title).

        Raises:
            RubricError: when no criterion matches, or none of those that match has a positive weight (a rubric
                of penalties alone cannot be scored).
        """
        wanted = {names} if isinstance(names, str) else set(names)
        kept = tuple(c for c in self.criteria if c.is_named(wanted))
        if not kept:
            titles = [c.title or c.text for c in self.criteria]
            raise RubricError(
                f"no criterion has a title, text, category or tag in {sorted(wanted)}; its criteria: {titles}"
            )
        if not any(c.weight > 0 for c in kept):
            raise RubricError(
                f"the criteria matching {sorted(wanted)} are all penalties ({[c.title or c.text for c in kept]}); "
                "a score needs one with a positive weight"
            )
        return Rubric(kept, self.guidelines)

    def to_list(self) -> list[dict[str, Any]]:
        """The normalised list of dicts, as stored in a dataset's `rubric` column."""
        return [c.to_dict() for c in self.criteria]

    @property
    def max_score(self) -> float:
        """Sum of positive weights: the denominator of [`Rubric.score`]."""
        return sum(c.weight for c in self.criteria if c.weight > 0)

    def _verdict_list(self, verdicts: Sequence[bool | None] | Mapping[int, bool | None]) -> list[bool | None]:
        if isinstance(verdicts, Mapping):
            return [verdicts.get(i) for i in range(len(self.criteria))]
        verdicts = list(verdicts)
        if len(verdicts) != len(self.criteria):
            raise RubricError(f"got {len(verdicts)} verdicts for a rubric of {len(self.criteria)} criteria")
        return verdicts

    def score(
        self, verdicts: Sequence[bool | None] | Mapping[int, bool | None], weighted: bool = True
    ) -> float | None:
        """Score a response from per-criterion verdicts.

        `sum(weight of met criteria, negatives included) / sum(positive weights)`, leaving out criteria whose verdict
        is `None` (unknown) from both sums. The result may be below 0 when penalties are met; dataset means are
        clipped to [0, 1] by the caller, as HealthBench does.

        Args:
            verdicts: One `True` / `False` / `None` per criterion, in order, or a dict `{0-based index: verdict}`.
            weighted: If `False`, every criterion counts as +1 or -1 by the sign of its weight.

        Returns:
            The score, or `None` when no criterion with a positive weight has a known verdict.
        """
        numerator = denominator = 0.0
        for criterion, verdict in zip(self.criteria, self._verdict_list(verdicts), strict=True):
            if verdict is None:
                continue
            weight = criterion.weight if weighted else math.copysign(1.0, criterion.weight)
            if weight > 0:
                denominator += weight
            if verdict:
                numerator += weight
        if denominator == 0:
            return None
        return numerator / denominator

    def graded_fraction(self, verdicts: Sequence[bool | None] | Mapping[int, bool | None]) -> float:
        """Share of the rubric's points, by absolute weight, whose verdict is known.

        [`Rubric.score`] leaves unknown criteria out of both sums, so a score over a small graded share (or one that
        misses a penalty) can read much higher than the response deserves; callers compare this share with a minimum.
        """
        total = sum(abs(c.weight) for c in self.criteria)
        known = sum(
            abs(c.weight) for c, v in zip(self.criteria, self._verdict_list(verdicts), strict=True) if v is not None
        )
        return known / total if total else 0.0

    def render(self, style: RenderStyle = "numbered") -> str:
        """The rubric as text for a teacher or a judge.

        Criteria that lose points (negative weight) are always shown as things a good answer avoids, never as goals:
        the text of a penalty describes the mistake ("Advises the patient to skip the appointment", -10).

        Styles:
            - `"numbered"`: "1. criterion" lines, no weights (what the RGSD teacher sees by default). When the rubric
              has penalties, the lines are grouped under "A good answer contains:" and "A good answer avoids:".
            - `"weighted"`: "1. [essential, +5 points] criterion" lines, grouped the same way; penalties show their
              negative points.
            - `"json"`: a JSON list of `{id, text, weight, category, good_answer}` with 1-based ids, `good_answer`
              being `"contains"` or `"avoids"` (guidelines are not shown: the list has no place for them).

        The first two end with the rubric's guidelines, if it has any.
        """
        if style not in RENDER_STYLES:
            raise RubricError(f"unknown render style {style!r}; expected one of {RENDER_STYLES}")
        if style == "json":
            return json.dumps(
                [
                    {
                        "id": i,
                        "text": c.text,
                        "weight": c.weight,
                        "category": c.category,
                        "good_answer": "avoids" if c.weight < 0 else "contains",
                    }
                    for i, c in enumerate(self.criteria, start=1)
                ],
                ensure_ascii=False,
            )

        def line(i: int, c: Criterion) -> str:
            if style == "numbered":
                return f"{i}. {c.text}"
            points = f"{c.weight:+g} points"
            return f"{i}. [{c.category}, {points}] {c.text}" if c.category else f"{i}. [{points}] {c.text}"

        gains = [c for c in self.criteria if c.weight >= 0]
        penalties = [c for c in self.criteria if c.weight < 0]
        note = [f"{GUIDELINES_HEADING} {self.guidelines}"] if self.guidelines else []
        if not penalties:  # unchanged plain list: nothing to tell apart
            return "\n".join([*(line(i, c) for i, c in enumerate(gains, start=1)), *note])
        # Grouped, numbered on through both lists, so the teacher never reads a penalty as a goal.
        ordered = gains + penalties
        lines = [GOOD_ANSWER_CONTAINS]
        for i, c in enumerate(ordered, start=1):
            if i == len(gains) + 1:
                lines.append(GOOD_ANSWER_AVOIDS)
            lines.append(line(i, c))
        return "\n".join(lines + note)
