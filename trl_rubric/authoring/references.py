"""Reference answers written by the model itself: the best clean answer of a few, shown the rubric.

The rubric teacher of RGSD sees the criteria and, on a small model, often talks about them or loops on the list they
ask for; the student learns those habits. This module builds a different teacher context from the same model: for
every training row it samples `n_candidates` answers with the rubric in view (the RGSD teacher's own view), has a
judge grade them against the rubric, drops every answer the degeneration checks flag
([`degeneration_flags`]: repeated lines, pasted criteria, talk about the requirements), and keeps the best-scoring
answer left as the row's reference. Training with `RGSDConfig(teacher_context="reference")` then shows the teacher
that answer instead of the rubric (the OPSD / SDFT reference context, `teacher_context.py`): the teacher
never sees the criteria, so it has nothing to echo, and the answer it is shown already passed the checks.

The judge is called `n_candidates` times per row once, before training, never during it. Rows whose candidates are
all flagged (or all ungraded, or below `min_score`) get no reference; [`SelfReferences.dataset`] leaves them out and
`dropped` names them, so the count is visible before step 0.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from ..evaluation import evaluate
from ..evaluation.generation import generate_responses
from ..teacher import DEFAULT_TEACHER_PENALTIES, DEFAULT_TEACHER_PROMPT_TEMPLATE, build_teacher_prompt

logger = logging.getLogger(__name__)


@dataclass
class SelfReferences:
    """What [`build_self_references`] chose.

    Attributes:
        dataset: The input rows that got a reference, in their order, with the reference in `reference_column`.
        dropped: Indices (in the input) of the rows left without one, and why (`"all flagged"`, `"no grade"`,
            `"below min_score"`).
        records: One entry per input row: `index`, `chosen` (sample number or `None`), `score` (the reference's),
            `scores` and `flagged` (every candidate's), `truncated` (the reference ran into `max_new_tokens`).
        stats: Candidates sampled, the flagged and ungraded shares, mean candidate score, mean clean candidate
            score, mean reference score, rows kept and dropped.
    """

    dataset: Any
    dropped: dict[int, str]
    records: list[dict[str, Any]]
    stats: dict[str, Any] = field(default_factory=dict)


def _pick(candidates: list[dict[str, Any]], min_score: float | None) -> tuple[int | None, str | None]:
    """Index of the best clean, graded candidate (ties: one that ended on its own, then the first), or why none."""
    graded = [c for c in candidates if c["score"] is not None]
    if not graded:
        return None, "no grade"
    clean = [c for c in graded if not c["degeneration"]["degenerate"]]
    if not clean:
        return None, "all flagged"
    best = max(clean, key=lambda c: (c["score"], not c["truncated"], -c["sample"]))
    if min_score is not None and best["score"] < min_score:
        return None, "below min_score"
    return best["sample"], None


def build_self_references(
    model,
    dataset: Any,
    judge,
    tokenizer=None,
    n_candidates: int = 4,
    teacher_prompt_template: str = DEFAULT_TEACHER_PROMPT_TEMPLATE,
    rubric_render_style: str = "numbered",
    teacher_penalties: str = DEFAULT_TEACHER_PENALTIES,
    reference_column: str = "reference",
    min_score: float | None = None,
    max_new_tokens: int = 512,
    batch_size: int = 8,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    judge_max_concurrency: int | None = None,
    progress: bool = True,
    generate_fn=None,
) -> SelfReferences:
    """Give every row the best clean answer of `n_candidates` the model writes with the rubric in view.

    Args:
        model: The causal LM (or a path) whose answers become references: the model you will train, so the
            teacher is still the student's own self. May be `None` when `generate_fn` is given.
        dataset: Rubric rows (`prompt`, `rubric`; anything [`load_rubric_dataset`] reads). Other columns are kept.
        judge: Any [`RubricJudge`]; it grades each candidate against the original prompt and the whole rubric.
        tokenizer: The model's tokenizer.
        n_candidates: Answers sampled per row.
        teacher_prompt_template, rubric_render_style, teacher_penalties: The view the candidates are written
            from, as in `RGSDConfig` (use the view you would train the rubric teacher with).
        reference_column: Column the references are written to; it must not exist yet.
        min_score: Rows whose best clean candidate scores below this get no reference (`None`: any clean answer).
        max_new_tokens, batch_size, temperature, top_p, seed: Generation settings; use the training run's
            `max_completion_length` and `temperature`, so a reference is as long as an answer the student may write.
        judge_max_concurrency: Bound on concurrent judge calls.
        progress: Show progress bars.
        generate_fn: Replace transformers generation (prompts -> completions), as in [`evaluate`]; it receives the
            rubric-conditioned prompts.

    Returns:
        [`SelfReferences`]; train on `.dataset` with `RGSDConfig(teacher_context="reference",
        reference_column=reference_column)`.
    """
    from ..evaluation.grading import select_examples

    if n_candidates < 1:
        raise ValueError(f"n_candidates is {n_candidates}; expected at least 1")
    if min_score is not None and not 0.0 <= min_score <= 1.0:
        raise ValueError(f"min_score is {min_score}; expected a score between 0 and 1 (or None)")
    dataset = select_examples(dataset)
    if reference_column in dataset.column_names:
        raise ValueError(
            f"the dataset already has a {reference_column!r} column; pick another reference_column or drop it first"
        )
    teacher_prompts = [
        build_teacher_prompt(
            p, r, template=teacher_prompt_template, render_style=rubric_render_style, penalties=teacher_penalties
        )
        for p, r in zip(dataset["prompt"], dataset["rubric"], strict=True)
        for _ in range(n_candidates)
    ]

    def teacher_generate(prompts: list[Any]):
        # evaluate() asks for the original prompts, each repeated n_candidates times in row order; answer the
        # rubric-conditioned ones in their place, so the judge still grades against the original question.
        if len(prompts) != len(teacher_prompts):
            raise RuntimeError(f"expected {len(teacher_prompts)} prompts to answer, got {len(prompts)}")
        if generate_fn is not None:
            return generate_fn(teacher_prompts)
        return generate_responses(
            resolved, tok, teacher_prompts, max_new_tokens, batch_size, temperature, top_p, seed, progress,
            "writing reference candidates",
        )  # fmt: skip

    resolved, tok = model, tokenizer
    if generate_fn is None:
        from ..evaluation.loading import _resolve_model

        resolved, tok = _resolve_model(model, tokenizer)
    result = evaluate(
        None,
        dataset,
        judge,
        tokenizer=tok,
        n_samples_per_prompt=n_candidates,
        seed=seed,
        judge_max_concurrency=judge_max_concurrency,
        progress=progress,
        generate_fn=teacher_generate,
    )
    by_row: list[list[dict[str, Any]]] = [[] for _ in range(len(dataset))]
    for example in result.examples:
        by_row[example["prompt_index"]].append(example)
    keep, references, dropped, records = [], [], {}, []
    for i, candidates in enumerate(by_row):
        chosen, why = _pick(candidates, min_score)
        best = candidates[chosen] if chosen is not None else None
        records.append(
            {
                "index": i,
                "chosen": chosen,
                "score": best["score"] if best else None,
                "truncated": best["truncated"] if best else None,
                "scores": [c["score"] for c in candidates],
                "flagged": [c["degeneration"]["degenerate"] for c in candidates],
            }
        )
        if best is None:
            dropped[i] = why
            continue
        keep.append(i)
        references.append(best["response"])
    out = dataset.select(keep).add_column(reference_column, references) if keep else dataset.select([])
    stats = _stats(result.examples, records, len(dataset), len(keep))
    logger.info(
        "self-references: %d of %d rows kept (mean reference score %s); %.0f%% of %d candidates flagged",
        len(keep), len(dataset), stats["mean_reference_score"], 100 * stats["flagged_share"], stats["candidates"],
    )  # fmt: skip
    if not keep:
        raise ValueError(
            f"no row got a reference: of {stats['candidates']} candidates, {stats['flagged']} were flagged as "
            f"degenerate and {stats['ungraded']} got no grade (min_score {min_score}); try more n_candidates"
        )
    return SelfReferences(dataset=out, dropped=dropped, records=records, stats=stats)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _stats(examples: list[dict[str, Any]], records: list[dict[str, Any]], rows: int, kept: int) -> dict[str, Any]:
    graded = [e for e in examples if e["score"] is not None]
    clean = [e["score"] for e in graded if not e["degeneration"]["degenerate"]]
    flagged = sum(bool(e["degeneration"]["degenerate"]) for e in examples)
    return {
        "rows": rows,
        "kept": kept,
        "dropped": rows - kept,
        "candidates": len(examples),
        "flagged": flagged,
        "flagged_share": flagged / len(examples) if examples else 0.0,
        "ungraded": len(examples) - len(graded),
        "mean_candidate_score": _mean([e["score"] for e in graded]),
        "mean_clean_candidate_score": _mean(clean),
        "mean_reference_score": _mean([r["score"] for r in records if r["score"] is not None]),
        "truncated_references": sum(bool(r["truncated"]) for r in records if r["chosen"] is not None),
    }


__all__ = ["SelfReferences", "build_self_references"]
