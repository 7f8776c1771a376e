"""A reward on some criteria only: `Rubric.select`, `RubricReward(criteria=...)`, `RGSDConfig.reward_criteria`."""

import asyncio

import pytest
from _judges import CountingJudge
from datasets import Dataset

from trl_rubric import Rubric
from trl_rubric.data import RubricDatasetError
from trl_rubric.judges import RuleJudge
from trl_rubric.rewards import RubricReward, apply_reward_settings, check_criteria, validate_reward_criteria
from trl_rubric.rubric import RubricError
from trl_rubric.testing import make_rubric_rows, rgsd_test_config
from trl_rubric.trainers.rgsd import RGSDTrainer


def crit(text, weight, title, category=None, tags=()):
    return {"text": text, "weight": weight, "category": category, "title": title, "tags": list(tags)}


RUBRIC = [
    crit("Mentions rest.", 2.0, "key term", "essential", ["rule:regex:\\brest", "scope:prompt"]),
    crit("Gives numbered steps.", 1.0, "numbered steps", "format", ["rule:regex:^1\\.", "scope:general"]),
    crit("Advises a doctor.", 1.0, "professional help", "essential", ["rule:contains:doctor", "scope:general"]),
    crit("Promises a cure.", -1.0, "absolute promise", "pitfall", ["rule:contains:cure", "scope:general"]),
]


def test_select_keeps_matching_criteria_in_order_by_title_category_or_tag():
    rubric = Rubric.from_any(RUBRIC, pitfall_polarity="as_is")
    assert [c.title for c in rubric.select(["key term"])] == ["key term"]
    assert [c.title for c in rubric.select("key term")] == ["key term"], "a bare name is one name, not its letters"
    assert [c.title for c in rubric.select(["Advises a doctor."])] == ["professional help"], "by text"
    assert [c.title for c in rubric.select(["essential"])] == ["key term", "professional help"]
    assert [c.title for c in rubric.select(["scope:general", "key term"])] == [c["title"] for c in RUBRIC]
    with pytest.raises(RubricError, match="no criterion has a title, text, category or tag in \\['warning sign'\\]"):
        rubric.select(["warning sign"])
    with pytest.raises(RubricError, match="are all penalties \\(\\['absolute promise'\\]\\)"):
        rubric.select(["pitfall"])


def test_reward_grades_and_scores_only_the_chosen_criteria():
    answers = ["1. Rest well.", "1. Stay in bed. See a doctor.", "Rest, and this will cure it."]
    prompts = ["q"] * 3

    def run(reward):
        return asyncio.run(reward(prompts=prompts, completions=answers, rubric=[RUBRIC] * 3))

    whole = run(RubricReward(RuleJudge()))
    keyed = run(RubricReward(RuleJudge(), criteria=["key term"]))
    assert keyed == [1.0, 0.0, 1.0]  # the key term alone: met, not met, met (the penalty is not counted)
    assert whole == pytest.approx([3 / 4, 2 / 4, 1 / 4])  # the whole rubric scores them otherwise
    judge = CountingJudge()
    reward = RubricReward(judge, criteria=["key term", "pitfall"])
    assert run(reward) == [1.0, 0.0, 0.5]  # the key term (2) and the cure penalty (-1): the third (2 - 1) / 2
    graded = reward.last_grades
    assert all(len(g.verdicts) == 2 for g in graded), "the judge was sent the chosen criteria only"
    with pytest.raises(RubricError, match="completion 1: column 'rubric': criteria=\\['doctor advice'\\]"):
        asyncio.run(
            RubricReward(RuleJudge(), criteria=["doctor advice"]).__call__(
                prompts=["q", "q"], completions=["a", "b"],
                rubric=[[*RUBRIC, crit("x", 1.0, "doctor advice", tags=["rule:contains:x"])], RUBRIC],
            )
        )  # fmt: skip


def test_bad_criteria_and_rows_without_them_are_refused_before_training(tmp_path, tiny_model_path):
    for bad in ("key term", [], ["key term", " "]):
        with pytest.raises(ValueError, match="criteria is"):
            check_criteria(bad)
    with pytest.raises(ValueError, match="selects what the hybrid reward grades, but distillation_weight is 1.0"):
        rgsd_test_config(tmp_path / "a", reward_criteria=["key term"])
    rows = [{"prompt": "q0", "rubric": RUBRIC}, {"prompt": "q1", "rubric": RUBRIC[1:]}]
    reward = RubricReward(RuleJudge(), criteria=["key term"])
    with pytest.raises(
        RubricDatasetError, match="train_dataset row 1: column 'rubric': reward 'rubric_judge': no crit"
    ):
        validate_reward_criteria([reward], Dataset.from_list(rows), "train_dataset")
    validate_reward_criteria([RubricReward(RuleJudge())], Dataset.from_list(rows), "train_dataset")  # no criteria
    # Through the trainer: the config's reward_criteria reaches a default-built RubricReward and the rows are checked
    # before the model is loaded.
    plain = RubricReward(RuleJudge(), num_generations=2)
    args = rgsd_test_config(tmp_path / "b", num_generations=2, distillation_weight=0.5, reward_criteria=["key term"])
    with pytest.raises(RubricDatasetError, match="train_dataset row 1"):
        RGSDTrainer(tiny_model_path, reward_funcs=[plain], args=args, train_dataset=Dataset.from_list(rows))
    assert plain.criteria == ("key term",)
    with pytest.raises(ValueError, match="the config sets criteria=\\('key term',\\) but the RubricReward"):
        apply_reward_settings([RubricReward(RuleJudge(), criteria=["numbered steps"])], criteria=["key term"])


def test_hybrid_rgsd_rewards_only_the_chosen_criterion(tmp_path, tiny_model_path):
    rows = make_rubric_rows(4, conversational=True)
    for row in rows:
        row["rubric"] = [dict(c, tags=[f"rule:contains:{c['text'].split()[-1]}"]) for c in row["rubric"]]
        row["rubric"][0]["title"] = "key term"
    judge = CountingJudge()
    reward = RubricReward(judge, num_generations=2)
    trainer = RGSDTrainer(
        tiny_model_path,
        reward_funcs=[reward],
        args=rgsd_test_config(
            tmp_path / "out", num_generations=2, distillation_weight=0.5, reward_criteria=["key term"]
        ),
        train_dataset=Dataset.from_list(rows),
    )
    trainer.train()
    assert reward.last_grades and all(len(g.verdicts) == 1 for g in reward.last_grades)
    assert all("loss" in e for e in trainer.state.log_history if "judge/calls" in e)
