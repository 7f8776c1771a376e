"""Criterion diagnostics over verdict tables, checked against a plain reference, and the one strict-completion rule."""

import random
import statistics

import pytest

from trl_rubric.criterion_diagnostics import (
    CONTRASTING,
    SATURATED,
    UNREACHABLE,
    criterion_diagnostics,
    log_criterion_diagnostics,
    metric_safe,
    strict_outcome,
)
from trl_rubric.evaluation import metrics as eval_metrics
from trl_rubric.judges.base import Grade
from trl_rubric.rubric import Rubric

RUBRIC = Rubric.from_any(
    [
        {"text": "states the dose", "title": "dose", "weight": 3.0, "category": "essential"},
        {"text": "mentions fever", "title": "fever", "weight": 1.0, "category": "essential"},
        {"text": "recommends antibiotics", "title": "antibiotics", "weight": -2.0, "category": "pitfall"},
    ]
)


def reference(rubrics, rows, groups):
    """Plain per-(group, criterion) pass rate / pstdev / status, and strict completion, written out longhand."""
    cells = {}
    for g in dict.fromkeys(groups):
        members = [i for i, x in enumerate(groups) if x == g]
        rubric = rubrics[members[0]]
        for j, c in enumerate(rubric):
            passes = [(rows[i][j] if c.weight >= 0 else not rows[i][j]) for i in members if rows[i][j] is not None]
            rate = sum(passes) / len(passes) if passes else None
            std = statistics.pstdev([float(x) for x in passes]) if passes else None
            status = None
            if len(passes) >= 2:
                status = SATURATED if all(passes) else UNREACHABLE if not any(passes) else CONTRASTING
            cells[(g, j)] = (rate, std, status, len(passes))
    outcomes = []
    for rubric, row in zip(rubrics, rows, strict=True):
        weighted = [(c, v) for c, v in zip(rubric, row, strict=True) if c.weight != 0]
        if any(v is not None and (c.weight > 0) != v for c, v in weighted):
            outcomes.append(False)
        elif any(v is None for _, v in weighted):
            outcomes.append(None)
        else:
            outcomes.append(True)
    known = [o for o in outcomes if o is not None]
    return cells, (sum(known) / len(known) if known else None)


def test_hand_made_groups_get_pass_rates_contrast_and_statuses():
    rows = [
        # group "a": dose met by all (saturated), fever split 2/4 (contrasting), antibiotics met by all (a penalty
        # every rollout hits: unreachable)
        [True, True, True],
        [True, False, True],
        [True, True, True],
        [True, False, True],
        # group "b": dose met by none (unreachable), fever unknown for 3 of 4 (too few to say), penalty avoided by all
        [False, None, False],
        [False, None, False],
        [False, True, False],
        [False, None, False],
    ]
    d = criterion_diagnostics([RUBRIC] * 8, rows, ["a"] * 4 + ["b"] * 4)
    by = {(c.group, c.key): c for c in d.cells}
    assert by[0, "dose"].status == SATURATED and by[0, "dose"].pass_rate == 1.0 and by[0, "dose"].std == 0.0
    assert by[0, "fever"].status == CONTRASTING and by[0, "fever"].std == pytest.approx(0.5)
    assert by[0, "antibiotics"].status == UNREACHABLE and by[0, "antibiotics"].pass_rate == 0.0
    assert by[1, "dose"].status == UNREACHABLE
    assert by[1, "fever"].status is None and by[1, "fever"].n_known == 1
    assert by[1, "antibiotics"].status == SATURATED and by[1, "antibiotics"].pass_rate == 1.0
    assert (d.overall.saturated, d.overall.unreachable, d.overall.contrasting) == (2, 2, 1)
    assert [c.key for c in d.with_status(SATURATED)] == ["dose", "antibiotics"]
    # Strict: group a never (penalty hit); group b never (dose unmet) -> 0 of 8 known.
    assert d.strict_completion == 0.0 and d.n_strict_known == 8
    # Dead weight: a: (3 + 2) / 6 of weight without contrast; b: fever has no status, so (3 + 2) / 5.
    assert d.dead_weight_share == pytest.approx(((5 / 6) + 1.0) / 2)
    # Shared keys get their own summary (both groups carry all three titles).
    assert d.by_criterion["fever"].n_verdicts == 5 and d.by_criterion["fever"].pass_rate == pytest.approx(3 / 5)


@pytest.mark.parametrize("seed", range(5))
def test_random_tables_match_the_plain_reference(seed):
    rng = random.Random(seed)
    rubrics, rows, groups = [], [], []
    for g in range(rng.randint(1, 5)):
        size = rng.randint(2, 6)
        criteria = [
            {
                "text": f"c{j}",
                "title": rng.choice(["x", "y", f"only{g}{j}"]),
                "weight": rng.choice([-2.0, 0.0, 1.0, 3.0]),
            }
            for j in range(rng.randint(1, 4))
        ]
        criteria.append({"text": "anchor", "weight": 1.0})  # a rubric needs one positive weight
        rubric = Rubric.from_any(criteria)
        for _ in range(size):
            rubrics.append(rubric)
            rows.append([rng.choice([True, False, None]) for _ in rubric])
            groups.append(f"g{g}")
    d = criterion_diagnostics(rubrics, rows, groups)
    cells, strict = reference(rubrics, rows, groups)
    order = list(dict.fromkeys(groups))
    assert len(d.cells) == len(cells)
    for c in d.cells:
        rate, std, status, n = cells[(order[c.group], c.criterion)]
        assert (c.n_known, c.status) == (n, status)
        assert c.pass_rate == pytest.approx(rate) and c.std == pytest.approx(std)
    assert d.strict_completion == pytest.approx(strict)
    known = [v for v in cells.values() if v[3]]
    total = sum(v[3] for v in known)
    assert d.overall.pass_rate == pytest.approx(sum(v[0] * v[3] for v in known) / total if total else None)
    assert d.overall.group_std == pytest.approx(statistics.mean(v[1] for v in known) if known else None)
    assert d.overall.contrasting == sum(v[2] == CONTRASTING for v in cells.values())


def test_metrics_carry_the_prefix_and_name_only_shared_criteria():
    other = Rubric.from_any([{"text": "unique to this prompt", "weight": 1.0}, RUBRIC.criteria[0].to_dict()])
    rows = [[True, True, False], [False, True, False], [True, False], [True, True]]
    d = criterion_diagnostics([RUBRIC, RUBRIC, other, other], rows, [0, 0, 1, 1])
    logged = {}
    sent = log_criterion_diagnostics(lambda k, v: logged.__setitem__(k, v), d)
    assert logged == sent and all(k.startswith("criteria/") for k in logged)
    assert logged["criteria/dose/pass_rate"] == pytest.approx(2 / 4)
    assert "criteria/fever/pass_rate" not in logged, "fever appears in one rubric only: aggregated, not named"
    assert logged["criteria/contrasting"] == 2.0  # dose in both groups; the rest is saturated
    assert logged["criteria/strict_completion"] == pytest.approx(2 / 4)
    assert not any("/dose/" in k for k in d.to_metrics(max_named=0))
    assert metric_safe("Mentions the 5-day course / dose") == "Mentions_the_5-day_course_dose"


def test_unknown_values_are_left_out_of_the_metrics_never_zero():
    d = criterion_diagnostics([RUBRIC] * 2, [None, [None, None, None]], [0, 0])
    metrics = d.to_metrics()
    assert "criteria/pass_rate" not in metrics and "criteria/strict_completion" not in metrics
    assert d.dead_weight_share is None and d.n_strict_known == 0


def test_a_group_with_two_rubrics_is_refused_naming_the_rollout():
    other = Rubric.from_any(["something else"])
    with pytest.raises(ValueError, match="rollout 1: its rubric differs from rollout 0"):
        criterion_diagnostics([RUBRIC, other], [[True] * 3, [True]], ["p", "p"])
    with pytest.raises(ValueError, match="rollout 0: 2 verdicts for a rubric of 3"):
        criterion_diagnostics([RUBRIC], [[True, True]])


def test_strict_completion_has_one_definition_shared_with_the_evaluation_metrics():
    assert eval_metrics.strict_outcome is strict_outcome
    rows = [[True, True, False], [True, True, None], [True, False, None], [True, True, True], [False, None, False]]
    grades = [Grade.from_verdicts(RUBRIC, r) for r in rows]
    summary = eval_metrics.summarize(grades, [RUBRIC] * 5, [1] * 5, n_bootstrap=0)
    d = criterion_diagnostics([RUBRIC] * 5, [g.scored_verdicts for g in grades])
    assert d.strict_completion == summary.strict_completion == pytest.approx(1 / 4)
    assert d.n_strict_known == summary.n_strict_known == 4


def test_rubric_reward_logs_criteria_metrics_per_rollout_group():
    import asyncio

    from trl_rubric.judges import RuleJudge
    from trl_rubric.rewards import RubricReward

    rules = {"states the dose": "dose", "mentions fever": "fever", "recommends antibiotics": "antibiotic"}
    completions = ["dose fever", "dose", "dose fever", "dose", "fever", "fever antibiotic", "x", "x"]
    logged = {}
    reward = RubricReward(RuleJudge(rules), num_generations=4)
    asyncio.run(
        reward(
            prompts=["q"] * 8,  # identical prompts: num_generations alone splits them into two groups
            completions=completions,
            rubric=[RUBRIC.to_list()] * 8,
            log_metric=lambda k, v: logged.__setitem__(k, v),
        )
    )
    d = reward.last_diagnostics
    assert [c.status for c in d.cells if c.group == 0] == [SATURATED, CONTRASTING, SATURATED]
    assert [c.status for c in d.cells if c.group == 1] == [UNREACHABLE, CONTRASTING, CONTRASTING]
    assert logged["criteria/saturated"] == 2.0 and logged["criteria/contrasting"] == 3.0
    assert logged["criteria/strict_completion"] == pytest.approx(2 / 8)
    assert logged["criteria/fever/pass_rate"] == pytest.approx(4 / 8)
