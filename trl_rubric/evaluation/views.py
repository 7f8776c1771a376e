"""Which teacher view to distil: the conditioning gap of several views on the same prompts ([`compare_teacher_views`]).

A *view* is what the RGSD teacher reads besides the prompt: its template, the rubric's render style, and whether the
penalty criteria are shown (`teacher_penalties`). The student's answers are generated once and shared, and every
view's teacher answers the same prompts with the same seed, so the views differ only in the teacher's context and
their gaps are compared *paired*, prompt by prompt.

**The rule** ([`choose_view`]): recommend the view with the highest gap, unless its degenerate-answer rate (answers
that repeat a line, copy rubric text or talk about the requirements, `trl_rubric.evaluation.degeneration`) exceeds
the lowest rate among the views by more than `max_degeneration_margin` (default 0.05, five points); then the
highest-gap view within that margin. A student distils its teacher's habits, and a rule judge rewards an answer that
copies the criteria, so a higher gap bought with leakage is not taken. Ties go to the view listed first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..judges.base import RubricJudge
from ..teacher import DEFAULT_TEACHER_PENALTIES, DEFAULT_TEACHER_PROMPT_TEMPLATE, TEACHER_PENALTIES
from .gap import GapResult, conditioning_gap
from .generation import GenerateFn, generate_responses
from .grading import select_examples
from .loading import _resolve_model
from .stats import _clip01, _mean, bootstrap_ci

#: Default margin of [`choose_view`]: how much more often (0-1 scale) the highest-gap view's answers may be
#: degenerate than the cleanest view's before it is passed over.
MAX_DEGENERATION_MARGIN = 0.05


@dataclass(frozen=True)
class TeacherView:
    """One teacher view: the `RGSDConfig` fields that decide what the teacher reads.

    Attributes:
        name: Label in reports, e.g. `"penalties=show"`.
        teacher_prompt_template: Template with `{prompt}` and `{rubric}`.
        rubric_render_style: `"numbered"`, `"weighted"` or `"json"`.
        teacher_penalties: `"show"` or `"omit"`.
    """

    name: str
    teacher_prompt_template: str = DEFAULT_TEACHER_PROMPT_TEMPLATE
    rubric_render_style: str = "numbered"
    teacher_penalties: str = DEFAULT_TEACHER_PENALTIES

    def settings(self) -> dict[str, str]:
        """The view as `RGSDConfig` / [`conditioning_gap`] keyword arguments."""
        return {
            "teacher_prompt_template": self.teacher_prompt_template,
            "rubric_render_style": self.rubric_render_style,
            "teacher_penalties": self.teacher_penalties,
        }


def candidate_views(
    teacher_prompt_template: str = DEFAULT_TEACHER_PROMPT_TEMPLATE,
    rubric_render_style: str = "numbered",
    penalties: tuple[str, ...] = TEACHER_PENALTIES,
    render_styles: tuple[str, ...] = (),
    templates: tuple[str, ...] = (),
) -> list[TeacherView]:
    """The views to compare: each of `penalties` on the base template and style, then each extra render style and
    each extra template (with the first of `penalties`). Views that repeat an earlier one are dropped."""
    views: list[TeacherView] = []

    def add(name, template, style, pen):
        view = TeacherView(name, template, style, pen)
        if all(v.settings() != view.settings() for v in views):
            views.append(view)

    for pen in penalties:
        add(f"penalties={pen}", teacher_prompt_template, rubric_render_style, pen)
    first = penalties[0] if penalties else DEFAULT_TEACHER_PENALTIES
    for style in render_styles:
        add(f"render_style={style}", teacher_prompt_template, style, first)
    for i, template in enumerate(templates):
        add(f"template_{i + 1}", template, rubric_render_style, first)
    if not views:
        raise ValueError("no teacher views to compare: give at least one of penalties, render_styles, templates")
    return views


@dataclass
class ViewComparison:
    """What [`compare_teacher_views`] returns.

    Attributes:
        views: One row per view: `name`, its settings, `gap`, `gap_ci`, `score_with_rubric`, `length_ratio`, its
            teacher answers' degeneration rates (`degenerate`, `repeats_line`, `copies_rubric`, `meta_talk`),
            `criteria`: its teacher answers' met rate per criterion title (as `EvalMetrics.by_criterion`), and
            `vs_recommended`: the paired difference of its gap from the recommended view's with an interval.
        score_without_rubric: The shared student score (prompt only).
        student_criteria: The student answers' met rate per criterion title: beside each view's `criteria`, which
            criteria a view teaches (a content criterion the teacher meets no more often than the student is one a
            distilled student cannot learn from it).
        recommended: Name of the recommended view; `None` when no view could be scored.
        reason: One sentence on why.
        max_degeneration_margin: The margin the rule used.
        n_examples: Prompts compared (the same for every view).
        gaps: Each view's full [`GapResult`], by name.
    """

    views: list[dict[str, Any]]
    score_without_rubric: float | None
    student_criteria: dict[str, float | None]
    recommended: str | None
    reason: str
    max_degeneration_margin: float
    n_examples: int
    gaps: dict[str, GapResult] = field(default_factory=dict, repr=False)

    def recommended_view(self) -> dict[str, Any] | None:
        """The recommended view's row, or `None`."""
        return next((v for v in self.views if v["name"] == self.recommended), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "score_without_rubric": self.score_without_rubric,
            "student_criteria": self.student_criteria,
            "recommended": self.recommended,
            "reason": self.reason,
            "max_degeneration_margin": self.max_degeneration_margin,
            "n_examples": self.n_examples,
            "views": self.views,
        }

    def report(self) -> str:
        """A Markdown table of the views and the recommendation."""
        lines = [
            f"Teacher views on the same {self.n_examples} prompts (student score {_fmt(self.score_without_rubric)}):",
            "",
            "| view | gap | 95% CI | vs recommended (paired) | clean gap | degenerate | copies rubric | meta-talk "
            "| length ratio |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for v in self.views:
            d = v["vs_recommended"]
            vs = "-" if v["name"] == self.recommended else f"{_fmt(d['diff'], True)} {_fmt_ci(d['ci'])}"
            lines.append(
                f"| {v['name']} | {_fmt(v['gap'], True)} | {_fmt_ci(v['gap_ci'])} | {vs} | "
                f"{_fmt(v.get('clean_gap'), True)} | {_fmt(v['degenerate'])} | "
                f"{_fmt(v['copies_rubric'])} | {_fmt(v['meta_talk'])} | {_fmt(v['length_ratio'])} |"
            )
        lines += ["", f"Recommended: **{self.recommended}**. {self.reason}"]
        if self.student_criteria:
            names = [v["name"] for v in self.views]
            lines += [
                "",
                "Met rate per criterion (penalties: lower is better):",
                "",
                "| criterion | student | " + " | ".join(names) + " |",
                "|---" * (len(names) + 2) + "|",
            ]
            for title, rate in self.student_criteria.items():
                cells = [_fmt(v["criteria"].get(title)) for v in self.views]
                lines.append(f"| {title} | {_fmt(rate)} | " + " | ".join(cells) + " |")
        return "\n".join(lines)


def _met_rates(by_criterion: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    return {title: row["met_rate"] for title, row in by_criterion.items()}


def _fmt(x: float | None, sign: bool = False) -> str:
    return "n/a" if x is None else (f"{x:+.3f}" if sign else f"{x:.3f}")


def _fmt_ci(ci) -> str:
    return "n/a" if ci is None else f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"


def choose_view(views: list[dict[str, Any]], max_degeneration_margin: float = MAX_DEGENERATION_MARGIN):
    """Apply the rule of this module to rows with `name`, `gap` and `degenerate`; return `(name, reason)`.

    The highest-gap view wins unless its `degenerate` rate is above the lowest rate among the views by more than
    `max_degeneration_margin`; then the highest-gap view within the margin wins. Ties go to the earlier view.
    """
    scored = [v for v in views if v["gap"] is not None]
    if not scored:
        return None, "no view could be scored"
    rates = [v["degenerate"] for v in scored if v["degenerate"] is not None]
    cleanest = min(rates) if rates else None
    best = max(scored, key=lambda v: v["gap"])  # max keeps the first of equal gaps
    if cleanest is None or (best["degenerate"] or 0.0) <= cleanest + max_degeneration_margin:
        return best["name"], (
            f"highest gap ({best['gap']:+.3f}); its degenerate rate {_fmt(best['degenerate'])} is within "
            f"{max_degeneration_margin:.2f} of the cleanest view's ({_fmt(cleanest)})"
        )
    ok = [v for v in scored if (v["degenerate"] or 0.0) <= cleanest + max_degeneration_margin]
    pick = max(ok, key=lambda v: v["gap"])
    return pick["name"], (
        f"{best['name']} has the highest gap ({best['gap']:+.3f}) but {_fmt(best['degenerate'])} degenerate answers, "
        f"more than {max_degeneration_margin:.2f} above the cleanest view ({_fmt(cleanest)}); {pick['name']} has the "
        f"highest gap ({pick['gap']:+.3f}) within that margin"
    )


def compare_teacher_views(
    model,
    dataset: Any,
    judge: RubricJudge,
    views: list[TeacherView] | None = None,
    tokenizer=None,
    n_samples: int | None = 32,
    max_new_tokens: int = 512,
    batch_size: int = 8,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    judge_max_concurrency: int | None = None,
    n_bootstrap: int = 1000,
    confidence_level: float = 0.95,
    max_degeneration_margin: float = MAX_DEGENERATION_MARGIN,
    progress: bool = True,
    generate_fn: GenerateFn | None = None,
) -> ViewComparison:
    """Measure the conditioning gap of each teacher view on the same prompts and recommend one (see the module).

    Args:
        model: A causal LM or a path; may be `None` when `generate_fn` is given.
        dataset: Rubric rows; use the training set.
        judge: Any [`RubricJudge`]; every answer is graded against the whole rubric.
        views: The views to compare; default [`candidate_views`]`()` (penalties shown and omitted).
        tokenizer: The model's tokenizer.
        n_samples: Prompts to sample (seeded); `None` for all.
        max_new_tokens, batch_size, temperature, top_p, seed: Generation settings, shared by every view.
        judge_max_concurrency, n_bootstrap, confidence_level: As in [`conditioning_gap`].
        max_degeneration_margin: The margin of [`choose_view`].
        progress: Show progress bars.
        generate_fn: Replace transformers generation, as in [`conditioning_gap`].

    Returns:
        [`ViewComparison`].
    """
    views = list(views) if views is not None else candidate_views()
    names = [v.name for v in views]
    if len(set(names)) != len(names):
        raise ValueError(f"teacher view names repeat: {names}")
    if max_degeneration_margin < 0:
        raise ValueError(f"max_degeneration_margin is {max_degeneration_margin}; expected 0 or more")
    dataset = select_examples(dataset, n_samples, seed)
    if generate_fn is None:
        model, tokenizer = _resolve_model(model, tokenizer)

        def base_fn(ps):
            return generate_responses(
                model, tokenizer, ps, max_new_tokens, batch_size, temperature, top_p, seed, progress, "generating"
            )
    else:
        base_fn = generate_fn
    # The student's prompts are the same for every view: generate its answers once and share them (paired views).
    cache: dict[str, Any] = {}

    def shared_fn(ps):
        key = repr(list(ps))
        if key not in cache:
            cache[key] = base_fn(ps)
        return cache[key]

    common = dict(
        n_samples=None,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        judge_max_concurrency=judge_max_concurrency,
        n_bootstrap=n_bootstrap,
        confidence_level=confidence_level,
        progress=progress,
        generate_fn=shared_fn,
    )
    gaps = {
        v.name: conditioning_gap(None, dataset, judge, tokenizer=tokenizer, **v.settings(), **common) for v in views
    }

    rows = []
    for view in views:
        g = gaps[view.name]
        rates = g.with_rubric.metrics.degeneration or {}
        clean = (g.without_rubric.metrics.clean_score, g.with_rubric.metrics.clean_score)
        rows.append(
            {
                "name": view.name,
                **view.settings(),
                "gap": g.gap,
                "gap_ci": list(g.gap_ci) if g.gap_ci is not None else None,
                "score_with_rubric": g.score_with_rubric,
                "length_ratio": g.length_ratio,
                # The gap with degenerate answers earning nothing (EvalMetrics.clean_score): the part of the
                # teacher's edge a user would pay for.
                "clean_gap": None if None in clean else clean[1] - clean[0],
                **{k: rates.get(k) for k in ("degenerate", "repeats_line", "copies_rubric", "meta_talk")},
                "criteria": _met_rates(g.with_rubric.metrics.by_criterion),
            }
        )
    recommended, reason = choose_view(rows, max_degeneration_margin)
    # Paired difference of each view's gap from the recommended one's: the student answers are shared, so it is the
    # difference of the teacher scores, prompt by prompt.
    ref = gaps[recommended].with_rubric.examples if recommended is not None else None
    for row in rows:
        row["vs_recommended"] = {"diff": None, "ci": None, "n": 0}
        if ref is None:
            continue
        pairs = [
            (a["score"], b["score"])
            for a, b in zip(gaps[row["name"]].with_rubric.examples, ref, strict=True)
            if a["score"] is not None and b["score"] is not None
        ]
        if pairs:
            mine, theirs = [p[0] for p in pairs], [p[1] for p in pairs]
            ci = bootstrap_ci(mine, theirs, n_bootstrap, confidence_level, seed)
            diff = _clip01(_mean(mine)) - _clip01(_mean(theirs))
            row["vs_recommended"] = {"diff": diff, "ci": list(ci) if ci else None, "n": len(pairs)}
    first = next(iter(gaps.values()), None)
    return ViewComparison(
        views=rows,
        score_without_rubric=first.score_without_rubric if first is not None else None,
        student_criteria=_met_rates(first.without_rubric.metrics.by_criterion) if first is not None else {},
        recommended=recommended,
        reason=reason,
        max_degeneration_margin=max_degeneration_margin,
        n_examples=len(dataset),
        gaps=gaps,
    )
