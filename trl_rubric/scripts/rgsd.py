"""`trl-rubric rgsd`: train with Rubric-Guided Self-Distillation from a YAML recipe and/or command-line flags.

trl-rubric rgsd --config recipes/rgsd_qwen2.5-3b_rubrichub_medical.yaml
trl-rubric rgsd --config recipe.yaml --accelerate_config recipes/accelerate/zero3.yaml --num_processes 8
trl-rubric rgsd --config recipes/rgsd_smollm2.yaml --teacher_focus unlearned --judge_backend rule
accelerate launch -m trl_rubric.scripts.rgsd --config recipe.yaml

Pure RGSD calls no judge. The settings that do need one (hybrid RGSD, `teacher_focus="unlearned"`,
`teacher_combine="sgsd_gate"`, `teacher_penalties="auto"`) take it from the `judge_*` options of [`RGSDJudgeArguments`].
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from typing import Literal

from ..judges.factory import JudgeArguments
from ._common import (
    RubricDataArguments,
    SetupError,
    UsageError,
    finish_training,
    load_datasets,
    prepare_model_init,
    resolve_model_path,
    trl_parser,
)

MODULE = "trl_rubric.scripts.rgsd"
logger = logging.getLogger(__name__)


@dataclass
class RGSDJudgeArguments(JudgeArguments):
    r"""
    The judge of an RGSD run, for the settings that need one. Every other `judge_*` option means what it means in
    `trl-rubric grpo` ([`JudgeArguments`]).

    Parameters:
        judge_backend (`str` or `None`, *optional*, defaults to `None`):
            `None`: no judge (pure RGSD calls none). Set it to `"rule"` (rubrics whose criteria carry `rule:` tags),
            `"openai"` (with `judge_model` and `judge_base_url`) or `"transformers"` for the settings that need a
            judge: `distillation_weight` below 1 (hybrid RGSD: the judge's reward mixes in a GRPO loss),
            `teacher_focus="unlearned"` (the judge observes the rollouts), `teacher_combine="sgsd_gate"` (its
            verdict gates the teachers) and `teacher_penalties="auto"` (it grades both teacher views before step 0).
            A `judge_panel` counts as set.
    """

    judge_backend: Literal["openai", "transformers", "rule"] | None = field(
        default=None,
        metadata={
            "help": "Judge for the RGSD settings that need one (hybrid, teacher_focus=unlearned, sgsd_gate, "
            "teacher_penalties=auto): 'rule', 'openai' or 'transformers'. None: no judge."
        },
    )

    def __post_init__(self):
        # None is this command's "no judge"; the other judge_* values are checked as in every other command.
        backend = self.judge_backend
        self.judge_backend = backend or "rule"
        try:
            super().__post_init__()
        finally:
            self.judge_backend = backend

    @property
    def configured(self) -> bool:
        return self.judge_backend is not None or bool(self.judge_panel)


def judge_uses(config) -> tuple[list[str], bool]:
    """What in `config` (an `RGSDConfig`) needs a judge, and whether one of those needs it as a reward function
    (the others only grade the teacher views before step 0)."""
    as_reward = []
    if config.distillation_weight < 1.0:
        as_reward.append(f"distillation_weight={config.distillation_weight} (hybrid RGSD)")
    if config.teacher_focus != "all":
        as_reward.append(f"teacher_focus={config.teacher_focus}")
    if config.teacher_combine == "sgsd_gate":
        as_reward.append("teacher_combine=sgsd_gate")
    views = ["teacher_penalties=auto"] if config.teacher_penalties == "auto" else []
    return as_reward + views, bool(as_reward)


def make_parser():
    from trl import ModelConfig

    from ..trainers.rgsd import RGSDConfig

    return trl_parser((RubricDataArguments, RGSDJudgeArguments, RGSDConfig, ModelConfig), "trl-rubric rgsd")


def build_judge_for(judge_args: RGSDJudgeArguments, training_args):
    """`(reward_funcs, teacher_view_judge)` for `RGSDTrainer`, built from the judge options when the config needs
    a judge; the judge is probed here, before the model loads."""
    from ..judges.base import JudgeUnavailableError
    from ..judges.factory import build_judge
    from ..rewards import RubricReward

    uses, as_reward = judge_uses(training_args)
    if not uses:
        if judge_args.configured:
            logger.warning(
                "judge_backend=%s is set but unused: this RGSD run calls no judge (a judge is used by "
                "distillation_weight < 1, teacher_focus=unlearned, teacher_combine=sgsd_gate and "
                "teacher_penalties=auto)",
                judge_args.judge_backend or "panel",
            )
        return None, None
    if not judge_args.configured:
        raise UsageError(
            f"{' and '.join(uses)} needs a judge: set judge_backend (rule for rubrics whose criteria carry rule: "
            "tags; openai with judge_model and judge_base_url for an LLM judge)"
        )
    judge = build_judge(judge_args)
    if judge_args.judge_probe:
        try:
            judge.probe_sync()  # a dead judge should cost seconds, not a model load
        except JudgeUnavailableError as e:
            raise SetupError(str(e)) from e
    if not as_reward:
        return None, judge
    reward = RubricReward(
        judge,
        rubric_column=training_args.rubric_column,
        pitfall_polarity=training_args.pitfall_polarity,
        num_generations=training_args.num_generations,
        dropout_seed=training_args.seed,
        degenerate_reward=training_args.degenerate_reward,
        judge_share=training_args.judge_share,
        criteria=training_args.reward_criteria,
    )
    return [reward], None


def build_trainer(data_args, judge_args, training_args, model_args):
    """Everything up to (not including) training; errors here are configuration errors."""
    from trl import get_peft_config, get_quantization_config

    from ..trainers.rgsd import RGSDTrainer

    prepare_model_init(model_args, training_args)
    if training_args.teacher_model_name_or_path:  # smollm2:// and toy:// name a separate teacher too
        training_args.teacher_model_name_or_path = resolve_model_path(training_args.teacher_model_name_or_path)
    train, evaluation = load_datasets(
        data_args, want_eval=training_args.eval_strategy != "no", pitfall_polarity=training_args.pitfall_polarity
    )
    reward_funcs, view_judge = build_judge_for(judge_args, training_args)
    try:
        return RGSDTrainer(
            model=model_args.model_name_or_path,
            reward_funcs=reward_funcs,
            args=training_args,
            train_dataset=train,
            eval_dataset=evaluation,
            peft_config=get_peft_config(model_args),
            quantization_config=get_quantization_config(model_args),
            teacher_view_judge=view_judge,
        )
    except (ValueError, TypeError, OSError) as e:
        raise SetupError(str(e)) from e


def main(argv: list[str] | None = None) -> int:
    from ._common import run_command

    return run_command("rgsd", MODULE, make_parser, build_trainer, train, argv)


def train(trainer, data_args, judge_args, training_args, model_args) -> int:
    finish_training(trainer, training_args, data_args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
