"""Evaluation: generate answers, grade them against their rubrics, and report; plus the conditioning-gap preflight.

Three questions, three entry points:

- "Did training raise rubric satisfaction, and at what cost in length?" [`evaluate`] generates one answer per prompt,
  grades it with a judge and summarises it with [`summarize`] (weighted score with a bootstrap interval, unweighted
  score, strict completion, per-category and per-tag rates, response length, judge failure rate).
- "Will RGSD work on my model and data at all?" [`conditioning_gap`] runs the same model with and without the rubric
  in its context (the RGSD teacher's and student's views) and measures how much the rubric helps. RGSD
  (Rubric-Guided Self-Distillation, arXiv 2606.12507) distills exactly that difference, so a small gap means little to
  learn. Longer answers can inflate the gap, so the length ratio is reported next to it.
- "Where does the rubric change the model?" [`token_logratio_view`] computes, on the student's own completion,
  `log p_teacher(y_t) - log p_student(y_t)` per token; [`write_token_view_html`] and [`plot_token_views`] draw it.

Scores follow [`Rubric.score`]: per example, the sum of the weights of met criteria (penalties included) over the sum of
positive weights, leaving unknown verdicts out; dataset means are clipped to [0, 1] as HealthBench does.
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .judges.base import Grade, RubricJudge, prompt_to_text
from .rubric import Rubric
from .teacher import DEFAULT_TEACHER_PROMPT_TEMPLATE, build_teacher_prompt

logger = logging.getLogger(__name__)

#: Criteria with no category are reported under this name.
UNCATEGORIZED = "uncategorized"


class EvaluationError(ValueError):
    """Bad input to the evaluation harness (model path, options); the message says what is wrong and how to fix it."""


# ---------------------------------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Generations:
    """Sampled completions, one per prompt, in prompt order.

    Attributes:
        texts: Decoded completions without special tokens.
        token_ids: Completion token ids, cut before the first end-of-sequence token (that token is not included).
        truncated: Whether each completion hit `max_new_tokens` before ending on its own.
    """

    texts: list[str]
    token_ids: list[list[int]]
    truncated: list[bool] = field(default_factory=list)

    def __post_init__(self):
        if len(self.texts) != len(self.token_ids):
            raise ValueError(f"Generations has {len(self.texts)} texts but {len(self.token_ids)} token id lists")
        if not self.truncated:
            self.truncated = [False] * len(self.texts)

    @property
    def lengths(self) -> list[int]:
        """Completion lengths in tokens."""
        return [len(ids) for ids in self.token_ids]


#: A generation backend: prompts (strings or chat messages) -> one completion per prompt. Returning plain strings is
#: allowed; their lengths are then counted with the tokenizer passed to [`evaluate`] (or in words without one).
GenerateFn = Callable[[list[Any]], "Generations | list[str]"]


def format_prompt(tokenizer, prompt: str | list[dict[str, Any]]) -> str:
    """The text a causal LM continues: the chat template with a generation prompt when the tokenizer has one.

    A plain-string prompt is wrapped as a single user turn when a chat template exists, so instruction-tuned models
    see the format they were trained on; without a template the string is used as is.
    """
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if isinstance(prompt, str):
        return prompt
    raise EvaluationError("the prompts are chat messages but the tokenizer has no chat_template; set one")


def _prompt_ids(tokenizer, prompt: Any) -> list[int]:
    text = format_prompt(tokenizer, prompt)
    # A chat template already writes its special tokens (BOS included); adding them again would double them.
    return tokenizer(text, add_special_tokens=not getattr(tokenizer, "chat_template", None))["input_ids"]


def _eos_ids(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (config_eos, tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif value is not None:
            ids.update(int(v) for v in value)
    return ids


def _cut_at_eos(ids: Sequence[int], eos: set[int], pad_id: int | None) -> tuple[list[int], bool]:
    """Completion ids up to the first EOS; also whether no EOS was found (the completion was cut by the budget)."""
    out = []
    for token in ids:
        if token in eos:
            return out, False
        out.append(int(token))
    # Without an EOS, trailing pads can only come from batching (pad == eos is handled above).
    while out and pad_id is not None and out[-1] == pad_id:
        out.pop()
    return out, True


def generate_responses(
    model,
    tokenizer,
    prompts: Sequence[str | list[dict[str, Any]]],
    max_new_tokens: int = 512,
    batch_size: int = 8,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    progress: bool = True,
    desc: str = "generating",
) -> Generations:
    """Sample one completion per prompt with transformers batched generation (left padding, chat template).

    Prompts are batched by length so that little compute goes to padding; the output keeps the input order. The
    model's own `generation_config` (e.g. `top_k`) still applies, except for what is set here.

    Args:
        model: A causal LM (`PreTrainedModel`, or a PEFT model wrapping one).
        tokenizer: Its tokenizer (left padding is applied here, whatever its `padding_side`).
        prompts: Strings or lists of chat messages.
        max_new_tokens: Budget per completion; completions that hit it are flagged in `Generations.truncated`.
        batch_size: Prompts per `generate` call.
        temperature: Sampling temperature; `0` means greedy decoding.
        top_p: Nucleus sampling threshold (ignored when greedy).
        seed: Seed for sampling, so that a run is reproducible on the same hardware.
        progress: Show a tqdm progress bar.
        desc: Label of the progress bar.

    Returns:
        [`Generations`] with texts, token ids and truncation flags.
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import set_seed

    if max_new_tokens < 1:
        raise EvaluationError(f"max_new_tokens is {max_new_tokens}; expected at least 1")
    if batch_size < 1:
        raise EvaluationError(f"batch_size is {batch_size}; expected at least 1")
    if temperature < 0:
        raise EvaluationError(f"temperature is {temperature}; expected 0 (greedy) or more")
    prompt_ids = [_prompt_ids(tokenizer, p) for p in prompts]
    eos = _eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = min(eos) if eos else 0
    gen_kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "pad_token_id": pad_id}
    if eos:
        gen_kwargs["eos_token_id"] = sorted(eos)
    if temperature > 0:
        gen_kwargs.update(do_sample=True, temperature=temperature, top_p=top_p)
    else:
        # Explicit None silences transformers' warnings about sampling knobs left in the model's generation_config.
        gen_kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)

    order = sorted(range(len(prompts)), key=lambda i: -len(prompt_ids[i]))
    texts: list[str] = [""] * len(prompts)
    token_ids: list[list[int]] = [[] for _ in prompts]
    truncated = [False] * len(prompts)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    set_seed(seed)
    bar = tqdm(total=len(prompts), desc=desc, unit="resp", disable=not progress)
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                width = max(len(prompt_ids[i]) for i in batch)
                input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
                attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):  # left padding: generation continues from the last column
                    ids = prompt_ids[i]
                    input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
                    attention_mask[row, width - len(ids) :] = 1
                out = model.generate(
                    input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), **gen_kwargs
                )
                for row, i in enumerate(batch):
                    ids, cut = _cut_at_eos(out[row, width:].tolist(), eos, pad_id)
                    token_ids[i] = ids
                    truncated[i] = cut and len(ids) >= max_new_tokens
                    texts[i] = tokenizer.decode(ids, skip_special_tokens=True)
                bar.update(len(batch))
    finally:
        bar.close()
        if was_training:
            model.train()
    return Generations(texts=texts, token_ids=token_ids, truncated=truncated)


class VLLMGenerator:
    """A [`GenerateFn`] backed by vLLM, for large evaluations on a GPU. vLLM is imported only when this is built.

    Args:
        model_name_or_path: Model to serve. For a LoRA adapter folder, pass the base here and the folder as `adapter`.
        tokenizer: Tokenizer used for the chat template and for counting tokens.
        adapter: Optional LoRA adapter folder, served through vLLM's LoRA support.
        max_new_tokens, temperature, top_p, seed: As in [`generate_responses`].
        gpu_memory_utilization: Fraction of GPU memory vLLM may take.
        dtype: vLLM dtype (`"auto"`, `"bfloat16"`, ...).
    """

    def __init__(
        self,
        model_name_or_path: str,
        tokenizer,
        adapter: str | None = None,
        max_new_tokens: int = 512,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int = 0,
        gpu_memory_utilization: float = 0.9,
        dtype: str = "auto",
    ):
        try:
            import vllm
        except ImportError:
            raise EvaluationError(
                "use_vllm=True needs vLLM, which is not installed; run `pip install 'trl-rubric[vllm]'` "
                "or drop --use_vllm to generate with transformers"
            ) from None
        self._vllm = vllm
        self.tokenizer = tokenizer
        self.adapter = adapter
        lora_kwargs = {}
        if adapter is not None:
            with open(os.path.join(adapter, "adapter_config.json"), encoding="utf-8") as f:
                rank = int(json.load(f).get("r", 16))
            # vLLM refuses adapters above its max_lora_rank (16 by default).
            lora_kwargs = {"enable_lora": True, "max_lora_rank": max(16, rank)}
        self.llm = vllm.LLM(
            model=model_name_or_path,
            tokenizer=model_name_or_path,
            dtype=dtype,
            seed=seed,
            gpu_memory_utilization=gpu_memory_utilization,
            **lora_kwargs,
        )
        self.sampling = vllm.SamplingParams(
            max_tokens=max_new_tokens, temperature=temperature, top_p=top_p if temperature > 0 else 1.0, seed=seed
        )

    def __call__(self, prompts: list[Any]) -> Generations:
        # Token ids rather than text, so vLLM does not add a second BOS in front of the chat template's.
        inputs = [{"prompt_token_ids": _prompt_ids(self.tokenizer, p)} for p in prompts]
        lora = None
        if self.adapter is not None:
            from vllm.lora.request import LoRARequest

            lora = LoRARequest("adapter", 1, self.adapter)
        outputs = self.llm.generate(inputs, self.sampling, lora_request=lora, use_tqdm=True)
        texts, ids, truncated = [], [], []
        for output in outputs:
            completion = output.outputs[0]
            texts.append(completion.text)
            ids.append(list(completion.token_ids))
            truncated.append(completion.finish_reason == "length")
        eos = _eos_ids(None, self.tokenizer)
        ids = [_cut_at_eos(x, eos, None)[0] for x in ids]
        return Generations(texts=texts, token_ids=ids, truncated=truncated)


# ---------------------------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class EvalMetrics:
    """Dataset-level numbers from [`summarize`]. Scores are `None` when no example could be scored.

    Attributes:
        n_examples: Responses evaluated.
        n_scored: Responses whose grade has a score (the others count as judge failures).
        weighted_score: Mean per-example [`Rubric.score`] over scored examples, clipped to [0, 1].
        weighted_score_unclipped: The same mean before clipping (may be below 0 when penalties dominate).
        weighted_score_ci: Percentile bootstrap interval of `weighted_score` (examples resampled, seeded).
        unweighted_score: Mean per-example score with every criterion counting +1 / -1 by the sign of its weight,
            clipped to [0, 1]. With no penalty criteria this is the mean fraction of criteria met.
        strict_completion: Fraction of examples that meet every positive-weight criterion and trigger no
            negative-weight one. See [`summarize`] for how unknown verdicts are handled.
        n_strict_known: Examples whose strict outcome is known (the denominator of `strict_completion`).
        mean_length: Mean response length in tokens (all responses, judged or not).
        median_length: Median response length in tokens.
        judge_failure_rate: Grades without a score, over all responses.
        unknown_verdict_rate: Unknown (`None`) verdicts over all criterion verdicts.
        by_category: Per criterion category: `n` known verdicts, `met_rate`, `weight` (sum of weights) and `polarity`
            (`"reward"`, `"penalty"` or `"mixed"`); for a penalty category a lower `met_rate` is better.
        by_tag: The same per criterion tag (HealthBench `axis:`/`level:` tags, ...); `rule:` check tags are skipped.
        confidence_level: Coverage of `weighted_score_ci`.
    """

    n_examples: int
    n_scored: int
    weighted_score: float | None
    weighted_score_unclipped: float | None
    weighted_score_ci: tuple[float, float] | None
    unweighted_score: float | None
    strict_completion: float | None
    n_strict_known: int
    mean_length: float | None
    median_length: float | None
    judge_failure_rate: float
    unknown_verdict_rate: float
    by_category: dict[str, dict[str, Any]]
    by_tag: dict[str, dict[str, Any]]
    confidence_level: float = 0.95

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.weighted_score_ci is not None:
            out["weighted_score_ci"] = list(self.weighted_score_ci)
        return out


def _clip01(x: float) -> float:
    return min(1.0, max(0.0, x))


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _median(xs: Sequence[float]) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    mid = len(s) // 2
    return float(s[mid]) if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def bootstrap_ci(
    values: Sequence[float],
    paired: Sequence[float] | None = None,
    n_resamples: int = 1000,
    confidence_level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of a clipped mean, or of a paired difference of clipped means.

    With `paired`, each resample draws the same example indices from both lists and the statistic is
    `clip(mean(values)) - clip(mean(paired))`, so the interval accounts for per-prompt difficulty shared by the views.

    Args:
        values: Per-example scores.
        paired: Optional per-example scores of a second view, aligned with `values`.
        n_resamples: Bootstrap resamples; `0` disables the interval.
        confidence_level: Interval coverage, e.g. 0.95.
        seed: Seed of the resampling.

    Returns:
        `(low, high)`, or `None` with no data or no resamples.
    """
    import numpy as np

    if not values or n_resamples <= 0:
        return None
    if not 0 < confidence_level < 1:
        raise EvaluationError(f"confidence_level is {confidence_level}; expected a number in (0, 1)")
    a = np.asarray(values, dtype=np.float64)
    b = np.asarray(paired, dtype=np.float64) if paired is not None else None
    if b is not None and b.shape != a.shape:
        raise ValueError(f"paired bootstrap got {len(a)} and {len(b)} values")
    rng = np.random.default_rng(seed)
    stats = np.empty(n_resamples)
    # Resample in chunks so that memory stays bounded on large evaluations.
    chunk = max(1, 2_000_000 // len(a))
    for start in range(0, n_resamples, chunk):
        k = min(chunk, n_resamples - start)
        idx = rng.integers(0, len(a), size=(k, len(a)))
        stat = np.clip(a[idx].mean(axis=1), 0.0, 1.0)
        if b is not None:
            stat = stat - np.clip(b[idx].mean(axis=1), 0.0, 1.0)
        stats[start : start + k] = stat
    alpha = (1.0 - confidence_level) / 2
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(low), float(high)


def strict_outcome(rubric: Rubric, verdicts: Sequence[bool | None]) -> bool | None:
    """Whether a response fully satisfies its rubric: every positive criterion met and no penalty triggered.

    Three-valued, so that unknown verdicts never count as failures: `False` as soon as a known verdict rules it out (a
    positive criterion not met, or a negative one met), `True` when every verdict is known and none rules it out,
    `None` (unknown, excluded from the rate) otherwise. Zero-weight criteria are ignored.
    """
    unknown = False
    for criterion, verdict in zip(rubric, verdicts, strict=True):
        if criterion.weight == 0:
            continue
        if verdict is None:
            unknown = True
        elif (criterion.weight > 0) != bool(verdict):
            return False
    return None if unknown else True


def _verdicts_fit(grade: Grade, rubric: Rubric) -> bool:
    """Whether the grade's verdicts can be read per criterion.

    Not so for a holistic rating (a judge in implicit mode sets `Grade.rating` and leaves every verdict `None`) or a
    judge that returns a score without verdicts; those grades count for the scores only.
    """
    if getattr(grade, "rating", None) is not None:
        return False
    return grade.verdicts is not None and len(grade.verdicts) == len(rubric)


def _group_rates(groups: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {}
    for name in sorted(groups):
        g = groups[name]
        polarity = "reward" if g["neg"] == 0 else "penalty" if g["pos"] == 0 else "mixed"
        out[name] = {
            "n": g["n"],
            "met_rate": g["met"] / g["n"] if g["n"] else None,
            "weight": g["weight"],
            "polarity": polarity,
        }
    return out


def summarize(
    grades: Sequence[Grade],
    rubrics: Sequence[Any],
    lengths: Sequence[int],
    n_bootstrap: int = 1000,
    confidence_level: float = 0.95,
    seed: int = 0,
) -> EvalMetrics:
    """Dataset metrics from grades, rubrics and response lengths. A pure function: same inputs, same numbers.

    Definitions (per example, then averaged over examples):

    - weighted score: [`Rubric.score`] of the verdicts; mean over scored examples, then clipped to [0, 1];
    - unweighted score: the same with every criterion counting +1 / -1;
    - strict completion: [`strict_outcome`]: every positive-weight criterion met *and* no negative-weight (penalty)
      criterion met. Penalties are included because a response that hits a pitfall is not a complete answer. Examples
      whose outcome hangs on an unknown verdict are left out of the rate;
    - judge failure rate: grades with no score (`Grade.score is None`) over all responses. Unknown verdicts are left
      out of every rate above, never counted as not met.

    A holistic rating (`Grade.rating`, from a judge in implicit mode) counts for the two scores only: it has no
    per-criterion verdicts for strict completion or the breakdowns.

    Args:
        grades: One [`Grade`] per response.
        rubrics: The matching rubrics (anything [`Rubric.from_any`] reads).
        lengths: Response lengths in tokens.
        n_bootstrap: Bootstrap resamples for `weighted_score_ci`; `0` skips it.
        confidence_level: Coverage of the interval.
        seed: Seed of the bootstrap.

    Returns:
        [`EvalMetrics`].
    """
    if not (len(grades) == len(rubrics) == len(lengths)):
        raise ValueError(f"summarize got {len(grades)} grades, {len(rubrics)} rubrics and {len(lengths)} lengths")
    n = len(grades)
    weighted, unweighted = [], []
    strict_known, strict_met = 0, 0
    failures = unknown_verdicts = total_verdicts = 0
    categories: dict[str, dict[str, Any]] = {}
    tags: dict[str, dict[str, Any]] = {}

    def count(groups, key, criterion, verdict):
        g = groups.setdefault(key, {"n": 0, "met": 0, "weight": 0.0, "pos": 0, "neg": 0})
        g["pos" if criterion.weight >= 0 else "neg"] += 1
        if verdict is not None:
            g["n"] += 1
            g["met"] += int(bool(verdict))
            g["weight"] += criterion.weight

    for grade, rubric in zip(grades, rubrics, strict=True):
        rubric = Rubric.from_any(rubric)
        if not _verdicts_fit(grade, rubric):
            # A judge that returns only a score still counts for the score; per-criterion stats need verdicts.
            if grade.score is None:
                failures += 1
            else:
                weighted.append(grade.score)
                if grade.unweighted_score is not None:
                    unweighted.append(grade.unweighted_score)
            continue
        score = rubric.score(grade.verdicts)
        if grade.score is None or score is None:
            failures += 1
        else:
            weighted.append(score)
            u = rubric.score(grade.verdicts, weighted=False)
            if u is not None:
                unweighted.append(u)
        total_verdicts += len(grade.verdicts)
        unknown_verdicts += sum(v is None for v in grade.verdicts)
        strict = strict_outcome(rubric, grade.verdicts)
        if strict is not None:
            strict_known += 1
            strict_met += int(strict)
        for criterion, verdict in zip(rubric, grade.verdicts, strict=True):
            count(categories, criterion.category or UNCATEGORIZED, criterion, verdict)
            for tag in criterion.tags:
                if not tag.startswith("rule:"):
                    count(tags, tag, criterion, verdict)

    raw_mean = _mean(weighted)
    unweighted_mean = _mean(unweighted)
    return EvalMetrics(
        n_examples=n,
        n_scored=len(weighted),
        weighted_score=_clip01(raw_mean) if raw_mean is not None else None,
        weighted_score_unclipped=raw_mean,
        weighted_score_ci=bootstrap_ci(weighted, None, n_bootstrap, confidence_level, seed),
        unweighted_score=_clip01(unweighted_mean) if unweighted_mean is not None else None,
        strict_completion=strict_met / strict_known if strict_known else None,
        n_strict_known=strict_known,
        mean_length=_mean([float(x) for x in lengths]),
        median_length=_median(lengths),
        judge_failure_rate=failures / n if n else 0.0,
        unknown_verdict_rate=unknown_verdicts / total_verdicts if total_verdicts else 0.0,
        by_category=_group_rates(categories),
        by_tag=_group_rates(tags),
        confidence_level=confidence_level,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------------------------


def _table_to_pandas(rows: list[dict[str, Any]]):
    try:
        import pandas as pd
    except ImportError:
        raise ImportError(
            "to_pandas() needs pandas: pip install pandas (or use .table() for a list of dicts)"
        ) from None
    return pd.DataFrame(rows)


@dataclass
class EvalResult:
    """What [`evaluate`] returns.

    Attributes:
        metrics: Dataset-level [`EvalMetrics`].
        examples: One dict per example: `index`, `prompt` (text), `response`, `score`, `unweighted_score`, `strict`,
            `num_tokens`, `truncated`, `failed`, `judge_error` and `criteria` (a list of `{text, weight, category,
            verdict}`).
        config: The settings that produced it (generation, judge, dataset), for the record.
    """

    metrics: EvalMetrics
    examples: list[dict[str, Any]]
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Metrics at the top level (what `results.json` holds), plus the config."""
        return {**self.metrics.to_dict(), "config": self.config}

    def table(self) -> list[dict[str, Any]]:
        """Per-example rows as flat-ish dicts, ready for `pandas.DataFrame(...)` or a JSONL file."""
        return [dict(row) for row in self.examples]

    def to_pandas(self):
        """The per-example table as a `pandas.DataFrame` (needs pandas)."""
        return _table_to_pandas(self.table())


def select_examples(dataset: Any, n_samples: int | None = None, seed: int = 0):
    """Validated `{prompt, rubric}` rows, reduced to a seeded random subset of `n_samples` rows when asked.

    Args:
        dataset: A `Dataset` with `prompt` and `rubric` columns (used as is), or anything [`load_rubric_dataset`]
            reads (validated with its defaults).
        n_samples: Rows to keep; `None` keeps all.
        seed: Seed of the subset; the same seed picks the same rows.

    Returns:
        A `Dataset`.
    """
    from datasets import Dataset

    from .data import load_rubric_dataset

    if not (isinstance(dataset, Dataset) and {"prompt", "rubric"} <= set(dataset.column_names)):
        dataset = load_rubric_dataset(dataset)
    if len(dataset) == 0:
        raise EvaluationError("the dataset is empty; expected at least one row with a prompt and a rubric")
    if n_samples is not None:
        if n_samples < 1:
            raise EvaluationError(f"n_samples is {n_samples}; expected a positive number (or None for all rows)")
        if n_samples < len(dataset):
            # A seeded shuffle rather than the first rows: training sets are often sorted by source or topic, and the
            # same seed gives the same rows, so two checkpoints are compared on the same prompts.
            dataset = dataset.shuffle(seed=seed).select(range(n_samples))
    return dataset


def _as_generations(out: Generations | list[str], tokenizer) -> Generations:
    if isinstance(out, Generations):
        return out
    texts = [str(t) for t in out]
    if tokenizer is not None:
        ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    else:
        ids = [list(range(len(t.split()))) for t in texts]  # a word count stands in for tokens
    return Generations(texts=texts, token_ids=ids)


def _resolve_model(model, tokenizer):
    if isinstance(model, (str, os.PathLike)):
        loaded, loaded_tok = load_model_and_tokenizer(os.fspath(model))
        return loaded, tokenizer if tokenizer is not None else loaded_tok
    if tokenizer is None and model is not None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model.config._name_or_path)
    return model, tokenizer


def _grade_examples(
    judge: RubricJudge,
    prompts: list[Any],
    generations: Generations,
    rubrics: list[Any],
    max_concurrency: int | None,
    progress: bool,
    n_bootstrap: int,
    confidence_level: float,
    seed: int,
    config: dict[str, Any],
) -> EvalResult:
    grades = judge.grade_many_sync(
        prompts, generations.texts, rubrics, max_concurrency=max_concurrency, progress=progress
    )
    metrics = summarize(grades, rubrics, generations.lengths, n_bootstrap, confidence_level, seed)
    examples = []
    for i, (prompt, grade, rubric) in enumerate(zip(prompts, grades, rubrics, strict=True)):
        rubric = Rubric.from_any(rubric)
        fits = _verdicts_fit(grade, rubric)
        verdicts = grade.verdicts if fits else [None] * len(rubric)
        score = rubric.score(verdicts) if fits else grade.score
        examples.append(
            {
                "index": i,
                "prompt": prompt_to_text(prompt),
                "response": generations.texts[i],
                "score": score,
                "unweighted_score": rubric.score(verdicts, weighted=False) if fits else grade.unweighted_score,
                "strict": strict_outcome(rubric, verdicts) if fits else None,
                "num_tokens": generations.lengths[i],
                "truncated": generations.truncated[i],
                "failed": grade.score is None or score is None,
                "graded_fraction": rubric.graded_fraction(verdicts) if fits and grade.rating is None else None,
                "judge_error": grade.error,
                "criteria": [
                    {"text": c.text, "weight": c.weight, "category": c.category, "verdict": v}
                    for c, v in zip(rubric, verdicts, strict=True)
                ],
            }
        )
    return EvalResult(metrics=metrics, examples=examples, config=config)


def evaluate(
    model,
    dataset: Any,
    judge: RubricJudge,
    tokenizer=None,
    n_samples: int | None = None,
    max_new_tokens: int = 512,
    batch_size: int = 8,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    judge_max_concurrency: int | None = None,
    n_bootstrap: int = 1000,
    confidence_level: float = 0.95,
    progress: bool = True,
    generate_fn: GenerateFn | None = None,
) -> EvalResult:
    """Generate one answer per prompt, grade it against its rubric, and summarise.

    Args:
        model: A causal LM, or a path / Hub id (a LoRA adapter folder works; see [`load_model_and_tokenizer`]).
            May be `None` when `generate_fn` is given.
        dataset: A `Dataset` with `prompt` and `rubric` columns, or anything [`load_rubric_dataset`] reads.
        judge: Any [`RubricJudge`]; it sees the original prompt, never the rubric-conditioned one.
        tokenizer: The model's tokenizer (loaded from the model's path if omitted).
        n_samples: Evaluate a seeded random subset of this many rows (all rows if `None`).
        max_new_tokens, batch_size, temperature, top_p, seed: Generation settings (see [`generate_responses`]);
            `seed` also picks the subset and seeds the bootstrap.
        judge_max_concurrency: Bound on concurrent judge calls (the judge's own default if `None`).
        n_bootstrap: Bootstrap resamples for the score interval.
        confidence_level: Interval coverage.
        progress: Show progress bars.
        generate_fn: Replace transformers generation, e.g. with a [`VLLMGenerator`] or a test double; called once
            with the list of prompts.

    Returns:
        [`EvalResult`].
    """
    dataset = select_examples(dataset, n_samples, seed)
    prompts, rubrics = list(dataset["prompt"]), list(dataset["rubric"])
    if generate_fn is None:
        model, tokenizer = _resolve_model(model, tokenizer)

        def generate_fn(ps):
            return generate_responses(
                model, tokenizer, ps, max_new_tokens, batch_size, temperature, top_p, seed, progress
            )

    generations = _as_generations(generate_fn(prompts), tokenizer)
    config = {
        "n_samples": n_samples,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "seed": seed,
        "judge": getattr(judge, "name", type(judge).__name__),
    }
    return _grade_examples(
        judge,
        prompts,
        generations,
        rubrics,
        judge_max_concurrency,
        progress,
        n_bootstrap,
        confidence_level,
        seed,
        config,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Conditioning gap
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class GapResult:
    """What [`conditioning_gap`] returns.

    The two scores and the gap are computed on the examples that both views could score (paired), so that
    `gap == score_with_rubric - score_without_rubric` exactly; each view's own full metrics are in `without_rubric` and
    `with_rubric`.

    Attributes:
        score_without_rubric: Clipped mean weighted score of the student's view (prompt only), paired examples.
        score_with_rubric: The same for the teacher's view (prompt + rubric), graded against the original prompt.
        gap: `score_with_rubric - score_without_rubric`.
        gap_ci: Paired bootstrap interval of `gap`.
        length_ratio: Mean response length with the rubric over mean length without.
        mean_length_without_rubric, mean_length_with_rubric: Mean lengths in tokens.
        n_examples: Prompts sampled.
        n_paired: Prompts scored in both views.
        verdict: Plain-language lines: whether RGSD has something to distill, and any length warning.
        recommend_rgsd: `False` when the gap is small or not clearly above 0.
        length_warning: `True` when the rubric makes answers much longer.
        without_rubric, with_rubric: Full [`EvalResult`] of each view.
        settings: Thresholds and templates that produced it.
        token_views: Per-token views of the first few student completions (see [`token_logratio_view`]).
        student_token_ids: The student's completion token ids, per prompt (for token views computed later).
    """

    score_without_rubric: float | None
    score_with_rubric: float | None
    gap: float | None
    gap_ci: tuple[float, float] | None
    length_ratio: float | None
    mean_length_without_rubric: float | None
    mean_length_with_rubric: float | None
    n_examples: int
    n_paired: int
    verdict: list[str]
    recommend_rgsd: bool
    length_warning: bool
    without_rubric: EvalResult
    with_rubric: EvalResult
    settings: dict[str, Any] = field(default_factory=dict)
    token_views: list[TokenView] = field(default_factory=list)
    student_token_ids: list[list[int]] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Gap numbers at the top level (what `results.json` holds), plus each view's metrics and the settings."""
        return {
            "score_without_rubric": self.score_without_rubric,
            "score_with_rubric": self.score_with_rubric,
            "gap": self.gap,
            "gap_ci": list(self.gap_ci) if self.gap_ci is not None else None,
            "length_ratio": self.length_ratio,
            "mean_length_without_rubric": self.mean_length_without_rubric,
            "mean_length_with_rubric": self.mean_length_with_rubric,
            "n_examples": self.n_examples,
            "n_paired": self.n_paired,
            "recommend_rgsd": self.recommend_rgsd,
            "length_warning": self.length_warning,
            "verdict": self.verdict,
            "without_rubric": self.without_rubric.metrics.to_dict(),
            "with_rubric": self.with_rubric.metrics.to_dict(),
            "settings": self.settings,
            "token_views": [v.to_dict() for v in self.token_views],
        }

    def table(self) -> list[dict[str, Any]]:
        """One row per prompt with both views side by side (`score_*`, `num_tokens_*`, `response_*`, `score_delta`)."""
        rows = []
        for a, b in zip(self.without_rubric.examples, self.with_rubric.examples, strict=True):
            delta = None if a["score"] is None or b["score"] is None else b["score"] - a["score"]
            rows.append(
                {
                    "index": a["index"],
                    "prompt": a["prompt"],
                    "score_without_rubric": a["score"],
                    "score_with_rubric": b["score"],
                    "score_delta": delta,
                    "num_tokens_without_rubric": a["num_tokens"],
                    "num_tokens_with_rubric": b["num_tokens"],
                    "response_without_rubric": a["response"],
                    "response_with_rubric": b["response"],
                }
            )
        return rows

    def to_pandas(self):
        """The paired table as a `pandas.DataFrame` (needs pandas)."""
        return _table_to_pandas(self.table())


def gap_verdict(
    gap: float | None,
    gap_ci: tuple[float, float] | None,
    length_ratio: float | None,
    min_gap: float = 0.05,
    max_length_ratio: float = 1.3,
) -> tuple[list[str], bool, bool]:
    """Plain-language reading of a conditioning gap.

    Args:
        gap: Score with the rubric minus score without (0-1 scale).
        gap_ci: Its interval; an interval reaching 0 means the gap may be noise.
        length_ratio: Mean length with the rubric over without.
        min_gap: Smallest gap worth distilling.
        max_length_ratio: Length ratio above which part of the gap may be mere length.

    Returns:
        `(lines, recommend_rgsd, length_warning)`.
    """
    lines = []
    if gap is None:
        lines.append("No gap could be measured: the judge scored no prompt in both views. Check the judge.")
        return lines, False, False
    pp = f"{100 * gap:+.1f}pp"
    ci = f" (CI {100 * gap_ci[0]:+.1f} to {100 * gap_ci[1]:+.1f}pp)" if gap_ci else ""
    uncertain = gap_ci is not None and gap_ci[0] <= 0
    if gap < min_gap:
        lines.append(
            f"Conditioning gap {pp}{ci} is below the {100 * min_gap:.0f}pp threshold: RGSD has little to distill "
            "here, because the model barely does better when it sees the rubric. Consider GRPO with a judge instead "
            "(`trl-rubric grpo`)."
        )
        recommend = False
    elif uncertain:
        lines.append(
            f"Conditioning gap {pp}{ci} is not clearly above 0: on this sample RGSD may have little to distill here. "
            "Sample more prompts (--n_samples) to tell, or consider GRPO with a judge instead (`trl-rubric grpo`)."
        )
        recommend = False
    else:
        lines.append(
            f"Conditioning gap {pp}{ci}: the model does better when it sees the rubric, so RGSD has a signal to "
            "distill (the RGSD paper, arXiv 2606.12507, reports 30-45pp on its models)."
        )
        recommend = True
    warn = length_ratio is not None and length_ratio > max_length_ratio
    if warn:
        lines.append(
            f"Warning: with the rubric, answers are {length_ratio:.2f}x as long (threshold {max_length_ratio:.2f}x); "
            "part of the gap may be mere length. Read a few pairs in responses.jsonl, or rerun with a smaller "
            "--max_new_tokens to compare at matched lengths."
        )
    return lines, recommend, warn


def conditioning_gap(
    model,
    dataset: Any,
    judge: RubricJudge,
    tokenizer=None,
    teacher_prompt_template: str = DEFAULT_TEACHER_PROMPT_TEMPLATE,
    rubric_render_style: str = "numbered",
    n_samples: int | None = 64,
    max_new_tokens: int = 512,
    batch_size: int = 8,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    judge_max_concurrency: int | None = None,
    n_bootstrap: int = 1000,
    confidence_level: float = 0.95,
    min_gap: float = 0.05,
    max_length_ratio: float = 1.3,
    progress: bool = True,
    generate_fn: GenerateFn | None = None,
    n_token_views: int = 0,
) -> GapResult:
    """Measure the conditioning gap: how much better the model scores when the rubric is in its context.

    The same model answers each sampled prompt twice: as the RGSD student sees it (prompt only) and as the RGSD
    teacher sees it ([`build_teacher_prompt`] with the same template and render style as `RGSDConfig`). Both answers
    are graded by the same judge against the original prompt. Run it before training: a small gap means RGSD has
    little to distill.

    Args:
        model: A causal LM or a path (see [`evaluate`]); may be `None` when `generate_fn` is given.
        dataset: Rubric rows (see [`evaluate`]); use the training set.
        judge: Any [`RubricJudge`].
        tokenizer: The model's tokenizer.
        teacher_prompt_template: Teacher context with `{prompt}` and `{rubric}` placeholders.
        rubric_render_style: How the rubric is written into it (`"numbered"`, `"weighted"`, `"json"`).
        n_samples: Prompts to sample (seeded); `None` for all.
        max_new_tokens, batch_size, temperature, top_p, seed: Generation settings; both views share the seed.
        judge_max_concurrency: Bound on concurrent judge calls.
        n_bootstrap: Paired bootstrap resamples for `gap_ci`.
        confidence_level: Interval coverage.
        min_gap: Smallest gap (0-1 scale) for which RGSD is recommended.
        max_length_ratio: Length ratio above which the result warns that the gap may be mere length.
        progress: Show progress bars.
        generate_fn: Replace transformers generation (see [`evaluate`]); called once per view.
        n_token_views: Compute [`token_logratio_view`] on the first this many student completions (needs `model`).

    Returns:
        [`GapResult`].
    """
    dataset = select_examples(dataset, n_samples, seed)
    prompts, rubrics = list(dataset["prompt"]), list(dataset["rubric"])
    teacher_prompts = [
        build_teacher_prompt(p, r, template=teacher_prompt_template, render_style=rubric_render_style)
        for p, r in zip(prompts, rubrics, strict=True)
    ]
    if generate_fn is None:
        model, tokenizer = _resolve_model(model, tokenizer)

        def generate_fn(ps, desc="generating"):
            return generate_responses(
                model, tokenizer, ps, max_new_tokens, batch_size, temperature, top_p, seed, progress, desc
            )

        student = generate_fn(prompts, "generating (without rubric)")
        teacher = generate_fn(teacher_prompts, "generating (with rubric)")
    else:
        student = generate_fn(prompts)
        teacher = generate_fn(teacher_prompts)
    student, teacher = _as_generations(student, tokenizer), _as_generations(teacher, tokenizer)
    settings = {
        "teacher_prompt_template": teacher_prompt_template,
        "rubric_render_style": rubric_render_style,
        "n_samples": n_samples,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "seed": seed,
        "min_gap": min_gap,
        "max_length_ratio": max_length_ratio,
        "judge": getattr(judge, "name", type(judge).__name__),
    }
    args = (judge_max_concurrency, progress, n_bootstrap, confidence_level, seed, settings)
    # The judge grades both answers against the original prompt: the rubric in the teacher's context is not part of
    # the question being answered.
    without = _grade_examples(judge, prompts, student, rubrics, *args)
    with_ = _grade_examples(judge, prompts, teacher, rubrics, *args)

    pairs = [
        (b["score"], a["score"])
        for a, b in zip(without.examples, with_.examples, strict=True)
        if a["score"] is not None and b["score"] is not None
    ]
    with_scores, without_scores = [p[0] for p in pairs], [p[1] for p in pairs]
    s_with = _clip01(_mean(with_scores)) if pairs else None
    s_without = _clip01(_mean(without_scores)) if pairs else None
    gap = s_with - s_without if pairs else None
    gap_ci = bootstrap_ci(with_scores, without_scores, n_bootstrap, confidence_level, seed) if pairs else None
    len_without, len_with = _mean(student.lengths), _mean(teacher.lengths)
    ratio = len_with / len_without if len_without else None
    lines, recommend, warn = gap_verdict(gap, gap_ci, ratio, min_gap, max_length_ratio)
    views = []
    if n_token_views > 0:
        if model is None or isinstance(model, (str, os.PathLike)):
            logger.warning("n_token_views=%d needs a loaded model; skipping the per-token view", n_token_views)
        else:
            k = min(n_token_views, len(prompts))
            views = token_logratio_view(
                model,
                tokenizer,
                prompts[:k],
                rubrics[:k],
                student.token_ids[:k],
                teacher_prompt_template=teacher_prompt_template,
                rubric_render_style=rubric_render_style,
            )
    return GapResult(
        score_without_rubric=s_without,
        score_with_rubric=s_with,
        gap=gap,
        gap_ci=gap_ci,
        length_ratio=ratio,
        mean_length_without_rubric=len_without,
        mean_length_with_rubric=len_with,
        n_examples=len(prompts),
        n_paired=len(pairs),
        verdict=lines,
        recommend_rgsd=recommend,
        length_warning=warn,
        without_rubric=without,
        with_rubric=with_,
        settings=settings,
        token_views=views,
        student_token_ids=student.token_ids,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Per-token view
# ---------------------------------------------------------------------------------------------------------------------


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
                teacher_prompt = build_teacher_prompt(prompt, rubric, teacher_prompt_template, rubric_render_style)
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


def write_token_view_html(views: Sequence[TokenView], path: str | os.PathLike, title: str = "Per-token view") -> str:
    """Write the token views as colour-shaded text: green where the rubric makes a token more likely, red less.

    All model and prompt text is HTML-escaped. Hovering a token shows its log-probabilities.

    Returns:
        The path written.
    """
    scale = _colour_scale(views)
    parts = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        ".c{white-space:pre-wrap;font-family:monospace;line-height:1.6;border:1px solid #ccc;padding:.6em}"
        ".p{white-space:pre-wrap;color:#444}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<p>Shade = log p<sub>teacher</sub>(token) &minus; log p<sub>student</sub>(token) on the student's own "
        "completion. <span style='background:rgba(0,160,0,.5)'>green</span>: the rubric makes the token more likely; "
        f"<span style='background:rgba(220,0,0,.5)'>red</span>: less likely. Full shade at |log-ratio| &ge; "
        f"{scale:.3g} nats. Hover a token for its numbers.</p>",
    ]
    for n, view in enumerate(views, start=1):
        lr = view.logratios
        mean = _mean(lr)
        summary = f"{len(lr)} tokens, mean log-ratio {mean:+.3f} nats" if mean is not None else "empty completion"
        parts.append(f"<h2>Sample {n}</h2><p>{html.escape(summary)}</p>")
        parts.append(f"<div class='p'><b>Prompt:</b> {html.escape(view.prompt)}</div><p><b>Completion:</b></p>")
        spans = []
        for piece, value, s, t in zip(view.tokens, lr, view.student_logprobs, view.teacher_logprobs, strict=True):
            alpha = min(1.0, abs(value) / scale) * 0.6
            rgb = "0,160,0" if value >= 0 else "220,0,0"
            tip = f"log-ratio {value:+.3f} | student {s:.3f} | teacher {t:.3f}"
            spans.append(
                f"<span style='background:rgba({rgb},{alpha:.3f})' title='{html.escape(tip)}'>{html.escape(piece)}</span>"
            )
        parts.append(f"<div class='c'>{''.join(spans)}</div>")
    parts.append("</body></html>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return str(path)


def _require_matplotlib():
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("charts need matplotlib: pip install 'trl-rubric[plot]'") from None
    return Figure


def _plain(text: str, limit: int) -> str:
    # Matplotlib reads "$...$" as math; newlines would break the grid; control characters have no glyph.
    text = "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape").decode() for c in text)
    text = text.replace("$", r"\$")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def plot_token_views(views: Sequence[TokenView], path: str | os.PathLike, tokens_per_row: int = 24) -> str:
    """Draw the token views as colour strips (one grid of tokens per sample), shaded by log-ratio.

    Written with matplotlib's object API, so it never changes the caller's pyplot backend.

    Returns:
        The path written.
    """
    import numpy as np

    Figure = _require_matplotlib()
    from matplotlib.colors import TwoSlopeNorm

    scale = _colour_scale(views)
    rows_per_view = [max(1, math.ceil(len(v.tokens) / tokens_per_row)) for v in views] or [1]
    fig = Figure(
        figsize=(tokens_per_row * 0.5, 0.9 + sum(r * 0.45 + 0.5 for r in rows_per_view)), layout="constrained"
    )
    axes = fig.subplots(len(rows_per_view), 1, squeeze=False, height_ratios=rows_per_view)[:, 0]
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-scale, vmax=scale)
    image = None
    for ax, view, n_rows in zip(axes, views, rows_per_view, strict=False):
        grid = np.full((n_rows, tokens_per_row), np.nan)
        lr = view.logratios
        grid.flat[: len(lr)] = lr
        image = ax.imshow(grid, cmap="RdYlGn", norm=norm, aspect="auto")
        for i, piece in enumerate(view.tokens):
            ax.text(i % tokens_per_row, i // tokens_per_row, _plain(piece, 7), ha="center", va="center", fontsize=6)
        ax.set_xticks([])
        ax.set_yticks([])
        mean = _mean(lr)
        ax.set_title(
            _plain(view.prompt, 90) + (f"   (mean {mean:+.3f} nats)" if mean is not None else "   (empty)"),
            fontsize=8,
            loc="left",
        )
    if not views:
        axes[0].set_axis_off()
        axes[0].set_title("no samples")
    if image is not None:
        fig.colorbar(image, ax=list(axes), label="log-ratio (nats)", fraction=0.03, pad=0.01)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return str(path)


# ---------------------------------------------------------------------------------------------------------------------
# Charts and reports
# ---------------------------------------------------------------------------------------------------------------------


def plot_score_by_category(metrics: EvalMetrics, path: str | os.PathLike) -> str:
    """Bar chart of the met rate per criterion category (penalty categories hatched: lower is better)."""
    Figure = _require_matplotlib()
    names = list(metrics.by_category) or ["(none)"]
    rates = [(metrics.by_category.get(n, {}).get("met_rate") or 0.0) for n in names]
    fig = Figure(figsize=(max(4.5, 0.8 * len(names) + 2), 3.6), layout="constrained")
    ax = fig.subplots()
    bars = ax.bar(range(len(names)), rates, color="#4c72b0")
    for bar, name in zip(bars, names, strict=True):
        info = metrics.by_category.get(name, {})
        if info.get("polarity") == "penalty":
            bar.set_color("#dd8452")
            bar.set_hatch("//")
        ax.annotate(f"n={info.get('n', 0)}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                    va="bottom", fontsize=7)  # fmt: skip
    if metrics.weighted_score is not None:
        ax.axhline(
            metrics.weighted_score, color="k", ls="--", lw=1, label=f"weighted score {metrics.weighted_score:.3f}"
        )
        ax.legend(fontsize=8, loc="upper right")
    ax.set_xticks(range(len(names)), [_plain(n, 18) for n in names], rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("fraction of criteria met")
    ax.set_title("Criteria met by category\n(hatched: penalty criteria, lower is better)", fontsize=9)
    fig.savefig(path, dpi=110)
    return str(path)


def plot_length_histogram(lengths: Mapping[str, Sequence[int]] | Sequence[int], path: str | os.PathLike) -> str:
    """Histogram of response lengths in tokens; pass `{label: lengths}` to overlay several runs or views."""
    Figure = _require_matplotlib()
    series = dict(lengths) if isinstance(lengths, Mapping) else {"responses": list(lengths)}
    fig = Figure(figsize=(5.5, 3.4), layout="constrained")
    ax = fig.subplots()
    everything = [x for xs in series.values() for x in xs]
    bins = min(30, max(1, len(set(everything)))) if everything else 1
    lo, hi = (min(everything), max(everything)) if everything else (0, 1)
    for label, xs in series.items():
        if xs:
            mean = sum(xs) / len(xs)
            ax.hist(xs, bins=bins, range=(lo, max(hi, lo + 1)), alpha=0.6, label=f"{label} (mean {mean:.1f})")
    ax.set_xlabel("response length (tokens)")
    ax.set_ylabel("responses")
    ax.set_title("Response length", fontsize=9)
    if everything:
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    return str(path)


def _fmt(value: Any, pct: bool = False) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{100 * value:.1f}%" if pct else f"{value:.4g}"
    return str(value)


def _group_table(title: str, groups: Mapping[str, Mapping[str, Any]], level: int = 2) -> list[str]:
    if not groups:
        return []
    lines = [f"{'#' * level} {title}", "", "| group | criteria judged | met rate | polarity |", "|---|---:|---:|---|"]
    for name, g in groups.items():
        name_md = name.replace("|", "\\|")
        lines.append(f"| {name_md} | {g['n']} | {_fmt(g['met_rate'], pct=True)} | {g['polarity']} |")
    return [*lines, ""]


def metrics_markdown(metrics: EvalMetrics, level: int = 2) -> list[str]:
    """The metrics as Markdown table lines (used in `report.md`); breakdown headings at Markdown heading `level`."""
    ci = metrics.weighted_score_ci
    ci_text = f"{_fmt(ci[0])} – {_fmt(ci[1])}" if ci else "n/a"
    lines = [
        "| metric | value |",
        "|---|---:|",
        f"| weighted score (clipped mean) | {_fmt(metrics.weighted_score)} |",
        f"| {round(100 * metrics.confidence_level)}% bootstrap CI | {ci_text} |",
        f"| unweighted score | {_fmt(metrics.unweighted_score)} |",
        f"| strict completion | {_fmt(metrics.strict_completion, pct=True)} (of {metrics.n_strict_known}) |",
        f"| mean length (tokens) | {_fmt(metrics.mean_length)} |",
        f"| median length (tokens) | {_fmt(metrics.median_length)} |",
        f"| judge failure rate | {_fmt(metrics.judge_failure_rate, pct=True)} |",
        f"| unknown verdict rate | {_fmt(metrics.unknown_verdict_rate, pct=True)} |",
        f"| examples (scored) | {metrics.n_examples} ({metrics.n_scored}) |",
        "",
    ]
    return [
        *lines,
        *_group_table("By category", metrics.by_category, level),
        *_group_table("By tag", metrics.by_tag, level),
    ]


def _write_jsonl(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _write_json(obj: Any, path: Path) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _charts_available() -> bool:
    try:
        _require_matplotlib()
    except ImportError:
        logger.warning("matplotlib is not installed; skipping charts (pip install 'trl-rubric[plot]')")
        return False
    return True


def write_eval_outputs(result: EvalResult, output_dir: str | os.PathLike, plots: bool = True) -> dict[str, str]:
    """Write `results.json`, `report.md`, `responses.jsonl` and, with matplotlib, `score_by_category.png` and
    `length_histogram.png` into `output_dir`.

    Returns:
        `{name: path}` of the files written.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"results": out / "results.json", "report": out / "report.md", "responses": out / "responses.jsonl"}
    _write_json(result.to_dict(), files["results"])
    _write_jsonl(result.table(), files["responses"])
    charts = []
    if plots and _charts_available():
        files["score_by_category"] = Path(plot_score_by_category(result.metrics, out / "score_by_category.png"))
        files["length_histogram"] = Path(plot_length_histogram(
            [r["num_tokens"] for r in result.examples], out / "length_histogram.png"))  # fmt: skip
        charts = ["score_by_category.png", "length_histogram.png"]
    lines = ["# Rubric evaluation", "", *metrics_markdown(result.metrics)]
    lines += [f"![{name}]({name})" for name in charts]
    lines += ["", "## Settings", "", "```json", json.dumps(result.config, indent=2, default=str), "```", ""]
    files["report"].write_text("\n".join(lines), encoding="utf-8")
    return {k: str(v) for k, v in files.items()}


def write_gap_outputs(
    result: GapResult,
    output_dir: str | os.PathLike,
    token_views: Sequence[TokenView] | None = None,
    plots: bool = True,
) -> dict[str, str]:
    """Write the gap preflight's files into `output_dir`: `results.json`, `report.md`, `responses.jsonl` (both views
    side by side) and, with matplotlib, `length_histogram.png`; with token views (`token_views`, else the result's
    own) also `token_view.html` and `token_view.png`.

    Returns:
        `{name: path}` of the files written.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"results": out / "results.json", "report": out / "report.md", "responses": out / "responses.jsonl"}
    token_views = list(result.token_views if token_views is None else token_views)
    payload = result.to_dict()
    payload["token_views"] = [v.to_dict() for v in token_views]
    _write_json(payload, files["results"])
    rows = []
    for a, b in zip(result.without_rubric.examples, result.with_rubric.examples, strict=True):
        rows.append({"index": a["index"], "prompt": a["prompt"], "without_rubric": a, "with_rubric": b})
    _write_jsonl(rows, files["responses"])
    charts = []
    if token_views:
        files["token_view_html"] = Path(write_token_view_html(token_views, out / "token_view.html",
                                                              "Where the rubric changes the model"))  # fmt: skip
    if plots and _charts_available():
        files["length_histogram"] = Path(plot_length_histogram(
            {
                "without rubric": [r["num_tokens"] for r in result.without_rubric.examples],
                "with rubric": [r["num_tokens"] for r in result.with_rubric.examples],
            },
            out / "length_histogram.png",
        ))  # fmt: skip
        charts.append("length_histogram.png")
        if token_views:
            files["token_view_png"] = Path(plot_token_views(token_views, out / "token_view.png"))
            charts.append("token_view.png")
    ci = result.gap_ci
    lines = [
        "# Conditioning-gap preflight",
        "",
        *[f"**{line}**" if i == 0 else line for i, line in enumerate(result.verdict)],
        "",
        "| | value |",
        "|---|---:|",
        f"| score without rubric (student's view) | {_fmt(result.score_without_rubric)} |",
        f"| score with rubric (teacher's view) | {_fmt(result.score_with_rubric)} |",
        f"| gap | {_fmt(result.gap)} |",
        f"| gap CI (paired bootstrap) | {f'{_fmt(ci[0])} – {_fmt(ci[1])}' if ci else 'n/a'} |",
        f"| length ratio (with / without) | {_fmt(result.length_ratio)} |",
        f"| prompts (scored in both views) | {result.n_examples} ({result.n_paired}) |",
        "",
        "## Without the rubric",
        "",
        *metrics_markdown(result.without_rubric.metrics, level=3),
        "## With the rubric",
        "",
        *metrics_markdown(result.with_rubric.metrics, level=3),
    ]
    if token_views:
        lines += ["Per-token view: [token_view.html](token_view.html)", ""]
    lines += [f"![{name}]({name})" for name in charts]
    lines += ["", "## Settings", "", "```json", json.dumps(result.settings, indent=2, default=str), "```", ""]
    files["report"].write_text("\n".join(lines), encoding="utf-8")
    return {k: str(v) for k, v in files.items()}


# ---------------------------------------------------------------------------------------------------------------------
# Model loading
# ---------------------------------------------------------------------------------------------------------------------


def check_model_path(model_name_or_path: str | None) -> str:
    """Fail fast on a model path that cannot exist, before anything slow runs; returns the expanded path.

    Anything that is not an existing folder and cannot be a Hub id (`name` or `org/name`) is a missing local path.

    Raises:
        EvaluationError: naming the path.
    """
    if not model_name_or_path:
        raise EvaluationError("no model given; pass --model_name_or_path <folder or Hub id>")
    path = os.path.expanduser(model_name_or_path)
    if not os.path.isdir(path) and (path.startswith((".", "/", "~")) or path.count("/") > 1 or os.path.exists(path)):
        raise EvaluationError(f"model path {model_name_or_path!r} does not exist (or is not a folder)")
    return path


def load_model_and_tokenizer(
    model_name_or_path: str,
    base_model_name_or_path: str | None = None,
    dtype: str = "auto",
    device: str | None = None,
    trust_remote_code: bool = False,
    merge_adapter: bool = True,
):
    """Load a causal LM and its tokenizer for evaluation; a folder with `adapter_config.json` is loaded as a PEFT
    adapter on its base model.

    Args:
        model_name_or_path: A local folder or a Hub id; for an adapter, the adapter folder.
        base_model_name_or_path: Base model for an adapter; defaults to the adapter config's `base_model_name_or_path`.
        dtype: `"auto"`, `"float32"`, `"bfloat16"` or `"float16"`.
        device: `"cpu"`, `"cuda"`, `"cuda:1"`, ...; defaults to CUDA when available.
        trust_remote_code: Passed to transformers.
        merge_adapter: Merge a LoRA adapter into the base weights, which makes generation faster.

    Returns:
        `(model, tokenizer)`, the model in eval mode.

    Raises:
        EvaluationError: when the path does not exist or the model cannot be loaded; the message says which.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = check_model_path(model_name_or_path)
    if dtype != "auto" and not isinstance(getattr(torch, dtype, None), torch.dtype):
        raise EvaluationError(f"dtype {dtype!r} is not a torch dtype; expected auto, float32, bfloat16 or float16")
    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    adapter_config = os.path.join(path, "adapter_config.json")
    is_adapter = os.path.isfile(adapter_config)
    base = path
    if is_adapter:
        with open(adapter_config, encoding="utf-8") as f:
            base = base_model_name_or_path or json.load(f).get("base_model_name_or_path")
        if not base:
            raise EvaluationError(f"{adapter_config} names no base_model_name_or_path; pass --base_model_name_or_path")
    try:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch_dtype, trust_remote_code=trust_remote_code)
        tokenizer_source = path if os.path.isfile(os.path.join(path, "tokenizer_config.json")) else base
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_source, trust_remote_code=trust_remote_code)
        if is_adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, path)
            if merge_adapter:
                try:
                    model = model.merge_and_unload()
                except (AttributeError, NotImplementedError, ValueError) as e:
                    logger.warning("could not merge the adapter (%s); generating through PEFT instead", e)
    except OSError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EvaluationError(f"cannot load model {model_name_or_path!r}: {first}") from None
    model.to(device)
    model.eval()
    return model, tokenizer
