"""Offline test kit: a tiny chat model and rubric data built in memory, no network.

Users' own tests can use it too::

    from trl_rubric.testing import make_tiny_model, make_rubric_rows
    path = make_tiny_model(tmp_path / "tiny")

The fake OpenAI-compatible judge server lives next to it, in `trl_rubric.testing.judge_server`.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_WORDS = (
    "the a patient doctor should must include mention explain risk dose fever pain heart lung cell gene protein "
    "study result data model answer question because therefore however first second finally summary evidence "
    "treatment symptom diagnosis safety warning reference science medicine clear short long correct wrong "
    "criteria rubric hidden evaluation respond independently think step check avoid never always"
).split()


#: Environment that keeps Hugging Face libraries off the network and quiet (tests, benchmarks, the demo).
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TRL_EXPERIMENTAL_SILENCE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    # transformers >= 5.2x with the `kernels` package fetches Hub kernels (rotary, ...) for CUDA models: offline that
    # is an error ("not available in the local cache"), so the plain PyTorch layers are used
    "USE_HUB_KERNELS": "NO",
}


def set_offline_env() -> None:
    """Apply [`OFFLINE_ENV`] to this process, keeping any value already set (safe to call many times)."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


def make_tokenizer(vocab_size: int = 512, corpus: list[str] | None = None, seed: int = 0):
    """Train a ByteLevel BPE tokenizer in memory and wrap it as a ChatML `PreTrainedTokenizerFast`.

    Args:
        vocab_size: Target vocabulary size (at least the 256 byte symbols plus the special tokens).
        corpus: Training text; a small built-in English-like corpus if omitted.
        seed: Seed for the built-in corpus.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if corpus is None:
        rng = random.Random(seed)
        corpus = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(5, 30))) for _ in range(2000)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
        padding_side="left",
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def make_tiny_model(
    path: str | os.PathLike,
    vocab_size: int = 512,
    hidden_size: int = 32,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    intermediate_size: int = 64,
    max_position_embeddings: int = 1024,
    tie_word_embeddings: bool = True,
    seed: int = 0,
    tokenizer=None,
) -> str:
    """Write a random tiny Qwen2 causal LM and its ChatML tokenizer to `path`, and return the path.

    The result reloads with `AutoModelForCausalLM` / `AutoTokenizer` and trains with TRL on CPU. With the defaults
    it has about 37k parameters. Deterministic given `seed`.
    """
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = tokenizer if tokenizer is not None else make_tokenizer(vocab_size=vocab_size, seed=seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=True
    )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def make_rubric_rows(n: int = 8, seed: int = 0, conversational: bool = False) -> list[dict]:
    """Small rubric rows in the normalised format, for tests and examples.

    Each row has a `prompt` and a `rubric` of 2-4 criteria asking the answer to mention a word; one row in three also
    has a penalty criterion with a negative weight.
    """
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        topic = rng.choice(_WORDS)
        words = rng.sample(_WORDS, rng.randint(2, 4))
        rubric = [
            {
                "text": f"mentions {w}",
                "weight": float(rng.randint(1, 5)),
                "category": "essential",
                "title": None,
                "tags": [],
            }
            for w in words
        ]
        if i % 3 == 0:
            rubric.append({"text": "mentions wrong", "weight": -2.0, "category": "pitfall", "title": None, "tags": []})
        prompt = f"question {i}: explain {topic} briefly"
        rows.append({"prompt": [{"role": "user", "content": prompt}] if conversational else prompt, "rubric": rubric})
    return rows


def rgsd_test_config(output_dir: str | Path, **overrides):
    """An `RGSDConfig` for a short CPU run on the tiny model: 2 steps of batch 4, 8-token completions, no saving.

    Any field can be changed through `overrides`.
    """
    from ..trainers.rgsd import RGSDConfig

    kwargs = dict(
        output_dir=str(output_dir),
        use_cpu=True,
        bf16=False,
        per_device_train_batch_size=4,
        max_completion_length=8,
        max_steps=2,
        learning_rate=1e-2,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        seed=0,
    )
    kwargs.update(overrides)
    return RGSDConfig(**kwargs)


def rubric_grpo_test_config(output_dir: str | Path, **overrides):
    """A `RubricGRPOConfig` for a short CPU run on the tiny model: 2 steps of 4 completions (2 prompts x G=2),
    8-token completions, the rule judge without its start-up probe, no saving.

    Any field can be changed through `overrides`.
    """
    from ..trainers.rubric_grpo import RubricGRPOConfig

    kwargs = dict(
        output_dir=str(output_dir),
        use_cpu=True,
        bf16=False,
        report_to="none",
        max_completion_length=8,
        per_device_train_batch_size=4,
        num_generations=2,
        max_steps=2,
        logging_steps=1,
        save_strategy="no",
        learning_rate=1e-2,
        judge_backend="rule",
        judge_probe=False,
        seed=0,
    )
    kwargs.update(overrides)
    return RubricGRPOConfig(**kwargs)
