"""`PanelJudge`: several judges graded as one, with the panel's agreement per criterion.

One judge's noise goes straight into GRPO's advantages; a panel of judges (models, endpoints, or a model and a rule
judge) votes per criterion instead. Aggregations, per criterion, over the members that gave a met / not-met verdict
(members that failed, left the criterion unknown, or answered "cannot assess" are left out of the vote):

- `"majority"`: met when more members say met than not met; a tie (including no verdict at all) is unknown (`None`),
  never a guess;
- `"all"`: met when every voting member says met (a strict panel); not met as soon as one says not met;
- `"any"`: met when at least one voting member says met (a lenient panel);
- `"mean"`: the panel's score is the mean of the members' own scores (members without a score left out), so members
  in implicit mode (a holistic rating) can sit on a panel; the per-criterion verdicts shown are the majority's.

A criterion on which no member voted but at least one answered "cannot assess" is cannot-assess for the panel (scored
by the panel's `cannot_assess` policy); with no answer at all it is unknown.

**Agreement** ([`Grade.agreement`]): for one response and criterion, the share of pairs of voting members whose
verdicts agree, `(C(m, 2) + C(n, 2)) / C(m + n, 2)` with `m` members saying met and `n` not met; undefined (`None`)
with fewer than two votes. With two members it is 1 when they agree and 0 when they do not; with three it is 1 or 1/3.
The panel's `judge/agreement` (training logs, and `judge_agreement` in `trl-rubric eval`) is its mean over the
(response, criterion) cells where it is defined.

Caching, retries and concurrency are each member's own: the panel sends one `grade` per member, concurrently, and adds
up their usage (a grade counts as cached only when every member's was).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from ..rubric import Rubric
from .base import DEFAULT_CANNOT_ASSESS_POLICY, Grade, JudgeUsage, RubricJudge, check_cannot_assess_policy

PANEL_AGGREGATIONS = ("majority", "all", "any", "mean")


def vote(verdicts: Sequence[bool | None], aggregation: str) -> bool | None:
    """The panel's verdict on one criterion from its members' verdicts (`None` = no vote, left out)."""
    known = [bool(v) for v in verdicts if v is not None]
    if not known:
        return None
    met = sum(known)
    if aggregation in ("majority", "mean"):
        unmet = len(known) - met
        return None if met == unmet else met > unmet
    if aggregation == "all":
        return met == len(known)
    if aggregation == "any":
        return met > 0
    raise ValueError(f"panel aggregation is {aggregation!r}; expected one of {PANEL_AGGREGATIONS}")


def pairwise_agreement(verdicts: Sequence[bool | None]) -> float | None:
    """Share of pairs of voting members whose verdicts agree; `None` with fewer than two votes."""
    known = [bool(v) for v in verdicts if v is not None]
    k = len(known)
    if k < 2:
        return None
    met = sum(known)
    unmet = k - met
    return (met * (met - 1) + unmet * (unmet - 1)) / (k * (k - 1))


def _has_verdicts(grade: Grade, rubric: Rubric) -> bool:
    return grade.rating is None and grade.verdicts is not None and len(grade.verdicts) == len(rubric)


def _mean(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def combine_grades(
    rubric: Rubric,
    grades: Sequence[Grade],
    aggregation: str = "majority",
    names: Sequence[str] | None = None,
    cannot_assess_policy: str = DEFAULT_CANNOT_ASSESS_POLICY,
) -> Grade:
    """One panel grade from the members' grades of the same response (see the module docstring for the rules)."""
    if aggregation not in PANEL_AGGREGATIONS:
        raise ValueError(f"panel aggregation is {aggregation!r}; expected one of {PANEL_AGGREGATIONS}")
    names = list(names) if names is not None else [f"judge{i}" for i in range(len(grades))]
    voting = [g for g in grades if _has_verdicts(g, rubric)]
    verdicts: list[bool | None] = []
    cannot: list[bool] = []
    agreement: list[float | None] = []
    for i in range(len(rubric)):
        column = [g.verdicts[i] for g in voting]
        verdict = vote(column, aggregation)
        verdicts.append(verdict)
        cannot.append(all(v is None for v in column) and any(g.cannot_assess[i] for g in voting))
        agreement.append(pairwise_agreement(column))
    usage = JudgeUsage(cached=bool(grades) and all(g.usage.cached for g in grades))
    for g in grades:
        if not g.usage.cached:
            usage.add(g.usage)
    errors = [f"{n}: {g.error}" for n, g in zip(names, grades, strict=True) if g.error]
    raw = "\n".join(f"[{n}] {g.raw}" for n, g in zip(names, grades, strict=True) if g.raw is not None) or None
    grade = Grade.from_verdicts(
        rubric,
        verdicts,
        cannot_assess=cannot,
        cannot_assess_policy=cannot_assess_policy,
        raw=raw,
        usage=usage,
        error="; ".join(errors) or None,
        agreement=agreement,
    )
    if aggregation == "mean":
        grade.score = _mean([g.score for g in grades])
        grade.unweighted_score = _mean([g.unweighted_score for g in grades])
        if not voting:  # members in implicit mode only: the mean rating is the grade
            grade.rating = grade.score
    return grade


class PanelJudge(RubricJudge):
    """Several judges as one `RubricJudge`: per-criterion majority / all / any, or the mean of their scores.

    Args:
        judges: The members (at least two), any [`RubricJudge`]s: each keeps its own cache, retries and settings.
        aggregation: `"majority"` (default), `"all"`, `"any"` or `"mean"`; see `trl_rubric.judges.panel`.
        cannot_assess: How a criterion that is cannot-assess for the panel (no member voted, one abstained) scores;
            see [`CANNOT_ASSESS_POLICIES`].
        name: The panel's name in logs and cache keys; defaults to `panel(<aggregation>:<member names>)`.

    The panel grades one response by asking every member concurrently, so one panel grade costs one grade per member;
    `max_concurrency` (responses in flight in [`RubricJudge.grade_many`]) defaults to the smallest member's.
    """

    def __init__(
        self,
        judges: Sequence[RubricJudge],
        aggregation: str = "majority",
        cannot_assess: str = DEFAULT_CANNOT_ASSESS_POLICY,
        name: str | None = None,
    ):
        super().__init__()
        judges = list(judges)
        if len(judges) < 2:
            raise ValueError(f"a judge panel needs at least two judges; got {len(judges)}")
        for i, judge in enumerate(judges):
            if not isinstance(judge, RubricJudge):
                raise TypeError(f"panel member {i} is a {type(judge).__name__}; expected a RubricJudge")
        if aggregation not in PANEL_AGGREGATIONS:
            raise ValueError(f"panel aggregation is {aggregation!r}; expected one of {PANEL_AGGREGATIONS}")
        self.judges = judges
        self.aggregation = aggregation
        self.cannot_assess_policy = check_cannot_assess_policy(cannot_assess)
        self.member_names = [getattr(j, "name", type(j).__name__) for j in judges]
        self.name = name or f"panel({aggregation}:{'+'.join(self.member_names)})"
        self.max_concurrency = min(j.max_concurrency for j in judges)
        # Each member strips reasoning by its own setting; stripping here as well would hide nothing more.
        self.strip_thinking = False

    def __repr__(self) -> str:
        return f"PanelJudge({self.judges!r}, aggregation={self.aggregation!r})"

    async def probe(self) -> None:
        await asyncio.gather(*(j.probe() for j in self.judges))

    def _combine(self, rubric: Rubric, grades: Sequence[Grade]) -> Grade:
        return combine_grades(rubric, grades, self.aggregation, self.member_names, self.cannot_assess_policy)

    async def _grade(self, prompt: Any, response: str, rubric: Rubric) -> Grade:
        grades = await asyncio.gather(*(j.grade(prompt, response, rubric) for j in self.judges))
        return self._combine(rubric, grades)

    @property
    def supports_group_grading(self) -> bool:
        """True when at least one member grades a whole group in one call (see `trl_rubric.judges.groupwise`); the
        others (a rule judge, say) then grade each answer on their own."""
        return any(getattr(j, "supports_group_grading", False) for j in self.judges)

    async def grade_group(self, prompt: Any, responses: Sequence[str], rubric: Any) -> list[Grade]:
        """Grade all `responses` to one prompt: each member grades the group (in one call where it can, else one
        grade per answer), then the panel combines each response's member grades."""
        from .groupwise import grade_group

        rubric = Rubric.from_any(rubric)
        per_member = await asyncio.gather(*(grade_group(j, prompt, responses, rubric) for j in self.judges))
        grades = [self._combine(rubric, [m[k] for m in per_member]) for k in range(len(responses))]
        for grade in grades:
            self._record(grade)
        return grades
