"""Policy-aware criterion reweighting: move a rubric's weight, within each category, toward the criteria whose verdicts
still separate a prompt's rollouts.

Within the group of G rollouts of one prompt, a criterion that every rollout meets (saturated) or none meets
(unreachable) says nothing about which rollout is better, yet with static weights it still takes its share of the
reward and dilutes the score differences of the criteria that do. Two methods, both keeping every weight's sign and
each category's total absolute weight (so the rubric's objective, and [`Rubric.score`]'s scale, stay the human ones):

**"ours"** (`method="ours"`, the package's own variant, the default since before POW3R's description appeared). For
prompt `x` and criterion `k`:

    p_k   = fraction of the group's rollouts that meet k (unknown verdicts left out)
    s_k   = sqrt(p_k (1 - p_k))                                    spread in [0, 0.5]
    S_k   = d * S_k(previous visit of x) + (1 - d) * s_k            EMA over visits (S_k = s_k on the first)
    m     = max(mean_j S_j, floor)                                  mean over the whole rubric
    f_k   = clip(max(S_k, floor) / m, lo, hi)                       factor; 1 for a criterion with no known verdict
    w'_k  = w_k f_k * sum_{j in C(k)} |w_j| / sum_{j in C(k)} |w_j| f_j

where `C(k)` is the criteria of `k`'s category (criteria without one form their own group).

**"pow3r"** (`method="pow3r"`): our reading of POW3R ("Policy-Aware Rubric Rewards for More Efficient RLVR Training",
arXiv 2605.20164). No code is public, and beyond the abstract the only description we know is an unreviewed
third-party summary: contrast is a smoothed per-criterion standard deviation of verdicts within a prompt's rollouts,
turned into a weight factor, clipped, and normalised with a per-criterion floor, preserving the human weights' sign
and category balance. The exact smoothing, clip and floor are not known; the choices below are ours and may differ
from the paper's. With `h_k = |w_k| / W_C` the human share of `k` in its category (`W_C = sum_{j in C} |w_j|`):

    S_k   = EMA-smoothed spread, as above (the contrast)
    S_C   = sum_{j in C} h_j S_j                                    human-weighted mean contrast of the category
    r_k   = min(S_k / S_C, hi)                                      factor (1 where S_k is unknown)
    q_k   = h_k r_k / sum_{j in C} h_j r_j                          contrast-weighted share, then the floor:
    q_k  >= weight_floor * h_k                                      for every k, the rest shared in proportion to h r
    w'_k  = sign(w_k) W_C q_k

A category in which nothing contrasts (`S_C = 0`) keeps its human weights. Where "ours" floors the *spread* and clips
the factor before the category rescaling (so a criterion can end below `lo` times its weight), "pow3r" normalises
contrast within the category and guarantees each criterion at least `weight_floor` of its human weight *after*
normalisation; a saturated or unreachable criterion sits exactly at that floor.

In implicit judge mode there are no verdicts, so the rating is returned unchanged (handled by the caller).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

REWEIGHTING_METHODS = ("ours", "pow3r")


@dataclass
class ReweightingConfig:
    """Parameters of policy-aware criterion reweighting (formulas in the `trl_rubric.reweighting` docstring).

    Args:
        method: `"ours"` (default) or `"pow3r"` (our reading of arXiv 2605.20164).
        lo: Smallest factor a criterion's weight can be multiplied by, before the category rescaling ("ours" only).
        hi: Largest factor (both methods).
        floor: Floor on a criterion's spread and on the mean spread ("ours" only; spreads lie in [0, 0.5]).
        ema_decay: Weight of the previous visit's spread in the moving average; 0 uses the current group only.
        weight_floor: Smallest weight a criterion keeps, as a fraction of its human weight, after normalisation
            ("pow3r" only).
    """

    lo: float = 0.25
    hi: float = 4.0
    floor: float = 0.05
    ema_decay: float = 0.5
    method: str = "ours"
    weight_floor: float = 0.1

    def __post_init__(self):
        if self.method not in REWEIGHTING_METHODS:
            raise ValueError(f"reweighting method is {self.method!r}; expected one of {REWEIGHTING_METHODS}")
        if not 0 < self.lo <= 1 <= self.hi:
            raise ValueError(f"reweighting bounds lo={self.lo}, hi={self.hi}; expected 0 < lo <= 1 <= hi")
        if not 0 < self.floor <= 0.5:
            raise ValueError(f"reweighting floor is {self.floor}; expected 0 < floor <= 0.5 (spreads lie in [0, 0.5])")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"reweighting ema_decay is {self.ema_decay}; expected 0 <= ema_decay < 1")
        if not 0 <= self.weight_floor <= 1:
            raise ValueError(f"reweighting weight_floor is {self.weight_floor}; expected 0 <= weight_floor <= 1")


def reweighting_from(value: Any) -> ReweightingConfig | None:
    """A [`ReweightingConfig`] from the forms users give: `None`/`False`/`"none"` (off), `True`/`"ours"`, `"pow3r"`, or
    a config."""
    if isinstance(value, ReweightingConfig):
        return value
    if value is None or value is False:
        return None
    if value is True:
        return ReweightingConfig()
    if isinstance(value, str):
        name = value.strip().lower()
        if name in ("", "none", "false", "off", "no"):
            return None
        if name in ("true", "on", "yes"):
            return ReweightingConfig()
        return ReweightingConfig(method=name)
    raise TypeError(f"reweighting is {value!r}; expected None, a bool, one of {REWEIGHTING_METHODS} or a config")


def criterion_spread(group_verdicts: Sequence[Sequence[bool | None]]) -> list[float | None]:
    """Per criterion, `sqrt(p (1 - p))` over a group's rollouts, `p` the fraction meeting it.

    Args:
        group_verdicts: One row of verdicts per rollout (`None` = unknown), all rows of the same length.

    Returns:
        One spread per criterion, `None` where no rollout has a known verdict.
    """
    if not group_verdicts:
        return []
    spreads: list[float | None] = []
    for column in zip(*group_verdicts, strict=True):
        known = [v for v in column if v is not None]
        if not known:
            spreads.append(None)
            continue
        p = sum(known) / len(known)
        spreads.append(math.sqrt(p * (1.0 - p)))
    return spreads


def ema_update(previous: float | None, current: float | None, decay: float) -> float | None:
    """Exponential moving average step; a missing side leaves the other unchanged."""
    if current is None:
        return previous
    if previous is None:
        return current
    return decay * previous + (1.0 - decay) * current


def reweighting_factors(spreads: Sequence[float | None], lo: float, hi: float, floor: float) -> list[float]:
    """ "ours": `f_k = clip(max(S_k, floor) / max(mean_j S_j, floor), lo, hi)`; 1 where the spread is unknown."""
    known = [s for s in spreads if s is not None]
    if not known:
        return [1.0] * len(spreads)
    mean = max(sum(known) / len(known), floor)
    return [1.0 if s is None else min(hi, max(lo, max(s, floor) / mean)) for s in spreads]


def reweight(weights: Sequence[float], categories: Sequence[str | None], factors: Sequence[float]) -> list[float]:
    """Multiply weights by factors, then rescale within each category so its total absolute weight is unchanged."""
    total: dict[Any, float] = defaultdict(float)
    scaled: dict[Any, float] = defaultdict(float)
    for w, c, f in zip(weights, categories, factors, strict=True):
        total[c] += abs(w)
        scaled[c] += abs(w) * f
    return [
        w * f * (total[c] / scaled[c]) if scaled[c] > 0 else w
        for w, c, f in zip(weights, categories, factors, strict=True)
    ]


def _floored_shares(human: Sequence[float], raw: Sequence[float], weight_floor: float) -> list[float]:
    """Shares proportional to `raw` (summing to 1), each at least `weight_floor * human` (`human` sums to 1)."""
    fixed = [False] * len(raw)
    while True:
        free_mass = 1.0 - sum(weight_floor * h for h, f in zip(human, fixed, strict=True) if f)
        free_raw = sum(r for r, f in zip(raw, fixed, strict=True) if not f)
        shares = [
            weight_floor * h if f else (free_mass * r / free_raw if free_raw > 0 else 0.0)
            for h, r, f in zip(human, raw, fixed, strict=True)
        ]
        low = [not f and s < weight_floor * h - 1e-12 for s, h, f in zip(shares, human, fixed, strict=True)]
        if not any(low):
            if free_raw <= 0 and not all(fixed):  # nothing left to share by: spread the rest by human weight
                rest = [h for h, f in zip(human, fixed, strict=True) if not f]
                return [s if f else free_mass * h / sum(rest) for s, h, f in zip(shares, human, fixed, strict=True)]
            return shares
        fixed = [f or lo for f, lo in zip(fixed, low, strict=True)]


def pow3r_weights(
    weights: Sequence[float],
    categories: Sequence[str | None],
    contrasts: Sequence[float | None],
    hi: float,
    weight_floor: float,
) -> list[float]:
    """ "pow3r" weights from smoothed contrasts (formula in the module docstring); sign and category totals kept."""
    out = list(map(float, weights))
    members: dict[Any, list[int]] = defaultdict(list)
    for i, c in enumerate(categories):
        members[c].append(i)
    for idx in members.values():
        total = sum(abs(weights[i]) for i in idx)
        if total == 0:
            continue
        human = [abs(weights[i]) / total for i in idx]
        known = [(h, contrasts[i]) for h, i in zip(human, idx, strict=True) if contrasts[i] is not None]
        known_mass = sum(h for h, _ in known)
        mean = sum(h * s for h, s in known) / known_mass if known_mass > 0 else 0.0
        if mean <= 0:
            continue  # nothing in this category separates the rollouts: keep the human split
        ratios = [1.0 if contrasts[i] is None else min(hi, contrasts[i] / mean) for i in idx]
        shares = _floored_shares(human, [h * r for h, r in zip(human, ratios, strict=True)], weight_floor)
        for i, q in zip(idx, shares, strict=True):
            out[i] = math.copysign(total * q, weights[i])
    return out


class CriterionReweighter:
    """Reweighted criterion weights per rollout group, with the moving average of spreads kept across calls.

    Args:
        config: A [`ReweightingConfig`].
    """

    def __init__(self, config: ReweightingConfig):
        self.config = config
        self._spread_ema: dict[tuple[Hashable, str], float] = {}

    def smoothed_spreads(self, key: Hashable, texts: Sequence[str], group_verdicts) -> list[float | None]:
        """Update and return the moving-average spread of each criterion (`texts`) of the prompt `key`."""
        smoothed = []
        for text, spread in zip(texts, criterion_spread(group_verdicts), strict=True):
            value = ema_update(self._spread_ema.get((key, text)), spread, self.config.ema_decay)
            if value is not None:
                self._spread_ema[(key, text)] = value
            smoothed.append(value)
        return smoothed

    def group_weights(
        self,
        key: Hashable,
        texts: Sequence[str],
        weights: Sequence[float],
        categories: Sequence[str | None],
        group_verdicts: Sequence[Sequence[bool | None]],
    ) -> list[float]:
        """The reweighted weights of one group's rubric (criteria `texts`, human `weights`, `categories`)."""
        cfg = self.config
        smoothed = self.smoothed_spreads(key, texts, group_verdicts)
        if cfg.method == "pow3r":
            return pow3r_weights(weights, categories, smoothed, cfg.hi, cfg.weight_floor)
        return reweight(weights, categories, reweighting_factors(smoothed, cfg.lo, cfg.hi, cfg.floor))
