"""Both trainers log the criteria/* diagnostics from their judge calls; RubricGRPO trains with either reweighting."""

import pytest
from datasets import Dataset

from trl_rubric.judges import RuleJudge
from trl_rubric.rewards import RubricReward
from trl_rubric.testing import make_rubric_rows, rgsd_test_config
from trl_rubric.trainers.rgsd import RGSDTrainer
from trl_rubric.trainers.rubric_grpo import RubricGRPOConfig, RubricGRPOTrainer


def tagged_rows(n=4, conversational=False):
    rows = make_rubric_rows(n, seed=1, conversational=conversational)
    for row in rows:
        for criterion in row["rubric"]:
            criterion["tags"] = [f"rule:contains:{criterion['text'].split()[-1]}"]
    return rows


def grpo_args(tmp_path, **kwargs):
    return RubricGRPOConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        bf16=False,
        report_to="none",
        max_completion_length=8,
        per_device_train_batch_size=4,
        num_generations=2,
        max_steps=2,
        logging_steps=1,
        save_strategy="no",
        judge_backend="rule",
        judge_probe=False,
        seed=0,
        **kwargs,
    )


def test_config_takes_the_reweighting_method_and_keeps_true_and_false(tmp_path):
    assert grpo_args(tmp_path).reweighting_config() is None
    assert grpo_args(tmp_path, criterion_reweighting=False).criterion_reweighting == "none"
    ours = grpo_args(tmp_path, criterion_reweighting=True)
    assert ours.criterion_reweighting == "ours" and ours.reweighting_config().method == "ours"
    pow3r = grpo_args(tmp_path, criterion_reweighting="pow3r", reweighting_weight_floor=0.2).reweighting_config()
    assert (pow3r.method, pow3r.weight_floor) == ("pow3r", 0.2)
    with pytest.raises(ValueError, match="criterion_reweighting: reweighting method is 'static'"):
        grpo_args(tmp_path, criterion_reweighting="static")
    with pytest.raises(ValueError, match="weight_floor is -1"):
        grpo_args(tmp_path, criterion_reweighting="pow3r", reweighting_weight_floor=-1)


def test_rubric_grpo_logs_criterion_diagnostics_every_step(tmp_path, tiny_model_path):
    method = "pow3r"
    trainer = RubricGRPOTrainer(
        tiny_model_path,
        args=grpo_args(tmp_path, criterion_reweighting=method),
        train_dataset=Dataset.from_list(tagged_rows(4)),
    )
    assert trainer.rubric_reward.reweighting.method == method
    trainer.train()
    logs = [e for e in trainer.state.log_history if "criteria/saturated" in e]
    assert len(logs) == 2
    for entry in logs:
        cells = entry["criteria/saturated"] + entry["criteria/unreachable"] + entry["criteria/contrasting"]
        assert cells > 0 and 0 <= entry["criteria/dead_weight_share"] <= 1
        assert 0 <= entry["criteria/pass_rate"] <= 1 and 0 <= entry["criteria/strict_completion"] <= 1


def test_hybrid_rgsd_logs_criterion_diagnostics_from_its_judge_calls(tmp_path, tiny_model_path):
    trainer = RGSDTrainer(
        tiny_model_path,
        reward_funcs=[RubricReward(RuleJudge())],
        args=rgsd_test_config(tmp_path / "out", num_generations=2, distillation_weight=0.5),
        train_dataset=Dataset.from_list(tagged_rows(4, conversational=True)),
    )
    trainer.train()
    logs = [e for e in trainer.state.log_history if "criteria/saturated" in e]
    assert len(logs) == 2 and all("criteria/pass_rate" in e for e in logs)
