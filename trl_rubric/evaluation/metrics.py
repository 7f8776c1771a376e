"""Dataset metrics from grades: weighted and unweighted scores, strict completion, per-category and per-tag
rates, lengths and judge failures ([`summarize`])."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..criterion_diagnostics import strict_outcome  # the one definition, re-exported here
from ..judges.base import Grade
from ..rubric import Rubric
from .degeneration import degeneration_flags, flag_rates
from .stats import _clip01, _mean, _median, bootstrap_ci

#: Criteria with no category are reported under this name.
UNCATEGORIZED = "uncategorized"


@dataclass
class EvalMetrics:
    """Dataset-level numbers from [`summarize`]. Scores are `None` when no example could be scored.

    Attributes:
        n_examples: Responses evaluated.
        n_scored: Responses whose grade has a score (the others count as judge failures).
        weighted_score: Mean per-example [`Rubric.score`] over scored examples, clipped to [0, 1].
        weighted_score_unclipped: The same mean before clipping (may be below 0 when penalties dominate).
        weighted_score_ci: Percentile bootstrap interval of `weighted_score` (examples resampled, seeded).
        unweighted_score: Mean per-example score with every criterion counting +1 / -1 by the sign of its weight,
            clipped to [0, 1]. With no penalty criteria this is the mean fraction of criteria met.
        strict_completion: Fraction of examples that meet every positive-weight criterion and trigger no
            negative-weight one. See [`summarize`] for how unknown verdicts are handled.
        n_strict_known: Examples whose strict outcome is known (the denominator of `strict_completion`).
        mean_length: Mean response length in tokens (all responses, judged or not).
        median_length: Median response length in tokens.
        judge_failure_rate: Grades without a score, over all responses.
        unknown_verdict_rate: Unknown (`None`) verdicts over all criterion verdicts.
        by_category: Per criterion category: `n` known verdicts, `met_rate`, `weight` (sum of weights) and `polarity`
            (`"reward"`, `"penalty"` or `"mixed"`); for a penalty category a lower `met_rate` is better.
        by_tag: The same per criterion tag (HealthBench `axis:`/`level:` tags, ...); `rule:` check tags are skipped.
        confidence_level: Coverage of `weighted_score_ci`.
        by_criterion: The same per criterion title (the criterion's text when it has no title): which criteria moved.
        degeneration: Shares of answers that repeat a line, copy rubric text, talk about the requirements, and any of
            them (`repeats_line`, `copies_rubric`, `meta_talk`, `degenerate`, `n`; see
            `trl_rubric.evaluation.degeneration`); `None` when the answers were not given.
        clean_score: `weighted_score` with every answer the degeneration checks flag scored as earning nothing
            (`min(score, 0)`: a penalty it met still counts), clipped to [0, 1]. A rule judge pays for each item of a
            list that repeats itself, and for criterion text pasted into the answer; a user would not. The gap
            between the two scores is how much of a score such answers carry. `None` when the answers were not given.
        judge_agreement: Judge panels only ([`PanelJudge`]): the mean, over (response, criterion) cells with at least
            two member verdicts, of the share of member pairs that agree ([`Grade.agreement`]); `None` otherwise.
    """

    n_examples: int
    n_scored: int
    weighted_score: float | None
    weighted_score_unclipped: float | None
    weighted_score_ci: tuple[float, float] | None
    unweighted_score: float | None
    strict_completion: float | None
    n_strict_known: int
    mean_length: float | None
    median_length: float | None
    judge_failure_rate: float
    unknown_verdict_rate: float
    by_category: dict[str, dict[str, Any]]
    by_tag: dict[str, dict[str, Any]]
    confidence_level: float = 0.95
    by_criterion: dict[str, dict[str, Any]] = field(default_factory=dict)
    degeneration: dict[str, Any] | None = None
    judge_agreement: float | None = None
    clean_score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.weighted_score_ci is not None:
            out["weighted_score_ci"] = list(self.weighted_score_ci)
        return out


def _verdicts_fit(grade: Grade, rubric: Rubric) -> bool:
    """Whether the grade's verdicts can be read per criterion.

    Not so for a holistic rating (a judge in implicit mode sets `Grade.rating` and leaves every verdict `None`) or a
    judge that returns a score without verdicts; those grades count for the scores only.
    """
    if getattr(grade, "rating", None) is not None:
        return False
    return grade.verdicts is not None and len(grade.verdicts) == len(rubric)


def _group_rates(groups: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {}
    for name in sorted(groups):
        g = groups[name]
        polarity = "reward" if g["neg"] == 0 else "penalty" if g["pos"] == 0 else "mixed"
        out[name] = {
            "n": g["n"],
            "met_rate": g["met"] / g["n"] if g["n"] else None,
            "weight": g["weight"],
            "polarity": polarity,
        }
    return out


def summarize(
    grades: Sequence[Grade],
    rubrics: Sequence[Any],
    lengths: Sequence[int],
    n_bootstrap: int = 1000,
    confidence_level: float = 0.95,
    seed: int = 0,
    responses: Sequence[str] | None = None,
) -> EvalMetrics:
    """Dataset metrics from grades, rubrics and response lengths. A pure function: same inputs, same numbers.

    Definitions (per example, then averaged over examples):

    - weighted score: [`Rubric.score`] of the verdicts; mean over scored examples, then clipped to [0, 1];
    - unweighted score: the same with every criterion counting +1 / -1;
    - strict completion: [`strict_outcome`]: every positive-weight criterion met *and* no negative-weight (penalty)
      criterion met. Penalties are included because a response that hits a pitfall is not a complete answer. Examples
      whose outcome hangs on an unknown verdict are left out of the rate;
    - judge failure rate: grades with no score (`Grade.score is None`) over all responses. Unknown verdicts are left
      out of every rate above, never counted as not met.

    A holistic rating (`Grade.rating`, from a judge in implicit mode) counts for the two scores only: it has no
    per-criterion verdicts for strict completion or the breakdowns.

    Args:
        grades: One [`Grade`] per response.
        rubrics: The matching rubrics (anything [`Rubric.from_any`] reads).
        lengths: Response lengths in tokens.
        n_bootstrap: Bootstrap resamples for `weighted_score_ci`; `0` skips it.
        confidence_level: Coverage of the interval.
        seed: Seed of the bootstrap.
        responses: The answers themselves; when given, `degeneration` holds their degeneration rates against their
            rubrics ([`degeneration_rates`]).

    Returns:
        [`EvalMetrics`].
    """
    if not (len(grades) == len(rubrics) == len(lengths)):
        raise ValueError(f"summarize got {len(grades)} grades, {len(rubrics)} rubrics and {len(lengths)} lengths")
    if responses is not None and len(responses) != len(grades):
        raise ValueError(f"summarize got {len(grades)} grades and {len(responses)} responses")
    n = len(grades)
    weighted, unweighted = [], []
    checked = None  # each answer's degeneration flags, when the answers were given
    if responses is not None:
        checked = [degeneration_flags(a or "", r) for a, r in zip(responses, rubrics, strict=True)]
    flagged = [f.degenerate for f in checked] if checked is not None else [False] * n
    clean: list[float] = []
    strict_known, strict_met = 0, 0
    failures = unknown_verdicts = total_verdicts = 0
    categories: dict[str, dict[str, Any]] = {}
    tags: dict[str, dict[str, Any]] = {}
    titles: dict[str, dict[str, Any]] = {}

    def count(groups, key, criterion, verdict):
        g = groups.setdefault(key, {"n": 0, "met": 0, "weight": 0.0, "pos": 0, "neg": 0})
        g["pos" if criterion.weight >= 0 else "neg"] += 1
        if verdict is not None:
            g["n"] += 1
            g["met"] += int(bool(verdict))
            g["weight"] += criterion.weight

    for index, (grade, rubric) in enumerate(zip(grades, rubrics, strict=True)):
        rubric = Rubric.from_any(rubric)
        if not _verdicts_fit(grade, rubric):
            # A judge that returns only a score still counts for the score; per-criterion stats need verdicts.
            if grade.score is None:
                failures += 1
            else:
                weighted.append(grade.score)
                clean.append(min(grade.score, 0.0) if flagged[index] else grade.score)
                if grade.unweighted_score is not None:
                    unweighted.append(grade.unweighted_score)
            continue
        # Scored verdicts: "cannot assess" resolved by the judge's policy (a penalty counts as met by default).
        scored = grade.scored_verdicts
        score = rubric.score(scored)
        if grade.score is None or score is None:
            failures += 1
        else:
            weighted.append(score)
            clean.append(min(score, 0.0) if flagged[index] else score)
            u = rubric.score(scored, weighted=False)
            if u is not None:
                unweighted.append(u)
        total_verdicts += len(grade.verdicts)
        unknown_verdicts += sum(o == "unknown" for o in grade.outcomes)
        strict = strict_outcome(rubric, scored)
        if strict is not None:
            strict_known += 1
            strict_met += int(strict)
        for criterion, verdict in zip(rubric, grade.verdicts, strict=True):
            count(categories, criterion.category or UNCATEGORIZED, criterion, verdict)
            count(titles, criterion.title or criterion.text, criterion, verdict)
            for tag in criterion.tags:
                if not tag.startswith("rule:"):
                    count(tags, tag, criterion, verdict)

    raw_mean = _mean(weighted)
    unweighted_mean = _mean(unweighted)
    return EvalMetrics(
        n_examples=n,
        n_scored=len(weighted),
        weighted_score=_clip01(raw_mean) if raw_mean is not None else None,
        weighted_score_unclipped=raw_mean,
        weighted_score_ci=bootstrap_ci(weighted, None, n_bootstrap, confidence_level, seed),
        unweighted_score=_clip01(unweighted_mean) if unweighted_mean is not None else None,
        strict_completion=strict_met / strict_known if strict_known else None,
        n_strict_known=strict_known,
        mean_length=_mean([float(x) for x in lengths]),
        median_length=_median(lengths),
        judge_failure_rate=failures / n if n else 0.0,
        unknown_verdict_rate=unknown_verdicts / total_verdicts if total_verdicts else 0.0,
        by_category=_group_rates(categories),
        by_tag=_group_rates(tags),
        confidence_level=confidence_level,
        by_criterion=_group_rates(titles),
        degeneration=flag_rates(checked) if checked is not None else None,
        judge_agreement=_mean([a for g in grades for a in (g.agreement or []) if a is not None]),
        clean_score=_clip01(_mean(clean)) if responses is not None and clean else None,
    )
