"""Judging a share of the prompts: which prompts' rollouts the judge grades at a step (`judge_share`).

Hybrid RGSD ("RGSD + a cheap reward") mixes a GRPO loss on the judge's reward into the distillation loss. With an LLM
judge the reward is what costs: `judge_share` sends only that share of each step's prompts to the judge. The others'
rollouts get no reward (`None`, so zero advantage and out of their group's baseline) and train on the distillation
term alone.

- **Per prompt, not per rollout**: all G rollouts of a prompt are judged or none is, so a judged group's advantages
  compare rollouts graded alike.
- **Reproducible and resumable**: whether a prompt is judged is a pure function of `(seed, step, prompt key)` (the key
  of [`prompt_key`]: a hash of the prompt text and its rubric), drawn with probability `share`; a resumed run judges
  the same prompts at the same steps, and every process decides alike for the same prompt.
- Over a run each prompt is judged at about `share` of the steps it is seen; within one step the judged count is
  binomial, so a small batch can have none (logged: `judge/judged_frac`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

from .rubric import Rubric
from .rubric_dropout import prompt_key


def check_judge_share(share: float, name: str = "judge_share") -> float:
    """`share` as a float in (0, 1]; raises a `ValueError` naming `name` otherwise."""
    try:
        value = float(share)
    except (TypeError, ValueError):
        raise ValueError(f"{name} is {share!r}; expected a share in (0, 1]") from None
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise ValueError(f"{name} is {share!r}; expected a share in (0, 1] (1 judges every prompt)")
    return value


def _draw(seed: int, step: int, key: str) -> float:
    digest = hashlib.sha256(f"judge-share\x00{int(seed)}\x00{int(step)}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def judged_prompts(
    prompt_texts: Sequence[str], rubrics: Sequence[Rubric], share: float, seed: int, step: int
) -> list[bool]:
    """Per completion: whether its prompt is judged at `step` (every completion of one prompt gets the same answer)."""
    share = check_judge_share(share)
    if share == 1.0:
        return [True] * len(prompt_texts)
    return [
        _draw(seed, step, prompt_key(text, rubric)) < share for text, rubric in zip(prompt_texts, rubrics, strict=True)
    ]
