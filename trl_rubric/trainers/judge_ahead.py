"""Judge one step ahead: `RubricGRPOTrainer` grades batch k+1 while it trains on batch k (`judge_ahead=True`).

Today's loop is serial: generate batch k, wait for the judge, train on batch k. With `judge_ahead`, the generation
call of step k does four things:

1. it samples the completions of batch k+1 with the current policy and records their per-token log-probabilities
   under that policy;
2. it waits for the grades of batch k, whose completions were sampled one step earlier and whose grading has run in
   the background since (during step k-1's scoring and training, and step 1 just now);
3. it sends batch k+1 to the judge, on TRL's reward event loop (one grading at a time, in batch order);
4. it hands batch k to TRL's own scoring code (advantages, metrics, the completions table) exactly as a synchronous
   step would, with the judge's grades of *those* completions standing in for a new judge call.

So the judge's latency is hidden up to the length of a step's scoring, training and sampling; `judge/ahead_wait_s`
logs what is left of it. The price, besides the one step of staleness below, is one extra forward pass per batch
(the sampling policy's log-probabilities, which a synchronous on-policy step does not need).

**What is stale, exactly.** Batch k+1 is sampled from the policy *before* step k's update and trained after it: one
optimizer step off-policy (`judge/ahead_stale` = 1; 0 on a synchronous step). Rewards are never stale: every reward
is the judge's grade of the very completion it is applied to (phase 2 checks the completions match). The off-policy
step is corrected the way TRL corrects `steps_per_generation > gradient_accumulation_steps`: the batch carries
`old_per_token_logps` of the sampling policy, so GRPO's clipped ratio pi_theta / pi_old applies. Reward
functions receive `trainer_state` as it was at sampling time (one step earlier).

**When it runs synchronously instead** (`judge/ahead_stale` = 0): the first step, the first step of every epoch
(nothing could be read ahead), the step after a checkpoint and after the last one (no batch is sampled ahead across a
save, so a resumed run replays the uninterrupted one exactly), and whenever the batch read ahead is not the batch
TRL hands over.

**Requirements** (checked when the trainer is built): `num_iterations == 1`, `steps_per_generation ==
gradient_accumulation_steps` (TRL's default), no vLLM, tools, environments or `rollout_func`.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import pad

#: Logged once per generation: 1 when the batch trained on was sampled one step earlier, 0 when it was fresh.
AHEAD_STALE = "judge/ahead_stale"
#: Seconds the generation call waited for grades submitted one step earlier (0 when the judge kept up).
AHEAD_WAIT = "judge/ahead_wait_s"


def check_judge_ahead(trainer: Any) -> None:
    """Raise before training if `judge_ahead` is on with a setting it cannot keep correct."""
    args = trainer.args
    if not getattr(args, "judge_ahead", False):
        return
    problems = []
    if trainer.num_iterations != 1:
        problems.append(f"num_iterations={trainer.num_iterations} (needs 1)")
    if args.steps_per_generation != args.gradient_accumulation_steps:
        problems.append(
            f"steps_per_generation={args.steps_per_generation} differs from gradient_accumulation_steps="
            f"{args.gradient_accumulation_steps} (needs them equal, TRL's default)"
        )
    if args.use_vllm:
        problems.append("use_vllm=True (vLLM's own importance-sampling correction is not combined with it)")
    if trainer.tools or trainer.environment_factories is not None or trainer.rollout_func is not None:
        problems.append("tools, environment_factory or rollout_func (multi-turn rollouts)")
    if problems:
        raise ValueError("judge_ahead=True cannot be used with " + "; ".join(problems) + "; set judge_ahead=False")


@dataclass
class _Recorder:
    """Collects a reward function's `log_metric` / `log_extra` calls, to replay them when the batch is trained."""

    metrics: list[tuple[str, float]] = field(default_factory=list)
    extras: list[tuple[str, list]] = field(default_factory=list)

    def log_metric(self, name: str, value: float) -> None:
        self.metrics.append((name, value))

    def log_extra(self, column: str, values: list) -> None:
        self.extras.append((column, values))


@dataclass
class _Pending:
    """A batch generated one step ahead, with its grading under way."""

    key: list[Any]
    generated: tuple
    old_logps: torch.Tensor
    completions: list[Any]
    kwargs: dict[str, Any]  # the reward function's arguments
    recorder: _Recorder
    metrics: dict[str, list[float]]
    future: Any = None  # concurrent.futures.Future of the reward function's coroutine, once submitted


class _GradedReward:
    """Stands in for the rubric reward while TRL scores a batch graded ahead: returns those grades, replays the logs."""

    def __init__(self, reward: Any, pending: _Pending, rewards: list[float | None]):
        self.__name__ = reward.__name__
        self._pending, self._rewards = pending, rewards

    def __call__(self, prompts, completions, **kwargs):
        if completions != self._pending.completions:
            raise RuntimeError("judge_ahead: the completions to score are not the ones graded ahead; please report")
        for name, value in self._pending.recorder.metrics:
            kwargs["log_metric"](name, value)
        for column, values in self._pending.recorder.extras:
            kwargs["log_extra"](column, values)
        return self._rewards


def _prompt_key(inputs: list[dict[str, Any]]) -> list[Any]:
    return [x.get("prompt") for x in inputs]


class JudgeAheadMixin:
    """Put before `GRPOTrainer` in a trainer's bases; active when `args.judge_ahead` is true. Needs `rubric_reward`."""

    _ahead_pending: _Pending | None = None
    _ahead_stash: tuple[Iterator, Any] | None = None
    _ahead_next: Any = None

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        if not getattr(self.args, "judge_ahead", False):
            return super().get_batch_samples(epoch_iterator, num_batches, device)
        # Read the next optimizer step's first batch now (the same stream, one batch early), so its completions can
        # be generated and graded while this step trains.
        head = []
        if self._ahead_stash is not None and self._ahead_stash[0] is epoch_iterator:
            head = [self._ahead_stash[1]]
        self._ahead_stash = None
        samples, num_items = super().get_batch_samples(itertools.chain(head, epoch_iterator), num_batches, device)
        try:
            upcoming = next(epoch_iterator)
        except StopIteration:
            upcoming = None
        self._ahead_stash = None if upcoming is None else (epoch_iterator, upcoming)
        self._ahead_next = upcoming
        return samples, num_items

    def _generate_and_score_completions(self, inputs):
        if not (getattr(self.args, "judge_ahead", False) and self.model.training):
            if self._ahead_pending is not None:  # evaluation: let the read-ahead grading finish first (judge stats)
                self._ahead_pending.future.result()
            return super()._generate_and_score_completions(inputs)
        pending, self._ahead_pending = self._ahead_pending, None
        upcoming, self._ahead_next = self._ahead_next, None
        read_ahead = upcoming is not None and not self._ahead_stop_here()
        if pending is not None and pending.key == _prompt_key(inputs):
            # Batch k+1 is sampled before waiting for batch k's grades (so they also overlap this generation), and
            # sent to the judge after them: one grading at a time keeps the judge's counters (judge/calls, ...) and
            # any per-prompt reward state in order. Its grading then overlaps the scoring and training of batch k
            # and the sampling of batch k+2.
            upcoming_pending = self._ahead_start(upcoming) if read_ahead else None
            start = time.perf_counter()
            rewards = pending.future.result()
            waited, stale = time.perf_counter() - start, 1.0
            if upcoming_pending is not None:
                self._ahead_pending = self._ahead_submit(upcoming_pending)
            output = self._ahead_finish(inputs, pending, rewards)
        else:
            if pending is not None:
                pending.future.result()  # a read-ahead that is not used: let it finish, so judge stats stay whole
            output, waited, stale = super()._generate_and_score_completions(inputs), 0.0, 0.0
            if read_ahead:
                self._ahead_pending = self._ahead_submit(self._ahead_start(upcoming))
        self._metrics["train"][AHEAD_STALE].append(stale)
        self._metrics["train"][AHEAD_WAIT].append(waited)
        return output

    def _ahead_stop_here(self) -> bool:
        """No read-ahead across a checkpoint or past the last step (the step now training is global_step + 1)."""
        step = self.state.global_step + 1
        if self.state.max_steps and step >= self.state.max_steps:
            return True
        save_steps = self.state.save_steps or self.args.save_steps
        return (
            str(self.args.save_strategy) in ("steps", "SaveStrategy.STEPS")
            and bool(save_steps)
            and (step % int(save_steps) == 0)
        )

    def _ahead_start(self, inputs) -> _Pending:
        """Sample a batch with the current policy and record its log-probabilities; grading is submitted apart."""
        metrics = self._metrics["train"]
        before = {key: len(values) for key, values in metrics.items()}
        prompts = [x["prompt"] for x in inputs]
        generated = self._generate(prompts)
        # Completion metrics belong to the step that trains on these completions: move them there.
        moved = {}
        for key, values in list(metrics.items()):
            start = before.get(key, 0)
            if key != "num_tokens" and len(values) > start:
                moved[key] = values[start:]
                del values[start:]
        prompt_ids_list, completion_ids_list, _, completions = generated[:4]
        old_logps = self._sampling_logps(prompt_ids_list, completion_ids_list)
        recorder = _Recorder()
        columns = [key for key in inputs[0] if key not in ("prompt", "completion", "completion_ids")]
        kwargs = {key: [x[key] for x in inputs] for key in columns}
        kwargs.update(
            prompts=prompts,
            completions=completions,
            completion_ids=completion_ids_list,
            # A copy: the grading runs while training moves the live state on (rubric dropout reads its step).
            trainer_state=copy.copy(self.state),
            log_metric=recorder.log_metric,
            log_extra=recorder.log_extra,
        )
        return _Pending(_prompt_key(inputs), generated, old_logps, completions, kwargs, recorder, moved)

    def _ahead_submit(self, pending: _Pending) -> _Pending:
        """Send a sampled batch to the judge on TRL's reward event loop (it runs while training goes on)."""
        pending.future = asyncio.run_coroutine_threadsafe(self.rubric_reward(**pending.kwargs), self.async_loop)
        return pending

    def _sampling_logps(self, prompt_ids_list, completion_ids_list) -> torch.Tensor:
        """Per-token log-probabilities of the completions under the current (sampling) policy, padded as TRL pads."""
        device, tok, multiple = self.accelerator.device, self._tokenizer, self.pad_to_multiple_of
        prompt_ids = [torch.tensor(ids) for ids in prompt_ids_list]
        completion_ids = [torch.tensor(ids) for ids in completion_ids_list]
        masks = [torch.ones_like(ids) for ids in prompt_ids], [torch.ones_like(ids) for ids in completion_ids]
        prompt_ids = pad(prompt_ids, tok.pad_token_id, padding_side="left", pad_to_multiple_of=multiple).to(device)
        prompt_mask = pad(masks[0], 0, padding_side="left", pad_to_multiple_of=multiple).to(device)
        completion_ids = pad(completion_ids, tok.pad_token_id, padding_side="right", pad_to_multiple_of=multiple)
        completion_mask = pad(masks[1], 0, padding_side="right", pad_to_multiple_of=multiple).to(device)
        completion_ids = completion_ids.to(device)
        if self.mask_truncated_completions:
            eos_and_pad = [*self.eos_token_ids, tok.pad_token_id]
            truncated = torch.tensor([ids[-1] not in eos_and_pad for ids in completion_ids_list], device=device)
            completion_mask = completion_mask * (~truncated).unsqueeze(1).int()
        with torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            logps, _, _ = self._get_per_token_logps_and_entropies(
                self.model,
                torch.cat([prompt_ids, completion_ids], dim=1),
                torch.cat([prompt_mask, completion_mask], dim=1),
                completion_ids.size(1),
                batch_size=self.args.per_device_train_batch_size,
            )
        return logps

    def _ahead_finish(self, inputs, pending: _Pending, rewards: list[float | None]):
        for key, values in pending.metrics.items():
            self._metrics["train"][key].extend(values)
        index = self.reward_funcs.index(self.rubric_reward)
        self.reward_funcs[index] = _GradedReward(self.rubric_reward, pending, rewards)
        self._generate = lambda prompts: pending.generated  # TRL's scoring, on the completions generated ahead
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            del self._generate
            self.reward_funcs[index] = self.rubric_reward
        output["old_per_token_logps"] = pending.old_logps
        return output
