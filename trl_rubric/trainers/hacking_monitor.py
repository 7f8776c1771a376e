"""A reward-hacking monitor for `RubricGRPOTrainer` and `RGSDTrainer`: a second judge on held-out probe prompts.

Reward hacking shows as a training signal that keeps rising while an independent measure of quality falls: a judge
that pays for length, keywords it can be fed, or criteria it cannot check ("Rubric Dropout", arXiv 2608.11669, tracks
exactly that gap between a training judge and a stronger one). [`HackingMonitor`] is a `TrainerCallback` that, every
`every_n_steps` optimizer steps (and once before the first), answers a fixed set of held-out probe prompts with the
current policy (greedy, so the measure does not move with sampling noise), grades the answers with its own judge, and
logs next to the trainer's metrics:

- `monitor/score`: the monitor judge's mean score on the probe answers;
- `monitor/length`: their mean length in tokens;
- `monitor/signal`: the training signal averaged since the previous probe (`rewards/<judge>/mean` for RubricGRPO, the
  teacher log-ratio `rgsd/teacher_logratio` for RGSD);
- `monitor/signal_rise`, `monitor/score_change`, `monitor/hacking_warning` (1 when the warning fires, else 0).

**The warning.** The window is the last `window` probe intervals (`window * every_n_steps` steps). The training
signal *rises* when its mean over the second half of the window's steps exceeds its mean over the first half by more
than `min_signal_rise`; the monitor *falls* when its score at the latest probe is below its score at the window's first
probe by more than `min_score_drop`. Both at once: a warning through `warnings.warn` and the logger, and
`monitor/hacking_warning` = 1.

Every probe is also appended to `<output_dir>/monitor_probes.jsonl` (main process): step, score, length and the probe
answers with their scores, so what the policy now writes can be read next to the numbers.

Judge calls: the monitor grades `len(probe_dataset)` answers per probe, nothing else; RGSD calls no judge without one.
Pass it in `callbacks=[HackingMonitor(...)]`; the trainer hands itself to the monitor when it is built. Probe
generation leaves the training RNG untouched, so a monitored run trains exactly like an unmonitored one.
"""

from __future__ import annotations

import json
import logging
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


def hacking_check(
    signal: Sequence[tuple[int, float]],
    scores: Sequence[tuple[int, float]],
    window: int,
    min_signal_rise: float = 0.0,
    min_score_drop: float = 0.05,
) -> dict[str, float] | None:
    """Whether, over the last `window` probe intervals, the training signal rose while the monitor score fell.

    Args:
        signal: `(step, value)` of the training signal, every value logged so far.
        scores: `(step, score)` of every probe so far, the first one before training.
        window: Probe intervals compared (needs `window + 1` probes).
        min_signal_rise: How much the signal's second-half mean must exceed its first-half mean.
        min_score_drop: How much the latest score must lie below the window's first score.

    Returns:
        `None` while there are too few probes; else `{"signal_rise", "score_change", "warning"}` (warning 1.0 or 0.0).
    """
    if window < 1:
        raise ValueError(f"window is {window}; expected at least 1 probe interval")
    if len(scores) < window + 1:
        return None
    (start, first), (end, last) = scores[-window - 1], scores[-1]
    inside = [(s, v) for s, v in signal if start < s <= end and v == v]
    middle = (start + end) / 2
    early = [v for s, v in inside if s <= middle]
    late = [v for s, v in inside if s > middle]
    if not early or not late:
        return None
    rise = sum(late) / len(late) - sum(early) / len(early)
    change = last - first
    warn = rise > min_signal_rise and change < -min_score_drop
    return {"signal_rise": rise, "score_change": change, "warning": float(warn)}


class HackingMonitor(TrainerCallback):
    """Probe held-out prompts with a second judge every few steps; warn when the training signal and it part ways.

    Args:
        probe_dataset: Held-out rows with a `prompt` (text or chat messages) and a rubric column; keep them out of the
            training data. A few dozen prompts are enough to see a trend; each probe costs one answer and one grade
            per row.
        judge: The monitor's [`RubricJudge`]: another LLM judge, or a [`RuleJudge`] whose checks the policy cannot
            talk its way past. It should not be the training judge (it would rise with it).
        every_n_steps: Probe every this many optimizer steps (plus once before training). Smaller catches hacking
            earlier and costs more generation and judge calls.
        window: Probe intervals the warning compares (see the module docstring); 3 means `3 * every_n_steps` steps.
        min_signal_rise: Smallest rise of the training signal (its own units) that counts as rising.
        min_score_drop: Smallest drop of the monitor score (score units, 0-1 for rubric scores) that counts as
            falling; raise it for a noisy judge or a small probe set.
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
        self.min_signal_rise, self.min_score_drop = min_signal_rise, min_score_drop
        self.max_new_tokens = max_new_tokens
        self.signal_key = signal_key
        self.trainer = None
        #: `(step, score)`, `(step, mean length)` of every probe, and `(step, value)` of the training signal.
        self.scores: list[tuple[int, float]] = []
        self.lengths: list[tuple[int, float]] = []
        self.signal: list[tuple[int, float]] = []
        self.warnings: list[dict[str, float]] = []
        self.last_answers: list[str] = []
        self.last_scores: list[float | None] = []

    def bind(self, trainer: Any, signal_key: str) -> None:
        """Called by the trainer: where to generate, where to log, and which signal to watch (unless given)."""
        self.trainer = trainer
        self.signal_key = self.signal_key or signal_key
        if self.max_new_tokens is None:
            self.max_new_tokens = trainer.args.max_completion_length

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
        score, length = self._measure()
        self._write(step, score, length)
        self.scores.append((step, score))
        self.lengths.append((step, length))
        metrics = {"monitor/score": score, "monitor/length": length}
        # This step's signal is logged only after on_step_end: read it from the trainer's pending metrics.
        pending = self.trainer._metrics["train"].get(self.signal_key) if self.signal_key else None
        if pending:
            self.signal.append((step, float(sum(pending) / len(pending))))
        previous = self.scores[-2][0] if len(self.scores) > 1 else -1
        since = [v for s, v in self.signal if previous < s <= step]
        if since:
            metrics["monitor/signal"] = sum(since) / len(since)
        check = hacking_check(self.signal, self.scores, self.window, self.min_signal_rise, self.min_score_drop)
        if check is not None:
            metrics["monitor/signal_rise"] = check["signal_rise"]
            metrics["monitor/score_change"] = check["score_change"]
            metrics["monitor/hacking_warning"] = check["warning"]
            if check["warning"]:
                self.warnings.append({"step": float(step), **check})
                message = (
                    f"step {step}: possible reward hacking: over the last {self.window * self.every_n_steps} steps "
                    f"the training signal {self.signal_key} rose by {check['signal_rise']:.4f} while the monitor "
                    f"judge's score on {len(self.prompts)} probe prompts fell by {-check['score_change']:.4f} "
                    f"(now {score:.4f}, mean answer length {length:.1f} tokens); read monitor/* and the probe answers"
                )
                logger.warning(message)
                warnings.warn(message, RewardHackingWarning, stacklevel=2)
        if log:
            for key, value in metrics.items():
                self.trainer._metrics["train"][key].append(value)

    def _write(self, step: int, score: float, length: float) -> None:
        if not self.trainer.accelerator.is_main_process:
            return
        os.makedirs(self.trainer.args.output_dir, exist_ok=True)
        record = {
            "step": step,
            "score": score,
            "length": length,
            "answers": [{"answer": a, "score": s} for a, s in zip(self.last_answers, self.last_scores, strict=True)],
        }
        with open(os.path.join(self.trainer.args.output_dir, PROBES_FILE), "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def _measure(self) -> tuple[float, float]:
        """Greedy answers to the probe prompts from the current policy, graded by the monitor judge."""
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
        self.last_scores = [g.score for g in grades]
        known = [g.score for g in grades if g.score is not None]
        if not known:
            errors = [g.error for g in grades if g.error]
            raise RuntimeError(
                f"HackingMonitor: the monitor judge graded none of the {len(grades)} probe answers "
                f"(first error: {errors[0] if errors else 'none reported'})"
            )
        self.last_answers = out.texts
        return sum(known) / len(known), sum(out.lengths) / len(out.lengths)


def bind_monitors(trainer: Any, signal_key: str) -> None:
    """Hand `trainer` to every [`HackingMonitor`] among its callbacks."""
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, HackingMonitor):
            callback.bind(trainer, signal_key)
