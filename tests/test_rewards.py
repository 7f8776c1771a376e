"""RubricReward: scores from a judge, unknown -> None, logging, and the criterion reweighting math."""

import asyncio
import math

import pytest
from _judges import CountingJudge
from trl.trainer.utils import get_callable_name, is_async_callable

from trl_rubric import Rubric, RubricError
from trl_rubric.judges import RuleJudge
from trl_rubric.rewards import (
    ReweightingConfig,
    RubricReward,
    criterion_spread,
    ema_update,
    reweight,
    reweighting_factors,
)

RUBRIC = [
    {"text": "mentions fever", "weight": 3.0, "category": "essential"},
    {"text": "mentions dose", "weight": 1.0, "category": "essential"},
    {"text": "mentions wrong", "weight": -2.0, "category": "pitfall"},
]
RULES = {"mentions fever": "fever", "mentions dose": "dose", "mentions wrong": "wrong"}


def call(reward, prompts, completions, **kwargs):
    return asyncio.run(reward(prompts=prompts, completions=completions, **kwargs))


def test_reward_is_an_async_trl_reward_function_with_a_name():
    reward = RubricReward(RuleJudge(RULES))
    assert is_async_callable(reward)
    assert get_callable_name(reward) == "rubric_judge"


def test_weighted_and_unweighted_scores_follow_the_rubric_formula():
    completions = ["fever", "fever and dose", "dose but wrong", [{"role": "assistant", "content": "fever wrong"}]]
    rubrics = [RUBRIC] * 4
    weighted = call(RubricReward(RuleJudge(RULES)), ["q"] * 4, completions, rubric=rubrics)
    assert weighted == pytest.approx([3 / 4, 1.0, (1 - 2) / 4, (3 - 2) / 4])
    unweighted = call(RubricReward(RuleJudge(RULES), weighted=False), ["q"] * 4, completions, rubric=rubrics)
    assert unweighted == pytest.approx([1 / 2, 1.0, 0.0, 0.0])


def test_unknown_verdicts_give_none_never_zero():
    judge = RuleJudge({"mentions dose": "dose"})  # no rule for the other criteria
    rewards = call(RubricReward(judge), ["q"] * 2, ["fever", "dose"], rubric=[RUBRIC[:1], RUBRIC])
    assert rewards[0] is None, "no usable verdict -> None, which TRL turns into NaN and excludes"
    assert rewards[1] is None, "1 of 6 points graded: below min_graded_fraction, so unknown"
    lenient = call(RubricReward(judge, min_graded_fraction=0.0), ["q"], ["dose"], rubric=[RUBRIC])
    assert lenient == [1.0], "scored on the known criteria only"


def test_rubric_column_is_read_in_any_format_with_custom_name():
    rar = [{"title": "t", "description": "Essential Criteria: mentions fever", "weight": 5}]
    reward = RubricReward(RuleJudge(RULES), rubric_column="criteria")
    assert call(reward, ["q", "q"], ["fever", "no"], criteria=[rar, '["mentions fever"]']) == [1.0, 0.0]


def test_missing_rubric_column_and_bad_rubric_give_clear_errors():
    reward = RubricReward(RuleJudge(RULES))
    with pytest.raises(KeyError, match="needs the dataset column 'rubric'.*remove_unused_columns=False"):
        call(reward, ["q"], ["fever"], answer=["x"])
    with pytest.raises(RubricError, match="completion 1: column 'rubric': criterion 1 has weight 'high'"):
        call(reward, ["q", "q"], ["a", "b"], rubric=[RUBRIC, [{"text": "x", "weight": "high"}]])


def test_reward_logs_judge_metrics_and_verdict_columns():
    metrics, extra = {}, {}
    judge = RuleJudge({"mentions fever": "fever", "mentions wrong": "wrong"})
    rewards = call(
        RubricReward(judge),
        ["q"] * 3,
        ["fever", "wrong", "fever"],
        rubric=[RUBRIC] * 3,
        log_metric=lambda k, v: metrics.__setitem__(k, v),
        log_extra=lambda k, v: extra.__setitem__(k, v),
    )
    assert metrics["judge/score_mean"] == pytest.approx(sum(rewards) / 3)
    assert metrics["judge/frac_met/essential"] == pytest.approx(2 / 3)  # dose has no rule: left out
    assert metrics["judge/frac_met/pitfall"] == pytest.approx(1 / 3)
    assert metrics["judge/calls"] == 3 and metrics["judge/unknown_verdicts"] == 3 and metrics["judge/failures"] == 0
    assert metrics["judge/unknown_frac"] == 0.0
    assert extra["judge_verdicts"][0] == "1:yes 2:? 3:no"
    assert "no rule for criteria [2]" in extra["judge_error"][0]


# --- reweighting math on hand-made verdict tables -------------------------------------------------------------------

# Four rollouts x three criteria: 0 is saturated (all meet it), 1 contrasts (half do), 2 is unreachable (none do).
TABLE = [[True, True, False], [True, False, False], [True, True, False], [True, False, False]]


def test_spread_is_zero_for_saturated_and_unreachable_and_max_for_contrasting_criteria():
    assert criterion_spread(TABLE) == [0.0, 0.5, 0.0]
    assert criterion_spread([[True, None], [False, None], [None, None]]) == [0.5, None]


def test_saturated_criterion_is_down_weighted_and_contrasting_one_up_weighted():
    factors = reweighting_factors([0.0, 0.5, 0.0], lo=0.25, hi=4.0, floor=0.05)
    # mean spread 1/6; saturated: max(0, floor) / mean = 0.3; contrasting: 0.5 / mean = 3.
    assert factors == pytest.approx([0.3, 3.0, 0.3])
    assert factors[1] > 1 > factors[0]
    assert reweighting_factors([None, None], 0.25, 4.0, 0.05) == [1.0, 1.0]
    # All equally informative: no change.
    assert reweighting_factors([0.3, 0.3], 0.25, 4.0, 0.05) == [1.0, 1.0]


def test_reweighting_keeps_each_category_total():
    weights = [3.0, 1.0, 2.0, -2.0]
    categories = ["essential", "essential", "important", "pitfall"]
    new = reweight(weights, categories, [0.3, 3.0, 4.0, 0.25])
    assert sum(abs(w) for w, c in zip(new, categories, strict=True) if c == "essential") == pytest.approx(4.0)
    assert new[2] == pytest.approx(2.0) and new[3] == pytest.approx(-2.0)  # alone in their category
    assert new[1] > 1.0 > 0 and new[0] < 3.0  # the split inside "essential" moved toward the contrasting one
    assert new[1] / new[0] == pytest.approx((1.0 * 3.0) / (3.0 * 0.3))


def test_ema_smooths_over_visits():
    assert ema_update(None, 0.4, 0.5) == 0.4
    assert ema_update(0.4, 0.0, 0.5) == pytest.approx(0.2)
    assert ema_update(0.4, None, 0.5) == 0.4


def test_reweighted_reward_separates_rollouts_more_than_plain_scores():
    rubric = [
        {"text": "mentions fever", "weight": 3.0},  # saturated below
        {"text": "mentions dose", "weight": 1.0},  # contrasting
    ]
    completions = ["fever dose", "fever", "fever dose", "fever"]
    plain = call(RubricReward(RuleJudge(RULES)), ["q"] * 4, completions, rubric=[rubric] * 4)
    reward = RubricReward(RuleJudge(RULES), reweighting=ReweightingConfig(ema_decay=0.0), num_generations=4)
    reweighted = call(reward, ["q"] * 4, completions, rubric=[rubric] * 4)
    assert plain == pytest.approx([1.0, 0.75, 1.0, 0.75])
    gap_plain, gap_reweighted = plain[0] - plain[1], reweighted[0] - reweighted[1]
    assert reweighted[0] == pytest.approx(1.0) and gap_reweighted > 2 * gap_plain
    # Mean spread 0.25; factors fever 0.05/0.25 -> clipped to lo 0.25, dose 0.5/0.25 = 2. Weights 0.75 and 2 (then
    # rescaled together to total 4), so "fever" alone scores 0.75 / 2.75.
    assert reweighted[1] == pytest.approx(0.75 / 2.75)


def test_reweighting_groups_follow_num_generations_or_identical_prompts():
    rubric = [{"text": "mentions fever", "weight": 1.0}, {"text": "mentions dose", "weight": 1.0}]
    completions = ["fever dose", "fever", "fever dose", "fever dose"]
    # Without num_generations, the two prompts form two groups: "b" has no contrast, so its scores stay plain.
    reward = RubricReward(RuleJudge(RULES), reweighting=True)
    scores = call(reward, ["a", "a", "b", "b"], completions, rubric=[rubric] * 4)
    assert scores[2:] == [1.0, 1.0]
    assert scores[1] < 0.5, "in group a, dose contrasts and fever is saturated"
    # num_generations=2 splits identical prompts into groups of two as well.
    reward = RubricReward(RuleJudge(RULES), reweighting=True, num_generations=2)
    scores = call(reward, ["a"] * 4, completions, rubric=[rubric] * 4)
    assert scores[2:] == [1.0, 1.0] and scores[1] < 0.5


def test_reweighting_config_rejects_bad_values():
    with pytest.raises(ValueError, match="floor is 0.9"):
        ReweightingConfig(floor=0.9)
    with pytest.raises(ValueError, match="lo=2"):
        ReweightingConfig(lo=2)
    assert math.isclose(Rubric.from_any(RUBRIC).max_score, 4.0)


# --- degenerate answers paid a fixed reward (degenerate_reward) -------------------------------------------------------

LOOP = "1. fever and dose\n2. fever and dose\n3. fever and dose"  # a repeated line: flagged, though every rule passes


def test_degenerate_answers_get_the_set_reward_without_a_judge_call():
    completions = ["fever and dose", LOOP, "dose", "Here is my answer that meets the criteria: fever and dose."]
    plain = call(RubricReward(RuleJudge(RULES)), ["q"] * 4, completions, rubric=[RUBRIC] * 4)
    assert plain == pytest.approx([1.0, 1.0, 0.25, 1.0]), "a rule judge pays the loop and the meta-talk in full"
    judge, metrics = CountingJudge(RULES), {}
    reward = RubricReward(judge, degenerate_reward=0.0)
    rewards = call(reward, ["q"] * 4, completions, rubric=[RUBRIC] * 4, log_metric=metrics.__setitem__)
    assert rewards == pytest.approx([1.0, 0.0, 0.25, 0.0])
    assert judge.seen_completions == ["fever and dose", "dose"], "flagged answers are not sent to the judge"
    assert metrics["judge/degenerate_frac"] == pytest.approx(0.5)
    assert metrics["judge/calls"] == 2
    assert len(reward.last_grades) == 4 and reward.last_grades[1].verdicts == [None, None, None]
    negative = call(RubricReward(RuleJudge(RULES), degenerate_reward=-0.5), ["q"], [LOOP], rubric=[RUBRIC])
    assert negative == [-0.5]


def test_degenerate_reward_off_by_default_and_bad_values_refused():
    metrics = {}
    call(RubricReward(RuleJudge(RULES)), ["q"], [LOOP], rubric=[RUBRIC], log_metric=metrics.__setitem__)
    assert "judge/degenerate_frac" not in metrics
    for bad, match in (("high", "expected a number"), (float("nan"), "finite"), (float("inf"), "finite")):
        with pytest.raises(ValueError, match=f"degenerate_reward is .*{match}"):
            RubricReward(RuleJudge(RULES), degenerate_reward=bad)


def test_degenerate_reward_reaches_the_trainers_configs_and_the_rgsd_command():
    from trl_rubric import RGSDConfig, RubricGRPOConfig

    common = dict(output_dir="/tmp/x", use_cpu=True, bf16=False, report_to="none")
    assert RubricGRPOConfig(judge_backend="rule", degenerate_reward="0", **common).degenerate_reward == 0.0
    assert RGSDConfig(degenerate_reward=0, **common).degenerate_reward == 0.0
    with pytest.raises(ValueError, match="degenerate_reward is 'x'"):
        RubricGRPOConfig(judge_backend="rule", degenerate_reward="x", **common)
    with pytest.raises(ValueError, match="degenerate_reward is nan"):
        RGSDConfig(degenerate_reward=float("nan"), **common)
    from trl_rubric.scripts.rgsd import RGSDJudgeArguments, build_judge_for

    hybrid = RGSDConfig(degenerate_reward=0.0, distillation_weight=0.5, num_generations=2, **common)
    (reward,), _ = build_judge_for(RGSDJudgeArguments(judge_backend="rule", judge_probe=False), hybrid)
    assert reward.degenerate_reward == 0.0
