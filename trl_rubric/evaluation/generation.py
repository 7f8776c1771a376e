"""Generation for evaluation: one sampled completion per prompt, with transformers or vLLM."""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import EvaluationError


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


#: `model.generate` arguments that [`generate_responses`] sets from its own parameters (or must own: the inputs, the
#: padding and end-of-sequence ids, sampling on or off).
RESERVED_GENERATION_KWARGS = frozenset(
    {"input_ids", "attention_mask", "max_new_tokens", "max_length", "pad_token_id", "eos_token_id", "do_sample",
     "temperature", "top_p", "num_return_sequences", "generation_config", "streamer", "logits_processor"}
)  # fmt: skip


def check_generation_kwargs(generation_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """The extra `model.generate` arguments as a dict, or an [`EvaluationError`] naming one that is set elsewhere."""
    extra = dict(generation_kwargs or {})
    for key in extra:
        if not isinstance(key, str) or not key:
            raise EvaluationError(f"generation_kwargs has the key {key!r}; expected argument names of model.generate")
        if key in RESERVED_GENERATION_KWARGS:
            raise EvaluationError(
                f"generation_kwargs sets {key!r}, which evaluation sets itself; use its own option (max_new_tokens, "
                "temperature, top_p, n_samples_per_prompt) instead"
            )
    return extra


def guard_options(spec: int | Mapping[str, Any]) -> dict[str, Any]:
    """Every option of the [`DegenerationGuard`] that `spec` (an n-gram size, or a mapping of some of its keyword
    arguments) builds, defaults filled in: what `results.json` records. Unknown keys are refused."""
    from .guard import DegenerationGuard

    params = inspect.signature(DegenerationGuard).parameters
    defaults = {name: p.default for name, p in params.items() if name not in ("tokenizer", "eos_token_ids")}
    if isinstance(spec, Mapping):
        unknown = sorted(set(spec) - set(defaults))
        if unknown:
            raise EvaluationError(
                f"degeneration_guard: unknown option(s) {unknown}; expected some of {sorted(defaults)}"
            )
        return {**defaults, **spec}
    if isinstance(spec, int) and not isinstance(spec, bool):
        return {**defaults, "no_repeat_ngram_size": spec}
    raise EvaluationError(f"degeneration_guard is {spec!r}; expected an n-gram size or a mapping of guard options")


def build_guard(tokenizer, spec: int | Mapping[str, Any], eos_token_ids: list[int] | None = None):
    """A [`DegenerationGuard`] from an n-gram size or a mapping of its keyword arguments (unknown keys refused)."""
    from .guard import DegenerationGuard

    return DegenerationGuard(tokenizer, eos_token_ids=eos_token_ids, **guard_options(spec))


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
    generation_kwargs: Mapping[str, Any] | None = None,
    degeneration_guard: int | Mapping[str, Any] | None = None,
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
        generation_kwargs: Further `model.generate` arguments, e.g. `{"no_repeat_ngram_size": 4}` or
            `{"repetition_penalty": 1.2}` (decoding-time constraints against repeated lines, to be applied to every
            model being compared). The settings above are set by their own arguments and cannot be given here.
        degeneration_guard: Decode with a [`DegenerationGuard`] of this n-gram size (`0`: no n-gram ban; `None`: no
            guard): no repeated word n-gram within the answer, no bare or doubled list markers, no line ending on a
            repeat of an earlier one. A mapping gives the guard's keyword arguments instead (`{"no_repeat_ngram_size":
            3, "ban_repeated_lines": False}`).

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
    extra = check_generation_kwargs(generation_kwargs)
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
    gen_kwargs.update(extra)
    guard = None
    if degeneration_guard is not None:
        from transformers import LogitsProcessorList

        guard = build_guard(tokenizer, degeneration_guard, eos_token_ids=sorted(eos))
        gen_kwargs["logits_processor"] = LogitsProcessorList([guard])

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
                if guard is not None:
                    guard.reset()
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
        sampling_kwargs: Further `vllm.SamplingParams` fields, e.g. `{"repetition_penalty": 1.2}`; one vLLM does not
            know is an [`EvaluationError`] naming it, raised before the model loads.
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
        sampling_kwargs: Mapping[str, Any] | None = None,
    ):
        try:
            import vllm
        except ImportError:
            raise EvaluationError(
                "use_vllm=True needs vLLM, which is not installed; run `pip install 'trl-rubric[vllm]'` "
                "or drop --use_vllm to generate with transformers"
            ) from None
        extra = check_generation_kwargs(sampling_kwargs)
        try:
            self.sampling = vllm.SamplingParams(
                max_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p if temperature > 0 else 1.0,
                seed=seed,
                **extra,
            )
        except TypeError as e:
            raise EvaluationError(
                f"vLLM's SamplingParams does not take {sorted(extra)}: {e}; drop --use_vllm to decode with "
                "transformers' model.generate"
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


def _as_generations(out: Generations | list[str], tokenizer) -> Generations:
    if isinstance(out, Generations):
        return out
    texts = [str(t) for t in out]
    if tokenizer is not None:
        ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    else:
        ids = [list(range(len(t.split()))) for t in texts]  # a word count stands in for tokens
    return Generations(texts=texts, token_ids=ids)
