"""`RGSDTrainer` refuses argument combinations it cannot train with before any model loads (`rgsd_arguments.py`)."""

import pytest
from datasets import Dataset

from trl_rubric import RGSDTrainer
from trl_rubric.testing import make_rubric_rows, rgsd_test_config


def _reward(prompts, completions, **kwargs):
    return [0.0] * len(completions)


@pytest.mark.parametrize(
    "overrides, trainer_kwargs, message",
    [
        ({"distillation_weight": 0.5, "num_generations": 2}, {}, "mixes in a GRPO loss, but no reward_funcs"),
        ({"distillation_weight": 0.5}, {"reward_funcs": [_reward]}, "num_generations must be at least 2"),
        (
            {"teacher_combine": "sgsd_gate", "distillation_support": "sampled_token"},
            {},
            "gates each teacher by the rollout's verifier outcome",
        ),
        (
            {"teacher_combine": "sgsd_gate", "distillation_support": "sampled_token"},
            {"reward_funcs": []},
            "gates each teacher",
        ),  # an empty list is no rewards
        (
            {"teacher_model_kind": "ema"},
            {"teacher_model": "some/teacher"},
            "a separate teacher_model is always frozen",
        ),
        ({"teacher_model_kind": "ema", "teacher_model_name_or_path": "some/teacher"}, {}, "always frozen"),
    ],
)
def test_unusable_combinations_are_refused_before_the_model_loads(tmp_path, overrides, trainer_kwargs, message):
    missing = str(tmp_path / "no-model-here")  # loading it would fail differently: the refusal must come first
    args = rgsd_test_config(tmp_path / "out", **overrides)
    with pytest.raises(ValueError, match=message):
        RGSDTrainer(missing, args=args, train_dataset=Dataset.from_list(make_rubric_rows(4)), **trainer_kwargs)


def test_a_separate_teacher_in_a_reward_phase_is_named_as_unused(tmp_path, caplog):
    import logging

    from trl_rubric.trainers.rgsd_arguments import check_rgsd_arguments

    reward_phase = rgsd_test_config(tmp_path / "out", distillation_weight=0.0, num_generations=2)
    caplog.set_level(logging.WARNING, logger="trl_rubric.trainers.rgsd_arguments")
    check_rgsd_arguments(reward_phase, [_reward], "some/teacher", None)
    assert "never runs a teacher, but a separate teacher_model was given" in caplog.text
    caplog.clear()
    check_rgsd_arguments(reward_phase, [_reward], None, None)  # the policy's own teacher costs nothing unused
    hybrid = rgsd_test_config(tmp_path / "out", distillation_weight=0.5, num_generations=2)
    check_rgsd_arguments(hybrid, [_reward], "some/teacher", None)  # read in hybrid mode
    assert caplog.text == ""
