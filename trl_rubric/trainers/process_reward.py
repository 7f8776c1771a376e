"""Dense process rewards for [`RubricGRPOTrainer`] (ExpRL, arXiv 2606.17024, code `violetxi/ExpRL`).

The judge grades answer *prefixes*: the answer is cut into steps by a splitter, and prefix t (steps 1..t) is graded
against the rubric like a whole answer, giving a score s_t (s_0 = 0). Every token of step t then gets the step reward

    d_t = s_t - s_{t-1}

so the rewards of an answer sum to its final score, and a step that earns criteria is rewarded where it does. As in
ExpRL's reward code:

- an answer for which the judge gave no usable score on some prefix (unparsable output, too few known verdicts) is
  **masked**: its completion mask is zeroed, so it takes no part in the loss or in its group's statistics;
- an **over-long** (truncated: no end-of-sequence token within `max_completion_length`) answer gets reward 0 on every
  token (it is not masked: it teaches "do not run out of room").

GRPO advantages become per token: within the group of G rollouts of one prompt, the step rewards of all unmasked
rollouts (each step counted once) give a mean and a standard deviation, and A_{i,tok} = (d_{i,step(tok)} - mean) /
(std + 1e-4) (`scale_rewards="none"`: no division). ExpRL's main variant ("DeltaNorm") feeds the raw deltas to a
REINFORCE-style loss instead; we keep GRPO's group baseline so the option drops into the GRPO loss unchanged. TRL's
`_compute_loss` already accepts `[B, T]` advantages; this module only replaces `advantages` (and the masks) in the
batch that `_generate_and_score_completions` returns.

Cost: an answer of T steps costs T judge calls instead of one (`process_max_steps` caps T; a judge cache makes the
repeated full-answer call free).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..judges.base import run_sync

#: Step splitters: `"paragraphs"` (blank lines), `"lines"` (newlines), `"sentences"` (after . ! ? and a space),
#: `"markers"` (ExpRL's "###" step headers).
PROCESS_SPLITTERS = {
    "paragraphs": re.compile(r"\n\s*\n"),
    "lines": re.compile(r"\n"),
    "sentences": re.compile(r"(?<=[.!?])\s+"),
    "markers": re.compile(r"(?=###)"),
}


def split_steps(text: str, splitter: str = "paragraphs", max_steps: int | None = None) -> list[int]:
    """Character offsets where the steps of `text` end (the last is `len(text)`); a separator belongs to the step
    before it, blank steps join the step before them, and past `max_steps` the rest joins the last step."""
    if splitter not in PROCESS_SPLITTERS:
        raise ValueError(f"process_step_splitter is {splitter!r}; expected one of {tuple(PROCESS_SPLITTERS)}")
    ends: list[int] = []
    start = 0
    for match in PROCESS_SPLITTERS[splitter].finditer(text):
        end = match.end()
        if end >= len(text) or end <= start:
            continue
        if text[start:end].strip():
            ends.append(end)
        elif ends:
            ends[-1] = end  # a blank step joins the step before it
        else:
            continue  # leading blank text joins the first step
        start = end
    ends.append(len(text))
    if max_steps is not None and len(ends) > max_steps:
        ends = ends[: max_steps - 1] + [len(text)]
    return ends


def token_steps(tokenizer, ids: Sequence[int], step_ends: Sequence[int]) -> list[int]:
    """The step (0-based) each token of `ids` belongs to: the first step whose end is at or past the end of the text
    decoded up to and including that token (special tokens decode to nothing and fall in the last step).

    The decoded length of a prefix grows with it, so each step's last token is found by bisection: O(steps x log T)
    decodes instead of one per token (`tests/test_process_reward.py` checks it against the per-token loop).
    """
    ids = list(ids)

    def decoded_length(n: int) -> int:
        return len(tokenizer.decode(ids[:n], skip_special_tokens=True))

    out: list[int] = []
    for step, end in enumerate(step_ends):
        if step == len(step_ends) - 1:
            out.extend([step] * (len(ids) - len(out)))
            break
        lo, hi = len(out), len(ids)  # find the most tokens n >= len(out) with decoded_length(n) <= end
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if decoded_length(mid) <= end:
                lo = mid
            else:
                hi = mid - 1
        out.extend([step] * (lo - len(out)))
    return out


def step_rewards(scores: Sequence[float | None], truncated: bool) -> list[float] | None:
    """`[s_1 - s_0, s_2 - s_1, ...]` with `s_0 = 0`; `None` (mask the answer) if a score is unknown; all zeros for a
    truncated answer."""
    if any(s is None for s in scores):
        return None
    if truncated:
        return [0.0] * len(scores)
    previous, out = 0.0, []
    for s in scores:
        out.append(float(s) - previous)
        previous = float(s)
    return out


def process_advantages(
    rewards: Sequence[list[float] | None],
    steps: Sequence[Sequence[int]],
    num_generations: int,
    length: int,
    scale: bool = True,
) -> torch.Tensor:
    """`[B, length]` per-token advantages: each token's step reward minus its group's mean step reward, divided by
    the group's standard deviation (+1e-4) when `scale`. Masked answers (`None`) and padding get 0.

    Args:
        rewards: Per answer, its step rewards ([`step_rewards`]) or `None`.
        steps: Per answer, the step index of each of its tokens ([`token_steps`]).
        num_generations: G; answers `[kG, (k+1)G)` form a group.
        length: Padded completion length T.
        scale: Divide by the group's standard deviation (TRL's `scale_rewards != "none"`).
    """
    out = torch.zeros(len(rewards), length, dtype=torch.float32)
    for start in range(0, len(rewards), num_generations):
        group = [r for r in rewards[start : start + num_generations] if r is not None]
        pooled = torch.tensor([d for r in group for d in r], dtype=torch.float64)
        if pooled.numel() == 0:
            continue
        mean = pooled.mean()
        std = pooled.std() if pooled.numel() > 1 else torch.zeros((), dtype=torch.float64)
        for i in range(start, min(start + num_generations, len(rewards))):
            if rewards[i] is None:
                continue
            values = torch.tensor([rewards[i][k] for k in steps[i]], dtype=torch.float64) - mean
            if scale:
                values = values / (std + 1e-4)
            out[i, : len(values)] = values.float()
    return out


@dataclass
class ProcessRewards:
    """The dense process reward of a [`RubricGRPOTrainer`] (see the module docstring).

    Args:
        splitter: A key of [`PROCESS_SPLITTERS`].
        max_steps: Most steps (judge calls) per answer; later text joins the last step.
    """

    splitter: str = "paragraphs"
    max_steps: int = 8

    def __post_init__(self):
        if self.splitter not in PROCESS_SPLITTERS:
            raise ValueError(f"process_step_splitter is {self.splitter!r}; expected one of {tuple(PROCESS_SPLITTERS)}")
        if int(self.max_steps) < 1:
            raise ValueError(f"process_max_steps is {self.max_steps!r}; expected an integer >= 1")

    def prefix_scores(
        self, reward, prompts, texts: list[str], rubrics, skip=None, loop=None
    ) -> list[list[float | None]]:
        """Per answer, the judge's score of each prefix (`None` where it gave nothing usable); answers flagged in
        `skip` (truncated ones, whose reward is 0 anyway) cost no judge call and get 0 per step."""
        flat_prompts, flat_prefixes, flat_rubrics, owners = [], [], [], []
        scores: list[list[float | None]] = [[] for _ in texts]
        for i, (prompt, text, rubric) in enumerate(zip(prompts, texts, rubrics, strict=True)):
            ends = split_steps(text, self.splitter, self.max_steps)
            if skip is not None and skip[i]:
                scores[i] = [0.0] * len(ends)
                continue
            for end in ends:
                flat_prompts.append(prompt)
                flat_prefixes.append(text[:end])
                flat_rubrics.append(rubric)
                owners.append(i)
        grades = []
        if owners:
            coroutine = reward.judge.grade_many(flat_prompts, flat_prefixes, flat_rubrics)
            # On the trainer's reward loop when there is one: the judge keeps its HTTP clients per event loop.
            if loop is not None:
                grades = asyncio.run_coroutine_threadsafe(coroutine, loop).result()
            else:
                grades = run_sync(coroutine)
        for owner, grade, rubric in zip(owners, grades, flat_rubrics, strict=True):
            score = grade.score if reward.weighted else grade.unweighted_score
            if grade.rating is None and rubric.graded_fraction(grade.graded_verdicts) < reward.min_graded_fraction:
                score = None
            scores[owner].append(score)
        return scores

    def apply(self, trainer, inputs: list[dict[str, Any]], output: dict[str, Any]) -> dict[str, Any]:
        """Replace the batch's sequence advantages with per-token process advantages; mask ungradable answers."""
        reward = trainer.rubric_reward
        tokenizer = getattr(trainer.processing_class, "tokenizer", trainer.processing_class)
        ids, mask = output["completion_ids"], output["completion_mask"]
        prompts = [x["prompt"] for x in inputs]
        rubrics = reward._rubrics({reward.rubric_column: [x[reward.rubric_column] for x in inputs]}, len(inputs))
        if reward.rubric_source is not None:
            rubrics = reward.rubric_source.current(prompts, rubrics)
        stop = {tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}
        lists = [row[m.bool()].tolist() for row, m in zip(ids, mask, strict=True)]
        texts = [tokenizer.decode(row, skip_special_tokens=True) for row in lists]
        truncated = [not row or row[-1] not in stop for row in lists]
        loop = getattr(trainer, "async_loop", None)
        scores = self.prefix_scores(reward, prompts, texts, rubrics, skip=truncated, loop=loop)
        local_rewards = [step_rewards(s, t) for s, t in zip(scores, truncated, strict=True)]
        local_steps = [
            token_steps(tokenizer, row, split_steps(text, self.splitter, self.max_steps))
            for row, text in zip(lists, texts, strict=True)
        ]
        all_rewards, all_steps = _gather(trainer, local_rewards), _gather(trainer, local_steps)
        mode = "train" if trainer.model.training else "eval"
        group = trainer.num_generations if mode == "train" else trainer.num_generations_eval
        advantages = process_advantages(
            all_rewards, all_steps, group, ids.shape[1], scale=trainer.scale_rewards != "none"
        )
        start = trainer.accelerator.process_index * len(inputs)
        output["advantages"] = advantages[start : start + len(inputs)].to(ids.device)
        all_truncated = _gather(trainer, truncated)
        if all(r is None or t for r, t in zip(all_rewards, all_truncated, strict=True)):
            # The judge graded nothing anywhere (every answer masked, or truncated and never sent): like a step the
            # judge graded none of, make no update at all (the trainer drops the gradients before the optimizer, so
            # Adam's momentum does not move the weights either).
            trainer._generation_has_signal = False
        masked = torch.tensor([r is None for r in local_rewards], device=ids.device)
        output["completion_mask"] = mask * (~masked).unsqueeze(1).to(mask.dtype)
        total = trainer.accelerator.gather(output["completion_mask"].sum().reshape(1)).sum()
        output["num_items_in_batch"] = total
        metrics = trainer._metrics[mode]
        metrics["process/masked_frac"].append(sum(r is None for r in all_rewards) / max(1, len(all_rewards)))
        metrics["process/steps_mean"].append(sum(len(s) for s in scores) / max(1, len(scores)))
        metrics["process/truncated_frac"].append(sum(truncated) / max(1, len(truncated)))
        return output


def _gather(trainer, values: list) -> list:
    if trainer.accelerator.num_processes == 1:
        return values
    from accelerate.utils import gather_object

    return gather_object(values)


def process_rewards_from(args: Any, user_funcs: Sequence[Any]) -> ProcessRewards | None:
    """The [`ProcessRewards`] a config asks for (`process_rewards=True`), or `None`; refuses combinations it cannot
    honour, naming the setting."""
    if not getattr(args, "process_rewards", False):
        return None
    if user_funcs:
        raise ValueError(
            "process_rewards=True replaces the advantages with per-token ones from the rubric judge alone; it cannot "
            f"combine them with the {len(user_funcs)} other reward_funcs given. Drop them or set process_rewards=False"
        )
    if getattr(args, "judge_ahead", False):
        raise ValueError("process_rewards=True grades prefixes of the current batch; turn judge_ahead off with it")
    return ProcessRewards(args.process_step_splitter, args.process_max_steps)
