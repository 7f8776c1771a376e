"""Criterion diagnostics: which criteria of a batch of rollout groups still teach the policy, and strict completion.

Pure functions over verdict tables (one row of per-criterion verdicts per rollout, rollouts grouped by prompt), used
by both trainers' logs (`criteria/*` metrics), by the evaluation harness, and by anything that needs to find
saturated or unreachable criteria (rubric updates, reweighting).

Definitions, per group (the G rollouts of one prompt) and criterion, over the rollouts with a known verdict:

- **pass**: the criterion is satisfied: a positive (or zero-weight) criterion is met, a penalty (negative weight) is
  *not* met. So "pass rate" reads the same way for both: higher is better.
- **std**: the population standard deviation of the 0/1 verdicts, `sqrt(p (1 - p))` with `p` the pass rate (in
  [0, 0.5]; the same for met and pass). It is the criterion's contrast: 0 means it cannot separate the rollouts.
- **status**, for groups with at least two known verdicts: `"saturated"` (every rollout passes), `"unreachable"`
  (none does) or `"contrasting"` (some do, some don't). With fewer than two known verdicts the status is `None`.
- **dead weight share**: the share of the rubric's absolute weight on criteria with no contrast in the group
  (saturated or unreachable): how much of the static reward's pressure goes to criteria that cannot move the
  group's advantages.
- **strict completion** ([`strict_outcome`]): every positive-weight criterion met and no penalty met; unknown when
  it hangs on an unknown verdict. The one definition the package uses (training logs, `trl-rubric eval`, `gap`, model
  card).
"""

from __future__ import annotations

import math
import re
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .rubric import Rubric

SATURATED, UNREACHABLE, CONTRASTING = "saturated", "unreachable", "contrasting"
STATUSES = (SATURATED, UNREACHABLE, CONTRASTING)
#: Prefix of the training-log metrics.
METRIC_PREFIX = "criteria"
#: Per-criterion training metrics are logged for at most this many shared criterion names (the most frequent).
DEFAULT_MAX_NAMED = 20


def strict_outcome(rubric: Rubric, verdicts: Sequence[bool | None]) -> bool | None:
    """Whether a response fully satisfies its rubric: every positive criterion met and no penalty triggered.

    Three-valued, so that unknown verdicts never count as failures: `False` as soon as a known verdict rules it out (a
    positive criterion not met, or a negative one met), `True` when every verdict is known and none rules it out,
    `None` (unknown, excluded from the rate) otherwise. Zero-weight criteria are ignored.
    """
    unknown = False
    for criterion, verdict in zip(rubric, verdicts, strict=True):
        if criterion.weight == 0:
            continue
        if verdict is None:
            unknown = True
        elif (criterion.weight > 0) != bool(verdict):
            return False
    return None if unknown else True


def strict_completion_rate(
    rubrics: Sequence[Rubric], verdicts: Sequence[Sequence[bool | None]]
) -> tuple[float | None, int]:
    """`(rate, n_known)`: the share of responses with a `True` [`strict_outcome`] among those whose outcome is known."""
    outcomes = [strict_outcome(r, v) for r, v in zip(rubrics, verdicts, strict=True)]
    known = [o for o in outcomes if o is not None]
    return (sum(known) / len(known) if known else None), len(known)


def criterion_key(criterion) -> str:
    """The name a criterion is aggregated under across rubrics: its title, else its text."""
    return criterion.title or criterion.text


@dataclass(frozen=True)
class GroupCriterion:
    """One criterion of one rollout group.

    Attributes:
        group: Index of the group (in order of first appearance in the batch).
        criterion: Index of the criterion in its rubric.
        key: Its title, else its text ([`criterion_key`]).
        category: Its category (`None` when it has none).
        weight: Its human weight.
        n_known: Rollouts with a known verdict on it.
        n_pass: Of those, how many pass (see the module docstring: a penalty passes when not met).
        pass_rate: `n_pass / n_known` (`None` when nothing is known).
        std: `sqrt(pass_rate (1 - pass_rate))` (`None` when nothing is known).
        status: `"saturated"`, `"unreachable"`, `"contrasting"`, or `None` with fewer than two known verdicts.
    """

    group: int
    criterion: int
    key: str
    category: str | None
    weight: float
    n_known: int
    n_pass: int
    pass_rate: float | None
    std: float | None
    status: str | None


@dataclass(frozen=True)
class CriterionSummary:
    """Aggregate over the (group, criterion) cells that share a key, or over all of them.

    Attributes:
        n_cells: Cells (group x criterion) aggregated.
        n_verdicts: Known verdicts in them.
        pass_rate: Passing verdicts over known verdicts.
        group_std: Mean within-group std over the cells with a known verdict.
        saturated, unreachable, contrasting: Cells of each status.
    """

    n_cells: int
    n_verdicts: int
    pass_rate: float | None
    group_std: float | None
    saturated: int
    unreachable: int
    contrasting: int


@dataclass
class CriterionDiagnostics:
    """Diagnostics of one batch; see [`criterion_diagnostics`].

    Attributes:
        cells: One [`GroupCriterion`] per group and criterion.
        overall: Summary over every cell.
        by_criterion: Summary per key, for keys found in the rubrics of at least two groups (criteria shared across
            prompts, such as the titles of a templated rubric); other criteria count in `overall` only.
        strict_completion: Share of rollouts meeting [`strict_outcome`] (`None` when none is known).
        n_strict_known: Rollouts whose strict outcome is known.
        dead_weight_share: Mean over groups of the share of absolute weight on no-contrast criteria (`None` when no
            group has a status for any weighted criterion).
    """

    cells: list[GroupCriterion]
    overall: CriterionSummary
    by_criterion: dict[str, CriterionSummary] = field(default_factory=dict)
    strict_completion: float | None = None
    n_strict_known: int = 0
    dead_weight_share: float | None = None

    def with_status(self, status: str) -> list[GroupCriterion]:
        """The cells of one status (`"saturated"`, `"unreachable"` or `"contrasting"`)."""
        if status not in STATUSES:
            raise ValueError(f"status is {status!r}; expected one of {STATUSES}")
        return [c for c in self.cells if c.status == status]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_metrics(self, prefix: str = METRIC_PREFIX, max_named: int = DEFAULT_MAX_NAMED) -> dict[str, float]:
        """Flat scalar metrics: `{prefix}/pass_rate`, `/group_std`, `/saturated`, `/unreachable`, `/contrasting`
        (cell counts), `/strict_completion`, `/dead_weight_share`, and `{prefix}/<key>/...` for up to `max_named`
        shared keys (most cells first, then by name). Unknown values are left out, never written as 0."""
        out: dict[str, float] = {}
        _summary_metrics(out, prefix, self.overall)
        if self.strict_completion is not None:
            out[f"{prefix}/strict_completion"] = self.strict_completion
        if self.dead_weight_share is not None:
            out[f"{prefix}/dead_weight_share"] = self.dead_weight_share
        named = sorted(self.by_criterion.items(), key=lambda kv: (-kv[1].n_cells, kv[0]))[: max(0, max_named)]
        for key, summary in named:
            _summary_metrics(out, f"{prefix}/{metric_safe(key)}", summary)
        return out


def metric_safe(key: str, limit: int = 48) -> str:
    """A criterion key as a metric-name segment: runs of characters other than letters, digits, `_`, `-` and `.`
    become `_`, cut to `limit` characters."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key).strip("_")[:limit] or "_"


def _summary_metrics(out: dict[str, float], prefix: str, s: CriterionSummary) -> None:
    if s.pass_rate is not None:
        out[f"{prefix}/pass_rate"] = s.pass_rate
    if s.group_std is not None:
        out[f"{prefix}/group_std"] = s.group_std
    for status in STATUSES:
        out[f"{prefix}/{status}"] = float(getattr(s, status))


def _summarize(cells: Sequence[GroupCriterion]) -> CriterionSummary:
    known = [c for c in cells if c.n_known]
    n_verdicts = sum(c.n_known for c in known)
    return CriterionSummary(
        n_cells=len(cells),
        n_verdicts=n_verdicts,
        pass_rate=sum(c.n_pass for c in known) / n_verdicts if n_verdicts else None,
        group_std=sum(c.std for c in known) / len(known) if known else None,
        saturated=sum(c.status == SATURATED for c in cells),
        unreachable=sum(c.status == UNREACHABLE for c in cells),
        contrasting=sum(c.status == CONTRASTING for c in cells),
    )


def group_cells(group: int, rubric: Rubric, rows: Sequence[Sequence[bool | None]]) -> list[GroupCriterion]:
    """The [`GroupCriterion`] cells of one group: `rows` holds one verdict row per rollout, all for `rubric`."""
    cells = []
    for j, criterion in enumerate(rubric):
        column = [row[j] for row in rows if row[j] is not None]
        penalty = criterion.weight < 0
        n_pass = sum(bool(v) != penalty for v in column)
        n = len(column)
        p = n_pass / n if n else None
        status = None
        if n >= 2:
            status = SATURATED if n_pass == n else UNREACHABLE if n_pass == 0 else CONTRASTING
        cells.append(
            GroupCriterion(
                group=group,
                criterion=j,
                key=criterion_key(criterion),
                category=criterion.category,
                weight=criterion.weight,
                n_known=n,
                n_pass=n_pass,
                pass_rate=p,
                std=math.sqrt(p * (1.0 - p)) if p is not None else None,
                status=status,
            )
        )
    return cells


def criterion_diagnostics(
    rubrics: Sequence[Rubric | Any],
    verdicts: Sequence[Sequence[bool | None] | None],
    groups: Sequence[Hashable] | None = None,
) -> CriterionDiagnostics:
    """Per-criterion pass rates, within-group contrast and statuses, and strict completion, for a batch of rollouts.

    Args:
        rubrics: One rubric per rollout (a [`Rubric`] or anything [`Rubric.from_any`] reads); rollouts of one group
            must share their rubric.
        verdicts: One row of verdicts per rollout (`None` = unknown), as long as its rubric; a row of `None` (no
            verdicts at all, e.g. a holistic rating) counts as all unknown. Pass the verdicts the reward was computed
            from (`Grade.scored_verdicts`).
        groups: One group id per rollout (rollouts with equal ids form a group, in any order); `None` puts every
            rollout in one group.

    Returns:
        [`CriterionDiagnostics`].
    """
    n = len(rubrics)
    if len(verdicts) != n or (groups is not None and len(groups) != n):
        raise ValueError(
            f"criterion_diagnostics got {n} rubrics, {len(verdicts)} verdict rows and "
            f"{'no' if groups is None else len(groups)} group ids; expected one of each per rollout"
        )
    parsed = [r if isinstance(r, Rubric) else Rubric.from_any(r) for r in rubrics]
    rows: list[list[bool | None]] = []
    for i, (rubric, row) in enumerate(zip(parsed, verdicts, strict=True)):
        row = [None] * len(rubric) if row is None else list(row)
        if len(row) != len(rubric):
            raise ValueError(f"rollout {i}: {len(row)} verdicts for a rubric of {len(rubric)} criteria")
        rows.append(row)
    order: dict[Hashable, list[int]] = {}
    for i in range(n):
        order.setdefault(0 if groups is None else groups[i], []).append(i)

    cells: list[GroupCriterion] = []
    dead_shares: list[float] = []
    rubrics_with_key: dict[str, int] = {}
    for g, members in enumerate(order.values()):
        rubric = parsed[members[0]]
        for i in members[1:]:
            if parsed[i] != rubric:
                raise ValueError(
                    f"rollout {i}: its rubric differs from rollout {members[0]}'s, but both are in the same group "
                    f"(group id {groups[i] if groups is not None else 0!r}); a group is the rollouts of one prompt"
                )
        mine = group_cells(g, rubric, [rows[i] for i in members])
        cells.extend(mine)
        for key in {c.key for c in mine}:
            rubrics_with_key[key] = rubrics_with_key.get(key, 0) + 1
        judged = [c for c in mine if c.status is not None and c.weight != 0]
        total = sum(abs(c.weight) for c in judged)
        if total > 0:
            dead_shares.append(sum(abs(c.weight) for c in judged if c.status != CONTRASTING) / total)

    by_key: dict[str, list[GroupCriterion]] = {}
    for c in cells:
        if rubrics_with_key[c.key] >= 2:
            by_key.setdefault(c.key, []).append(c)
    rate, n_known = strict_completion_rate(parsed, rows)
    return CriterionDiagnostics(
        cells=cells,
        overall=_summarize(cells),
        by_criterion={k: _summarize(v) for k, v in sorted(by_key.items())},
        strict_completion=rate,
        n_strict_known=n_known,
        dead_weight_share=sum(dead_shares) / len(dead_shares) if dead_shares else None,
    )


def log_criterion_diagnostics(
    log_metric, diagnostics: CriterionDiagnostics, prefix: str = METRIC_PREFIX, max_named: int = DEFAULT_MAX_NAMED
) -> Mapping[str, float]:
    """Send [`CriterionDiagnostics.to_metrics`] to a TRL-style `log_metric(name, value)`; returns what was sent."""
    metrics = diagnostics.to_metrics(prefix, max_named)
    for name, value in metrics.items():
        log_metric(name, value)
    return metrics
