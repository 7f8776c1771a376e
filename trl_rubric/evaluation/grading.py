"""Grading: pick the rows, generate, grade each answer against its rubric and summarise ([`evaluate`])."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..judges.base import RubricJudge, prompt_to_text
from ..rubric import Rubric
from .degeneration import degeneration_flags
from .errors import EvaluationError
from .generation import (
    GenerateFn,
    Generations,
    _as_generations,
    check_generation_kwargs,
    generate_responses,
    guard_options,
)
from .loading import _resolve_model
from .metrics import EvalMetrics, _verdicts_fit, strict_outcome, summarize


def _table_to_pandas(rows: list[dict[str, Any]]):
    try:
        import pandas as pd
    except ImportError:
        raise ImportError(
            "to_pandas() needs pandas: pip install pandas (or use .table() for a list of dicts)"
        ) from None
    return pd.DataFrame(rows)


@dataclass
class EvalResult:
    """What [`evaluate`] returns.

    Attributes:
        metrics: Dataset-level [`EvalMetrics`].
        examples: One dict per example: `index`, `prompt` (text), `response`, `score`, `unweighted_score`, `strict`,
            `num_tokens`, `truncated`, `failed`, `judge_error`, `degeneration` (the flags of
            `trl_rubric.evaluation.degeneration`) and `criteria` (a list of `{text, weight, category, title, tags,
            verdict}`), and `prompt_index` and `sample` (which prompt, which of its answers) from [`evaluate`].
        config: The settings that produced it (generation, judge, dataset), for the record.
    """

    metrics: EvalMetrics
    examples: list[dict[str, Any]]
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Metrics at the top level (what `results.json` holds), plus the config."""
        return {**self.metrics.to_dict(), "config": self.config}

    def table(self) -> list[dict[str, Any]]:
        """Per-example rows as flat-ish dicts, ready for `pandas.DataFrame(...)` or a JSONL file."""
        return [dict(row) for row in self.examples]

    def to_pandas(self):
        """The per-example table as a `pandas.DataFrame` (needs pandas)."""
        return _table_to_pandas(self.table())


def select_examples(dataset: Any, n_samples: int | None = None, seed: int = 0):
    """Validated `{prompt, rubric}` rows, reduced to a seeded random subset of `n_samples` rows when asked.

    Args:
        dataset: A `Dataset` with `prompt` and `rubric` columns (used as is), or anything [`load_rubric_dataset`]
            reads (validated with its defaults).
        n_samples: Rows to keep; `None` keeps all.
        seed: Seed of the subset; the same seed picks the same rows.

    Returns:
        A `Dataset`.
    """
    from datasets import Dataset

    from ..data import load_rubric_dataset

    if not (isinstance(dataset, Dataset) and {"prompt", "rubric"} <= set(dataset.column_names)):
        dataset = load_rubric_dataset(dataset)
    if len(dataset) == 0:
        raise EvaluationError("the dataset is empty; expected at least one row with a prompt and a rubric")
    if n_samples is not None:
        if n_samples < 1:
            raise EvaluationError(f"n_samples is {n_samples}; expected a positive number (or None for all rows)")
        if n_samples < len(dataset):
            # A seeded shuffle rather than the first rows: training sets are often sorted by source or topic, and the
            # same seed gives the same rows, so two checkpoints are compared on the same prompts.
            dataset = dataset.shuffle(seed=seed).select(range(n_samples))
    return dataset


def _grade_examples(
    judge: RubricJudge,
    prompts: list[Any],
    generations: Generations,
    rubrics: list[Any],
    max_concurrency: int | None,
    progress: bool,
    n_bootstrap: int,
    confidence_level: float,
    seed: int,
    config: dict[str, Any],
) -> EvalResult:
    grades = judge.grade_many_sync(
        prompts, generations.texts, rubrics, max_concurrency=max_concurrency, progress=progress
    )
    metrics = summarize(
        grades, rubrics, generations.lengths, n_bootstrap, confidence_level, seed, responses=generations.texts
    )
    examples = []
    for i, (prompt, grade, rubric) in enumerate(zip(prompts, grades, rubrics, strict=True)):
        rubric = Rubric.from_any(rubric)
        fits = _verdicts_fit(grade, rubric)
        verdicts = grade.verdicts if fits else [None] * len(rubric)
        # "Cannot assess" resolved by the judge's policy for the scores; the criteria below keep what the judge said.
        scored = grade.scored_verdicts if fits else verdicts
        outcomes = grade.outcomes if fits else ["unknown"] * len(rubric)
        explanations = grade.explanations if fits else [None] * len(rubric)
        score = rubric.score(scored) if fits else grade.score
        examples.append(
            {
                "index": i,
                "prompt": prompt_to_text(prompt),
                "response": generations.texts[i],
                "score": score,
                "unweighted_score": rubric.score(scored, weighted=False) if fits else grade.unweighted_score,
                "strict": strict_outcome(rubric, scored) if fits else None,
                "num_tokens": generations.lengths[i],
                "truncated": generations.truncated[i],
                "failed": grade.score is None or score is None,
                "graded_fraction": rubric.graded_fraction(grade.graded_verdicts)
                if fits and grade.rating is None
                else None,
                "judge_error": grade.error,
                "degeneration": degeneration_flags(generations.texts[i] or "", rubric).to_dict(),
                "criteria": [
                    # The full criterion (title and tags too), so the rows can be regraded or used as labels.
                    # outcome: met / unmet / cannot_assess / unknown; explanation: the judge's own, or null.
                    {**c.to_dict(), "verdict": v, "outcome": o, "explanation": e}
                    for c, v, o, e in zip(rubric, verdicts, outcomes, explanations, strict=True)
                ],
            }
        )
    return EvalResult(metrics=metrics, examples=examples, config=config)


def evaluate(
    model,
    dataset: Any,
    judge: RubricJudge,
    tokenizer=None,
    n_samples: int | None = None,
    max_new_tokens: int = 512,
    batch_size: int = 8,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    judge_max_concurrency: int | None = None,
    n_bootstrap: int = 1000,
    confidence_level: float = 0.95,
    progress: bool = True,
    generate_fn: GenerateFn | None = None,
    n_samples_per_prompt: int = 1,
    generation_kwargs: Mapping[str, Any] | None = None,
    degeneration_guard: int | Mapping[str, Any] | None = None,
) -> EvalResult:
    """Generate answers to each prompt, grade each against its rubric, and summarise.

    Args:
        model: A causal LM, or a path / Hub id (a LoRA adapter folder works; see [`load_model_and_tokenizer`]).
            May be `None` when `generate_fn` is given.
        dataset: A `Dataset` with `prompt` and `rubric` columns, or anything [`load_rubric_dataset`] reads.
        judge: Any [`RubricJudge`]; it sees the original prompt, never the rubric-conditioned one.
        tokenizer: The model's tokenizer (loaded from the model's path if omitted).
        n_samples: Evaluate a seeded random subset of this many rows (all rows if `None`).
        max_new_tokens, batch_size, temperature, top_p, seed: Generation settings (see [`generate_responses`]);
            `seed` also picks the subset and seeds the bootstrap.
        judge_max_concurrency: Bound on concurrent judge calls (the judge's own default if `None`).
        n_bootstrap: Bootstrap resamples for the score interval.
        confidence_level: Interval coverage.
        progress: Show progress bars.
        generate_fn: Replace transformers generation, e.g. with a [`VLLMGenerator`] or a test double; called once
            with the list of prompts.
        n_samples_per_prompt: Answers sampled per prompt (each prompt repeated this many times, next to each
            other, in one generation call); every answer is graded and counted. Examples then carry `prompt_index`
            and `sample`. More answers per prompt average out sampling noise in a comparison of two checkpoints
            ([`compare_eval_runs`] pairs them by prompt).
        generation_kwargs: Further `model.generate` arguments for transformers generation, e.g.
            `{"no_repeat_ngram_size": 4}` (see [`generate_responses`]); recorded in the result's config. Not used
            with `generate_fn`, which owns its own decoding.
        degeneration_guard: Decode with a [`DegenerationGuard`] of this n-gram size, or with a mapping of its
            options (see [`generate_responses`]); recorded in the config with every option spelled out. Not used with
            `generate_fn`.

    Returns:
        [`EvalResult`].
    """
    if n_samples_per_prompt < 1:
        raise EvaluationError(f"n_samples_per_prompt is {n_samples_per_prompt}; expected at least 1")
    dataset = select_examples(dataset, n_samples, seed)
    k = n_samples_per_prompt
    prompts = [p for p in dataset["prompt"] for _ in range(k)]
    rubrics = [r for r in dataset["rubric"] for _ in range(k)]
    extra = check_generation_kwargs(generation_kwargs)
    if (extra or degeneration_guard is not None) and generate_fn is not None:
        raise EvaluationError(
            "generation_kwargs and degeneration_guard apply to transformers generation; a generate_fn decodes on its own"
        )
    if generate_fn is None:
        model, tokenizer = _resolve_model(model, tokenizer)

        def generate_fn(ps):
            return generate_responses(
                model, tokenizer, ps, max_new_tokens, batch_size, temperature, top_p, seed, progress,
                generation_kwargs=extra, degeneration_guard=degeneration_guard,
            )  # fmt: skip

    generations = _as_generations(generate_fn(prompts), tokenizer)
    config = {
        "n_samples": n_samples,
        "n_samples_per_prompt": k,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "generation_kwargs": extra,
        "degeneration_guard": None if degeneration_guard is None else guard_options(degeneration_guard),
        "seed": seed,
        "judge": getattr(judge, "name", type(judge).__name__),
    }
    result = _grade_examples(
        judge,
        prompts,
        generations,
        rubrics,
        judge_max_concurrency,
        progress,
        n_bootstrap,
        confidence_level,
        seed,
        config,
    )
    for example in result.examples:
        example["prompt_index"], example["sample"] = divmod(example["index"], k)
    return result
