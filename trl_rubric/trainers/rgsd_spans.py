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

Span weighting acts only where a rollout already names the term. `span_onset_weight` acts where it could: at every
distilled token, the teacher's and the student's probability of *starting* one of the named criteria's terms next
(the first tokens of the words their rule tags match: `\bfluids?\b|\bwater\b` starts with " fluid", " water",
"Water", ...) are compared as two Bernoulli events, and their KL(teacher || student) times `span_onset_weight` is added
to the token's loss. The full-vocabulary divergence holds the same event, but as a few thousandths of probability
among a whole distribution whose list and length tokens dominate it; this term isolates it. It pulls both ways: up
where the teacher would name the term and the student would not, down where the student repeats it and the teacher
would not.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

try:  # the standard library's regex parser (a private module since Python 3.11)
    from re import _parser as _sre
except ImportError:  # pragma: no cover - Python 3.10
    import sre_parse as _sre

from ..data import RubricDatasetError
from ..losses import teacher_top_k_logps, transform_logits
from ..losses.chunked_head import _gather_zero3, _project, _token_chunks
from ..losses.unlikelihood import char_spans_to_token_mask, sampled_token_logps
from ..rewards import check_criteria
from ..rubric import Criterion, Rubric, RubricError, split_rule_tag

logger = logging.getLogger(__name__)

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


#: At most this many start strings per tag (a pattern of many alternatives keeps its first ones).
_MAX_STARTS = 32
#: A start whose text is shorter than this (one digit or letter) says too little about the term to pull on.
MIN_START_CHARS = 2


def _read_sequence(items) -> tuple[list[str], bool]:
    # The strings a parsed pattern sequence can start with, and whether it was read to its end: reading stops at the
    # first part it cannot spell out (a class of many characters, an open repeat), enough for a term's first word.
    out = [""]
    for op, arg in items:
        if op is _sre.AT:  # \b, ^, $: no characters
            continue
        alternatives, whole = _read_item(op, arg)
        if alternatives is None:
            return out, False
        out = [a + b for a in out for b in alternatives][:_MAX_STARTS]
        if not whole:
            return out, False
    return out, True


def _read_item(op, arg) -> tuple[list[str] | None, bool]:
    if op is _sre.LITERAL:
        return [chr(arg)], True
    if op is _sre.IN and len(arg) <= 4 and all(o is _sre.LITERAL for o, _ in arg):  # [sS]
        return [chr(v) for _, v in arg], True
    if op is _sre.SUBPATTERN:
        return _read_sequence(arg[-1])
    if op is _sre.BRANCH:
        read = [_read_sequence(branch) for branch in arg[1]]
        return [x for strings, _ in read for x in strings], all(whole for _, whole in read)
    if op in (_sre.MAX_REPEAT, _sre.MIN_REPEAT):
        low, high, sub = arg
        strings, whole = _read_sequence(sub)
        if low == 0 and high == 1:  # s?
            return ["", *strings], whole
        return (strings, False) if low >= 1 else (None, False)  # one copy, then stop reading
    return None, False


@functools.lru_cache(maxsize=4096)
def term_starts(kind: str, arg: str) -> tuple[str, ...]:
    """The texts a `rule:regex:` (or `rule:contains:`) tag's matches can start with, spelt out as far as the pattern
    allows and at least [`MIN_START_CHARS`] long: `"\\bfluids?\\b|\\bwater\\b"` gives `("fluid", "fluids",
    "water")`; a pattern that opens with a class of characters (`\\d+ hours`) gives none."""
    if kind == "contains":
        strings = [arg]
    else:
        try:
            strings = _read_sequence(_sre.parse(arg))[0]
        except (re.error, RecursionError):
            return ()
    return tuple(dict.fromkeys(x.strip() for x in strings if len(x.strip()) >= MIN_START_CHARS))


def criterion_starts(criterion: Criterion) -> list[str]:
    """[`term_starts`] of each of `criterion`'s span rules."""
    return [x for kind, arg in _span_rules(criterion) for x in term_starts(kind, arg)]


def onset_token_ids(tokenizer, rubric: Rubric, names: Sequence[str]) -> list[int]:
    """The first tokens of the named positive criteria's terms (as [`criterion_starts`] spells them), cased as written,
    lower-case and capitalised, with and without a leading space; a first token shorter than [`MIN_START_CHARS`]
    characters is left out unless it is the whole term."""
    starts = tuple(start for c in rubric if _named(c, names) for start in criterion_starts(c))
    return list(_start_token_ids(tokenizer, starts))


@functools.lru_cache(maxsize=4096)
def _start_token_ids(tokenizer, starts: tuple[str, ...]) -> tuple[int, ...]:
    # Cached: every rollout of a row asks again at every step, and the answer depends on the starts alone.
    ids = set()
    for start in starts:
        for form in {start, start.lower(), start[0].upper() + start[1:]}:
            for text in (form, " " + form):
                tokens = tokenizer.encode(text, add_special_tokens=False)
                first = tokenizer.decode(tokens[:1]).strip() if tokens else ""
                if len(first) >= MIN_START_CHARS or first == start:
                    ids.add(tokens[0])
    return tuple(sorted(ids))


def check_span_settings(weight: Any, nll_weight: Any, onset_weight: Any, names: Any) -> list[str] | None:
    """`span_criteria` as a list (or `None`); a `ValueError` names a bad `span_weight` / `span_nll_weight` /
    `span_onset_weight` / `span_criteria` setting."""
    names = check_criteria(names)
    weights = {"span_weight": weight, "span_nll_weight": nll_weight, "span_onset_weight": onset_weight}
    for field, value in weights.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < float("inf"):
            raise ValueError(f"{field} is {value!r}; expected a finite number >= 0")
    neutral = weight == 1.0 and nll_weight == 0.0 and onset_weight == 0.0
    settings = ", ".join(f"{k}={v}" for k, v in weights.items())
    if not neutral and names is None:
        raise ValueError(
            f"{settings} act on the criteria named in span_criteria, which is None: name them there (e.g. "
            'span_criteria=["key term"])'
        )
    if names is not None and neutral:
        raise ValueError(
            f"span_criteria={list(names)} with {settings} changes nothing: set span_weight above 1, or "
            "span_nll_weight or span_onset_weight above 0, or drop span_criteria"
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
        named = [c for c in rubric if _named(c, args.span_criteria) and _span_rules(c)]
        if not named:
            titles = [c.title or c.text for c in rubric]
            raise RubricDatasetError(
                f"{name} row {index}: column {args.rubric_column!r}: span_criteria={args.span_criteria} names no "
                f"positive criterion with a rule:regex: or rule:contains: tag (whose matches are the spans); its "
                f"criteria: {titles}"
            )
        if args.span_onset_weight and not any(criterion_starts(c) for c in named):
            raise RubricDatasetError(
                f"{name} row {index}: column {args.rubric_column!r}: span_onset_weight needs a term whose start the "
                f"rule tags spell out ({MIN_START_CHARS}+ characters), and the tags of "
                f"{[c.title or c.text for c in named]} give none: {[t for c in named for t in c.tags]}"
            )


def check_onset_tokens(trainer, dataset: Any, name: str = "train_dataset") -> None:
    """Before training, with `span_onset_weight`: the rows of `dataset` whose terms have no first token of
    [`MIN_START_CHARS`]+ characters in this tokenizer (" x" of "x-ray") get no onset pull; a warning names them and
    their terms (their span weights still apply), and a `ValueError` says so when no row has one."""
    args = trainer.args
    columns = getattr(dataset, "column_names", None) if hasattr(dataset, "__len__") else None
    if not args.span_onset_weight or not columns or args.rubric_column not in columns:
        return
    unpulled = []
    for index, value in enumerate(dataset[args.rubric_column]):
        rubric = Rubric.from_any(value, pitfall_polarity=args.pitfall_polarity)
        if not onset_token_ids(trainer._tokenizer, rubric, args.span_criteria):
            unpulled.append((index, [s for c in rubric if _named(c, args.span_criteria) for s in criterion_starts(c)]))
    if not unpulled:
        return
    shown = "; ".join(f"row {i}: {starts}" for i, starts in unpulled[:5]) + ("; ..." if len(unpulled) > 5 else "")
    message = (
        f"{name}: span_onset_weight={args.span_onset_weight}: {len(unpulled)} of {len(dataset)} rows have no term "
        f"whose first token in this tokenizer is {MIN_START_CHARS}+ characters ({shown}), so the onset term does not "
        "act on them"
    )
    if len(unpulled) == len(dataset):
        raise ValueError(f"{message}: it would change nothing. Drop span_onset_weight, or name longer terms.")
    logger.warning("%s; their span weights still apply.", message)


def add_span_mask(trainer, output: dict, loss_mask: Tensor, inputs: list[dict[str, Any]], metrics) -> None:
    """Put the batch's span tokens (`[B, T]` bool, within `loss_mask`) in `output["rgsd_span_mask"]` and log their
    count (`rgsd/span_tokens`, summed over processes); nothing without `span_criteria`."""
    args = trainer.args
    if args.span_criteria is None:
        return
    ids, completion_mask = output["completion_ids"], output["completion_mask"]
    out = torch.zeros(ids.shape, dtype=torch.bool, device=ids.device)
    onsets: list[list[int]] = []
    for row, x in enumerate(inputs):
        try:
            rubric = Rubric.from_any(x[args.rubric_column], pitfall_polarity=args.pitfall_polarity)
        except (KeyError, RubricError):
            onsets.append([])
            continue  # validated before training; an eval row without a rubric has no spans
        positions = completion_mask[row].bool().nonzero().flatten()
        row_ids = ids[row, positions].tolist()
        text = trainer._tokenizer.decode(row_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        spans = criterion_spans(text, rubric, args.span_criteria)
        if spans:
            hit = char_spans_to_token_mask(trainer._tokenizer, row_ids, spans)
            out[row, positions] = torch.tensor(hit, dtype=torch.bool, device=out.device)
        onsets.append(
            onset_token_ids(trainer._tokenizer, rubric, args.span_criteria) if args.span_onset_weight else []
        )
    if args.span_onset_weight:  # [B, K] first tokens of each row's terms, -1 where a row has fewer
        width = max([1, *map(len, onsets)])
        padded = [row_onsets + [-1] * (width - len(row_onsets)) for row_onsets in onsets]
        output["rgsd_onset_ids"] = torch.tensor(padded, dtype=torch.long, device=ids.device)
    output["rgsd_span_mask"] = out & loss_mask.bool()
    metrics["rgsd/span_tokens"].append(trainer.accelerator.gather(output["rgsd_span_mask"].sum()).sum().item())


def weight_spans(
    per_token: Tensor, mask: Tensor, out, inputs: dict, args, student_hidden: Tensor, head, teacher, **logits_kwargs
) -> tuple[Tensor, Tensor]:
    """`per_token` (`[B, T]`, the distillation loss scattered from the `mask` tokens) on the span tokens where the
    teacher's log-prob of the sampled token is above the student's (`out`: the `TokenDivergence` of the `mask` tokens,
    with log-probs): times `args.span_weight`, plus `args.span_nll_weight * -log p_student(token)` (from
    `student_hidden` and `head`; `logits_kwargs` go to [`~trl_rubric.losses.unlikelihood.sampled_token_logps`]);
    plus `args.span_onset_weight` times [`onset_divergence`] on every `mask` token (`teacher`: the teacher's
    `(hidden [B, T, H], head weight, head bias, logit scale, soft-capping)`). Returns it with `[span
    tokens, of which the teacher prefers, summed teacher onset probability, summed student onset probability]` for the
    logs."""
    spans = inputs.get("rgsd_span_mask")
    if spans is None or args.span_criteria is None:
        return per_token, per_token.new_zeros(4).detach()
    onset_stats = per_token.new_zeros(2)
    if args.span_onset_weight > 0:
        t_hidden, t_weight, t_bias, t_scale, t_softcap = teacher
        rows = mask.nonzero(as_tuple=True)[0]
        temperature = logits_kwargs.get("temperature", 1.0)
        top_k = (args.teacher_top_k, args.teacher_top_k_floor) if args.teacher_top_k is not None else None
        kl, q_t, q_s = onset_divergence(
            student_hidden[mask], head.weight, head.bias, t_hidden[mask], t_weight, t_bias,
            inputs["rgsd_onset_ids"][rows], student_logits={**logits_kwargs, "temperature": temperature},
            teacher_logits=dict(temperature=temperature * args.teacher_temperature, logit_scale=t_scale,
                                final_logit_softcapping=t_softcap, top_k=top_k),
        )  # fmt: skip
        per_token = per_token + torch.zeros_like(per_token).masked_scatter(mask, args.span_onset_weight * kl)
        onset_stats = torch.stack([q_t.sum(), q_s.detach().sum()]).to(per_token.dtype)
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
    return per_token, torch.cat([stats, onset_stats.detach()])


def _onset_chunk(h: Tensor, ids: Tensor, weight, bias, logits: tuple, top_k) -> tuple[Tensor, Tensor, Tensor]:
    # One chunk of tokens: the transformed logits, their log-normaliser, and log q (the mass of `ids`; pads read -inf)
    z = transform_logits(_project(h, weight, bias), *logits)
    logp = teacher_top_k_logps(z, *top_k)[0] if top_k is not None else None
    log_z = z.logsumexp(-1) if logp is None else z.new_zeros(z.shape[0])
    picked = (z if logp is None else logp).gather(-1, ids.clamp(min=0)).masked_fill(ids < 0, float("-inf"))
    return z, log_z, picked.logsumexp(-1) - log_z


class _OnsetLogProb(torch.autograd.Function):
    """`log q` per token with gradients to the hidden states and the LM head, recomputed a tile at a time in the
    backward pass (as TRL's chunked log-prob kernel does): no `[N, V]` logits are kept, and a ZeRO-3 partitioned head
    is gathered once per pass, so every process makes the same collective calls whatever its token count."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, ids, logits: tuple, chunk_size):
        with torch.no_grad(), _gather_zero3(weight, bias):
            out = torch.cat([_onset_chunk(hidden[r], ids[r], weight, bias, logits, None)[2]
                             for r in _token_chunks(hidden.shape[0], chunk_size)])  # fmt: skip
        ctx.save_for_backward(hidden, weight, bias, ids, out)
        ctx.logits, ctx.chunk_size = logits, chunk_size
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, bias, ids, out = ctx.saved_tensors
        temperature, scale, softcap = ctx.logits
        grads = [torch.zeros(t.shape, dtype=torch.float32, device=t.device) if t is not None and ctx.needs_input_grad[i]
                 else None for i, t in enumerate((hidden, weight, bias))]  # fmt: skip
        with torch.no_grad(), _gather_zero3(weight, bias):
            w = weight.float()
            for r in _token_chunks(hidden.shape[0], ctx.chunk_size):
                h = hidden[r].float()
                raw = _project(h, w, bias)
                z = transform_logits(raw, *ctx.logits)
                log_z = z.logsumexp(-1)
                # d log q / d z_v = p_v (1[v in ids] / q - 1): -p everywhere, plus p_v / q on the ids (0 on pads);
                # log q is the forward's output
                index = ids[r].clamp(min=0)
                g = -(z - log_z[:, None]).exp()
                share = (z.gather(-1, index) - log_z[:, None] - out[r].float()[:, None]).exp() * (ids[r] >= 0)
                g = g.scatter_add_(-1, index, share) * grad_out[r].float()[:, None] / temperature
                if softcap is not None:  # z = c tanh(raw * scale / c) / T
                    g = g * (1 - torch.tanh(raw * scale / softcap) ** 2)
                g = g * scale
                if grads[0] is not None:
                    grads[0][r] = g @ w
                if grads[1] is not None:
                    grads[1] += g.t() @ h
                if grads[2] is not None:
                    grads[2] += g.sum(0)
        cast = [None if g is None else g.to(t.dtype) for g, t in zip(grads, (hidden, weight, bias), strict=True)]
        return (*cast, None, None, None)


def onset_logprob(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    ids: Tensor,
    *,
    temperature: float = 1.0,
    logit_scale: float = 1.0,
    final_logit_softcapping: float | None = None,
    chunk_size: int | None = 128,
    top_k: tuple[int, float] | None = None,
) -> Tensor:
    """`log sum_{v in ids[n]} p(v | hidden[n])` for each of `N` tokens (`ids`: `[N, K]`, `-1` pads), from logits
    transformed as the model samples them (or, without gradients, the top-k renormalised log-probs with
    `top_k = (k, floor)`), a chunk of tokens at a time. With gradients, the tiles are recomputed in the backward pass
    instead of kept, so memory stays one tile whatever `N` is. A row of pads only reads `-inf`."""
    logits = (temperature, logit_scale, final_logit_softcapping)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, weight, bias)):
        if top_k is not None:
            raise ValueError("onset_logprob: top_k shapes the teacher's distribution, which takes no gradient")
        return _OnsetLogProb.apply(hidden, weight, bias, ids, logits, chunk_size)
    with torch.no_grad(), _gather_zero3(weight, bias):
        return torch.cat([_onset_chunk(hidden[r], ids[r], weight, bias, logits, top_k)[2]
                          for r in _token_chunks(hidden.shape[0], chunk_size)])  # fmt: skip


def onset_divergence(
    s_hidden: Tensor,
    s_weight: Tensor,
    s_bias: Tensor | None,
    t_hidden: Tensor,
    t_weight: Tensor,
    t_bias: Tensor | None,
    ids: Tensor,
    student_logits: dict[str, Any],
    teacher_logits: dict[str, Any],
) -> tuple[Tensor, Tensor, Tensor]:
    """Per token: `KL(Bernoulli(q_t) || Bernoulli(q_s))`, where `q_t` / `q_s` are the teacher's / student's probability
    of the next token being one of `ids` (`[N, K]`, see [`onset_logprob`]), with gradients through the student only;
    returns `(kl [N], q_t [N], q_s [N])`. Zero where the two agree; zero, with no gradient, where a row has no ids."""
    has = (ids >= 0).any(-1)
    zeros = s_hidden.new_zeros(ids.shape[0], dtype=torch.float32)
    if not has.any():
        return zeros + 0.0 * s_hidden.sum(), zeros, zeros  # attached to the graph, as an empty selection is
    with torch.no_grad():
        # the head as it is (a ZeRO-3 partition is gathered by its parameter; no gradient flows under no_grad)
        log_t = onset_logprob(t_hidden[has].detach(), t_weight, t_bias, ids[has], **teacher_logits).float()
    log_s = onset_logprob(s_hidden[has], s_weight, s_bias, ids[has], **student_logits).float()
    q_t, q_s = log_t.exp(), log_s.exp()
    # log(1 - q) from log q, stable on both ends; a student sure of the term (q_s = 1) gets a large, finite loss
    log1m_s = torch.log(-torch.expm1(log_s.clamp(max=-1e-6)))
    kl = torch.xlogy(q_t, q_t) - q_t * log_s + torch.xlogy(1 - q_t, 1 - q_t) - (1 - q_t) * log1m_s
    scatter = lambda values: zeros.masked_scatter(has, values)  # noqa: E731
    return scatter(kl), scatter(q_t), scatter(q_s.detach())
