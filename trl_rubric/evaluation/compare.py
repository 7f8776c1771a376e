"""Paired comparison of two `trl-rubric eval` runs on the same prompts ([`compare_eval_runs`]).

Two checkpoints evaluated on the same prompts (same dataset, split, `n_samples` and `seed`) differ by far less than
their separate intervals suggest, because most of the spread is how hard each prompt is. The comparison therefore
pairs the runs prompt by prompt: each prompt's score is the mean over its answers (`n_samples_per_prompt` of them),
the difference is `clip(mean B) - clip(mean A)` over the prompts scored in both runs, and the interval is a paired
percentile bootstrap over prompts ([`bootstrap_ci`] with `paired=`), so answers of one prompt are never treated as
independent evidence. The same comparison is made of the clean scores (`EvalMetrics.clean_score`: an answer the
degeneration checks flagged earns nothing), when both runs' rows carry their flags: a checkpoint that gained by looping
lists a rule judge pays for shows it there.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import EvaluationError
from .stats import _clip01, _mean, bootstrap_ci

#: Settings two runs must share for their prompts (and answers' sampling) to be comparable.
SHARED_SETTINGS = (
    "dataset_name", "split", "n_samples", "seed", "max_new_tokens", "temperature", "top_p", "generation_kwargs",
    "degeneration_guard", "judge",
)  # fmt: skip


def _clean(row: dict[str, Any]) -> float | None:
    """A row's clean score: `min(score, 0)` when flagged degenerate; `None` when ungraded or written without flags."""
    if row.get("failed") or row["score"] is None or "degeneration" not in row:
        return None
    return min(row["score"], 0.0) if row["degeneration"].get("degenerate") else row["score"]


def _read_run(run_dir: str | os.PathLike) -> tuple[dict[str, list[float | None]], dict[str, Any]]:
    """`({prompt text: [score of each answer]}, settings)` of one eval output folder; `settings["_clean"]` holds
    `{prompt text: [clean score of each answer]}`."""
    folder = Path(run_dir)
    responses = folder / "responses.jsonl"
    if not responses.is_file():
        raise EvaluationError(
            f"{str(folder)!r} has no responses.jsonl; pass the output_dir of a `trl-rubric eval` run"
        )
    scores: dict[str, list[float | None]] = defaultdict(list)
    clean: dict[str, list[float | None]] = defaultdict(list)
    with responses.open(encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                scores[row["prompt"]].append(None if row.get("failed") else row["score"])
                clean[row["prompt"]].append(_clean(row))
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise EvaluationError(
                    f"{str(responses)!r} line {line_number} is not an eval response row ({type(e).__name__}: {e})"
                ) from None
    if not scores:
        raise EvaluationError(f"{str(responses)!r} is empty")
    settings: dict[str, Any] = {}
    results = folder / "results.json"
    if results.is_file():
        settings = json.loads(results.read_text(encoding="utf-8")).get("config", {}) or {}
    return dict(scores), {**settings, "_clean": dict(clean)}


@dataclass
class EvalComparison:
    """What [`compare_eval_runs`] returns: run B minus run A, paired by prompt.

    Attributes:
        run_a, run_b: The two output folders.
        score_a, score_b: Clipped mean over paired prompts of each prompt's mean answer score.
        difference: `score_b - score_a`.
        difference_ci: Paired bootstrap interval of the difference over prompts, or `None` (no resamples).
        confidence_level: Coverage of `difference_ci`.
        n_prompts: Prompts scored in both runs (the pairs).
        n_unpaired: Prompts left out because every answer of one run failed to be graded.
        answers_per_prompt: `(A, B)`: answers per prompt in each run (the most seen).
        b_better, a_better, ties: Prompts where B's mean score is higher, lower, equal.
        settings_differ: `{setting: (A's value, B's value)}` of shared settings that differ (empty when none).
        clean_a, clean_b, clean_difference, clean_difference_ci: The same for the clean scores (flagged answers earn
            nothing), over the prompts with a clean score in both runs; `None` when a run's rows carry no flags.
    """

    run_a: str
    run_b: str
    score_a: float | None
    score_b: float | None
    difference: float | None
    difference_ci: tuple[float, float] | None
    confidence_level: float
    n_prompts: int
    n_unpaired: int
    answers_per_prompt: tuple[int, int]
    b_better: int
    a_better: int
    ties: int
    settings_differ: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    clean_a: float | None = None
    clean_b: float | None = None
    clean_difference: float | None = None
    clean_difference_ci: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["difference_ci"] = list(self.difference_ci) if self.difference_ci is not None else None
        out["clean_difference_ci"] = list(self.clean_difference_ci) if self.clean_difference_ci is not None else None
        out["answers_per_prompt"] = list(self.answers_per_prompt)
        out["settings_differ"] = {k: list(v) for k, v in self.settings_differ.items()}
        return out

    def summary(self) -> str:
        """Two lines for a terminal."""
        if self.difference is None:
            return f"no prompt was scored in both runs ({self.n_unpaired} unpaired)"
        ci = self.difference_ci
        ci_text = f" ({round(100 * self.confidence_level)}% CI {ci[0]:+.3f} to {ci[1]:+.3f})" if ci else ""
        text = (
            f"B - A = {self.difference:+.3f}{ci_text} | A {self.score_a:.3f}, B {self.score_b:.3f} | "
            f"{self.n_prompts} paired prompts, {self.answers_per_prompt[0]}/{self.answers_per_prompt[1]} answers each\n"
            f"B better on {self.b_better} prompts, A on {self.a_better}, tied on {self.ties}"
        )
        if self.clean_difference is not None:
            ci = self.clean_difference_ci
            ci_text = f" ({round(100 * self.confidence_level)}% CI {ci[0]:+.3f} to {ci[1]:+.3f})" if ci else ""
            text += (
                f"\nclean score (degenerate answers earn nothing): B - A = {self.clean_difference:+.3f}{ci_text} | "
                f"A {self.clean_a:.3f}, B {self.clean_b:.3f}"
            )
        return text


def compare_eval_runs(
    run_a: str | os.PathLike,
    run_b: str | os.PathLike,
    n_bootstrap: int = 1000,
    confidence_level: float = 0.95,
    seed: int = 0,
) -> EvalComparison:
    """Compare two eval output folders (`responses.jsonl`, `results.json`) made on the same prompts, paired by prompt.

    Args:
        run_a, run_b: `output_dir`s of two `trl-rubric eval` runs (or of [`write_eval_outputs`]); the difference is
            B minus A.
        n_bootstrap: Bootstrap resamples of prompts; `0` skips the interval.
        confidence_level: Interval coverage.
        seed: Seed of the resampling.

    Raises:
        EvaluationError: a folder without responses, or runs whose prompts differ (the message counts them and
            names one).
    """
    scores_a, settings_a = _read_run(run_a)
    scores_b, settings_b = _read_run(run_b)
    only_a, only_b = set(scores_a) - set(scores_b), set(scores_b) - set(scores_a)
    if only_a or only_b:
        example = next(iter(sorted(only_a or only_b)))
        raise EvaluationError(
            f"the runs were not made on the same prompts: {len(only_a)} only in A, {len(only_b)} only in B "
            f"(e.g. {example[:80]!r}); evaluate both with the same dataset, split, n_samples and seed"
        )
    paired_a, paired_b = _paired_means(scores_a, scores_b)  # A's order, which is the eval's prompt order
    unpaired = len(scores_a) - len(paired_a)
    mean_a, mean_b = _mean(paired_a), _mean(paired_b)
    score_a = None if mean_a is None else _clip01(mean_a)
    score_b = None if mean_b is None else _clip01(mean_b)
    clean_pairs = _paired_means(settings_a.pop("_clean"), settings_b.pop("_clean"))
    clean_a = None if not clean_pairs[0] else _clip01(_mean(clean_pairs[0]))
    clean_b = None if not clean_pairs[1] else _clip01(_mean(clean_pairs[1]))
    for settings in (settings_a, settings_b):  # runs written before the option decoded without extra arguments
        settings["generation_kwargs"] = settings.get("generation_kwargs") or {}
        settings.setdefault("degeneration_guard", None)
    differ = {
        key: (settings_a.get(key), settings_b.get(key))
        for key in SHARED_SETTINGS
        if settings_a.get(key) != settings_b.get(key)
    }
    return EvalComparison(
        run_a=str(run_a),
        run_b=str(run_b),
        score_a=score_a,
        score_b=score_b,
        difference=None if score_a is None or score_b is None else score_b - score_a,
        difference_ci=bootstrap_ci(
            paired_b, paired=paired_a, n_resamples=n_bootstrap, confidence_level=confidence_level, seed=seed
        ),  # fmt: skip
        confidence_level=confidence_level,
        n_prompts=len(paired_a),
        n_unpaired=unpaired,
        answers_per_prompt=(max(map(len, scores_a.values())), max(map(len, scores_b.values()))),
        b_better=sum(b > a for a, b in zip(paired_a, paired_b, strict=True)),
        a_better=sum(b < a for a, b in zip(paired_a, paired_b, strict=True)),
        ties=sum(b == a for a, b in zip(paired_a, paired_b, strict=True)),
        settings_differ=differ,
        clean_a=clean_a,
        clean_b=clean_b,
        clean_difference=None if clean_a is None or clean_b is None else clean_b - clean_a,
        clean_difference_ci=None
        if clean_a is None
        else bootstrap_ci(
            clean_pairs[1],
            paired=clean_pairs[0],
            n_resamples=n_bootstrap,
            confidence_level=confidence_level,
            seed=seed,
        ),
    )


def _paired_means(
    a: dict[str, list[float | None]], b: dict[str, list[float | None]]
) -> tuple[list[float], list[float]]:
    """Per prompt (A's order), the mean of each run's known values, for prompts known in both."""
    out_a, out_b = [], []
    for prompt in a:
        x = _mean([s for s in a[prompt] if s is not None])
        y = _mean([s for s in b.get(prompt, []) if s is not None])
        if x is not None and y is not None:
            out_a.append(x)
            out_b.append(y)
    return out_a, out_b
