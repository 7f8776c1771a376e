"""`loss_type` is checked when each config is built, against the types its trainer implements."""

from __future__ import annotations

import inspect
import re

import pytest
from trl.trainer import grpo_trainer

from trl_rubric import losses
from trl_rubric.testing import rgsd_test_config
from trl_rubric.trainers.rubric_grpo import GRPO_LOSS_TYPES, RubricGRPOConfig


def test_rgsd_config_refuses_unknown_loss_type_at_construction(tmp_path):
    with pytest.raises(ValueError, match=r"loss_type is 'dpo'.*RGSDTrainer does not know.*'grpo'.*'dapo'"):
        rgsd_test_config(tmp_path, loss_type="dpo")


def test_rgsd_config_refuses_policy_only_loss_type(tmp_path):
    with pytest.raises(ValueError, match="no distillation analogue"):
        rgsd_test_config(tmp_path, loss_type="cispo")


@pytest.mark.parametrize("loss_type", losses.LOSS_TYPES)
def test_rgsd_config_accepts_every_reduction(tmp_path, loss_type):
    assert rgsd_test_config(tmp_path, loss_type=loss_type).loss_type == loss_type


def test_rubric_grpo_config_refuses_unknown_loss_type_at_construction(tmp_path):
    with pytest.raises(ValueError, match=r"loss_type is 'ppo'.*RubricGRPOTrainer.*expected one of.*'vespo'"):
        RubricGRPOConfig(str(tmp_path), use_cpu=True, report_to="none", loss_type="ppo")


@pytest.mark.parametrize("loss_type", GRPO_LOSS_TYPES)
def test_rubric_grpo_config_accepts_every_trl_loss_type(tmp_path, loss_type):
    extra = {"importance_sampling_level": "sequence"} if loss_type == "luspo" else {}
    config = RubricGRPOConfig(str(tmp_path), use_cpu=True, report_to="none", loss_type=loss_type, **extra)
    assert config.loss_type == loss_type


def test_grpo_loss_types_match_trl_compute_loss():
    # The branches of TRL's GRPOTrainer._compute_loss: exactly the types our config accepts.
    source = inspect.getsource(grpo_trainer.GRPOTrainer._compute_loss)
    named = set(re.findall(r'self\.loss_type == "(\w+)"', source))
    for group in re.findall(r"self\.loss_type in \[([^\]]+)\]", source):
        named |= set(re.findall(r'"(\w+)"', group))
    assert named == set(GRPO_LOSS_TYPES)
    assert set(losses.LOSS_TYPES) | set(losses.POLICY_ONLY_LOSS_TYPES) == set(GRPO_LOSS_TYPES)
