"""judge-check statistics: accuracy, kappa, false rates, bootstrap intervals, length bias, verdict classes."""

from __future__ import annotations

import math
import random

import pytest

from trl_rubric.evaluation.judge_check import (
    CANNOT_ASSESS,
    MET,
    UNKNOWN,
    UNMET,
    LabelError,
    check_judge,
    length_bias,
    verdict_class,
)

RUBRIC = [{"text": "Names a cause", "weight": 2, "category": "essential", "title": "cause"}]


def _plain_kappa(judge: list[bool], label: list[bool]) -> float:
    """Cohen's kappa by hand: observed agreement against the agreement expected from the two met rates."""
    n = len(judge)
    po = sum(j == lab for j, lab in zip(judge, label, strict=True)) / n
    pj, pl = sum(judge) / n, sum(label) / n
    pe = pj * pl + (1 - pj) * (1 - pl)
    return (po - pe) / (1 - pe)


def _one_criterion(judge: list, label: list, **kwargs):
    n = len(judge)
    return check_judge([[v] for v in judge], [[v] for v in label], [RUBRIC] * n, ["an answer"] * n, **kwargs)


def test_accuracy_kappa_and_false_rates_match_a_hand_computation():
    # 10 pairs: tp=4, fp=1, fn=2, tn=3.
    judge = [True] * 4 + [True] + [False] * 2 + [False] * 3
    label = [True] * 4 + [False] + [True] * 2 + [False] * 3
    o = _one_criterion(judge, label, n_resamples=0).overall
    assert o["confusion"] == {"tp": 4, "fp": 1, "fn": 2, "tn": 3}
    assert o["accuracy"] == pytest.approx(0.7)
    # pj = 0.5, pl = 0.6, pe = 0.3 + 0.2 = 0.5, kappa = (0.7 - 0.5) / 0.5 = 0.4
    assert o["kappa"] == pytest.approx(0.4)
    assert o["kappa"] == pytest.approx(_plain_kappa(judge, label))
    assert o["false_met_rate"] == pytest.approx(1 / 4)  # fp / (fp + tn)
    assert o["false_unmet_rate"] == pytest.approx(2 / 6)  # fn / (fn + tp)
    assert o["judge_met_rate"] == pytest.approx(0.5) and o["label_met_rate"] == pytest.approx(0.6)


def test_kappa_is_zero_for_a_constant_judge_and_one_for_full_agreement():
    label = [True, False, True, True, False, False, True, False]
    constant = _one_criterion([True] * len(label), label, n_resamples=0).overall
    assert constant["kappa"] == pytest.approx(0.0)
    assert constant["accuracy"] == pytest.approx(0.5)
    assert constant["false_met_rate"] == 1.0 and constant["false_unmet_rate"] == 0.0
    agree = _one_criterion(label, label, n_resamples=0).overall
    assert agree["kappa"] == pytest.approx(1.0) and agree["accuracy"] == 1.0


def test_kappa_is_undefined_when_both_raters_are_constant_and_agree():
    o = _one_criterion([True] * 6, [True] * 6, n_resamples=0).overall
    assert o["accuracy"] == 1.0 and o["kappa"] is None


def test_kappa_of_a_coin_flip_judge_is_near_zero():
    rng = random.Random(0)
    label = [rng.random() < 0.6 for _ in range(4000)]
    judge = [rng.random() < 0.5 for _ in range(4000)]
    o = _one_criterion(judge, label, n_resamples=200).overall
    assert abs(o["kappa"]) < 0.05
    low, high = o["kappa_ci"]
    assert low < 0 < high


def test_cannot_assess_and_unknown_are_counted_and_left_out_of_the_scores():
    judge = [True, False, "cannot_assess", None, True]
    label = [True, False, True, True, "CANNOT_ASSESS"]
    o = _one_criterion(judge, label, n_resamples=0).overall
    assert o["n"] == 2 and o["accuracy"] == 1.0
    assert o["judge_cannot_assess"] == 1 and o["judge_unknown"] == 1 and o["label_cannot_assess"] == 1


def test_bootstrap_interval_contains_the_estimate_and_is_the_same_for_the_same_seed():
    rng = random.Random(1)
    label = [rng.random() < 0.5 for _ in range(80)]
    judge = [lab if rng.random() < 0.8 else not lab for lab in label]
    a = _one_criterion(judge, label, n_resamples=300, seed=3).overall
    b = _one_criterion(judge, label, n_resamples=300, seed=3).overall
    c = _one_criterion(judge, label, n_resamples=300, seed=4).overall
    for key in ("accuracy", "kappa", "false_met_rate", "false_unmet_rate"):
        low, high = a[f"{key}_ci"]
        assert low <= a[key] <= high, key
        assert a[f"{key}_ci"] == b[f"{key}_ci"]
    assert a["kappa_ci"] != c["kappa_ci"]


def test_bootstrap_draws_whole_responses():
    # Two criteria per response that always agree with each other: a per-pair bootstrap would understate the spread.
    rng = random.Random(2)
    rubric = [{"text": "a", "title": "a"}, {"text": "b", "title": "b"}]
    label = [[x, x] for x in (rng.random() < 0.5 for _ in range(40))]
    judge = [[x if rng.random() < 0.7 else not x] * 2 for x, _ in label]
    result = check_judge(judge, label, [rubric] * 40, ["x"] * 40, n_resamples=400, seed=0)
    low, high = result.overall["accuracy_ci"]
    # 40 independent responses: the interval is about as wide as for 40 pairs (sd ~ 0.072), not 80 (sd ~ 0.051).
    assert high - low > 2 * 1.96 * 0.06


def test_per_criterion_and_per_category_rows_and_least_reliable_ranking():
    rubric = [
        {"text": "Names a cause", "title": "cause", "category": "essential"},
        {"text": "Is short", "title": "short", "category": "style"},
    ]
    rng = random.Random(5)
    labels, verdicts = [], []
    for _ in range(30):
        a, b = rng.random() < 0.5, rng.random() < 0.5
        labels.append([a, b])
        verdicts.append([a, rng.random() < 0.5])  # perfect on "cause", a coin flip on "short"
    result = check_judge(verdicts, labels, [rubric] * 30, ["x"] * 30, n_resamples=100)
    assert result.by_criterion["cause"]["kappa"] == pytest.approx(1.0)
    assert result.by_criterion["short"]["kappa"] < 0.5
    assert result.least_reliable[0] == "short"
    assert set(result.by_category) == {"essential", "style"}
    assert result.by_category["essential"]["accuracy"] == 1.0
    assert result.by_category["style"]["kappa_ci"] is not None


def _length_world(slope: float, n: int = 600, seed: int = 0):
    """Pairs from a judge with logit P(met) = -1 + 2 * label + slope * z, z the standardised log length."""
    rng = random.Random(seed)
    judge, label, length = [], [], []
    for _ in range(n):
        log_words = rng.uniform(math.log(5), math.log(400))
        z = (log_words - (math.log(5) + math.log(400)) / 2) / ((math.log(400) - math.log(5)) / math.sqrt(12))
        lab = rng.random() < 0.5
        p_met = 1 / (1 + math.exp(-(-1 + 2 * lab + slope * z)))
        judge.append(MET if rng.random() < p_met else UNMET)
        label.append(MET if lab else UNMET)
        length.append(round(math.exp(log_words)))
    return judge, label, length


def test_length_bias_finds_a_judge_that_pays_for_length_and_reads_zero_for_a_fair_one():
    paying = length_bias(*_length_world(1.0), n_resamples=200)
    fair = length_bias(*_length_world(0.0), n_resamples=200)
    assert 0.7 < paying["slope"] < 1.3 and paying["slope_ci"][0] > 0
    assert abs(fair["slope"]) < 0.25 and fair["slope_ci"][0] < 0 < fair["slope_ci"][1]
    # Tercile table: at a fixed label, the paying judge's met rate climbs with length; the fair one's does not.
    rates = [t["met_rate_label_unmet"] for t in paying["terciles"]]
    assert rates[0] < rates[1] < rates[2]
    fair_rates = [t["met_rate_label_unmet"] for t in fair["terciles"]]
    assert max(fair_rates) - min(fair_rates) < 0.12


def test_length_bias_is_zero_for_a_judge_that_always_agrees():
    judge, label, length = _length_world(0.0)
    bias = length_bias(label, label, length, n_resamples=50)
    assert abs(bias["slope"]) < 0.05


def test_verdict_spellings_and_bad_values():
    assert [verdict_class(v) for v in (True, "MET", "met", 1, "yes")] == [MET] * 5
    assert [verdict_class(v) for v in (False, "UNMET", "not met", 0)] == [UNMET] * 4
    assert [verdict_class(v) for v in ("CANNOT_ASSESS", "cannot assess", "n/a")] == [CANNOT_ASSESS] * 3
    assert verdict_class(None) == UNKNOWN
    with pytest.raises(LabelError, match=r"row 3 criterion 2 label is 'maybe'"):
        verdict_class("maybe", "row 3 criterion 2 label")
    with pytest.raises(LabelError, match="is 0.5"):
        verdict_class(0.5)


def test_rows_whose_lengths_do_not_fit_the_rubric_are_refused():
    with pytest.raises(ValueError, match=r"row 0: 2 judge verdicts and 1 labels for a rubric of 1 criteria"):
        check_judge([[True, False]], [[True]], [RUBRIC], ["x"], n_resamples=0)


def test_a_grades_cannot_assess_outcome_is_its_own_class_not_a_failure():
    from trl_rubric.judges.base import Grade
    from trl_rubric.rubric import Rubric

    rubric = Rubric.from_any(
        [{"text": "a", "title": "a"}, {"text": "b", "title": "b"}, {"text": "c", "title": "c", "weight": -1}]
    )
    grade = Grade.from_verdicts(rubric, [True, None, None], cannot_assess=[False, True, False])
    assert grade.outcomes == [MET, CANNOT_ASSESS, UNKNOWN]
    result = check_judge([grade.outcomes], [[True, True, False]], [rubric], ["x"], n_resamples=0)
    o = result.overall
    assert o["n"] == 1 and o["judge_cannot_assess"] == 1 and o["judge_unknown"] == 1
    assert result.by_criterion["b"]["judge_cannot_assess"] == 1 and result.by_criterion["b"]["n"] == 0
