"""The checks `RGSDTrainer` makes on its arguments before any model loads: the combinations of config, reward
functions and teacher that cannot train, each refused with what to change.

They run first in `RGSDTrainer.__init__`, so a wrong combination fails in a second instead of after the models and the
dataset are loaded. The checks that need the models or the data (teacher prompt lengths, onset tokens, teacher
rollouts) live beside what they check (`rgsd_teacher.py`, `rgsd_spans.py`, `rgsd_rollouts.py`).
"""

from __future__ import annotations

import logging
from typing import Any

from .rgsd_anchor import check_anchor
from .rgsd_config import RGSDConfig
from .vllm_mode import refuse_vllm_server_without_cuda

logger = logging.getLogger(__name__)


def check_rgsd_arguments(args: Any, reward_funcs: Any, teacher_model: Any, environment_factory: Any) -> None:
    """Refuse what RGSD cannot train with: another config class, a vLLM server without CUDA, an environment factory,
    a hybrid loss without rewards or without groups, an SGSD gate without a verifier, an anchor or a teacher kind that
    a separate teacher model rules out; and warn of a separate teacher that a reward phase (`distillation_weight=0.0`)
    loads but never runs. `reward_funcs` is `None` when there are none; `teacher_model` is the trainer's
    argument (`None`: the config's `teacher_model_name_or_path`, if any)."""
    if not isinstance(args, RGSDConfig):
        raise TypeError(
            f"RGSDTrainer needs an RGSDConfig, got {type(args).__name__}. Replace GRPOConfig with RGSDConfig "
            "(it takes the same arguments)."
        )
    refuse_vllm_server_without_cuda(args, "RGSDTrainer")
    if environment_factory is not None:
        raise ValueError(
            "RGSDTrainer does not take an environment_factory: its teacher needs each row's rubric, and rollouts "
            "from an environment carry none. Use GRPOTrainer with the environment and a RubricReward among "
            "reward_funcs, or RGSDTrainer on a rubric dataset"
        )
    has_rewards = reward_funcs is not None
    if args.distillation_weight < 1.0 and not has_rewards:
        raise ValueError(
            f"distillation_weight is {args.distillation_weight}, which mixes in a GRPO loss, but no reward_funcs "
            "were given. Pass reward functions, or set distillation_weight=1.0 for pure RGSD."
        )
    if has_rewards and args.distillation_weight < 1.0 and args.num_generations < 2:
        raise ValueError(
            f"hybrid mode (distillation_weight={args.distillation_weight}) needs group advantages, so "
            f"num_generations must be at least 2; got {args.num_generations}."
        )
    if args.teacher_combine == "sgsd_gate" and not has_rewards:
        raise ValueError(
            "teacher_combine='sgsd_gate' gates each teacher by the rollout's verifier outcome, but no reward_funcs "
            "were given. Pass a verifier reward function, or use teacher_combine='mean'."
        )
    if teacher_model is None:
        teacher_model = args.teacher_model_name_or_path
    check_anchor(args, separate_teacher_given=teacher_model is not None)
    if teacher_model is not None and has_rewards and args.distillation_weight == 0.0:
        logger.warning(
            "distillation_weight=0.0 trains on the reward alone (GRPO's loss) and never runs a teacher, but a "
            "separate teacher_model was given: it is loaded and held in memory for nothing. Drop teacher_model (and "
            "teacher_model_name_or_path) for a reward phase."
        )
    if teacher_model is not None and args.teacher_model_kind != "base":
        raise ValueError(
            f"a separate teacher_model is always frozen; teacher_model_kind={args.teacher_model_kind!r} "
            "applies to the policy's own weights. Leave teacher_model_kind='base' or drop teacher_model."
        )
