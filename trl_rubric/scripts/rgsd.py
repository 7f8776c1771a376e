"""`trl-rubric rgsd`: train with Rubric-Guided Self-Distillation from a YAML recipe and/or command-line flags.

trl-rubric rgsd --config recipes/rgsd_qwen2.5-3b_rubrichub_medical.yaml
trl-rubric rgsd --config recipe.yaml --accelerate_config recipes/accelerate/zero3.yaml --num_processes 8
accelerate launch -m trl_rubric.scripts.rgsd --config recipe.yaml
"""

from __future__ import annotations

import sys

from ._common import (
    RubricDataArguments,
    SetupError,
    UsageError,
    finish_training,
    load_datasets,
    prepare_model_init,
    trl_parser,
)

MODULE = "trl_rubric.scripts.rgsd"


def make_parser():
    from trl import ModelConfig

    from ..trainers.rgsd import RGSDConfig

    return trl_parser((RubricDataArguments, RGSDConfig, ModelConfig), "trl-rubric rgsd")


def build_trainer(data_args, training_args, model_args):
    """Everything up to (not including) training; errors here are configuration errors."""
    from trl import get_peft_config, get_quantization_config

    from ..trainers.rgsd import RGSDTrainer

    prepare_model_init(model_args, training_args)
    if model_args.use_peft and training_args.teacher_model_kind == "ema":
        raise UsageError(
            "teacher_model_kind=ema is not supported with use_peft yet; use teacher_model_kind=base "
            "(adapters disabled: no extra memory) or live"
        )
    train, evaluation = load_datasets(
        data_args, want_eval=training_args.eval_strategy != "no", pitfall_polarity=training_args.pitfall_polarity
    )
    try:
        return RGSDTrainer(
            model=model_args.model_name_or_path,
            args=training_args,
            train_dataset=train,
            eval_dataset=evaluation,
            peft_config=get_peft_config(model_args),
            quantization_config=get_quantization_config(model_args),
        )
    except (ValueError, TypeError, OSError) as e:
        raise SetupError(str(e)) from e


def main(argv: list[str] | None = None) -> int:
    from ._common import run_command

    return run_command("rgsd", MODULE, make_parser, build_trainer, train, argv)


def train(trainer, data_args, training_args, model_args) -> int:
    finish_training(trainer, training_args, data_args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
