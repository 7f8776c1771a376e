"""`teacher_penalties="auto"`: `RGSDTrainer` chooses whether its teacher sees the penalty criteria by measuring both
views on a sample of the training set before step 0 (`trl_rubric.evaluation.views`), with a judge it is given.

The choice is logged with its numbers, written to `<output_dir>/teacher_view_choice.json` and stated in the model
card. With several processes, process 0's choice is broadcast, so every process trains with the same view.
"""

from __future__ import annotations

import json
import logging
import os
import types
from typing import Any

from ..judges.base import RubricJudge
from ..rewards import RubricReward
from ..teacher import DEFAULT_TEACHER_PENALTIES, TEACHER_PENALTIES

logger = logging.getLogger(__name__)

AUTO = "auto"
CHOICE_FILE = "teacher_view_choice.json"


def auto_view_judge(args, reward_funcs: Any, teacher_view_judge: RubricJudge | None) -> RubricJudge | None:
    """The judge that `"auto"` measures the views with: `teacher_view_judge`, else the judge of the first
    `RubricReward` among `reward_funcs`. `None` unless `"auto"`; raises when `"auto"` has no judge."""
    if args.teacher_penalties != AUTO:
        return None
    if teacher_view_judge is not None:
        if not isinstance(teacher_view_judge, RubricJudge):
            raise TypeError(f"teacher_view_judge must be a RubricJudge; got {type(teacher_view_judge).__name__}")
        return teacher_view_judge
    funcs = reward_funcs if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
    reward = next((f for f in funcs if isinstance(f, RubricReward)), None)
    if reward is not None:
        return reward.judge
    raise ValueError(
        "teacher_penalties='auto' chooses the teacher view by grading answers before training, so it needs a judge: "
        "pass teacher_view_judge=<a RubricJudge> to RGSDTrainer (RuleJudge() for rule-tagged rubrics) or a "
        "RubricReward among reward_funcs (`trl-rubric rgsd`: set judge_backend), or set teacher_penalties to 'show' "
        "or 'omit'"
    )


def provisional_args(args):
    """`args` as the teacher-context builder reads them, with `"auto"` standing in as the default until it is chosen."""
    if args.teacher_penalties != AUTO:
        return args
    return types.SimpleNamespace(**{**vars(args), "teacher_penalties": DEFAULT_TEACHER_PENALTIES})


def check_auto_context(args, teacher_context) -> None:
    """`"auto"` compares views of the rubric context (`teacher_context="rubric"`); other contexts are refused."""
    from ..teacher_context import RubricContext

    if args.teacher_penalties == AUTO and not isinstance(teacher_context, RubricContext):
        raise ValueError(
            "teacher_penalties='auto' compares views of the rubric teacher context; teacher_context "
            f"{getattr(teacher_context, 'name', type(teacher_context).__name__)!r} is another kind: set "
            "teacher_penalties to 'show' or 'omit'"
        )


def choose_teacher_penalties(trainer, judge: RubricJudge) -> dict[str, Any]:
    """Compare penalties shown and omitted on `args.teacher_view_samples` training prompts with the policy as it is
    at step 0, set the teacher context's `penalties` to the recommended one, log and save the numbers."""
    from accelerate.utils import broadcast_object_list

    from ..evaluation.views import candidate_views, compare_teacher_views

    args = trainer.args
    dataset = trainer.train_dataset
    if args.rubric_column != "rubric":
        dataset = dataset.rename_column(args.rubric_column, "rubric")
    context = trainer.teacher_context
    views = candidate_views(
        context.template, context.render_style, penalties=(DEFAULT_TEACHER_PENALTIES, *TEACHER_PENALTIES)
    )
    model = trainer.accelerator.unwrap_model(trainer.model)
    was_training = model.training
    try:
        comparison = compare_teacher_views(
            model,
            dataset,
            judge,
            views,
            tokenizer=trainer.processing_class,
            n_samples=min(args.teacher_view_samples, len(dataset)),
            max_new_tokens=args.max_completion_length,
            batch_size=args.per_device_train_batch_size,
            temperature=args.temperature,
            top_p=args.top_p,
            seed=args.seed,
            n_bootstrap=200,
            progress=False,
        )
    finally:
        model.train(was_training)
    choice = comparison.to_dict()
    rec = comparison.recommended_view()
    choice["teacher_penalties"] = rec["teacher_penalties"] if rec is not None else DEFAULT_TEACHER_PENALTIES
    shared = [choice]
    broadcast_object_list(shared, from_process=0)
    choice = shared[0]
    context.penalties = choice["teacher_penalties"]
    logger.warning(
        "teacher_penalties='auto' chose %r on %d training prompts before step 0:\n%s",
        choice["teacher_penalties"],
        choice["n_examples"],
        comparison.report(),
    )
    if trainer.is_world_process_zero() and args.output_dir:
        os.makedirs(args.output_dir, exist_ok=True)
        with open(os.path.join(args.output_dir, CHOICE_FILE), "w") as f:
            json.dump(choice, f, indent=2)
    return choice
