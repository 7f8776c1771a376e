"""Rubric dropout: per prompt and step, a random subset of criteria is left out of grading and of the reward.

The idea follows "Rubric Dropout" (arXiv 2608.11669): a policy that can see the same full rubric graded every step
learns whatever the judge rewards across all of it, including what the judge gets wrong; grading a random sub-rubric
each step makes any one criterion's mis-grading pay off less reliably. What is ours (not from the paper) is stated
here:

- **One dropped set per prompt and step**, shared by all G rollouts of that prompt, so that the group's advantages
  compare rollouts on the same criteria (a per-rollout set would turn sampling noise of the set into advantage).
- Each criterion is dropped independently with probability `p`; if that leaves no criterion with a positive weight
  (the score would have no denominator), one positive criterion, drawn from the same generator, is kept.
- **Reproducible and resumable**: the set is a pure function of `(seed, step, prompt key)`, where the prompt key is a
  hash of the prompt text and the rubric. A run resumed from a checkpoint draws the same sets at the same steps, and
  every process of a distributed run draws the same set for the same prompt, whatever its position in the batch.
- Dropped criteria are not sent to the judge at all (the judge grades the sub-rubric), and the reward is the score of
  the kept criteria only ([`Rubric.score`] of the sub-rubric).

This module is pure selection logic; [`RubricReward`] applies it.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from typing import Any

from .rubric import Rubric


def check_dropout_probability(probability: float, name: str = "rubric_dropout") -> float:
    """`probability` as a float in [0, 1); raises a `ValueError` naming `name` otherwise."""
    try:
        p = float(probability)
    except (TypeError, ValueError):
        raise ValueError(f"{name} is {probability!r}; expected a probability in [0, 1)") from None
    if not 0.0 <= p < 1.0:
        raise ValueError(
            f"{name} is {probability!r}; expected a probability in [0, 1) (0 turns dropout off; 1 would drop every "
            "criterion)"
        )
    return p


def prompt_key(prompt_text: str, rubric: Rubric) -> str:
    """A stable key for one prompt: a hash of its text and its rubric (independent of batch position and process)."""
    payload = prompt_text + "\x00" + json.dumps(rubric.to_list(), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _generator(seed: int, step: int, key: str) -> random.Random:
    digest = hashlib.sha256(f"rubric-dropout\x00{int(seed)}\x00{int(step)}\x00{key}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def kept_criteria(rubric: Rubric, probability: float, seed: int, step: int, key: str) -> tuple[int, ...]:
    """The 0-based indices of the criteria kept for prompt `key` at `step` (sorted; at least one positive).

    Each criterion is dropped with probability `probability`; if no positive criterion survives, one positive
    criterion, drawn from the same seeded generator, is kept.
    """
    p = check_dropout_probability(probability)
    rng = _generator(seed, step, key)
    draws = [rng.random() for _ in rubric]  # one draw per criterion, so the set does not depend on p's history
    kept = [i for i, u in enumerate(draws) if u >= p]
    if not any(rubric[i].weight > 0 for i in kept):
        positives = [i for i, c in enumerate(rubric) if c.weight > 0]
        kept = sorted([*kept, rng.choice(positives)])
    return tuple(kept)


def sub_rubric(rubric: Rubric, kept: Sequence[int]) -> Rubric:
    """The rubric of the kept criteria, in their original order (guidelines kept)."""
    return Rubric(tuple(rubric[i] for i in sorted(kept)), guidelines=rubric.guidelines)


def drop_criteria(
    prompt_texts: Sequence[str], rubrics: Sequence[Rubric], probability: float, seed: int, step: int
) -> tuple[list[Rubric], list[tuple[int, ...]]]:
    """Per completion, the sub-rubric its judge sees and the kept indices into its full rubric.

    Completions of the same prompt and rubric (a GRPO group) get the same set, since the set depends only on
    `(seed, step, prompt key)`. With `probability == 0` the rubrics come back unchanged.
    """
    check_dropout_probability(probability)
    out, kept_all = [], []
    cache: dict[str, tuple[int, ...]] = {}
    for text, rubric in zip(prompt_texts, rubrics, strict=True):
        if probability == 0:
            out.append(rubric)
            kept_all.append(tuple(range(len(rubric))))
            continue
        key = prompt_key(text, rubric)
        if key not in cache:
            cache[key] = kept_criteria(rubric, probability, seed, step, key)
        kept = cache[key]
        out.append(rubric if len(kept) == len(rubric) else sub_rubric(rubric, kept))
        kept_all.append(kept)
    return out, kept_all


def dropout_step(trainer_state: Any) -> int:
    """The step a dropped set is drawn for: TRL's `trainer_state.global_step` (0 outside a trainer)."""
    return int(getattr(trainer_state, "global_step", 0) or 0)
