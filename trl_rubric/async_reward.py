"""The rubric reward inside TRL's asynchronous GRPO (`trl.experimental.async_grpo`), with its judge metrics kept.

`AsyncGRPOTrainer` (TRL 1.16) generates in a spawned child process (`AsyncRolloutWorker`) against a vLLM server and
calls each reward function **once per prompt group** (the `num_generations` completions of one prompt) as soon as the
group is complete, while the trainer trains on earlier groups. Three things differ from `GRPOTrainer`, and this module
handles each:

- **No `log_metric` / `log_extra`.** The child passes neither, so [`RubricReward`]'s `judge/*` metrics would vanish
  without a word. [`AsyncRubricReward`] collects them per call and hands them to [`RubricRolloutLoop`] (the rollout
  loop of [`RubricRolloutWorker`]), which puts them on the worker's `metrics_queue`; `AsyncGRPOTrainer.log()` drains
  that queue into its logs like TRL's own `rollout/*` metrics. Each value is per prompt group, averaged over the
  logging window (`judge/groups_total` is summed: groups graded in the window). Used with TRL's plain worker instead,
  the reward warns once that its metrics are dropped.
- **A spawned child.** Everything handed to the worker is pickled: the judge travels with the reward (judges drop
  their live clients when pickled and rebuild them in the child). Lambdas and closures do not pickle: use a judge
  whose checks are module-level functions, or an HTTP judge.
- **The model is a string** (a Hub id or a local directory): the trainer loads it itself, and the worker asks the
  server for it by name. A model object is refused with a clear error, as is a missing `aiohttp`.

[`rubric_async_grpo_trainer`] builds the trainer with all of this in place.
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
from collections.abc import Callable
from typing import Any

from trl.experimental.async_grpo.async_rollout_worker import AsyncRolloutWorker, _AsyncRolloutLoop

from .judges.base import RubricJudge
from .rewards import DEFAULT_MIN_GRADED_FRACTION, RubricReward

logger = logging.getLogger(__name__)

#: Counter of the prompt groups graded, summed over each logging window (the `total` word makes TRL sum it).
GROUPS_METRIC = "judge/groups_total"


def check_async_grpo_requirements(model: Any) -> None:
    """Raise a clear error where `AsyncGRPOTrainer` would fail later or obscurely: a model object, no `aiohttp`."""
    if not isinstance(model, str):
        raise TypeError(
            f"AsyncGRPOTrainer takes the model as a string (a Hub id or a local directory), got a "
            f"{type(model).__name__}: it loads the model itself, and the rollout worker asks the vLLM server for it by "
            "that name. Save the model with save_pretrained(dir) and pass the directory."
        )
    if importlib.util.find_spec("aiohttp") is None:
        raise ImportError(
            "TRL's async GRPO rollout worker needs aiohttp, which is not installed: pip install 'trl-rubric[async]' "
            "(or pip install aiohttp)"
        )


class AsyncRubricReward:
    """A [`RubricReward`] for `AsyncGRPOTrainer`: one call per prompt group, its judge metrics forwarded to the logs.

    Args:
        judge: Any picklable [`RubricJudge`] (it is sent to the rollout worker's child process).
        weighted, rubric_column, pitfall_polarity, min_graded_fraction, name: As for [`RubricReward`].
    """

    def __init__(
        self,
        judge: RubricJudge,
        weighted: bool = True,
        rubric_column: str = "rubric",
        pitfall_polarity: str = "as_is",
        min_graded_fraction: float = DEFAULT_MIN_GRADED_FRACTION,
        name: str = "rubric_judge",
    ):
        self.reward = RubricReward(
            judge,
            weighted=weighted,
            rubric_column=rubric_column,
            pitfall_polarity=pitfall_polarity,
            min_graded_fraction=min_graded_fraction,
            name=name,
        )
        self.__name__ = name
        self._sink: Callable[[dict[str, float]], None] | None = None
        self._warned = False

    def __repr__(self) -> str:
        return f"AsyncRubricReward({self.reward!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_sink": None}  # the sink is bound in the child, by the rollout loop

    def attach(self, sink: Callable[[dict[str, float]], None]) -> None:
        """Where to send each call's judge metrics (called by [`RubricRolloutLoop`])."""
        self._sink = sink

    async def __call__(self, prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float | None]:
        collected: dict[str, list[float]] = {}

        def log_metric(name: str, value: float) -> None:
            collected.setdefault(name, []).append(float(value))

        kwargs = {k: v for k, v in kwargs.items() if k not in ("log_metric", "log_extra")}
        rewards = await self.reward(prompts, completions, log_metric=log_metric, **kwargs)
        metrics = {name: sum(values) / len(values) for name, values in collected.items()}
        metrics[GROUPS_METRIC] = 1.0
        if self._sink is not None:
            self._sink(metrics)
        elif not self._warned:
            self._warned = True
            message = (
                "AsyncRubricReward: the judge metrics (judge/*) are not forwarded to the trainer's logs, because the "
                "rollout worker is TRL's plain AsyncRolloutWorker; use rubric_async_grpo_trainer(...), or call "
                "forward_judge_metrics(trainer) before train()"
            )
            logger.warning(message)
            warnings.warn(message, stacklevel=2)
        return rewards


class RubricRolloutLoop(_AsyncRolloutLoop):
    """TRL's rollout loop (it runs in the worker's child process) that sends [`AsyncRubricReward`] metrics upstream."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        for func in self.reward_funcs:
            if isinstance(func, AsyncRubricReward):
                func.attach(self._push_metrics)


class RubricRolloutWorker(AsyncRolloutWorker):
    """TRL's `AsyncRolloutWorker` running [`RubricRolloutLoop`]; same arguments."""

    _loop_cls = RubricRolloutLoop


def forward_judge_metrics(trainer: Any) -> Any:
    """Make an `AsyncGRPOTrainer`'s default rollout worker forward [`AsyncRubricReward`] metrics; returns `trainer`."""
    worker = getattr(trainer, "rollout_worker", None)
    if worker is None:  # not the main process: it has no worker and logs nothing
        return trainer
    if not isinstance(worker, AsyncRolloutWorker):
        raise TypeError(
            f"forward_judge_metrics: the trainer's rollout worker is a {type(worker).__name__}, not TRL's "
            "AsyncRolloutWorker; a custom worker must forward the reward's metrics itself (see AsyncRubricReward.attach)"
        )
    if worker._process is not None:
        raise RuntimeError("forward_judge_metrics must be called before train(): the rollout worker already runs")
    worker._loop_cls = RubricRolloutLoop
    return trainer


def rubric_async_grpo_trainer(
    model: str,
    judge: RubricJudge | AsyncRubricReward,
    args: Any = None,
    train_dataset: Any = None,
    reward_funcs: list[Callable] | None = None,
    **kwargs: Any,
) -> Any:
    """An `AsyncGRPOTrainer` whose first reward is the rubric judge, with its judge metrics in the trainer's logs.

    Args:
        model: Hub id or local directory of the policy (a string: see the module docstring).
        judge: A [`RubricJudge`] (wrapped in [`AsyncRubricReward`] with defaults) or a ready `AsyncRubricReward`.
        args: An `AsyncGRPOConfig`.
        train_dataset: Rows with `prompt` and the rubric column (checked here, before the model loads).
        reward_funcs: Further reward functions, summed after the rubric reward.
        **kwargs: Passed on to `AsyncGRPOTrainer` (`processing_class`, `rollout_worker`, `weight_transfer`, ...).
    """
    from trl.experimental.async_grpo import AsyncGRPOTrainer

    from .data import validate_rubric_column

    check_async_grpo_requirements(model)
    reward = judge if isinstance(judge, AsyncRubricReward) else AsyncRubricReward(judge)
    if train_dataset is not None:
        validate_rubric_column(
            train_dataset, reward.reward.rubric_column, "train_dataset", reward.reward.pitfall_polarity
        )
    trainer = AsyncGRPOTrainer(
        model, reward_funcs=[reward, *(reward_funcs or [])], args=args, train_dataset=train_dataset, **kwargs
    )
    if kwargs.get("rollout_worker") is None:
        forward_judge_metrics(trainer)
    return trainer
