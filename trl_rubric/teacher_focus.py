"""Teacher focus: show the RGSD teacher only the criteria the student has not learned yet (issue 21).

[`LearnedCriteria`] keeps, per prompt and criterion, the judge's last `window` verdicts on the student's graded
rollouts and their pass rate (a positive criterion passes when met, a penalty when not met, as in
[`trl_rubric.criterion_diagnostics`]). [`LearnedCriteria.focus`] returns a prompt's rubric without the positive
criteria the student already meets: pass rate at least `threshold` over at least `min_observations` known verdicts.
Penalty criteria are never dropped (whether the teacher sees them is `teacher_penalties`' business), and at least one
positive criterion always stays: when all are learned, the least-met one.

Why a window of the last N verdicts and not an exponential average: the pass rate is then an exact share of recent
verdicts, `min_observations` is a plain count, a criterion the student forgets (fails again) comes back within N
verdicts, and the state to checkpoint is a list of booleans, restored exactly. An EMA would weigh old and new evidence
by one rate and need its own bias correction before `min_observations` verdicts.

Unknown verdicts (`None`: a judge failure, a criterion the judge could not assess) are not observations.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from .criterion_diagnostics import criterion_key
from .judges.base import prompt_to_text
from .rubric import Criterion, Rubric

#: Values of `RGSDConfig.teacher_focus`.
TEACHER_FOCUS_MODES = ("all", "unlearned")
#: Verdicts kept per (prompt, criterion) by default.
DEFAULT_FOCUS_WINDOW = 8


def prompt_key(prompt: Any) -> str:
    """The key a prompt's verdicts are kept under: a hash of its text (a string or chat messages)."""
    return hashlib.sha1(prompt_to_text(prompt).encode("utf-8")).hexdigest()[:16]


def criterion_keys(rubric: Rubric) -> list[str]:
    """Each criterion's [`criterion_key`], made unique within the rubric (`key#2` for a second criterion of that key)."""
    seen: dict[str, int] = {}
    keys = []
    for criterion in rubric:
        key = criterion_key(criterion)
        seen[key] = seen.get(key, 0) + 1
        keys.append(key if seen[key] == 1 else f"{key}#{seen[key]}")
    return keys


def check_teacher_focus_settings(threshold: Any, min_observations: Any, window: Any) -> None:
    """Raise a `ValueError` naming the first bad teacher-focus setting."""
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 < threshold <= 1:
        raise ValueError(f"teacher_focus_threshold is {threshold!r}; expected a pass rate in (0, 1]")
    if isinstance(min_observations, bool) or not isinstance(min_observations, int) or min_observations < 1:
        raise ValueError(f"teacher_focus_min_observations is {min_observations!r}; expected an integer >= 1")
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"teacher_focus_window is {window!r}; expected an integer >= 1")
    if min_observations > window:
        raise ValueError(
            f"teacher_focus_min_observations is {min_observations}, over teacher_focus_window={window}: no criterion "
            "could ever count as learned. Lower it or widen the window."
        )


class LearnedCriteria:
    """Running pass rates of the student's graded rollouts, per (prompt, criterion); see the module docstring.

    Args:
        threshold: Pass rate from which a positive criterion counts as learned.
        min_observations: Known verdicts needed before a criterion can count as learned.
        window: Verdicts kept per (prompt, criterion); the pass rate is over these.
    """

    def __init__(self, threshold: float = 0.8, min_observations: int = 2, window: int = DEFAULT_FOCUS_WINDOW):
        check_teacher_focus_settings(threshold, min_observations, window)
        self.threshold, self.min_observations, self.window = float(threshold), min_observations, window
        self._history: dict[str, dict[str, deque[bool]]] = {}

    def update(self, prompt: Any, rubric: Rubric, verdicts: Sequence[bool | None]) -> None:
        """Record one graded rollout of `prompt`: `verdicts[i]` says whether criterion i was met (`None`: unknown)."""
        self.record(self.observation(prompt, rubric, verdicts))

    @staticmethod
    def observation(prompt: Any, rubric: Rubric, verdicts: Sequence[bool | None]) -> list:
        """One graded rollout as `[prompt key, [[criterion key, passed], ...]]` (known verdicts only): what
        [`record`] takes, JSON-serialisable, so a trainer can hold it back a batch and checkpoint it."""
        if len(verdicts) != len(rubric):
            raise ValueError(f"{len(verdicts)} verdicts for a rubric of {len(rubric)} criteria; expected one each")
        pairs = [
            [key, bool(verdict) if criterion.weight > 0 else not verdict]
            for key, criterion, verdict in zip(criterion_keys(rubric), rubric, verdicts, strict=True)
            if verdict is not None
        ]
        return [prompt_key(prompt), pairs]

    def record(self, observation: Sequence[Any]) -> None:
        """Add one [`observation`] to the store."""
        key, pairs = observation
        history = self._history.setdefault(key, {})
        for criterion, passed in pairs:
            history.setdefault(criterion, deque(maxlen=self.window)).append(bool(passed))

    def pass_rate(self, prompt: Any, rubric: Rubric) -> list[tuple[float | None, int]]:
        """Per criterion of `rubric`: its pass rate over the kept verdicts (`None` when none) and how many there are."""
        history = self._history.get(prompt_key(prompt), {})
        out = []
        for key in criterion_keys(rubric):
            kept = history.get(key, ())
            out.append((sum(kept) / len(kept) if kept else None, len(kept)))
        return out

    def learned(self, prompt: Any, rubric: Rubric) -> list[bool]:
        """Per criterion: a positive criterion met at least `threshold` of the time over `min_observations`+ verdicts."""
        return [
            criterion.weight > 0 and n >= self.min_observations and rate >= self.threshold
            for criterion, (rate, n) in zip(rubric, self.pass_rate(prompt, rubric), strict=True)
        ]

    def focus(self, rubric: Rubric, prompt: Any) -> Rubric:
        """`rubric` without the positive criteria the student meets already; penalties kept, never without a goal."""
        learned = self.learned(prompt, rubric)
        if not any(learned):
            return rubric
        kept: list[Criterion] = [c for c, done in zip(rubric, learned, strict=True) if not done]
        if not any(c.weight > 0 for c in kept):
            # Every goal is learned: keep the least-met one (the first in rubric order on a tie).
            rates = self.pass_rate(prompt, rubric)
            positive = [i for i, c in enumerate(rubric) if c.weight > 0]
            weakest = min(positive, key=lambda i: rates[i][0])
            kept = [c for i, c in enumerate(rubric) if c.weight <= 0 or i == weakest]
        return Rubric(tuple(kept), guidelines=rubric.guidelines)

    def __len__(self) -> int:
        """Prompts with at least one observation."""
        return len(self._history)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: the settings and every kept verdict (JSON-serialisable)."""
        return {
            "threshold": self.threshold,
            "min_observations": self.min_observations,
            "window": self.window,
            "history": {p: {k: [int(v) for v in kept] for k, kept in h.items()} for p, h in self._history.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the verdicts of `state_dict()`; the settings must match this store's (they come from the config)."""
        for name in ("threshold", "min_observations", "window"):
            if state.get(name) != getattr(self, name):
                raise ValueError(
                    f"the saved teacher-focus state has {name}={state.get(name)!r}, but this run has "
                    f"{getattr(self, name)!r}; resume with the settings the run was saved with"
                )
        self._history = {
            p: {k: deque((bool(v) for v in kept), maxlen=self.window) for k, kept in h.items()}
            for p, h in state["history"].items()
        }
