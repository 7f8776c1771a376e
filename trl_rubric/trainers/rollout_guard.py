"""Rollouts sampled under the degeneration guard: `RGSDConfig.rollout_degeneration_guard`.

A small student trained by RGSD writes the numbered lists its rubric pays for and then loops inside them; each looped
answer it samples is distilled like any other, so it practises the loop. With `rollout_degeneration_guard=N` the
student's rollouts are sampled through [`trl_rubric.evaluation.DegenerationGuard`] (no repeated word n-gram of N
tokens, no empty or doubled list markers, no line or answer ending on a repeat of an earlier line), so every answer
the loss reads is loop-free.

TRL's transformers generation path (`GRPOTrainer._generate_single_turn`) calls `model.generate` with its own
`generation_config` and takes no logits processor from the config, so [`guarded_generate`] adds the guard to that one
call: it wraps the unwrapped model's `generate` for the duration of a rollout and restores it after. vLLM and
continuous batching generate elsewhere and are refused by the config.

The rollouts are then sampled from the guarded distribution, not the policy's: pure RGSD reads no sampling
probabilities (its loss is a divergence at each sampled position), so it is unaffected; a hybrid run's GRPO term
ignores the difference, as it ignores `top_k` and `top_p`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def build_rollout_guard(tokenizer, ngram_size: int, eos_token_ids: list[int]):
    """The guard rollouts are sampled with: `trl_rubric.evaluation.DegenerationGuard` at its defaults (every ban
    on, the one `trl-rubric eval --degeneration_guard` decodes with) and this n-gram size."""
    from ..evaluation.guard import DegenerationGuard

    return DegenerationGuard(tokenizer, no_repeat_ngram_size=ngram_size, eos_token_ids=eos_token_ids)


@contextmanager
def guarded_generate(model: Any, guard: Any) -> Iterator[None]:
    """While open, `model.generate(...)` runs with `guard` appended to its logits processors (reset before each
    call). The model's own `generate` is back in place on exit, whatever happened."""
    from transformers import LogitsProcessorList

    original = model.generate
    shadowed = "generate" in vars(model)  # an instance attribute already there (another wrapper) is restored as is

    def generate(*args: Any, **kwargs: Any) -> Any:
        guard.reset()
        processors = LogitsProcessorList([*(kwargs.pop("logits_processor", None) or []), guard])
        return original(*args, logits_processor=processors, **kwargs)

    model.generate = generate
    try:
        yield
    finally:
        if shadowed:
            model.generate = original
        else:
            del model.generate


def generate_with_guard(trainer: Any, generate: Any, prompt_ids: list, *rest: Any) -> Any:
    """`generate(prompt_ids, *rest)`, the trainer's rollout call, with its rollout guard on the unwrapped model; logs
    `rgsd/rollout_guard_mass`, the probability the bans removed per rollout."""
    guard = trainer._rollout_guard
    before = guard.mass_removed
    with guarded_generate(trainer.accelerator.unwrap_model(trainer.model_wrapped), guard):
        out = generate(prompt_ids, *rest)
    mode = "train" if trainer.model.training else "eval"
    trainer._metrics[mode]["rgsd/rollout_guard_mass"].append((guard.mass_removed - before) / max(len(prompt_ids), 1))
    return out
