"""The per-token view: `log p_teacher(y_t) - log p_student(y_t)` on the student's own completion."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..judges.base import prompt_to_text
from ..teacher import DEFAULT_TEACHER_PENALTIES, DEFAULT_TEACHER_PROMPT_TEMPLATE, build_teacher_prompt
from .generation import _prompt_ids, generate_responses


@dataclass
class TokenView:
    """Per-token log-probabilities of one completion under the student's and the teacher's context.

    Attributes:
        prompt: The student's prompt, as text.
        tokens: The completion, one decoded piece per token (pieces concatenate to the completion text).
        token_ids: The completion token ids.
        student_logprobs: `log p(y_t | prompt, y_<t)`.
        teacher_logprobs: `log p(y_t | prompt + rubric, y_<t)`.
    """

    prompt: str
    tokens: list[str]
    token_ids: list[int]
    student_logprobs: list[float]
    teacher_logprobs: list[float]

    @property
    def logratios(self) -> list[float]:
        """`log p_teacher - log p_student` per token: positive where the rubric makes the token more likely."""
        return [t - s for t, s in zip(self.teacher_logprobs, self.student_logprobs, strict=True)]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "logratios": self.logratios}


def _token_pieces(tokenizer, ids: list[int]) -> list[str]:
    # Decoding growing prefixes keeps multi-byte characters whole: a piece is what its token adds to the text.
    pieces, committed = [], ""
    for i in range(len(ids)):
        text = tokenizer.decode(ids[: i + 1], skip_special_tokens=False)
        if text.endswith("\ufffd") and i + 1 < len(ids):
            pieces.append("")  # half a character: it shows on the token that completes it
            continue
        if text.startswith(committed):
            pieces.append(text[len(committed) :])
            committed = text
        else:  # decoders that clean up spaces can rewrite earlier text; fall back to the token alone
            pieces.append(tokenizer.decode([ids[i]], skip_special_tokens=False))
            committed = text
    return pieces


def _completion_logprobs(model, context_ids: list[int], completion_ids: list[int]) -> list[float]:
    import torch

    device = next(model.parameters()).device
    input_ids = torch.tensor([context_ids + completion_ids], dtype=torch.long, device=device)
    keep = len(completion_ids) + 1
    try:
        # Only the last positions predict the completion; skipping the others' logits saves memory on big vocabs.
        logits = model(input_ids=input_ids, logits_to_keep=keep).logits
    except TypeError:
        logits = model(input_ids=input_ids).logits
    logits = logits[0, -keep:-1].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    target = torch.tensor(completion_ids, dtype=torch.long, device=device)
    return logprobs.gather(-1, target[:, None])[:, 0].tolist()


def token_logratio_view(
    model,
    tokenizer,
    prompts: Sequence[Any],
    rubrics: Sequence[Any],
    completions: Sequence[Sequence[int] | str] | None = None,
    teacher_prompt_template: str = DEFAULT_TEACHER_PROMPT_TEMPLATE,
    rubric_render_style: str = "numbered",
    teacher_penalties: str = DEFAULT_TEACHER_PENALTIES,
    max_new_tokens: int = 256,
    seed: int = 0,
) -> list[TokenView]:
    """Per-token `log p_teacher(y_t) - log p_student(y_t)` on the student's own completions.

    The teacher is the same model with the rubric-conditioned prompt (as in RGSD), the student sees the prompt only.
    It runs plain forward passes, one sample at a time, so keep it to a few samples.

    Args:
        model: A causal LM.
        tokenizer: Its tokenizer.
        prompts: Student prompts (strings or chat messages).
        rubrics: Their rubrics.
        completions: Completion token ids (or strings, tokenized without special tokens). If `None`, the student
            samples them with [`generate_responses`].
        teacher_prompt_template: Teacher context, as in [`conditioning_gap`].
        rubric_render_style: Rubric rendering in the teacher context.
        teacher_penalties: `"show"` or `"omit"` penalty criteria in the teacher context, as in [`conditioning_gap`].
        max_new_tokens: Completion budget when sampling.
        seed: Sampling seed.

    Returns:
        One [`TokenView`] per prompt.
    """
    import torch

    if not (len(prompts) == len(rubrics)):
        raise ValueError(f"token_logratio_view got {len(prompts)} prompts and {len(rubrics)} rubrics")
    if completions is None:
        completions = generate_responses(
            model, tokenizer, list(prompts), max_new_tokens=max_new_tokens, seed=seed, progress=False
        ).token_ids
    if len(completions) != len(prompts):
        raise ValueError(f"token_logratio_view got {len(prompts)} prompts and {len(completions)} completions")
    views = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for prompt, rubric, completion in zip(prompts, rubrics, completions, strict=True):
                ids = (
                    tokenizer(completion, add_special_tokens=False)["input_ids"]
                    if isinstance(completion, str)
                    else [int(t) for t in completion]
                )
                teacher_prompt = build_teacher_prompt(
                    prompt, rubric, teacher_prompt_template, rubric_render_style, teacher_penalties
                )
                if ids:
                    student_lp = _completion_logprobs(model, _prompt_ids(tokenizer, prompt), ids)
                    teacher_lp = _completion_logprobs(model, _prompt_ids(tokenizer, teacher_prompt), ids)
                else:
                    student_lp, teacher_lp = [], []
                views.append(
                    TokenView(
                        prompt=prompt_to_text(prompt),
                        tokens=_token_pieces(tokenizer, ids),
                        token_ids=ids,
                        student_logprobs=student_lp,
                        teacher_logprobs=teacher_lp,
                    )
                )
    finally:
        if was_training:
            model.train()
    return views


def _colour_scale(views: Sequence[TokenView]) -> float:
    # A robust shared scale (95th percentile of |log-ratio|) keeps one extreme token from washing out the rest, and
    # makes shades comparable across samples in the same file.
    values = sorted(abs(x) for v in views for x in v.logratios)
    if not values:
        return 1.0
    return max(values[min(len(values) - 1, int(0.95 * len(values)))], 1e-6)
