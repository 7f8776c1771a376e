"""A reward-hacking monitor for `RubricGRPOTrainer` and `RGSDTrainer`: a second judge on held-out probe prompts.

Reward hacking shows as a training signal that keeps rising while an independent measure of quality does not: a
judge that pays for length, keywords it can be fed, or criteria it cannot check ("Rubric Dropout", arXiv 2608.11669,
tracks the gap between a training judge and a stronger one on the same answers). [`HackingMonitor`] is a
`TrainerCallback` that, every `every_n_steps` optimizer steps (and once before the first), answers a fixed set of
held-out probe prompts with the current policy (greedy, so the measure does not move with sampling noise), grades the
answers with its own judge and, where the trainer has one (RubricGRPO), with the training judge too, and logs next to
the trainer's metrics:

- `monitor/score`: the monitor judge's mean score on the probe answers;
- `monitor/length`: their mean length in tokens;
- `monitor/signal`: the training signal averaged since the previous probe (`rewards/<judge>/mean` for RubricGRPO, the
  teacher log-ratio `rgsd/teacher_logratio` for RGSD);
- `monitor/train_judge_score`, `monitor/gap`: the training judge's mean score on the same probe answers, and the gap
  (training judge minus monitor; RubricGRPO only);
- `monitor/signal_rise`, `monitor/score_change`, `monitor/gap_change`, `monitor/hacking_warning` (1 when a warning
  fires at this probe, else 0).

**The warnings.** The window is the last `window` probe intervals (`window * every_n_steps` steps); changes are
between the window's first probe and the latest, per probe prompt (paired), so a change must also exceed twice its
standard error over the prompts to count: a small probe set's noise does not fire it.

1. *Signal up, monitor down*: the training signal's mean over the second half of the window's steps exceeds its mean
   over the first half by more than `min_signal_rise`, while the monitor score falls by more than
   `max(min_score_drop, 2 SE)`.
2. *The judges part on the same answers* (when the training judge also grades the probes): the gap grows by more than
   `max(min_gap_growth, 2 SE)`. A judge that pays for length shows here even while the monitor only stalls.

Either: a `RewardHackingWarning` through `warnings.warn`, the same message on the logger, and `monitor/hacking_warning`
= 1. Every probe is also appended to `<output_dir>/monitor_probes.jsonl` (main process): step, scores, length and the
probe answers with their scores, so what the policy now writes can be read next to the numbers.

Judge calls: the monitor judge grades `len(probe_dataset)` answers per probe, and the training judge as many again
(`compare_training_judge`); RGSD calls no judge without a monitor. Pass the monitor in `callbacks=[HackingMonitor(...)]`;
the trainer hands itself to the monitor when it is built. Probe generation leaves the training RNG untouched, so a
monitored run trains exactly like an unmonitored one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback

from ..evaluation.generation import generate_responses
from ..judges.base import RubricJudge

logger = logging.getLogger(__name__)

#: Training signal each trainer is watched on, by the name it logs.
RUBRIC_GRPO_SIGNAL = "rewards/{name}/mean"
RGSD_SIGNAL = "rgsd/teacher_logratio"
#: Written in the trainer's `output_dir`: one JSON line per probe.
PROBES_FILE = "monitor_probes.jsonl"


class RewardHackingWarning(UserWarning):
    """The training signal rose while the monitor judge's score fell over the monitor's window."""


def paired_change(early: Sequence[float | None], late: Sequence[float | None]) -> tuple[float, float]:
    """Mean and standard error of `late - early` over the prompts both know (`(0, 0)` when none do)."""
    diffs = [b - a for a, b in zip(early, late, strict=True) if a is not None and b is not None]
    if not diffs:
        return 0.0, 0.0
    mean = sum(diffs) / len(diffs)
    if len(diffs) < 2:
        return mean, 0.0
    variance = sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)
    return mean, math.sqrt(variance / len(diffs))


def hacking_check(
    signal: Sequence[tuple[int, float]],
    probes: Sequence[tuple[int, Sequence[float | None], Sequence[float | None] | None]],
    window: int,
    min_signal_rise: float = 0.0,
    min_score_drop: float = 0.05,
    min_gap_growth: float = 0.1,
) -> dict[str, Any] | None:
    """The two warnings of the module docstring, over the last `window` probe intervals.

    Args:
        signal: `(step, value)` of the training signal, every value logged so far.
        probes: `(step, monitor score per probe prompt, gap per probe prompt or None)` of every probe so far.
        window: Probe intervals compared (needs `window + 1` probes).
        min_signal_rise: How much the signal's second-half mean must exceed its first-half mean.
        min_score_drop: Smallest fall of the monitor score that counts (at least twice its standard error).
        min_gap_growth: Smallest growth of the gap that counts (at least twice its standard error).

    Returns:
        `None` while there are too few probes; else the changes, their standard errors, `warning` (1.0 or 0.0) and
        `reasons` (which warnings fired).
    """
    if window < 1:
        raise ValueError(f"window is {window}; expected at least 1 probe interval")
    if len(probes) < window + 1:
        return None
    (start, first, first_gap), (end, last, last_gap) = probes[-window - 1], probes[-1]
    result: dict[str, Any] = {"reasons": []}
    result["score_change"], result["score_change_se"] = paired_change(first, last)
    inside = [(s, v) for s, v in signal if start < s <= end and v == v]
    middle = (start + end) / 2
    early = [v for s, v in inside if s <= middle]
    late = [v for s, v in inside if s > middle]
    if early and late:
        result["signal_rise"] = sum(late) / len(late) - sum(early) / len(early)
        falls = result["score_change"] < -max(min_score_drop, 2 * result["score_change_se"])
        if result["signal_rise"] > min_signal_rise and falls:
            result["reasons"].append("signal up, monitor down")
    if first_gap is not None and last_gap is not None:
        result["gap_change"], result["gap_change_se"] = paired_change(first_gap, last_gap)
        if result["gap_change"] > max(min_gap_growth, 2 * result["gap_change_se"]):
            result["reasons"].append("judges part on the same answers")
    result["warning"] = float(bool(result["reasons"]))
    return result


class HackingMonitor(TrainerCallback):
    """Probe held-out prompts with a second judge every few steps; warn when the training signal and it part ways.

    Args:
        probe_dataset: Held-out rows with a `prompt` (text or chat messages) and a rubric column; keep them out of the
            training data. A few dozen prompts are enough to see a trend (more make the standard errors smaller);
            each probe costs one answer and one grade (two with `compare_training_judge`) per row.
        judge: The monitor's [`RubricJudge`]: another LLM judge, or a [`RuleJudge`] whose checks the policy cannot
            talk its way past. It should not be the training judge (it would rise with it).
        every_n_steps: Probe every this many optimizer steps (plus once before training). Smaller catches hacking
            earlier and costs more generation and judge calls.
        window: Probe intervals the warnings compare (see the module docstring); 3 means `3 * every_n_steps` steps.
        min_signal_rise: Smallest rise of the training signal (its own units) that counts as rising.
        min_score_drop: Smallest fall of the monitor score (score units, 0-1 for rubric scores) that counts as
            falling; the fall must also exceed twice its standard error over the probe prompts.
        min_gap_growth: Smallest growth of the gap between training judge and monitor on the same probe answers that
            counts; also at least twice its standard error.
        compare_training_judge: Also grade the probe answers with the trainer's own judge (RubricGRPO; RGSD has
            none), for `monitor/gap` and the second warning. Costs that judge's calls on the probe set.
        max_new_tokens: Answer budget per probe prompt; defaults to the trainer's `max_completion_length`.
        rubric_column: Column of `probe_dataset` holding the rubrics.
        signal_key: Metric to watch as the training signal; defaults to the trainer's (see the module docstring).
        batch_size: Probe prompts per `generate` call.
    """

    def __init__(
        self,
        probe_dataset: Any,
        judge: RubricJudge,
        every_n_steps: int = 10,
        window: int = 3,
        min_signal_rise: float = 0.0,
        min_score_drop: float = 0.05,
        min_gap_growth: float = 0.1,
        compare_training_judge: bool = True,
        max_new_tokens: int | None = None,
        rubric_column: str = "rubric",
        signal_key: str | None = None,
        batch_size: int = 8,
    ):
        if not isinstance(judge, RubricJudge):
            raise TypeError(f"HackingMonitor needs a RubricJudge; got {type(judge).__name__}")
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps is {every_n_steps}; expected at least 1")
        if window < 1:
            raise ValueError(f"window is {window}; expected at least 1 probe interval")
        rows = [dict(row) for row in probe_dataset]
        if not rows:
            raise ValueError("probe_dataset is empty; give the monitor a few held-out prompts with rubrics")
        for i, row in enumerate(rows):
            for column in ("prompt", rubric_column):
                if row.get(column) in (None, "", []):
                    raise ValueError(f"probe_dataset row {i}: field {column!r} is missing or empty")
        self.prompts = [row["prompt"] for row in rows]
        self.rubrics = [row[rubric_column] for row in rows]
        self.judge = judge
        self.every_n_steps, self.window, self.batch_size = every_n_steps, window, batch_size
        self.min_signal_rise, self.min_score_drop, self.min_gap_growth = (
            min_signal_rise,
            min_score_drop,
            min_gap_growth,
        )
        self.compare_training_judge = compare_training_judge
        self.max_new_tokens = max_new_tokens
        self.signal_key = signal_key
        self.trainer = None
        self.training_judge: RubricJudge | None = None
        #: `(step, mean score)` and `(step, mean length)` of every probe, `(step, value)` of the training signal.
        self.scores: list[tuple[int, float]] = []
        self.lengths: list[tuple[int, float]] = []
        self.signal: list[tuple[int, float]] = []
        #: `(step, monitor score per prompt, gap per prompt or None)` of every probe.
        self.probes: list[tuple[int, list[float | None], list[float | None] | None]] = []
        self.warnings: list[dict[str, Any]] = []
        self.last_answers: list[str] = []
        self.last_scores: list[float | None] = []
        self.last_training_scores: list[float | None] | None = None

    def bind(self, trainer: Any, signal_key: str) -> None:
        """Called by the trainer: where to generate, where to log, which signal to watch and its judge, if any."""
        self.trainer = trainer
        self.signal_key = self.signal_key or signal_key
        if self.max_new_tokens is None:
            self.max_new_tokens = trainer.args.max_completion_length
        reward = getattr(trainer, "rubric_reward", None)
        if self.compare_training_judge and reward is not None:
            self.training_judge = reward.judge

    def on_train_begin(self, args, state, control, **kwargs):
        if self.trainer is None:
            raise RuntimeError("HackingMonitor was not bound to its trainer; pass it in the trainer's callbacks=[...]")
        if not self.scores or self.scores[-1][0] != state.global_step:
            self._probe(state.global_step, log=False)

    def on_log(self, args, state, control, logs=None, **kwargs):
        value = (logs or {}).get(self.signal_key)
        if isinstance(value, int | float):
            if self.signal and self.signal[-1][0] == state.global_step:
                self.signal.pop()  # read early from the pending metrics at a probe step: keep the logged value
            self.signal.append((state.global_step, float(value)))

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every_n_steps == 0:
            self._probe(state.global_step, log=True)

    def _probe(self, step: int, log: bool) -> None:
        self._measure()
        score, length = _mean(self.last_scores), _mean(self.last_lengths)
        gaps = None
        metrics = {"monitor/score": score, "monitor/length": length}
        if self.last_training_scores is not None:
            gaps = [
                None if t is None or m is None else t - m
                for t, m in zip(self.last_training_scores, self.last_scores, strict=True)
            ]
            metrics["monitor/train_judge_score"] = _mean(self.last_training_scores)
            metrics["monitor/gap"] = _mean(gaps)
        self.scores.append((step, score))
        self.lengths.append((step, length))
        self.probes.append((step, list(self.last_scores), gaps))
        self._write(step, metrics)
        # This step's signal is logged only after on_step_end: read it from the trainer's pending metrics.
        pending = self.trainer._metrics["train"].get(self.signal_key) if self.signal_key else None
        if pending:
            self.signal.append((step, float(sum(pending) / len(pending))))
        previous = self.scores[-2][0] if len(self.scores) > 1 else -1
        since = [v for s, v in self.signal if previous < s <= step]
        if since:
            metrics["monitor/signal"] = sum(since) / len(since)
        check = hacking_check(
            self.signal, self.probes, self.window, self.min_signal_rise, self.min_score_drop, self.min_gap_growth
        )
        if check is not None:
            for key in ("signal_rise", "score_change", "gap_change"):
                if key in check:
                    metrics[f"monitor/{key}"] = check[key]
            metrics["monitor/hacking_warning"] = check["warning"]
            if check["warning"]:
                self._warn(step, check, metrics)
        if log:
            for key, value in metrics.items():
                self.trainer._metrics["train"][key].append(value)

    def _warn(self, step: int, check: dict[str, Any], metrics: dict[str, float]) -> None:
        self.warnings.append({"step": step, **check})
        parts = []
        if "signal up, monitor down" in check["reasons"]:
            parts.append(
                f"the training signal {self.signal_key} rose by {check['signal_rise']:.4f} while the monitor judge's "
                f"score fell by {-check['score_change']:.4f} (SE {check['score_change_se']:.4f})"
            )
        if "judges part on the same answers" in check["reasons"]:
            parts.append(
                f"on the same probe answers the training judge's lead over the monitor judge grew by "
                f"{check['gap_change']:.4f} (SE {check['gap_change_se']:.4f}) to {metrics['monitor/gap']:.4f}"
            )
        message = (
            f"step {step}: possible reward hacking over the last {self.window * self.every_n_steps} steps: "
            + "; ".join(parts)
            + f" ({len(self.prompts)} probe prompts, monitor score now {metrics['monitor/score']:.4f}, mean answer "
            f"length {metrics['monitor/length']:.1f} tokens); read the answers in {PROBES_FILE}"
        )
        logger.warning(message)
        warnings.warn(message, RewardHackingWarning, stacklevel=3)

    def _write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.trainer.accelerator.is_main_process:
            return
        os.makedirs(self.trainer.args.output_dir, exist_ok=True)
        training = self.last_training_scores or [None] * len(self.last_answers)
        answers = [
            {"answer": a, "score": s, "train_judge_score": t}
            for a, s, t in zip(self.last_answers, self.last_scores, training, strict=True)
        ]
        record = {"step": step, **{k.removeprefix("monitor/"): v for k, v in metrics.items()}, "answers": answers}
        with open(os.path.join(self.trainer.args.output_dir, PROBES_FILE), "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def _measure(self) -> None:
        """Greedy answers to the probe prompts from the current policy, graded by the monitor (and training) judge."""
        trainer = self.trainer
        model = trainer.accelerator.unwrap_model(trainer.model)
        states = random.getstate(), np.random.get_state(), torch.get_rng_state()
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        try:
            out = generate_responses(
                model,
                trainer.processing_class,
                self.prompts,
                max_new_tokens=self.max_new_tokens,
                batch_size=self.batch_size,
                temperature=0.0,
                progress=False,
            )
        finally:  # generate_responses seeds the global RNGs: put the training run's back
            random.setstate(states[0])
            np.random.set_state(states[1])
            torch.set_rng_state(states[2])
            if cuda is not None:
                torch.cuda.set_rng_state_all(cuda)
        grades = self.judge.grade_many_sync(self.prompts, out.texts, self.rubrics)
        if all(g.score is None for g in grades):
            errors = [g.error for g in grades if g.error]
            raise RuntimeError(
                f"HackingMonitor: the monitor judge graded none of the {len(grades)} probe answers "
                f"(first error: {errors[0] if errors else 'none reported'})"
            )
        self.last_answers, self.last_lengths = out.texts, out.lengths
        self.last_scores = [g.score for g in grades]
        if self.training_judge is not None:
            # judge_ahead may be grading in the background with this judge: let it finish, so its counts stay whole.
            pending = getattr(trainer, "_ahead_pending", None)
            if pending is not None:
                pending.future.result()
            graded = self.training_judge.grade_many_sync(self.prompts, out.texts, self.rubrics)
            self.last_training_scores = [g.score for g in graded]


def _mean(values: Sequence[float | None]) -> float:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else float("nan")


def bind_monitors(trainer: Any, signal_key: str) -> None:
    """Hand `trainer` to every [`HackingMonitor`] among its callbacks."""
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, HackingMonitor):
            callback.bind(trainer, signal_key)
