"""`trl-rubric grpo`: GRPO with a rubric judge's reward, from a YAML recipe and/or command-line flags.

vllm serve Qwen/Qwen3-30B-A3B-Instruct-2507 --port 8000          # the judge, on its own GPUs
trl-rubric grpo --config recipes/grpo_judge_qwen2.5-3b_rubrichub_medical.yaml
accelerate launch -m trl_rubric.scripts.grpo --config recipe.yaml
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass, field

from ._common import (
    RubricDataArguments,
    SetupError,
    UsageError,
    finish_training,
    load_datasets,
    prepare_model_init,
    trl_parser,
)

MODULE = "trl_rubric.scripts.grpo"


@dataclass
class ExtraRewardArguments:
    r"""
    Extra reward functions added after the rubric judge's reward.

    Parameters:
        extra_reward_funcs (`list[str]` or `None`, *optional*, defaults to `None`):
            Dotted import paths of TRL reward functions (e.g. `my_lib.rewards.length_penalty`), weighted by
            `reward_weights` like in TRL.
    """

    extra_reward_funcs: list[str] | None = field(
        default=None, metadata={"help": "Dotted import paths of extra TRL reward functions."}
    )


def make_parser():
    from trl import ModelConfig

    from ..trainers.rubric_grpo import RubricGRPOConfig

    return trl_parser((RubricDataArguments, ExtraRewardArguments, RubricGRPOConfig, ModelConfig), "trl-rubric grpo")


def _import_reward(path: str):
    module_path, _, name = path.rpartition(".")
    if not module_path:
        raise UsageError(f"extra_reward_funcs entry {path!r} is not a dotted import path (module.function)")
    sys.path.insert(0, os.getcwd())
    try:
        return getattr(importlib.import_module(module_path), name)
    except (ImportError, AttributeError) as e:
        raise UsageError(f"cannot import reward function {path!r}: {e}") from None


def build_trainer(data_args, reward_args, training_args, model_args):
    from trl import get_peft_config, get_quantization_config

    from ..judges.base import JudgeUnavailableError
    from ..trainers.rubric_grpo import RubricGRPOTrainer

    prepare_model_init(model_args, training_args)
    extra = [_import_reward(p) for p in reward_args.extra_reward_funcs or []]
    train, evaluation = load_datasets(
        data_args, want_eval=training_args.eval_strategy != "no", pitfall_polarity=training_args.pitfall_polarity
    )
    try:
        return RubricGRPOTrainer(
            model=model_args.model_name_or_path,
            reward_funcs=extra or None,
            args=training_args,
            train_dataset=train,
            eval_dataset=evaluation,
            peft_config=get_peft_config(model_args),
            quantization_config=get_quantization_config(model_args),
        )
    except (ValueError, TypeError, OSError, ConnectionError, JudgeUnavailableError) as e:
        # JudgeUnavailableError (a RuntimeError): the start-up probe found no judge; a setup error, not a crash.
        raise SetupError(str(e)) from e


def train(trainer, data_args, reward_args, training_args, model_args) -> int:
    finish_training(trainer, training_args, data_args)
    return 0


def main(argv: list[str] | None = None) -> int:
    from ._common import run_command

    return run_command("grpo", MODULE, make_parser, build_trainer, train, argv)


if __name__ == "__main__":
    sys.exit(main())
