"""`RGSDConfig.span_criteria`: more pull on the tokens where a rollout meets a named criterion and the teacher agrees.

Why: the teacher's token signal is spread over a whole answer, and the few tokens that carry a prompt's own content
(its key term, "seven to nine hours") weigh as one token each among sixty that carry the list and the length. With
`span_criteria=["key term"]`, the tokens of a rollout that fall inside a span where one of the named criteria is met
(the characters its rule check matches: a `rule:regex:` tag's matches, a `rule:contains:` tag's occurrences) and where
the teacher gives the sampled token a higher log-prob than the student (so nothing pulls against the teacher there)
get `span_weight` times their distillation loss, plus `span_nll_weight` times the student's negative log-likelihood
of the token: the divergence can bring the student at most to the teacher's probability there, the NLL past it. No
judge is called: the spans come from the criteria's own rule tags, which the rows must carry (checked before training).

The spans are found on the text decoded from each row's completion tokens, as the unlikelihood spans are
(`rgsd_unlikelihood.py`), and mapped back to token positions.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..data import RubricDatasetError
from ..losses.unlikelihood import char_spans_to_token_mask, sampled_token_logps
from ..rewards import check_criteria
from ..rubric import Criterion, Rubric, RubricError, split_rule_tag

#: The rule kinds whose matches are character spans of the answer (the other kinds, e.g. `max_words`, are not).
SPAN_RULE_KINDS = ("regex", "contains")


def _named(criterion: Criterion, names: Sequence[str]) -> bool:
    return criterion.weight > 0 and criterion.is_named(names)


def _span_rules(criterion: Criterion) -> list[tuple[str, str]]:
    parsed = map(split_rule_tag, criterion.tags)
    return [parts for parts in parsed if parts is not None and parts[0] in SPAN_RULE_KINDS]


def criterion_spans(text: str, rubric: Rubric, names: Sequence[str]) -> list[tuple[int, int]]:
    """Character spans `[start, end)` of `text` where a positive criterion of `rubric` named in `names` (by title, text,
    category or tag, as `Rubric.select`) is met: every match of its `rule:regex:` tag (case-insensitive, as the rule
    judge checks it) and every whole-word occurrence of its `rule:contains:` word."""
    spans = []
    for criterion in rubric:
        if not _named(criterion, names):
            continue
        for kind, arg in _span_rules(criterion):
            pattern = arg if kind == "regex" else rf"(?<![\w']){re.escape(arg)}(?![\w'])"
            spans += [m.span() for m in re.finditer(pattern, text, re.IGNORECASE | re.DOTALL) if m.end() > m.start()]
    return spans


def check_span_settings(weight: Any, nll_weight: Any, names: Any) -> list[str] | None:
    """`span_criteria` as a list (or `None`); a `ValueError` names a bad `span_weight` / `span_nll_weight` /
    `span_criteria` setting."""
    names = check_criteria(names)
    for field, value in (("span_weight", weight), ("span_nll_weight", nll_weight)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < float("inf"):
            raise ValueError(f"{field} is {value!r}; expected a finite number >= 0")
    if (weight != 1.0 or nll_weight != 0.0) and names is None:
        raise ValueError(
            f"span_weight={weight} and span_nll_weight={nll_weight} act on the spans of the criteria named in "
            'span_criteria, which is None: name them there (e.g. span_criteria=["key term"])'
        )
    if names is not None and weight == 1.0 and nll_weight == 0.0:
        raise ValueError(
            f"span_criteria={list(names)} with span_weight=1.0 and span_nll_weight=0.0 changes nothing: set "
            "span_weight above 1 or span_nll_weight above 0, or drop span_criteria"
        )
    return None if names is None else list(names)


def validate_span_criteria(args, dataset: Any, name: str, num_contexts: int) -> None:
    """Before training: with `span_criteria` set, one teacher context only, and every row of `dataset` has a positive
    criterion named in `span_criteria` that carries a `rule:regex:` or `rule:contains:` tag (a
    `RubricDatasetError` names the dataset, the row and the rubric's criteria otherwise)."""
    if args.span_criteria is None:
        return
    if num_contexts != 1 or args.teacher_combine == "sgsd_gate":
        raise ValueError(
            f"span_criteria needs one ungated teacher per rollout (its log-prob of the sampled token decides where the "
            f"weight applies); this run has {num_contexts} teacher context(s) and teacher_combine="
            f"{args.teacher_combine!r}. Drop span_criteria here."
        )
    columns = getattr(dataset, "column_names", None) if hasattr(dataset, "__len__") else None  # not iterable ones
    if not columns or args.rubric_column not in columns:
        return
    for index, value in enumerate(dataset[args.rubric_column]):
        rubric = Rubric.from_any(value, pitfall_polarity=args.pitfall_polarity)
        if not any(_named(c, args.span_criteria) and _span_rules(c) for c in rubric):
            titles = [c.title or c.text for c in rubric]
            raise RubricDatasetError(
                f"{name} row {index}: column {args.rubric_column!r}: span_criteria={args.span_criteria} names no "
                f"positive criterion with a rule:regex: or rule:contains: tag (whose matches are the spans); its "
                f"criteria: {titles}"
            )


def add_span_mask(trainer, output: dict, loss_mask: Tensor, inputs: list[dict[str, Any]], metrics) -> None:
    """Put the batch's span tokens (`[B, T]` bool, within `loss_mask`) in `output["rgsd_span_mask"]` and log their
    count (`rgsd/span_tokens`, summed over processes); nothing without `span_criteria`."""
    args = trainer.args
    if args.span_criteria is None:
        return
    ids, completion_mask = output["completion_ids"], output["completion_mask"]
    out = torch.zeros(ids.shape, dtype=torch.bool, device=ids.device)
    for row, x in enumerate(inputs):
        try:
            rubric = Rubric.from_any(x[args.rubric_column], pitfall_polarity=args.pitfall_polarity)
        except (KeyError, RubricError):
            continue  # validated before training; an eval row without a rubric has no spans
        positions = completion_mask[row].bool().nonzero().flatten()
        row_ids = ids[row, positions].tolist()
        text = trainer._tokenizer.decode(row_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        spans = criterion_spans(text, rubric, args.span_criteria)
        if spans:
            hit = char_spans_to_token_mask(trainer._tokenizer, row_ids, spans)
            out[row, positions] = torch.tensor(hit, dtype=torch.bool, device=out.device)
    output["rgsd_span_mask"] = out & loss_mask.bool()
    metrics["rgsd/span_tokens"].append(trainer.accelerator.gather(output["rgsd_span_mask"].sum()).sum().item())


def weight_spans(
    per_token: Tensor, mask: Tensor, out, inputs: dict, args, student_hidden: Tensor, head, **logits_kwargs
) -> tuple[Tensor, Tensor]:
    """`per_token` (`[B, T]`, the distillation loss scattered from the `mask` tokens) on the span tokens where the
    teacher's log-prob of the sampled token is above the student's (`out`: the `TokenDivergence` of the `mask` tokens,
    with log-probs): times `args.span_weight`, plus `args.span_nll_weight * -log p_student(token)` (from
    `student_hidden` and `head`; `logits_kwargs` go to [`~trl_rubric.losses.unlikelihood.sampled_token_logps`]).
    Returns it with `[span tokens, of which the teacher prefers]` for the logs."""
    spans = inputs.get("rgsd_span_mask")
    if spans is None or args.span_criteria is None:
        return per_token, per_token.new_zeros(2).detach()
    prefers = torch.zeros_like(mask)
    prefers = prefers.masked_scatter(mask, (out.teacher_logps > out.student_logps) & out.finite)
    on_span = spans.bool() & mask
    weighted = on_span & prefers
    stats = torch.stack([on_span.sum(), weighted.sum()]).to(per_token.dtype).detach()
    per_token = per_token * torch.where(weighted, per_token.new_tensor(args.span_weight), per_token.new_tensor(1.0))
    if args.span_nll_weight > 0 and weighted.any():
        ids = inputs["completion_ids"][weighted]
        logps = sampled_token_logps(student_hidden[weighted], head.weight, head.bias, ids, **logits_kwargs)
        nll = torch.where(torch.isfinite(logps), -logps, torch.zeros_like(logps)).to(per_token.dtype)
        per_token = per_token + torch.zeros_like(per_token).masked_scatter(weighted, args.span_nll_weight * nll)
    return per_token, stats
