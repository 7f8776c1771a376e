"""`TransformersJudge`: a local Hugging Face causal LM as judge, with batched greedy generation."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from typing import Any

from .llm import ChatReply, ChatRubricJudge


@contextlib.contextmanager
def _without_zero3_init():
    """Load a model whole even inside a ZeRO-3 run: transformers partitions every model it loads while the trainer's
    DeepSpeed config is registered, and a partitioned judge could only generate in lockstep with every process."""
    from transformers.integrations import deepspeed as hf_deepspeed

    ref = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = ref


class _Batcher:
    """Requests waiting on one event loop, and the task that feeds them to the model in batches."""

    def __init__(self):
        self.pending: list[tuple[list[dict[str, str]], asyncio.Future]] = []
        self.worker: asyncio.Task | None = None


class TransformersJudge(ChatRubricJudge):
    """Grades with a local causal LM, using the same prompts and parser as [`OpenAIJudge`].

    Requests that arrive together (as they do from `grade_many` or a GRPO reward call) are generated together in
    left-padded batches of up to `batch_size`, greedily. Generation runs in a worker thread (`asyncio.to_thread`), so the
    event loop keeps serving other coroutines. `usage` reports the real prompt and generated token counts.

    Args:
        model_or_path: A loaded `PreTrainedModel`, or a path / Hub id to load with `AutoModelForCausalLM`.
        tokenizer: Its tokenizer; loaded from `model_or_path` when omitted. Needs a chat template, or prompts are
            joined as plain text.
        mode: `"batched"`, `"per_criterion"` or `"implicit"`; see [`ChatRubricJudge`].
        max_new_tokens: Cap on the judge's answer length.
        batch_size: Most requests generated at once.
        max_retries: Extra attempts when an answer cannot be parsed or leaves criteria out (greedy decoding repeats
            itself, so 0 or 1 is usually enough).
        cache_dir: Folder for the on-disk grade cache; `None` disables it.
        generation_kwargs: Extra arguments for `model.generate` (e.g. `{"do_sample": True, "temperature": 0.7}`).
        model_init_kwargs: Extra arguments for `from_pretrained` when `model_or_path` is a string.
        cannot_assess: How a "cannot assess" verdict scores (default `"penalties_worst_case"`: a penalty counts as
            met, a positive criterion is left out); see [`ChatRubricJudge`].
        seed: Seed of the per-request delimiter codes; `None` (default) draws them at random. For tests.
    """

    name = "transformers"
    _transient = (*ChatRubricJudge._transient, "_batchers", "_generate_lock")

    def __init__(
        self,
        model_or_path: Any,
        tokenizer: Any = None,
        mode: str = "batched",
        max_new_tokens: int = 512,
        batch_size: int = 8,
        max_retries: int = 1,
        cache_dir: str | None = None,
        generation_kwargs: dict[str, Any] | None = None,
        model_init_kwargs: dict[str, Any] | None = None,
        cannot_assess: str = "penalties_worst_case",
        seed: int | None = None,
    ):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if int(batch_size) < 1:
            raise ValueError(f"batch_size is {batch_size!r}; expected an integer >= 1")
        if isinstance(model_or_path, str):
            with _without_zero3_init():
                model = AutoModelForCausalLM.from_pretrained(model_or_path, **(model_init_kwargs or {}))
            model_name = model_or_path
        else:
            model = model_or_path
            model_name = getattr(model.config, "_name_or_path", None) or type(model).__name__
            if any(hasattr(p, "ds_id") for p in model.parameters()):
                raise ValueError(
                    f"TransformersJudge: the judge model {model_name!r} is partitioned by DeepSpeed ZeRO-3 (it was "
                    "loaded while a ZeRO-3 config was active). Each process grades its own completions, so the judge "
                    "must be whole on every process: pass its path instead, and the judge loads it unpartitioned."
                )
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(model_name)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        super().__init__(
            model_name=model_name,
            mode=mode,
            max_retries=max_retries,
            cache_dir=cache_dir,
            # Enough concurrent grades in flight that batches can fill up.
            max_concurrency=max(int(batch_size) * 2, 8),
            cannot_assess=cannot_assess,
            seed=seed,
        )
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_new_tokens = int(max_new_tokens)
        self.batch_size = int(batch_size)
        self.generation_kwargs = dict(generation_kwargs or {})
        #: How many `generate` calls ran, and how many requests they served (for checking that batching happens).
        self.generate_calls = 0
        self.generated_requests = 0
        self._batchers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._generate_lock = threading.Lock()

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._batchers = weakref.WeakKeyDictionary()
        self._generate_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"TransformersJudge(model={self.model_name!r}, mode={self.mode!r}, batch_size={self.batch_size})"

    def _render(self, messages: list[dict[str, str]]) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "\n\n".join(m["content"] for m in messages) + "\n\n"

    def _generate(self, batch: list[list[dict[str, str]]]) -> list[ChatReply]:
        """Generate answers for a batch of chat prompts (runs in a worker thread)."""
        import torch

        texts = [self._render(messages) for messages in batch]
        enc = self.tokenizer(
            texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False
        ).to(self.model.device)
        kwargs = {"do_sample": False, **self.generation_kwargs}
        with self._generate_lock, torch.inference_mode():
            out = self.model.generate(
                **enc, max_new_tokens=self.max_new_tokens, pad_token_id=self.tokenizer.pad_token_id, **kwargs
            )
            self.generate_calls += 1
            self.generated_requests += len(batch)
        new = out[:, enc["input_ids"].shape[1] :]
        stops = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}
        replies = []
        for row, prompt_mask in zip(new.tolist(), enc["attention_mask"], strict=True):
            kept = []
            for token in row:
                if token in stops:
                    kept.append(token)  # the stop token was generated, so it counts as output
                    break
                kept.append(token)
            text = self.tokenizer.decode(kept, skip_special_tokens=True)
            replies.append(ChatReply(text, prompt_tokens=int(prompt_mask.sum()), completion_tokens=len(kept)))
        return replies

    async def _drain(self, batcher: _Batcher) -> None:
        while batcher.pending:
            # Yield once so that requests started in the same tick (a gather) join this batch.
            await asyncio.sleep(0)
            batch, batcher.pending = batcher.pending[: self.batch_size], batcher.pending[self.batch_size :]
            try:
                replies = await asyncio.to_thread(self._generate, [messages for messages, _ in batch])
            except Exception as e:  # surfaced per request; `_ask` turns it into unknown verdicts
                for _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            for (_, future), reply in zip(batch, replies, strict=True):
                if not future.done():
                    future.set_result(reply)

    async def _chat(self, messages: list[dict[str, str]]) -> ChatReply:
        loop = asyncio.get_running_loop()
        batcher = self._batchers.get(loop)
        if batcher is None:
            batcher = self._batchers[loop] = _Batcher()
        future = loop.create_future()
        batcher.pending.append((messages, future))
        if batcher.worker is None or batcher.worker.done():
            batcher.worker = loop.create_task(self._drain(batcher))
        return await future
