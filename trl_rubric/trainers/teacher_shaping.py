"""`RGSDConfig`'s teacher shaping: temperature and top-k (their checks, and the keyword arguments they add to the
loss), and the teacher-side n-gram and list-item penalties applied to a batch.

The math lives in `trl_rubric.losses` (`token_divergence(teacher_temperature=, teacher_top_k=, teacher_top_k_floor=)`,
`losses.teacher_bias`); this module only keeps the config's fields and the trainer's calls in step.
"""

from __future__ import annotations

import math
from typing import Any

from ..losses import DEFAULT_TEACHER_TOP_K_FLOOR, teacher_bias


def check_teacher_shaping(config: Any) -> None:
    """Raise a `ValueError` naming the field when `teacher_temperature`, `teacher_top_k` or `teacher_top_k_floor` is
    unusable (before training starts)."""
    t = config.teacher_temperature
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < math.inf:
        raise ValueError(f"teacher_temperature is {t!r}; expected a finite number > 0 (1.0 leaves the teacher as is)")
    k = config.teacher_top_k
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise ValueError(f"teacher_top_k is {k!r}; expected a whole number of tokens >= 1, or None (whole vocabulary)")
    floor = config.teacher_top_k_floor
    if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not -math.inf < floor <= 0:
        raise ValueError(f"teacher_top_k_floor is {floor!r}; expected a finite log-probability <= 0")


def teacher_shaping_kwargs(config: Any) -> dict[str, Any]:
    """The keyword arguments `losses.token_divergence` takes for the config's teacher shaping; none at the defaults,
    so a run without it calls the loss exactly as before."""
    kwargs: dict[str, Any] = {}
    if config.teacher_temperature != 1.0:
        kwargs["teacher_temperature"] = float(config.teacher_temperature)
    if config.teacher_top_k is not None:
        kwargs["teacher_top_k"] = int(config.teacher_top_k)
        kwargs["teacher_top_k_floor"] = float(config.teacher_top_k_floor)
    return kwargs


def penalize_teacher(trainer: Any, inputs: dict, t_hidden, t_weight):
    """Teacher-side penalties (`teacher_no_repeat_ngram_size`, `teacher_copy_ngram_size`, `teacher_ban_empty_items`,
    `teacher_ban_doubled_markers`, `teacher_guard`) on an RGSD batch: `(t_hidden, t_weight, inputs)` with the penalty
    columns appended to the teacher's hidden states and head, or (`teacher_ngram_mode="mask"`) the same teacher and
    `inputs` whose loss mask leaves out the completion tokens that are themselves banned. The student's sampling is
    untouched (the rollout guard, when set, acts there). The vocabulary tables are built once and kept on the
    trainer."""
    args = trainer.args
    if getattr(trainer, "_content_tokens", None) is None:
        texts = teacher_bias.token_texts(trainer._tokenizer)
        trainer._content_tokens = teacher_bias.content_token_ids(trainer._tokenizer, texts)
        ends, starts = args.teacher_ban_empty_items, args.teacher_ban_doubled_markers
        trainer._empty_items = (
            (texts, teacher_bias.line_ender_ids(texts) if ends else [],
             teacher_bias.marker_start_ids(texts) if starts else [])
            if ends or starts else None
        )  # fmt: skip
    bans = teacher_bias.batch_bans(
        inputs["completion_ids"], inputs["completion_mask"], inputs["teacher_prompt_ids"],
        inputs["teacher_prompt_mask"], inputs["prompt_ids"], inputs["prompt_mask"],
        no_repeat_ngram_size=args.teacher_no_repeat_ngram_size, copy_ngram_size=args.teacher_copy_ngram_size,
        content_tokens=trainer._content_tokens, empty_items=trainer._empty_items,
    )  # fmt: skip
    if args.teacher_guard:  # the rollout guard's bans at every position of each (real) completion
        bans = [
            sorted({*row, *guard_bans(trainer._rollout_guard, ids[mask.bool()].tolist())})
            for row, ids, mask in zip(bans, inputs["completion_ids"], inputs["completion_mask"], strict=True)
        ]
    if args.teacher_ngram_mode == "mask":
        mask = inputs["rgsd_loss_mask"]
        hit = teacher_bias.banned_target_mask(bans, inputs["completion_ids"]).to(mask.device)
        return t_hidden, t_weight, {**inputs, "rgsd_loss_mask": mask * (~hit).to(mask.dtype)}
    t_hidden, t_weight = teacher_bias.penalized_teacher(t_hidden, t_weight, bans, args.teacher_ngram_penalty)
    return t_hidden, t_weight, inputs


def guard_bans(guard: Any, completion: list[int]) -> list[teacher_bias.Ban]:
    """`(position, token)` for every token `guard` (a `DegenerationGuard`) forbids at each position of `completion`,
    given the tokens before it: what the rollout guard would have banned had it sampled this completion."""
    return [(t, tok) for t in range(len(completion)) for tok in guard.bans(completion[:t])]


def teacher_facts(config: Any) -> dict[str, str | None]:
    """Model-card facts for a teacher that differs from the plain rubric teacher: its context when not `"rubric"`
    (for `"criteria"`, how many teachers and how grouped), its shaping, the share of answers it sampled
    (`teacher_rollouts`), and the guard rollouts were sampled under; None (no row) at the defaults."""
    context = None
    if config.teacher_context == "criteria":
        context = (
            f"criteria: {config.num_teacher_contexts} teachers per rollout, one {config.criterion_grouping} group "
            f"each, weighted {config.criterion_view_weights}, combined by {config.teacher_combine}"
        )
    elif config.teacher_context != "rubric":
        context = config.teacher_context
    shaping = []
    if config.teacher_temperature != 1.0:
        shaping.append(f"temperature {config.teacher_temperature:g}")
    if config.teacher_top_k is not None:
        shaping.append(f"top-{config.teacher_top_k} renormalised (floor {config.teacher_top_k_floor:g})")
    if getattr(config, "teacher_guard", False):
        shaping.append(f"the rollout guard's bans (logit -{config.teacher_ngram_penalty:g})")
    guard = getattr(config, "rollout_degeneration_guard", None)
    rollout_guard = None if guard is None else f"DegenerationGuard, n-gram {guard}, every ban on"
    rollouts = None
    if getattr(config, "teacher_rollouts", 0):
        rollouts = (
            f"{config.teacher_rollouts:.0%} of answers sampled by the teacher, learned by "
            f"{'NLL' if config.teacher_rollout_loss == 'nll' else 'the divergence'}"
            f"{', flagged ones filtered' if config.teacher_rollout_filter else ''}"
        )
    return {
        "teacher_context": context,
        "teacher_shaping": ", ".join(shaping) or None,
        "teacher_rollouts": rollouts,
        "rollouts_sampled_under": rollout_guard,
    }


__all__ = [
    "DEFAULT_TEACHER_TOP_K_FLOOR",
    "check_teacher_shaping",
    "guard_bans",
    "penalize_teacher",
    "teacher_facts",
    "teacher_shaping_kwargs",
]
