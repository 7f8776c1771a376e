"""`RGSDConfig.teacher_focus="unlearned"`: the teacher is shown only the criteria the student has not learned yet.

The judge of a `RubricReward` among `reward_funcs` grades the student's rollouts (it may only observe:
`distillation_weight=1.0` keeps the loss pure distillation); its verdicts feed a [`LearnedCriteria`] store
(`trl_rubric.teacher_focus`), and each row's teacher prompt is built from `store.focus(rubric, prompt)`.

Timing: the verdicts of generation batch t are held back and enter the store when batch t+1 is graded, so the view of
batch t is built from the verdicts of batches up to t-1 only (a rollout's own verdicts never decide what its teacher
sees), and every process applies the same verdicts (they are gathered) in the same order. Evaluation batches use the
store and never update it. The store and the held-back verdicts are saved in every checkpoint (`FOCUS_STATE_FILE`)
and restored on resume, so a resumed run shows the teacher what the uninterrupted run would.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import torch
from accelerate.utils import gather_object
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..rewards import RubricReward
from ..rubric import Rubric
from ..teacher_context import ReferenceContext, RubricContext
from ..teacher_focus import LearnedCriteria

#: The teacher-focus state in a checkpoint folder (written by the main process; every process holds the same).
FOCUS_STATE_FILE = "rgsd_teacher_focus.json"


class TeacherFocus:
    """The trainer's side of teacher focus: observe the judge's verdicts, focus each row's rubric, log, checkpoint."""

    def __init__(self, store: LearnedCriteria, reward: RubricReward, rubric_column: str, pitfall_polarity: str):
        self.store, self.reward = store, reward
        self.rubric_column, self.pitfall_polarity = rubric_column, pitfall_polarity
        #: The last graded training batch's observations, applied when the next batch is graded.
        self.pending: list = []

    def _rubric(self, row: Mapping[str, Any]) -> Rubric:
        return Rubric.from_any(row[self.rubric_column], pitfall_polarity=self.pitfall_polarity)

    def rows(self, inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """`inputs` with each row's rubric replaced by its focused rubric (the teacher context reads it from there)."""
        return [{**x, self.rubric_column: self.store.focus(self._rubric(x), x["prompt"])} for x in inputs]

    def observe(self, trainer, inputs: list[dict[str, Any]]) -> None:
        """After a batch is graded: apply the previous training batch's verdicts, log what this batch's teacher
        prompts will omit, and hold this batch's verdicts back (training only)."""
        train = trainer.model.training
        if train:
            for observation in self.pending:
                self.store.record(observation)
            self.pending = []
        omitted = [
            len(rubric) - len(self.store.focus(rubric, x["prompt"])) for x in inputs for rubric in [self._rubric(x)]
        ]
        device = trainer.accelerator.device
        local = torch.tensor(
            [float(sum(omitted)), float(sum(n > 0 for n in omitted)), float(len(omitted))], device=device
        )
        total = trainer.accelerator.reduce(local, reduction="sum")
        metrics = trainer._metrics["train" if train else "eval"]
        metrics["rgsd/teacher_focus_omitted"].append((total[0] / total[2].clamp(min=1)).item())
        metrics["rgsd/teacher_focus_rows"].append(total[1].item())
        if not train:
            return
        grades = self.reward.last_grades
        if len(grades) != len(inputs):
            raise RuntimeError(
                f"teacher_focus: the judge reward holds {len(grades)} grades for a batch of {len(inputs)} rows; "
                "expected one per row"
            )
        local_obs = [
            self.store.observation(x["prompt"], self._rubric(x), grade.verdicts)
            for x, grade in zip(inputs, grades, strict=True)
            if grade.verdicts is not None and grade.rating is None  # a holistic rating has no per-criterion verdicts
        ]
        self.pending = gather_object(local_obs) if trainer.accelerator.num_processes > 1 else local_obs

    def state_dict(self) -> dict[str, Any]:
        return {"store": self.store.state_dict(), "pending": self.pending}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.store.load_state_dict(state["store"])
        self.pending = [list(o) for o in state["pending"]]


def build_teacher_focus(args, reward_funcs: Any, teacher_context: Any) -> TeacherFocus | None:
    """The trainer's [`TeacherFocus`] for `teacher_focus="unlearned"` (None for `"all"`); refuses what cannot work."""
    if args.teacher_focus == "all":
        return None
    funcs = reward_funcs if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
    reward = next((f for f in funcs if isinstance(f, RubricReward)), None)
    if reward is None:
        raise ValueError(
            "teacher_focus='unlearned' needs per-criterion verdicts: pass a RubricReward (a judge: RuleJudge for "
            "rule-tagged rubrics, or an LLM judge) among reward_funcs. With distillation_weight=1.0 the judge only "
            "observes the rollouts; the loss stays pure distillation. Or set teacher_focus='all'."
        )
    if getattr(reward, "rubric_dropout", 0):
        raise ValueError(
            f"teacher_focus='unlearned' reads the judge's verdicts per criterion of each row's rubric, but the "
            f"RubricReward drops criteria (rubric_dropout={reward.rubric_dropout}); use a RubricReward without "
            "rubric_dropout, or teacher_focus='all'"
        )
    supported = isinstance(teacher_context, RubricContext) or (
        isinstance(teacher_context, ReferenceContext) and teacher_context.with_rubric
    )
    if not supported:
        raise ValueError(
            f"teacher_focus='unlearned' narrows the rubric the teacher reads, which the {teacher_context.name!r} "
            "teacher context does not show as one list; use teacher_context='rubric' or 'rubric+reference', or "
            "teacher_focus='all'"
        )
    if reward.rubric_column != teacher_context.rubric_column:
        raise ValueError(
            f"teacher_focus='unlearned' matches the judge's verdicts to the teacher's rubric, but the RubricReward "
            f"grades column {reward.rubric_column!r} and the teacher reads {teacher_context.rubric_column!r}; "
            "point both at the same column"
        )
    store = LearnedCriteria(
        args.teacher_focus_threshold, args.teacher_focus_min_observations, args.teacher_focus_window
    )
    return TeacherFocus(store, reward, teacher_context.rubric_column, teacher_context.pitfall_polarity)


def save_focus_state(trainer, trial) -> None:
    """Write the teacher-focus state into the checkpoint folder just saved (main process)."""
    focus = getattr(trainer, "_teacher_focus", None)
    if focus is None or not trainer.args.should_save:
        return
    folder = os.path.join(trainer._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{trainer.state.global_step}")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, FOCUS_STATE_FILE), "w", encoding="utf-8") as f:
        json.dump(focus.state_dict(), f)


def load_focus_state(trainer, checkpoint: str | None) -> None:
    """Restore the teacher-focus state saved in `checkpoint` (every process reads the same file)."""
    focus = getattr(trainer, "_teacher_focus", None)
    if focus is None or checkpoint is None:
        return
    path = os.path.join(checkpoint, FOCUS_STATE_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"resuming a teacher_focus='unlearned' run from {checkpoint}, but it holds no {FOCUS_STATE_FILE}; the "
            "learned-criteria store cannot be restored (was the checkpoint saved with teacher_focus='all'?)"
        )
    with open(path, encoding="utf-8") as f:
        focus.load_state_dict(json.load(f))
