"""Criterion-wise teacher views: K teachers per rollout, teacher k shown the question plus one group of the criteria.

A teacher shown the whole rubric at once carries what is easy to see in a token's probability (a numbered list, a
short answer) and little of the rest: on SmolLM2-135M-Instruct its log-ratio preferred the answer that met a content
criterion (the question's key term, a doctor's advice) no more often than chance (`docs/benchmarks.md`). Shown one
criterion group at a time, each teacher's context changes its predictions only where that group applies, and the K
teachers are combined per token by the multi-teacher code (`trl_rubric.multi_teacher`, `"mean"` or `"sgsd_gate"`),
as the `skills` context combines its retrieved skills.

This module holds the pure part: which criteria form a group ([`criterion_groups`]), how a group is rendered
([`render_criteria`]) and the K (prompt, weight) views of one row ([`criterion_views`]). The provider the trainer
uses is `teacher_context.CriterionViewsContext` (`RGSDConfig.teacher_context="criteria"`).

Groupings (`criterion_grouping`):

- `"criterion"`: one group per criterion the teacher is shown;
- `"category"`: one group per criterion category (RaR's essential / important / optional / pitfall, a HealthBench
  axis, a ResearchRubrics axis), criteria without one grouped together;
- `"polarity"`: what a good answer contains against what it avoids (penalties; needs `teacher_penalties="show"`).

A row with more groups than K has neighbouring groups merged (in rubric order) so that every criterion is still shown
to exactly one teacher; a row with fewer gets views of weight 0 (the student's own prompt, which the combination
ignores), since every row must give exactly K contexts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .rubric import GOOD_ANSWER_AVOIDS, GOOD_ANSWER_CONTAINS, Criterion, Rubric
from .teacher import teacher_rubric, weave

CRITERION_GROUPINGS = ("criterion", "category", "polarity")
#: `"equal"`: each group's teacher weighs the same; `"weight"`: by the sum of the group's |criterion weights|.
CRITERION_VIEW_WEIGHTS = ("equal", "weight")
UNCATEGORISED = "uncategorised"

_PLACEHOLDER = re.compile(r"\{prompt\}|\{rubric\}")


@dataclass(frozen=True)
class CriterionGroup:
    """Criteria one teacher is shown, under a name (the criterion's title or text, the category, or the polarity)."""

    name: str
    criteria: tuple[Criterion, ...]

    @property
    def weight(self) -> float:
        """The sum of the criteria's absolute weights (a penalty's importance counts as much as a goal's)."""
        return float(sum(abs(c.weight) for c in self.criteria))


def check_criterion_views(grouping: str, weighting: str, penalties: str, num_contexts: int) -> None:
    """Raise a `ValueError` naming the setting when the grouping, weighting or K cannot work together."""
    if grouping not in CRITERION_GROUPINGS:
        raise ValueError(f"criterion_grouping is {grouping!r}; expected one of {CRITERION_GROUPINGS}")
    if weighting not in CRITERION_VIEW_WEIGHTS:
        raise ValueError(f"criterion_view_weights is {weighting!r}; expected one of {CRITERION_VIEW_WEIGHTS}")
    if isinstance(num_contexts, bool) or not isinstance(num_contexts, int) or num_contexts < 1:
        raise ValueError(f"num_teacher_contexts is {num_contexts!r}; expected the number of teachers, at least 1")
    if grouping == "polarity" and penalties != "show":
        raise ValueError(
            "criterion_grouping='polarity' shows one teacher what a good answer contains and another what it avoids, "
            f"but teacher_penalties is {penalties!r}, so no teacher would see the penalties: set "
            "teacher_penalties='show', or use criterion_grouping 'criterion' or 'category'"
        )


def _merge(groups: list[CriterionGroup], k: int) -> list[CriterionGroup]:
    """`groups` merged into at most `k` runs of neighbours, as even in size as possible (order kept)."""
    if len(groups) <= k:
        return groups
    size, extra = divmod(len(groups), k)
    merged, start = [], 0
    for i in range(k):
        run = groups[start : start + size + (1 if i < extra else 0)]
        start += len(run)
        merged.append(CriterionGroup(" + ".join(g.name for g in run), tuple(c for g in run for c in g.criteria)))
    return merged


def criterion_groups(rubric: Any, grouping: str, penalties: str, max_groups: int) -> list[CriterionGroup]:
    """The row's criterion groups, at most `max_groups` (neighbours merged beyond it), in rubric order.

    Only criteria the teacher may see are grouped: with `penalties="omit"` the penalty criteria are left out, as in
    the whole-rubric view ([`trl_rubric.teacher.teacher_rubric`]).
    """
    shown = teacher_rubric(rubric, penalties).criteria
    if grouping == "criterion":
        groups = [CriterionGroup(c.title or c.text, (c,)) for c in shown]
    elif grouping == "category":
        by_name: dict[str, list[Criterion]] = {}
        for c in shown:
            by_name.setdefault(c.category or UNCATEGORISED, []).append(c)
        groups = [CriterionGroup(name, tuple(cs)) for name, cs in by_name.items()]
    elif grouping == "polarity":
        gains = tuple(c for c in shown if c.weight >= 0)
        avoids = tuple(c for c in shown if c.weight < 0)
        groups = [CriterionGroup(n, cs) for n, cs in (("contains", gains), ("avoids", avoids)) if cs]
    else:
        raise ValueError(f"criterion_grouping is {grouping!r}; expected one of {CRITERION_GROUPINGS}")
    return _merge(groups, max_groups)


def render_criteria(criteria: Sequence[Criterion], style: str = "numbered") -> str:
    """A group's criteria as the teacher reads them: [`Rubric.render`] when the group holds a goal (a positive
    weight); a group of penalties only, which a `Rubric` cannot hold (it could not be scored), in the same form: its
    lines under "A good answer avoids:" (numbered, weighted) or the same JSON list."""
    criteria = tuple(criteria)
    if any(c.weight > 0 for c in criteria):
        return Rubric(criteria).render(style)
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
                for i, c in enumerate(criteria, start=1)
            ],
            ensure_ascii=False,
        )
    if style not in ("numbered", "weighted"):
        raise ValueError(f"rubric_render_style is {style!r}; expected 'numbered', 'weighted' or 'json'")

    def line(i: int, c: Criterion) -> str:
        if style == "numbered":
            return f"{i}. {c.text}"
        points = f"{c.weight:+g} points"
        return f"{i}. [{c.category}, {points}] {c.text}" if c.category else f"{i}. [{points}] {c.text}"

    ordered = [c for c in criteria if c.weight >= 0] + [c for c in criteria if c.weight < 0]
    lines, heading = [], None
    for i, c in enumerate(ordered, start=1):
        wanted = GOOD_ANSWER_AVOIDS if c.weight < 0 else GOOD_ANSWER_CONTAINS
        if wanted != heading:
            lines.append(wanted)
            heading = wanted
        lines.append(line(i, c))
    return "\n".join(lines)


def criterion_views(
    prompt: str | list[dict[str, Any]],
    rubric: Any,
    template: str,
    render_style: str = "numbered",
    penalties: str = "omit",
    grouping: str = "criterion",
    weighting: str = "equal",
    num_contexts: int = 4,
) -> list[tuple[str | list[dict[str, Any]], float]]:
    """The `num_contexts` (teacher prompt, weight) views of one row: teacher k reads `template` with `{rubric}`
    filled by group k only; padding views (fewer groups than K) are the student's prompt with weight 0."""
    views = []
    for group in criterion_groups(rubric, grouping, penalties, num_contexts):
        rendered = render_criteria(group.criteria, render_style)

        def fill(text: str, rendered: str = rendered) -> str:
            # One pass over the template (as `teacher.build_teacher_prompt`): braces in prompts or criteria stay.
            return _PLACEHOLDER.sub(lambda m: text if m.group(0) == "{prompt}" else rendered, template)

        views.append((weave(prompt, fill), 1.0 if weighting == "equal" else group.weight))
    views += [(prompt, 0.0)] * (num_contexts - len(views))
    return views


__all__ = [
    "CRITERION_GROUPINGS",
    "CRITERION_VIEW_WEIGHTS",
    "CriterionGroup",
    "check_criterion_views",
    "criterion_groups",
    "criterion_views",
    "render_criteria",
]
