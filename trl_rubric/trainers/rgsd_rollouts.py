"""Teacher-sampled rollouts for `RGSDTrainer` (`RGSDConfig.teacher_rollouts`).

On-policy RGSD distils on the student's own answers, so an answer the student starts to loop in is scored by a teacher
that reads the loop in context and predicts more of it. With `teacher_rollouts=f`, a share `f` of each generation
batch is instead answered by the teacher, shown its context (the rubric), with the teacher's weights; the student
learns those answers under its own prompt (context distillation, "Learning by Distilling Context", arXiv 2209.15189;
mixed with the student's own samples as GKD mixes them, "On-Policy Distillation of Language Models", arXiv
2306.13649). Teacher answers the degeneration checks flag are left out of the loss (`teacher_rollout_filter`), so
with `teacher_rollout_loss="nll"` the student learns the teacher's answers that passed the checks.

This module holds the pieces: which rows the teacher answers, the checks of what the option supports, generation
under the teacher's weights, the degeneration logging split by who wrote the answer, and the NLL term.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from accelerate.utils import is_peft_model
from torch import Tensor
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
from trl.trainer.utils import use_adapter

from ..evaluation.degeneration import log_degeneration
from ..losses.unlikelihood import sampled_token_logps

#: Metric prefix of the teacher-sampled answers' degeneration rates (`rgsd/teacher_rollout/degenerate`, ...).
TEACHER_ROLLOUT_PREFIX = "rgsd/teacher_rollout"


def teacher_rollout_rows(n: int, share: float) -> list[bool]:
    """Which of a batch's `n` rows the teacher answers, evenly spaced without rounding: row `i` when
    `floor((i + 1) * share) > floor(i * share)`, so `floor(n * share)` rows (all of them at 1.0, none at 0)."""
    eps = 1e-9  # 0.1 * 10 must count as 1
    return [math.floor((i + 1) * share + eps) > math.floor(i * share + eps) for i in range(n)]


def check_teacher_rollouts(trainer: Any, tools: Any, rollout_func: Any) -> None:
    """Raise a `ValueError` naming the setting when `teacher_rollouts > 0` cannot run with the rest of the trainer
    (checked at construction, before any generation)."""
    share = trainer.args.teacher_rollouts
    if not share:
        return
    provider = trainer.teacher_context
    if provider.num_contexts != 1 or provider.needs_completion:
        raise ValueError(
            f"teacher_rollouts is {share}: the teacher samples an answer from its context, so it needs one context "
            f"per rollout that does not read the rollout; teacher_context {provider.name!r} has "
            f"{provider.num_contexts} context(s){' and reads the rollout' if provider.needs_completion else ''}. "
            "Use teacher_context='rubric' (or another single, rollout-free context), or teacher_rollouts=0."
        )
    if tools or rollout_func is not None:
        raise ValueError(
            f"teacher_rollouts is {share}: teacher-sampled answers are single-turn generations, which tools and a "
            "rollout_func replace. Drop them, or set teacher_rollouts=0."
        )
    if is_deepspeed_zero3_enabled():
        raise ValueError(
            f"teacher_rollouts is {share}, which is not supported under DeepSpeed ZeRO-3 yet (the teacher's "
            "generation has not been tested with partitioned weights). Use ZeRO-2, or teacher_rollouts=0."
        )
    if trainer.teacher_model is not None and getattr(trainer, "is_fsdp_enabled", False):
        raise ValueError(
            f"teacher_rollouts is {share} with a separate teacher model under FSDP, which is not supported yet. "
            "Use the policy's own weights as teacher (teacher_model_kind), or teacher_rollouts=0."
        )


@contextmanager
def teacher_weights(trainer: Any):
    """Within this block the trainer's generation samples from the teacher's weights: a separate (or frozen copy)
    teacher model stands in for the policy wrapper; a PEFT policy runs with its adapters disabled or its frozen / EMA
    teacher adapter; a live teacher is the policy itself."""
    if trainer.teacher_model is not None:
        policy = trainer.model_wrapped
        trainer.model_wrapped = trainer.teacher_model
        try:
            yield
        finally:
            trainer.model_wrapped = policy
        return
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    kind = trainer.args.teacher_model_kind
    ctx = (
        use_adapter(unwrapped, trainer._teacher_adapter)
        if is_peft_model(unwrapped) and kind in ("base", "ema")
        else nullcontext()
    )
    with ctx:
        yield


def generate_mixed(
    trainer: Any,
    generate: Callable[..., tuple[list[list[int]], Any]],
    prompt_ids: Sequence[Sequence[int]],
    num_generations: int,
    rows: Sequence[bool],
    teacher_prompt_ids: Sequence[Sequence[int]],
) -> tuple[list[list[int]], None]:
    """Completions for a batch where `rows` marks the teacher's: the student's rows sampled by `generate` (GRPO's
    single-turn generation) from their prompts, the teacher's from the teacher's prompts under its weights, returned
    in the batch's order. No sampling log-probs (pure RGSD never reads them)."""
    out: list[list[int] | None] = [None] * len(prompt_ids)
    for teacher_side in (False, True):
        index = [i for i, from_teacher in enumerate(rows) if from_teacher == teacher_side]
        if not index:
            continue
        source = teacher_prompt_ids if teacher_side else prompt_ids
        with teacher_weights(trainer) if teacher_side else nullcontext():
            completions, _ = generate([list(source[i]) for i in index], None, {}, num_generations)
        for i, ids in zip(index, completions, strict=True):
            out[i] = list(ids)
    return out, None


def log_split_degeneration(
    metrics: Any, completions: Sequence[str], rubrics: Sequence[Any], rows: Sequence[bool] | None, reduce: Callable
) -> list[dict[str, bool]]:
    """The degeneration checks on a batch's answers, logged as `rgsd/...` for the student's own answers and, when
    `rows` marks teacher-sampled ones, as `rgsd/teacher_rollout/...` for those; the flags in the batch's order."""
    if rows is None:
        return log_degeneration(metrics, "rgsd", completions, rubrics, reduce=reduce)
    flags: list[dict[str, bool] | None] = [None] * len(completions)
    for teacher_side, prefix in ((False, "rgsd"), (True, TEACHER_ROLLOUT_PREFIX)):
        index = [i for i, from_teacher in enumerate(rows) if from_teacher == teacher_side]
        # Called on every process even with no rows here: `reduce` sums over processes.
        part = log_degeneration(metrics, prefix, [completions[i] for i in index], [rubrics[i] for i in index], reduce)
        for i, f in zip(index, part, strict=True):
            flags[i] = f
    return flags  # type: ignore[return-value]


def mark_teacher_rows(
    trainer: Any, output: dict, flagged: Tensor, from_teacher: Tensor, metrics: Any, total: Callable
) -> Tensor:
    """For a batch with teacher-sampled rows (`from_teacher`, `[B]` bool; all False without `teacher_rollouts`): the
    rows to leave out of the loss (flagged teacher answers, with `teacher_rollout_filter`), after logging
    `rgsd/teacher_rollout_frac` and `rgsd/teacher_rollout_dropped` and, for `teacher_rollout_loss="nll"`, marking the
    teacher's rows in `output["rgsd_teacher_nll_rows"]`. `total` sums a list of counts over processes."""
    args = trainer.args
    if not args.teacher_rollouts or not trainer.model.training:
        return torch.zeros_like(flagged)
    filtered = flagged & from_teacher if args.teacher_rollout_filter else torch.zeros_like(flagged)
    counts = total([len(from_teacher), from_teacher.sum().item(), filtered.sum().item()])
    metrics["rgsd/teacher_rollout_frac"].append(counts[1] / max(counts[0], 1))
    metrics["rgsd/teacher_rollout_dropped"].append(counts[2])
    if args.teacher_rollout_loss == "nll":
        output["rgsd_teacher_nll_rows"] = from_teacher
    return filtered


def add_teacher_nll(
    per_token: Tensor,
    loss_mask: Tensor,
    student_hidden: Tensor,
    head,
    completion_ids: Tensor,
    nll_mask: Tensor,
    **logits_kwargs,
) -> tuple[Tensor, Tensor, Tensor]:
    """Put the student's negative log-likelihood `-log p_student(token)` on the `nll_mask` tokens (those of
    teacher-sampled answers in the loss, `teacher_rollout_loss="nll"`) into the `[B, T]` loss `per_token`, and those
    tokens into `loss_mask` (they are out of the divergence's mask). Each counts as one loss token, with the same
    normaliser (`loss_type`'s) as a distilled token.

    Returns `(per_token, loss_mask, stats)`, `stats = [sum of the NLL, token count]` for the logs. `logits_kwargs`
    go to [`~trl_rubric.losses.unlikelihood.sampled_token_logps`] (temperature, logit scale, soft-capping, chunk).
    """
    if not nll_mask.any():
        return per_token, loss_mask, per_token.new_zeros(2).detach()
    logps = sampled_token_logps(
        student_hidden[nll_mask], head.weight, head.bias, completion_ids[nll_mask], **logits_kwargs
    )
    finite = torch.isfinite(logps)
    term = torch.where(finite, -logps, torch.zeros_like(logps)).to(per_token.dtype)
    per_token = per_token.masked_scatter(nll_mask, term)
    loss_mask = loss_mask.masked_scatter(nll_mask, finite.to(loss_mask.dtype))
    return per_token, loss_mask, torch.stack([term.detach().sum(), finite.sum().to(term.dtype)])


def teacher_pass_unread(args: Any, inputs: dict) -> bool:
    """Whether nothing reads the teacher's scoring pass on this batch: every row is the teacher's own answer under the
    NLL (`teacher_rollouts=1.0`, `teacher_rollout_loss="nll"`, a training batch). Decided by the config, so every
    process agrees (a sharded model's forward must run on all of them or none)."""
    return args.teacher_rollouts == 1.0 and args.teacher_rollout_loss == "nll" and "rgsd_teacher_nll_rows" in inputs


def teacher_nll_mask(inputs: dict, mask: Tensor) -> Tensor:
    """The loss tokens that take the NLL instead of the divergence: those of the rows marked
    `rgsd_teacher_nll_rows` (teacher-sampled, `teacher_rollout_loss="nll"`); none in a batch without the key."""
    rows = inputs.get("rgsd_teacher_nll_rows")
    if rows is None:
        return torch.zeros_like(mask)
    return mask & rows.bool()[:, None]


__all__ = [
    "TEACHER_ROLLOUT_PREFIX",
    "add_teacher_nll",
    "check_teacher_rollouts",
    "generate_mixed",
    "log_split_degeneration",
    "mark_teacher_rows",
    "teacher_nll_mask",
    "teacher_pass_unread",
    "teacher_rollout_rows",
    "teacher_weights",
]
