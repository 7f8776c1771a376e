"""The conditioning gap: the same model with and without the rubric in its context ([`conditioning_gap`]).

RGSD (Rubric-Guided Self-Distillation, arXiv 2606.12507) distills exactly that difference, so a small gap means little to
learn. Longer answers can inflate the gap, so the length ratio is reported next to it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

from ..judges.base import RubricJudge
from ..teacher import (
    DEFAULT_TEACHER_PENALTIES,
    DEFAULT_TEACHER_PROMPT_TEMPLATE,
    build_teacher_prompt,
    check_teacher_penalties,
)
from .generation import GenerateFn, _as_generations, generate_responses
from .grading import EvalResult, _grade_examples, _table_to_pandas, select_examples
from .loading import _resolve_model
from .stats import _clip01, _mean, bootstrap_ci
from .token_view import TokenView, token_logratio_view
from .verdict import gap_verdict

logger = logging.getLogger(__name__)


@dataclass
class GapResult:
    """What [`conditioning_gap`] returns.

    The two scores and the gap are computed on the examples that both views could score (paired), so that
    `gap == score_with_rubric - score_without_rubric` exactly; each view's own full metrics are in `without_rubric` and
    `with_rubric`.

    Attributes:
        score_without_rubric: Clipped mean weighted score of the student's view (prompt only), paired examples.
        score_with_rubric: The same for the teacher's view (prompt + rubric), graded against the original prompt.
        gap: `score_with_rubric - score_without_rubric`.
        gap_ci: Paired bootstrap interval of `gap`.
        length_ratio: Mean response length with the rubric over mean length without.
        mean_length_without_rubric, mean_length_with_rubric: Mean lengths in tokens.
        n_examples: Prompts sampled.
        n_paired: Prompts scored in both views.
        verdict: Plain-language lines: whether RGSD has something to distill, and any length warning.
        (`to_dict()["degeneration"]` holds each view's degeneration rates: the teacher's own rate is the "with
        rubric" one, and RGSD distils it.)
        recommend_rgsd: `False` when the gap is small or not clearly above 0.
        length_warning: `True` when the rubric makes answers much longer.
        without_rubric, with_rubric: Full [`EvalResult`] of each view.
        settings: Thresholds and templates that produced it.
        token_views: Per-token views of the first few student completions (see [`token_logratio_view`]).
        student_token_ids: The student's completion token ids, per prompt (for token views computed later).
    """

    score_without_rubric: float | None
    score_with_rubric: float | None
    gap: float | None
    gap_ci: tuple[float, float] | None
    length_ratio: float | None
    mean_length_without_rubric: float | None
    mean_length_with_rubric: float | None
    n_examples: int
    n_paired: int
    verdict: list[str]
    recommend_rgsd: bool
    length_warning: bool
    without_rubric: EvalResult
    with_rubric: EvalResult
    settings: dict[str, Any] = field(default_factory=dict)
    token_views: list[TokenView] = field(default_factory=list)
    student_token_ids: list[list[int]] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Gap numbers at the top level (what `results.json` holds), plus each view's metrics and the settings."""
        return {
            "score_without_rubric": self.score_without_rubric,
            "score_with_rubric": self.score_with_rubric,
            "gap": self.gap,
            "gap_ci": list(self.gap_ci) if self.gap_ci is not None else None,
            "length_ratio": self.length_ratio,
            "mean_length_without_rubric": self.mean_length_without_rubric,
            "mean_length_with_rubric": self.mean_length_with_rubric,
            "n_examples": self.n_examples,
            "n_paired": self.n_paired,
            "recommend_rgsd": self.recommend_rgsd,
            "length_warning": self.length_warning,
            "verdict": self.verdict,
            "degeneration": {
                "without_rubric": self.without_rubric.metrics.degeneration,
                "with_rubric": self.with_rubric.metrics.degeneration,
            },
            "without_rubric": self.without_rubric.metrics.to_dict(),
            "with_rubric": self.with_rubric.metrics.to_dict(),
            "settings": self.settings,
            "token_views": [v.to_dict() for v in self.token_views],
        }

    def table(self) -> list[dict[str, Any]]:
        """One row per prompt with both views side by side (`score_*`, `num_tokens_*`, `response_*`, `score_delta`)."""
        rows = []
        for a, b in zip(self.without_rubric.examples, self.with_rubric.examples, strict=True):
            delta = None if a["score"] is None or b["score"] is None else b["score"] - a["score"]
            rows.append(
                {
                    "index": a["index"],
                    "prompt": a["prompt"],
                    "score_without_rubric": a["score"],
                    "score_with_rubric": b["score"],
                    "score_delta": delta,
                    "num_tokens_without_rubric": a["num_tokens"],
                    "num_tokens_with_rubric": b["num_tokens"],
                    "response_without_rubric": a["response"],
                    "response_with_rubric": b["response"],
                    "degenerate_without_rubric": a.get("degeneration", {}).get("degenerate"),
                    "degenerate_with_rubric": b.get("degeneration", {}).get("degenerate"),
                }
            )
        return rows

    def to_pandas(self):
        """The paired table as a `pandas.DataFrame` (needs pandas)."""
        return _table_to_pandas(self.table())


def conditioning_gap(
    model,
    dataset: Any,
    judge: RubricJudge,
    tokenizer=None,
    teacher_prompt_template: str = DEFAULT_TEACHER_PROMPT_TEMPLATE,
    rubric_render_style: str = "numbered",
    teacher_penalties: str = DEFAULT_TEACHER_PENALTIES,
    n_samples: int | None = 64,
    max_new_tokens: int = 512,
    batch_size: int = 8,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    judge_max_concurrency: int | None = None,
    n_bootstrap: int = 1000,
    confidence_level: float = 0.95,
    min_gap: float = 0.05,
    max_length_ratio: float = 1.3,
    progress: bool = True,
    generate_fn: GenerateFn | None = None,
    n_token_views: int = 0,
) -> GapResult:
    """Measure the conditioning gap: how much better the model scores when the rubric is in its context.

    The same model answers each sampled prompt twice: as the RGSD student sees it (prompt only) and as the RGSD
    teacher sees it ([`build_teacher_prompt`] with the same template, render style and penalties as `RGSDConfig`).
    Both answers are graded by the same judge against the original prompt. Run it before training: a small gap means
    RGSD has little to distill.

    Args:
        model: A causal LM or a path (see [`evaluate`]); may be `None` when `generate_fn` is given.
        dataset: Rubric rows (see [`evaluate`]); use the training set.
        judge: Any [`RubricJudge`].
        tokenizer: The model's tokenizer.
        teacher_prompt_template: Teacher context with `{prompt}` and `{rubric}` placeholders.
        rubric_render_style: How the rubric is written into it (`"numbered"`, `"weighted"`, `"json"`).
        teacher_penalties: `"show"` or `"omit"` the rubric's penalty criteria in the teacher's view, as
            `RGSDConfig.teacher_penalties`; both answers are still graded against the whole rubric.
        n_samples: Prompts to sample (seeded); `None` for all.
        max_new_tokens, batch_size, temperature, top_p, seed: Generation settings; both views share the seed.
        judge_max_concurrency: Bound on concurrent judge calls.
        n_bootstrap: Paired bootstrap resamples for `gap_ci`.
        confidence_level: Interval coverage.
        min_gap: Smallest gap (0-1 scale) for which RGSD is recommended.
        max_length_ratio: Length ratio above which the result warns that the gap may be mere length.
        progress: Show progress bars.
        generate_fn: Replace transformers generation (see [`evaluate`]); called once per view.
        n_token_views: Compute [`token_logratio_view`] on the first this many student completions (needs `model`).

    Returns:
        [`GapResult`].
    """
    check_teacher_penalties(teacher_penalties)
    dataset = select_examples(dataset, n_samples, seed)
    prompts, rubrics = list(dataset["prompt"]), list(dataset["rubric"])
    teacher_prompts = [
        build_teacher_prompt(
            p, r, template=teacher_prompt_template, render_style=rubric_render_style, penalties=teacher_penalties
        )
        for p, r in zip(prompts, rubrics, strict=True)
    ]
    if generate_fn is None:
        model, tokenizer = _resolve_model(model, tokenizer)

        def generate_fn(ps, desc="generating"):
            return generate_responses(
                model, tokenizer, ps, max_new_tokens, batch_size, temperature, top_p, seed, progress, desc
            )

        student = generate_fn(prompts, "generating (without rubric)")
        teacher = generate_fn(teacher_prompts, "generating (with rubric)")
    else:
        student = generate_fn(prompts)
        teacher = generate_fn(teacher_prompts)
    student, teacher = _as_generations(student, tokenizer), _as_generations(teacher, tokenizer)
    settings = {
        "teacher_prompt_template": teacher_prompt_template,
        "rubric_render_style": rubric_render_style,
        "teacher_penalties": teacher_penalties,
        "n_samples": n_samples,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "seed": seed,
        "min_gap": min_gap,
        "max_length_ratio": max_length_ratio,
        "judge": getattr(judge, "name", type(judge).__name__),
    }
    args = (judge_max_concurrency, progress, n_bootstrap, confidence_level, seed, settings)
    # The judge grades both answers against the original prompt: the rubric in the teacher's context is not part of
    # the question being answered.
    without = _grade_examples(judge, prompts, student, rubrics, *args)
    with_ = _grade_examples(judge, prompts, teacher, rubrics, *args)

    pairs = [
        (b["score"], a["score"])
        for a, b in zip(without.examples, with_.examples, strict=True)
        if a["score"] is not None and b["score"] is not None
    ]
    with_scores, without_scores = [p[0] for p in pairs], [p[1] for p in pairs]
    s_with = _clip01(_mean(with_scores)) if pairs else None
    s_without = _clip01(_mean(without_scores)) if pairs else None
    gap = s_with - s_without if pairs else None
    gap_ci = bootstrap_ci(with_scores, without_scores, n_bootstrap, confidence_level, seed) if pairs else None
    len_without, len_with = _mean(student.lengths), _mean(teacher.lengths)
    ratio = len_with / len_without if len_without else None
    lines, recommend, warn = gap_verdict(gap, gap_ci, ratio, min_gap, max_length_ratio)
    views = []
    if n_token_views > 0:
        if model is None or isinstance(model, (str, os.PathLike)):
            logger.warning("n_token_views=%d needs a loaded model; skipping the per-token view", n_token_views)
        else:
            k = min(n_token_views, len(prompts))
            views = token_logratio_view(
                model,
                tokenizer,
                prompts[:k],
                rubrics[:k],
                student.token_ids[:k],
                teacher_prompt_template=teacher_prompt_template,
                rubric_render_style=rubric_render_style,
                teacher_penalties=teacher_penalties,
            )
    return GapResult(
        score_without_rubric=s_without,
        score_with_rubric=s_with,
        gap=gap,
        gap_ci=gap_ci,
        length_ratio=ratio,
        mean_length_without_rubric=len_without,
        mean_length_with_rubric=len_with,
        n_examples=len(prompts),
        n_paired=len(pairs),
        verdict=lines,
        recommend_rgsd=recommend,
        length_warning=warn,
        without_rubric=without,
        with_rubric=with_,
        settings=settings,
        token_views=views,
        student_token_ids=student.token_ids,
    )
