"""Evaluation: generate answers, grade them against their rubrics, and report; plus the conditioning-gap preflight.

Three questions, three entry points:

- "Did training raise rubric satisfaction, and at what cost in length?" [`evaluate`] generates one answer per prompt,
  grades it with a judge and summarises it with [`summarize`] (weighted score with a bootstrap interval, unweighted
  score, strict completion, per-category and per-tag rates, response length, judge failure rate).
- "Will RGSD work on my model and data at all?" [`conditioning_gap`] runs the same model with and without the rubric
  in its context (the RGSD teacher's and student's views) and measures how much the rubric helps. RGSD
  (Rubric-Guided Self-Distillation, arXiv 2606.12507) distills exactly that difference, so a small gap means little to
  learn. Longer answers can inflate the gap, so the length ratio is reported next to it.
- "Where does the rubric change the model?" [`token_logratio_view`] computes, on the student's own completion,
  `log p_teacher(y_t) - log p_student(y_t)` per token; [`write_token_view_html`] and [`plot_token_views`] draw it.

Scores follow [`Rubric.score`]: per example, the sum of the weights of met criteria (penalties included) over the sum of
positive weights, leaving unknown verdicts out; dataset means are clipped to [0, 1] as HealthBench does.

The package has one module per job: `generation` (transformers and vLLM), `loading` (models and adapters;
[`merge_adapter`]), `grading` ([`evaluate`]), `metrics` ([`summarize`]), `degeneration` (repeated lines, copied rubric
text, meta-talk), `guard` ([`DegenerationGuard`]: decoding without list loops), `stats` (bootstrap), `gap`
([`conditioning_gap`]), `views` ([`compare_teacher_views`]: which teacher view to train with), `verdict` (its
plain-language reading), `token_view` (per-token log-ratios), `token_view_html`, `plots` and `report` (output files).
Everything is importable from `trl_rubric.evaluation` as before.
"""

from __future__ import annotations

from .compare import EvalComparison, compare_eval_runs
from .degeneration import (
    DEGENERATION_FLAGS,
    META_TALK_PATTERNS,
    Degeneration,
    degeneration_flags,
    degeneration_rates,
)
from .errors import EvaluationError
from .gap import GapResult, conditioning_gap
from .generation import (
    GenerateFn,
    Generations,
    VLLMGenerator,
    _prompt_ids,  # noqa: F401 (older code imports it from here)
    format_prompt,
    generate_responses,
)
from .grading import EvalResult, evaluate, select_examples
from .guard import DegenerationGuard
from .loading import adapter_base, check_model_path, load_model_and_tokenizer, merge_adapter
from .metrics import UNCATEGORIZED, EvalMetrics, strict_outcome, summarize
from .plots import plot_length_histogram, plot_score_by_category, plot_token_views
from .report import metrics_markdown, write_eval_outputs, write_gap_outputs
from .stats import bootstrap_ci
from .token_view import TokenView, token_logratio_view
from .token_view_html import write_token_view_html
from .verdict import gap_verdict
from .views import TeacherView, ViewComparison, candidate_views, choose_view, compare_teacher_views

__all__ = [
    "EvalComparison",
    "compare_eval_runs",
    "DEGENERATION_FLAGS",
    "META_TALK_PATTERNS",
    "Degeneration",
    "DegenerationGuard",
    "UNCATEGORIZED",
    "EvalMetrics",
    "EvalResult",
    "EvaluationError",
    "GapResult",
    "GenerateFn",
    "Generations",
    "TeacherView",
    "TokenView",
    "VLLMGenerator",
    "ViewComparison",
    "adapter_base",
    "bootstrap_ci",
    "candidate_views",
    "check_model_path",
    "choose_view",
    "compare_teacher_views",
    "conditioning_gap",
    "degeneration_flags",
    "degeneration_rates",
    "evaluate",
    "format_prompt",
    "gap_verdict",
    "generate_responses",
    "load_model_and_tokenizer",
    "merge_adapter",
    "metrics_markdown",
    "plot_length_histogram",
    "plot_score_by_category",
    "plot_token_views",
    "select_examples",
    "strict_outcome",
    "summarize",
    "token_logratio_view",
    "write_eval_outputs",
    "write_gap_outputs",
    "write_token_view_html",
]
