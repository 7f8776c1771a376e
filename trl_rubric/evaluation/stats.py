"""Bootstrap statistics: clipped means and percentile bootstrap intervals (plain and paired)."""

from __future__ import annotations

from collections.abc import Sequence

from .errors import EvaluationError


def _clip01(x: float) -> float:
    return min(1.0, max(0.0, x))


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _median(xs: Sequence[float]) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    mid = len(s) // 2
    return float(s[mid]) if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def bootstrap_ci(
    values: Sequence[float],
    paired: Sequence[float] | None = None,
    n_resamples: int = 1000,
    confidence_level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of a clipped mean, or of a paired difference of clipped means.

    With `paired`, each resample draws the same example indices from both lists and the statistic is
    `clip(mean(values)) - clip(mean(paired))`, so the interval accounts for per-prompt difficulty shared by the views.

    Args:
        values: Per-example scores.
        paired: Optional per-example scores of a second view, aligned with `values`.
        n_resamples: Bootstrap resamples; `0` disables the interval.
        confidence_level: Interval coverage, e.g. 0.95.
        seed: Seed of the resampling.

    Returns:
        `(low, high)`, or `None` with no data or no resamples.
    """
    import numpy as np

    if not values or n_resamples <= 0:
        return None
    if not 0 < confidence_level < 1:
        raise EvaluationError(f"confidence_level is {confidence_level}; expected a number in (0, 1)")
    a = np.asarray(values, dtype=np.float64)
    b = np.asarray(paired, dtype=np.float64) if paired is not None else None
    if b is not None and b.shape != a.shape:
        raise ValueError(f"paired bootstrap got {len(a)} and {len(b)} values")
    rng = np.random.default_rng(seed)
    stats = np.empty(n_resamples)
    # Resample in chunks so that memory stays bounded on large evaluations.
    chunk = max(1, 2_000_000 // len(a))
    for start in range(0, n_resamples, chunk):
        k = min(chunk, n_resamples - start)
        idx = rng.integers(0, len(a), size=(k, len(a)))
        stat = np.clip(a[idx].mean(axis=1), 0.0, 1.0)
        if b is not None:
            stat = stat - np.clip(b[idx].mean(axis=1), 0.0, 1.0)
        stats[start : start + k] = stat
    alpha = (1.0 - confidence_level) / 2
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(low), float(high)
