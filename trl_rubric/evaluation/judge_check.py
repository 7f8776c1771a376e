"""How far a judge can be trusted: its verdicts against labelled verdicts (or a second judge), with intervals.

Each criterion of each labelled response gives one pair `(judge verdict, label)`. Over the pairs where both say met
or unmet, [`check_judge`] reports accuracy, Cohen's kappa (agreement beyond what two raters with the same met rates
would reach by chance; 0 for a judge that always says the same thing, 1 for full agreement), the false-met rate
(judge says met where the label says unmet) and the false-unmet rate, overall, per criterion title and per category;
the least reliable criteria; and length bias: whether the judge's met rate grows with the answer's length at a fixed
label (the slope of a logistic fit of the judge's verdict on the label and the standardised log word count, and the
met rate per length tercile given the label).

Verdicts fall in four classes: met, unmet, "cannot assess" (the judge or the labeller said it cannot tell) and
unknown (no verdict: a judge failure or a missing label). The last two are counted and reported, never scored: they
are left out of accuracy and kappa, since neither is a claim about the answer.

Intervals are percentile bootstraps over responses (all of a response's criteria are drawn together, since verdicts on
one answer are not independent), seeded, numpy only. Built after the judge-validation metrics of autorubric (PyPI,
MIT: accuracy, kappa, bias, bootstrap intervals), written here from the textbook definitions without depending on it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..judges.base import CANNOT_ASSESS, MET, UNKNOWN, UNMET
from ..rubric import Rubric
from .errors import EvaluationError

VERDICT_CLASSES = (MET, UNMET, CANNOT_ASSESS, UNKNOWN)

# Spellings read as each class (compared lower-cased, spaces and dashes as underscores). autorubric writes
# MET / UNMET / CANNOT_ASSESS; eval's responses.jsonl writes true / false / null.
_SPELLINGS = {
    MET: {"met", "true", "yes", "1", "pass"},
    UNMET: {"unmet", "not_met", "false", "no", "0", "fail"},
    CANNOT_ASSESS: {"cannot_assess", "cannot_tell", "n/a", "na", "not_applicable"},
    UNKNOWN: {"unknown", "none", "null", ""},
}
_WORD = re.compile(r"\S+")


class LabelError(EvaluationError):
    """A label (or judge verdict) that cannot be read; the message names the row, the field and the value."""


def verdict_class(value: Any, where: str = "verdict") -> str:
    """The class of a verdict or label: `"met"`, `"unmet"`, `"cannot_assess"` or `"unknown"`.

    Reads `True` / `False` / `None`, 1 / 0, and the spellings above in any case, including those of
    [`Grade.outcomes`]. Anything else raises [`LabelError`] naming `where`.
    """
    if value is None:
        return UNKNOWN
    if isinstance(value, bool):
        return MET if value else UNMET
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value in (0, 1):
        return MET if value == 1 else UNMET
    if isinstance(value, str):
        text = value.strip().lower().replace("-", "_").replace(" ", "_")
        for cls, spellings in _SPELLINGS.items():
            if text in spellings:
                return cls
    raise LabelError(
        f"{where} is {value!r}; expected met / unmet (true / false, 1 / 0), cannot_assess, or null for unknown"
    )


def word_count(text: str) -> int:
    """Answer length as whitespace-separated words: the same for every judge, with no tokenizer to agree on."""
    return len(_WORD.findall(text or ""))


@dataclass
class _Pairs:
    """Flat arrays, one entry per (response, criterion)."""

    row: list[int] = field(default_factory=list)
    title: list[str] = field(default_factory=list)
    category: list[str] = field(default_factory=list)
    judge: list[str] = field(default_factory=list)
    label: list[str] = field(default_factory=list)
    length: list[int] = field(default_factory=list)


def _criterion_name(criterion) -> str:
    return criterion.title or criterion.text


def _pairs(
    judge_verdicts: Sequence[Sequence[Any]],
    labels: Sequence[Sequence[Any]],
    rubrics: Sequence[Any],
    responses: Sequence[str],
) -> _Pairs:
    if not (len(judge_verdicts) == len(labels) == len(rubrics) == len(responses)):
        raise EvaluationError(
            f"check_judge got {len(judge_verdicts)} verdict lists, {len(labels)} label lists, {len(rubrics)} rubrics "
            f"and {len(responses)} responses; expected one of each per row"
        )
    out = _Pairs()
    for i, (verdicts, row_labels, rubric, response) in enumerate(
        zip(judge_verdicts, labels, rubrics, responses, strict=True)
    ):
        rubric = Rubric.from_any(rubric)
        verdicts = list(verdicts) if verdicts is not None else [None] * len(rubric)
        if len(verdicts) != len(rubric) or len(row_labels) != len(rubric):
            raise EvaluationError(
                f"row {i}: {len(verdicts)} judge verdicts and {len(row_labels)} labels for a rubric of "
                f"{len(rubric)} criteria; expected one of each per criterion"
            )
        n_words = word_count(response)
        for j, (criterion, v, lab) in enumerate(zip(rubric, verdicts, row_labels, strict=True)):
            out.row.append(i)
            out.title.append(_criterion_name(criterion))
            out.category.append(criterion.category or "uncategorized")
            out.judge.append(verdict_class(v, f"row {i} criterion {j + 1} judge verdict"))
            out.label.append(verdict_class(lab, f"row {i} criterion {j + 1} label"))
            out.length.append(n_words)
    return out


def _table_stats(tp, fp, fn, tn):
    """Accuracy, kappa, false-met and false-unmet rates from confusion counts (numpy arrays or scalars).

    `tp`: judge met, label met; `fp`: judge met, label unmet; `fn`: judge unmet, label met; `tn`: both unmet.
    Undefined values (nothing to divide by, or kappa when both raters are constant and agree) are NaN.
    """
    import numpy as np

    tp, fp, fn, tn = (np.asarray(x, dtype=np.float64) for x in (tp, fp, fn, tn))
    n = tp + fp + fn + tn
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = (tp + tn) / n
        p_judge = (tp + fp) / n
        p_label = (tp + fn) / n
        expected = p_judge * p_label + (1 - p_judge) * (1 - p_label)
        kappa = (acc - expected) / (1 - expected)
        false_met = fp / (fp + tn)
        false_unmet = fn / (fn + tp)
    kappa = np.where(np.isclose(expected, 1.0), np.nan, kappa)
    return {"accuracy": acc, "kappa": kappa, "false_met_rate": false_met, "false_unmet_rate": false_unmet}


def _num(x) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def _percentile_ci(samples, confidence_level: float) -> tuple[float, float] | None:
    import numpy as np

    samples = np.asarray(samples, dtype=np.float64)
    samples = samples[~np.isnan(samples)]
    if samples.size == 0:
        return None
    alpha = (1.0 - confidence_level) / 2
    low, high = np.quantile(samples, [alpha, 1.0 - alpha])
    return float(low), float(high)


def _row_resamples(n_rows: int, n_resamples: int, seed: int):
    """`(n_resamples, n_rows)` counts: how often each response is drawn in each bootstrap resample."""
    import numpy as np

    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_rows, size=(n_resamples, n_rows))
    counts = np.zeros((n_resamples, n_rows), dtype=np.float64)
    np.add.at(counts, (np.arange(n_resamples)[:, None], draws), 1.0)
    return counts


def _group_summary(pairs: _Pairs, mask, n_rows: int, weights, confidence_level: float) -> dict[str, Any]:
    """Counts, point estimates and (with `weights`, the bootstrap row counts) intervals for the pairs in `mask`."""
    import numpy as np

    judge = np.asarray(pairs.judge)[mask]
    label = np.asarray(pairs.label)[mask]
    rows = np.asarray(pairs.row)[mask]
    scored = np.isin(judge, (MET, UNMET)) & np.isin(label, (MET, UNMET))
    cells = {
        "tp": scored & (judge == MET) & (label == MET),
        "fp": scored & (judge == MET) & (label == UNMET),
        "fn": scored & (judge == UNMET) & (label == MET),
        "tn": scored & (judge == UNMET) & (label == UNMET),
    }
    counts = {k: int(v.sum()) for k, v in cells.items()}
    point = _table_stats(counts["tp"], counts["fp"], counts["fn"], counts["tn"])
    n_scored = int(scored.sum())
    summary: dict[str, Any] = {
        "n": n_scored,
        "accuracy": _num(point["accuracy"]),
        "kappa": _num(point["kappa"]),
        "false_met_rate": _num(point["false_met_rate"]),
        "false_unmet_rate": _num(point["false_unmet_rate"]),
        "judge_met_rate": (counts["tp"] + counts["fp"]) / n_scored if n_scored else None,
        "label_met_rate": (counts["tp"] + counts["fn"]) / n_scored if n_scored else None,
        "confusion": counts,
        "judge_cannot_assess": int((judge == CANNOT_ASSESS).sum()),
        "label_cannot_assess": int((label == CANNOT_ASSESS).sum()),
        "judge_unknown": int((judge == UNKNOWN).sum()),
        "label_unknown": int((label == UNKNOWN).sum()),
    }
    if weights is not None and n_scored:
        # Per-row confusion counts, then each resample's table is the row-count-weighted sum.
        per_row = np.zeros((n_rows, 4))
        for k, key in enumerate(("tp", "fp", "fn", "tn")):
            np.add.at(per_row[:, k], rows[cells[key]], 1.0)
        tables = weights @ per_row
        boot = _table_stats(tables[:, 0], tables[:, 1], tables[:, 2], tables[:, 3])
        for key, samples in boot.items():
            summary[f"{key}_ci"] = _percentile_ci(samples, confidence_level)
    return summary


def _logistic_fit(x, y, weights=None, ridge: float = 0.1, iterations: int = 25):
    """Coefficients of a logistic regression of `y` (0/1) on the columns of `x`, by Newton's method; `weights` are
    per-row counts (a bootstrap resample) or `None` for ones.

    A small ridge keeps the fit finite when a column separates `y` perfectly (a judge that always agrees with the
    label), which would otherwise send that coefficient to infinity.
    """
    import numpy as np

    w = np.ones(len(y)) if weights is None else np.asarray(weights, dtype=np.float64)
    beta = np.zeros(x.shape[1])
    penalty = ridge * np.eye(x.shape[1])
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ beta, -30, 30)))
        gradient = x.T @ (w * (y - p)) - penalty @ beta
        hessian = (x * (w * p * (1 - p))[:, None]).T @ x + penalty
        step = np.linalg.solve(hessian, gradient)
        beta = beta + step
        if np.abs(step).max() < 1e-8:
            break
    return beta


def length_bias(
    judge: Sequence[str],
    label: Sequence[str],
    length: Sequence[int],
    rows: Sequence[int] | None = None,
    n_resamples: int = 1000,
    confidence_level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Does the judge say "met" more often on longer answers, at a fixed label?

    Fits `logit P(judge met) = a + b * label_met + c * z`, where `z` is the standardised `log(1 + words)`; `c` (the
    slope, in log-odds per standard deviation of log length) is 0 for a judge that ignores length and positive for one
    that pays for it. Also the judge's met rate per length tercile, separately for label met and label unmet.

    Args:
        judge, label: Verdict classes (see [`verdict_class`]); only pairs where both are met / unmet are used.
        length: Answer length in words, per pair.
        rows: Response index per pair, so that the bootstrap draws responses; each pair its own row if `None`.
        n_resamples, confidence_level, seed: The bootstrap interval of the slope (`0` resamples: none).

    Returns:
        `{"slope", "slope_ci", "n", "terciles": [{"words": [lo, hi], "met_rate_label_met", "n_label_met",
        "met_rate_label_unmet", "n_label_unmet"}]}`; `slope` is `None` when lengths do not vary.
    """
    import numpy as np

    judge, label = np.asarray(judge), np.asarray(label)
    length = np.asarray(length, dtype=np.float64)
    rows = np.arange(len(judge)) if rows is None else np.asarray(rows)
    keep = np.isin(judge, (MET, UNMET)) & np.isin(label, (MET, UNMET))
    judge, label, length, rows = judge[keep], label[keep], length[keep], rows[keep]
    result: dict[str, Any] = {"n": int(keep.sum()), "slope": None, "slope_ci": None, "terciles": []}
    if result["n"] == 0:
        return result
    y = (judge == MET).astype(np.float64)
    lab = (label == MET).astype(np.float64)
    log_len = np.log1p(length)
    # Terciles of answer length (over the answers, not the pairs), met rate given each label.
    edges = np.quantile(log_len, [1 / 3, 2 / 3])
    bucket = np.searchsorted(edges, log_len, side="right")
    for b in range(3):
        in_b = bucket == b
        if not in_b.any():
            continue
        entry: dict[str, Any] = {"words": [int(np.expm1(log_len[in_b].min())), int(np.expm1(log_len[in_b].max()))]}
        for name, value in (("label_met", 1.0), ("label_unmet", 0.0)):
            sel = in_b & (lab == value)
            entry[f"met_rate_{name}"] = float(y[sel].mean()) if sel.any() else None
            entry[f"n_{name}"] = int(sel.sum())
        result["terciles"].append(entry)
    sd = log_len.std()
    if sd == 0:
        return result
    z = (log_len - log_len.mean()) / sd
    x = np.column_stack([np.ones_like(z), lab, z])
    result["slope"] = float(_logistic_fit(x, y)[2])
    if n_resamples > 0:
        unique_rows, row_index = np.unique(rows, return_inverse=True)
        weights = _row_resamples(len(unique_rows), n_resamples, seed + 1)
        slopes = np.empty(n_resamples)
        for s in range(n_resamples):
            w = weights[s][row_index]
            drawn = z[w > 0]
            slopes[s] = _logistic_fit(x, y, w)[2] if drawn.max() > drawn.min() else np.nan
        result["slope_ci"] = _percentile_ci(slopes, confidence_level)
    return result


@dataclass
class JudgeCheckResult:
    """What [`check_judge`] returns. `to_dict()` is what `results.json` holds.

    Attributes:
        overall: Counts, accuracy, kappa, false-met / false-unmet rates (each with `_ci`), met rates of judge and
            labels, the confusion table, and the cannot-assess / unknown counts of both sides.
        by_criterion: The same per criterion title (the criterion's text where it has no title), no intervals.
        by_category: The same per category, with intervals.
        length_bias: See [`length_bias`].
        least_reliable: Criterion titles with at least `min_pairs` scored pairs and at least one disagreement, lowest
            kappa first (accuracy breaks ties; a criterion whose kappa is undefined sorts after those with a kappa).
        config: The settings, for the record.
    """

    overall: dict[str, Any]
    by_criterion: dict[str, dict[str, Any]]
    by_category: dict[str, dict[str, Any]]
    length_bias: dict[str, Any]
    least_reliable: list[str]
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "overall": self.overall,
            "by_category": self.by_category,
            "by_criterion": self.by_criterion,
            "length_bias": self.length_bias,
            "least_reliable": self.least_reliable,
            "config": self.config,
        }


def check_judge(
    judge_verdicts: Sequence[Sequence[Any]],
    labels: Sequence[Sequence[Any]],
    rubrics: Sequence[Any],
    responses: Sequence[str],
    n_resamples: int = 1000,
    confidence_level: float = 0.95,
    seed: int = 0,
    min_pairs: int = 5,
    n_least_reliable: int = 5,
) -> JudgeCheckResult:
    """Compare a judge's verdicts with labels, criterion by criterion.

    Args:
        judge_verdicts: Per response, one verdict per criterion: a grade's `outcomes` (met / unmet / cannot_assess /
            unknown), `True` / `False` / `None`, or any spelling [`verdict_class`] reads; `None` for a whole row means
            the judge failed on it.
        labels: Per response, one label per criterion, read the same way.
        rubrics: Per response, its rubric (anything [`Rubric.from_any`] reads), for titles and categories.
        responses: Per response, its text (for length bias).
        n_resamples: Bootstrap resamples over responses; `0` disables the intervals.
        confidence_level: Interval coverage.
        seed: Seed of the bootstrap; the same seed gives the same intervals.
        min_pairs: Fewest scored pairs for a criterion to be ranked among the least reliable.
        n_least_reliable: How many criteria to name.

    Returns:
        [`JudgeCheckResult`].
    """
    import numpy as np

    if not 0 < confidence_level < 1:
        raise EvaluationError(f"confidence_level is {confidence_level}; expected a number in (0, 1)")
    if not responses:
        raise EvaluationError("nothing to check: no labelled responses")
    pairs = _pairs(judge_verdicts, labels, rubrics, responses)
    n_rows = len(responses)
    weights = _row_resamples(n_rows, n_resamples, seed) if n_resamples > 0 else None
    everything = np.ones(len(pairs.row), dtype=bool)
    overall = _group_summary(pairs, everything, n_rows, weights, confidence_level)
    overall["n_responses"] = n_rows
    titles, categories = np.asarray(pairs.title), np.asarray(pairs.category)
    by_criterion = {
        t: _group_summary(pairs, titles == t, n_rows, None, confidence_level) for t in dict.fromkeys(pairs.title)
    }
    by_category = {
        c: _group_summary(pairs, categories == c, n_rows, weights, confidence_level)
        for c in dict.fromkeys(pairs.category)
    }
    # Only criteria with at least one disagreement: a fully agreeing criterion is not "least reliable" by rank alone.
    ranked = [(t, s) for t, s in by_criterion.items() if s["n"] >= min_pairs and s["accuracy"] < 1.0]
    ranked.sort(key=lambda ts: (ts[1]["kappa"] is None, ts[1]["kappa"] or 0.0, ts[1]["accuracy"] or 0.0))
    bias = length_bias(pairs.judge, pairs.label, pairs.length, pairs.row, n_resamples, confidence_level, seed)
    config = {
        "n_resamples": n_resamples,
        "confidence_level": confidence_level,
        "seed": seed,
        "min_pairs": min_pairs,
        "length_unit": "words",
    }
    return JudgeCheckResult(
        overall=overall,
        by_criterion=by_criterion,
        by_category=by_category,
        length_bias=bias,
        least_reliable=[t for t, _ in ranked[:n_least_reliable]],
        config=config,
    )
