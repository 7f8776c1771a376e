"""Filters over any rubric dataset, each a separate step: validation, de-duplication, and two learnability filters.

- [`validate_rows`]: every row parses with [`load_rubric_dataset`]'s validation; bad rows are reported, not kept.
- [`dedup_rubric`] / [`dedup_rows`]: near-identical criteria of one rubric (same sign) are merged, keeping the first.
- [`grpo_learnability`]: the policy's pass rate per prompt over `k` samples, graded by the judge; GRPO learns nothing
  from a prompt whose samples all pass or all fail (QUBRIC's learnability filter, POW3R's saturation argument), so
  only prompts with a pass rate strictly between the bounds are kept.
- [`rgsd_learnability`]: ours. The per-prompt conditioning gap (teacher view minus plain view, paired, from
  [`conditioning_gap`]); RGSD distils that difference, so prompts whose rubric does not change the model are dropped.

Each returns `(kept_rows, report)`, the report naming every dropped row and why.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from difflib import SequenceMatcher
from typing import Any

from ..data import RubricDatasetError, load_rubric_dataset
from ..rubric import Rubric

_WORD = re.compile(r"[a-z0-9]+")
#: Default similarity (difflib ratio over normalised words) above which two criteria count as the same.
DEDUP_THRESHOLD = 0.9


def _normalise(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def similarity(a: str, b: str) -> float:
    """How alike two criterion texts are, 0-1: difflib's ratio on their lower-cased words (punctuation dropped)."""
    return SequenceMatcher(None, _normalise(a).split(), _normalise(b).split(), autojunk=False).ratio()


def duplicate_pairs(rubric: Any, threshold: float = DEDUP_THRESHOLD) -> list[tuple[int, int]]:
    """`(kept, dropped)` index pairs: criterion `dropped` repeats the earlier, kept criterion `kept`.

    Only criteria of the same sign are compared ("Mentions X" as a requirement and as a penalty contradict each
    other; that is not a duplicate). Identical normalised texts are matched by hashing first, so the pairwise
    comparison only runs over distinct texts.
    """
    rubric = Rubric.from_any(rubric)
    pairs, kept, seen = [], [], {}
    for j, c in enumerate(rubric):
        norm = (c.weight > 0, _normalise(c.text))
        if norm in seen:
            pairs.append((seen[norm], j))
            continue
        match = next(
            (
                i
                for i in kept
                if (rubric[i].weight > 0) == (c.weight > 0) and similarity(rubric[i].text, c.text) >= threshold
            ),
            None,
        )
        if match is None:
            seen[norm] = j
            kept.append(j)
        else:
            pairs.append((match, j))
    return pairs


def dedup_rubric(
    rubric: Any, threshold: float = DEDUP_THRESHOLD
) -> tuple[list[dict[str, Any]], list[tuple[int, int]]]:
    """The rubric without its near-duplicate criteria (normalised dicts), and the `(kept, dropped)` pairs."""
    rubric = Rubric.from_any(rubric)
    pairs = duplicate_pairs(rubric, threshold)
    dropped = {j for _, j in pairs}
    return [c.to_dict() for j, c in enumerate(rubric) if j not in dropped], pairs


def dedup_rows(rows: Sequence[dict[str, Any]], threshold: float = DEDUP_THRESHOLD):
    """[`dedup_rubric`] on every row's `rubric`; the report counts and lists what was merged."""
    out, merged = [], []
    for index, row in enumerate(rows):
        rubric, pairs = dedup_rubric(row["rubric"], threshold)
        if pairs:
            texts = [c["text"] for c in Rubric.from_any(row["rubric"]).to_list()]
            merged.append(
                {"row": index, "dropped": [{"criterion": j + 1, "same_as": i + 1, "text": texts[j]} for i, j in pairs]}
            )
        out.append({**row, "rubric": rubric})
    report = {"rows": len(rows), "criteria_dropped": sum(len(m["dropped"]) for m in merged), "merged": merged}
    return out, report


def validate_rows(rows: Sequence[dict[str, Any]], prompt_column: str = "prompt", rubric_column: str = "rubric"):
    """Keep the rows that [`load_rubric_dataset`]'s validation accepts; report each other row with its error."""
    kept, dropped = [], []
    for index, row in enumerate(rows):
        try:
            load_rubric_dataset(
                [{"prompt": row.get(prompt_column), "rubric": row.get(rubric_column)}], conversational=True
            )
        except RubricDatasetError as e:
            dropped.append({"row": index, "reason": str(e).replace("rubric row 0", f"row {index}", 1)})
            continue
        kept.append(row)
    return kept, {"rows": len(rows), "kept": len(kept), "dropped": dropped}


def _as_dataset(rows: Sequence[dict[str, Any]]):
    return load_rubric_dataset([{"prompt": r["prompt"], "rubric": r["rubric"]} for r in rows])


def grpo_learnability(
    rows: Sequence[dict[str, Any]],
    judge,
    generate_fn,
    k: int = 8,
    pass_score: float = 0.7,
    min_pass_rate: float = 0.0,
    max_pass_rate: float = 1.0,
    judge_max_concurrency: int | None = None,
):
    """Keep prompts whose pass rate over `k` policy samples lies strictly between `min_pass_rate` and `max_pass_rate`.

    Args:
        rows: Rows with `prompt` and `rubric`.
        judge: Any [`RubricJudge`].
        generate_fn: Prompts -> one completion each (a list of strings or [`Generations`]); called once with every
            prompt repeated `k` times. Build it with `trl_rubric.evaluation.generate_responses` (sampling, so the
            copies differ) or a `VLLMGenerator`.
        k: Samples per prompt.
        pass_score: A sample passes when its rubric score is at least this.
        min_pass_rate, max_pass_rate: Exclusive bounds on the pass rate of a kept prompt.
        judge_max_concurrency: Bound on concurrent judge calls.

    Returns:
        `(kept_rows, report)`; each kept row gains a `pass_rate` column. A prompt none of whose samples could be
        graded is dropped as unknown, never counted as failing.
    """
    if k < 1:
        raise ValueError(f"k is {k}; expected at least 1 sample per prompt")
    if not 0.0 <= min_pass_rate < max_pass_rate <= 1.0:
        raise ValueError(f"pass-rate bounds ({min_pass_rate}, {max_pass_rate}); expected 0 <= min < max <= 1")
    dataset = _as_dataset(rows)
    prompts = [p for p in dataset["prompt"] for _ in range(k)]
    rubrics = [r for r in dataset["rubric"] for _ in range(k)]
    out = generate_fn(prompts)
    texts = list(getattr(out, "texts", out))
    grades = judge.grade_many_sync(prompts, texts, rubrics, max_concurrency=judge_max_concurrency)
    kept, dropped, rates = [], [], []
    for index, row in enumerate(rows):
        scores = [g.score for g in grades[index * k : (index + 1) * k] if g.score is not None]
        if not scores:
            rates.append(None)
            dropped.append({"row": index, "reason": f"none of the {k} samples could be graded"})
            continue
        rate = sum(s >= pass_score for s in scores) / len(scores)
        rates.append(rate)
        if min_pass_rate < rate < max_pass_rate:
            kept.append({**row, "pass_rate": rate})
        else:
            dropped.append(
                {
                    "row": index,
                    "reason": f"pass rate {rate:.2f} over {len(scores)} samples is outside "
                    f"({min_pass_rate}, {max_pass_rate})",
                    "pass_rate": rate,
                }
            )
    report = {
        "rows": len(rows),
        "kept": len(kept),
        "k": k,
        "pass_score": pass_score,
        "bounds": [min_pass_rate, max_pass_rate],
        "pass_rates": rates,
        "dropped": dropped,
    }
    return kept, report


def rgsd_learnability(rows: Sequence[dict[str, Any]], gap_fn, k: int = 1, min_delta: float = 0.0):
    """Keep prompts whose rubric changes the model: mean paired score delta (with minus without rubric) > `min_delta`.

    Args:
        rows: Rows with `prompt` and `rubric`.
        gap_fn: `dataset -> GapResult`, e.g. `lambda ds: conditioning_gap(model, ds, judge, n_samples=None, ...)`;
            called once on every row repeated `k` times, in order (keep `n_samples=None`: a subset would reorder).
        k: Pairs of samples per prompt; one pair is a noisy estimate.
        min_delta: Smallest mean per-prompt gap (0-1 score scale) for a kept prompt.

    Returns:
        `(kept_rows, report)`; each kept row gains a `conditioning_gap` column.
    """
    if k < 1:
        raise ValueError(f"k is {k}; expected at least 1 pair of samples per prompt")
    repeated = [r for r in rows for _ in range(k)]
    result = gap_fn(_as_dataset(repeated))
    table = result.table()
    if len(table) != len(repeated):
        raise ValueError(f"gap_fn graded {len(table)} rows of {len(repeated)}; pass n_samples=None so all are kept")
    kept, dropped, gaps = [], [], []
    for index, row in enumerate(rows):
        deltas = [t["score_delta"] for t in table[index * k : (index + 1) * k] if t["score_delta"] is not None]
        if not deltas:
            gaps.append(None)
            dropped.append({"row": index, "reason": "no pair of samples could be graded"})
            continue
        gap = sum(deltas) / len(deltas)
        gaps.append(gap)
        if gap > min_delta:
            kept.append({**row, "conditioning_gap": gap})
        else:
            dropped.append(
                {
                    "row": index,
                    "reason": f"conditioning gap {gap:+.3f} is not above {min_delta}",
                    "conditioning_gap": gap,
                }
            )
    report = {
        "rows": len(rows),
        "kept": len(kept),
        "k": k,
        "min_delta": min_delta,
        "gaps": gaps,
        "overall_gap": result.gap,
        "dropped": dropped,
    }
    return kept, report
