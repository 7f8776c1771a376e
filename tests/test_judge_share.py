"""Judging a share of the prompts (`judge_share`): the selection, the reward, and hybrid RGSD with it."""

import asyncio
import gc
import logging

import pytest
from _judges import CountingJudge
from datasets import Dataset

from trl_rubric import Rubric
from trl_rubric.judge_share import check_judge_share, judged_prompts
from trl_rubric.judges import RuleJudge
from trl_rubric.rewards import _UNJUDGED_FILTER, RubricReward
from trl_rubric.testing import make_rubric_rows, rgsd_test_config
from trl_rubric.trainers.rgsd import RGSDTrainer

RUBRIC = Rubric.from_any([{"text": "mentions fever", "weight": 1.0}])
RULES = {"mentions fever": "fever"}


class Step:
    def __init__(self, step):
        self.global_step = step


def test_judged_prompts_are_per_prompt_seeded_and_close_to_the_share():
    texts = [f"question {i}" for i in range(400)]
    picks = judged_prompts(texts, [RUBRIC] * 400, 0.25, seed=0, step=3)
    assert 0.18 < sum(picks) / 400 < 0.32
    assert picks == judged_prompts(texts, [RUBRIC] * 400, 0.25, seed=0, step=3), "a pure function: resume is exact"
    assert picks != judged_prompts(texts, [RUBRIC] * 400, 0.25, seed=0, step=4), "another step, other prompts"
    assert picks != judged_prompts(texts, [RUBRIC] * 400, 0.25, seed=1, step=3)
    # Every rollout of one prompt (a GRPO group) is judged alike, wherever it sits in the batch.
    doubled = judged_prompts(texts + texts[::-1], [RUBRIC] * 800, 0.25, seed=0, step=3)
    assert doubled[:400] == picks and doubled[400:] == picks[::-1]
    assert judged_prompts(texts[:5], [RUBRIC] * 5, 1.0, seed=0, step=0) == [True] * 5
    for bad in (0, -0.1, 1.5, float("nan"), "half"):
        with pytest.raises(ValueError, match="judge_share is .*expected a share in \\(0, 1\\]"):
            check_judge_share(bad)


def test_reward_sends_only_the_judged_prompts_and_gives_the_rest_no_reward():
    prompts = [f"question {i}" for i in range(16) for _ in range(2)]  # 16 prompts x 2 rollouts
    completions = ["fever"] * 32
    judge, metrics = CountingJudge(RULES), {}
    reward = RubricReward(judge, judge_share=0.5, num_generations=2, dropout_seed=7)
    rewards = asyncio.run(
        reward(prompts=prompts, completions=completions, rubric=[RUBRIC.to_list()] * 32, trainer_state=Step(2),
               log_metric=metrics.__setitem__)
    )  # fmt: skip
    judged = judged_prompts(prompts, [RUBRIC] * 32, 0.5, seed=7, step=2)
    assert 0 < sum(judged) < 32
    assert rewards == [1.0 if j else None for j in judged]
    assert judge.seen_prompts == [p for p, j in zip(prompts, judged, strict=True) if j]
    assert metrics["judge/judged_frac"] == pytest.approx(sum(judged) / 32)
    assert metrics["judge/unknown_frac"] == 0.0, "prompts left out on purpose are not judge failures"
    assert reward.last_unjudged == 32 - sum(judged)
    with pytest.raises(ValueError, match="judge_share < 1 and group grading"):
        RubricReward(RuleJudge(RULES), judge_share=0.5, group_grading=True)


def test_trl_warning_about_rows_without_reward_is_dropped_only_while_prompts_were_left_out():
    gc.collect()  # rewards of earlier tests, which may still hold a count of their own
    reward = RubricReward(RuleJudge(RULES), judge_share=0.5)
    record = logging.LogRecord("trl.trainer.grpo_trainer", logging.WARNING, "", 0,
                               "All reward functions returned None for the following kwargs: ...", None, None)  # fmt: skip
    ranked = logging.LogRecord("trl.trainer.grpo_trainer", logging.WARNING, "", 0,
                               "[RANK 0] All reward functions returned None for ...", None, None)  # fmt: skip
    other = logging.LogRecord("trl.trainer.grpo_trainer", logging.WARNING, "", 0, "something else", None, None)
    reward.last_unjudged = 3
    assert not _UNJUDGED_FILTER.filter(record) and not _UNJUDGED_FILTER.filter(ranked)
    assert _UNJUDGED_FILTER.filter(other)
    reward.last_unjudged = 0
    assert _UNJUDGED_FILTER.filter(record), "a row without reward for another reason is still reported"
    assert _UNJUDGED_FILTER in logging.getLogger("trl.trainer.grpo_trainer").filters


def test_hybrid_rgsd_with_half_the_prompts_judged_trains_and_logs_the_share(tmp_path, tiny_model_path, caplog):
    rows = make_rubric_rows(4, conversational=True)
    for row in rows:
        row["rubric"] = [dict(c, tags=[f"rule:contains:{c['text'].split()[-1]}"]) for c in row["rubric"]]
    judge = CountingJudge()
    trainer = RGSDTrainer(
        tiny_model_path,
        reward_funcs=[RubricReward(judge, judge_share=0.5, num_generations=2)],
        args=rgsd_test_config(tmp_path / "out", num_generations=2, distillation_weight=0.5, judge_share=0.5),
        train_dataset=Dataset.from_list(rows),
    )
    caplog.set_level(logging.WARNING, logger="trl.trainer.grpo_trainer")
    trainer.train()
    shares = [e["judge/judged_frac"] for e in trainer.state.log_history if "judge/judged_frac" in e]
    assert shares and all(0.0 <= s <= 1.0 for s in shares)
    assert 0 < len(judge.seen_prompts) < 2 * 2 * len(shares) * 2  # fewer rollouts graded than generated
    assert "All reward functions returned None" not in caplog.text
    assert all("loss" in e for e in trainer.state.log_history if "judge/judged_frac" in e)


def test_config_settings_reach_the_users_rubric_rewards_and_a_conflict_is_an_error(tmp_path, tiny_model_path):
    from trl_rubric.rewards import apply_reward_settings

    plain, other = RubricReward(RuleJudge(RULES)), RubricReward(RuleJudge(RULES), judge_share=0.5)
    apply_reward_settings([plain, len], degenerate_reward=0.0, judge_share=0.25)  # non-RubricReward funcs: untouched
    assert plain.degenerate_reward == 0.0 and plain.judge_share == 0.25
    apply_reward_settings([other])  # config defaults change nothing
    assert other.judge_share == 0.5 and other.degenerate_reward is None
    with pytest.raises(ValueError, match="the config sets judge_share=0.25 but the RubricReward 'rubric_judge'.*0.5"):
        apply_reward_settings([other], judge_share=0.25)
    with pytest.raises(ValueError, match="judge_share < 1 and group grading"):
        grouped = RubricReward.__new__(RubricReward)
        grouped.group_grading, grouped.judge_share, grouped.degenerate_reward = True, 1.0, None
        apply_reward_settings([grouped], judge_share=0.5)
    # Through the trainer: a RubricReward built with defaults takes the config's values.
    rows = make_rubric_rows(4, conversational=True)
    reward = RubricReward(RuleJudge(), num_generations=2)
    RGSDTrainer(
        tiny_model_path,
        reward_funcs=[reward],
        args=rgsd_test_config(
            tmp_path / "out", num_generations=2, distillation_weight=0.5, judge_share=0.5, degenerate_reward=0.0
        ),  # fmt: skip
        train_dataset=Dataset.from_list(rows),
    )
    assert reward.judge_share == 0.5 and reward.degenerate_reward == 0.0
