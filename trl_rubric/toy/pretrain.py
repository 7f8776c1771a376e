"""A tiny causal LM pretrained from scratch on the toy world, with a real conditioning gap, plus a gap meter.

Rubric-Guided Self-Distillation (arXiv 2606.12507) can only teach a student what its teacher, the same model shown
the rubric, already does better. A random tiny model has no such gap, so [`prepare_toy_model`] makes one: it trains a
small `Qwen2ForCausalLM` on a mixture of

- the teacher's view (prompt + rubric through `build_teacher_prompt`, default template, `numbered` style) followed by
  an answer that satisfies the rubric ([`reference_response`]), and
- the prompt alone followed by a rubric-blind answer ([`ignoring_response`]),
- early in training, a warm-up drill: the rubric alone, answered with just what it asks for ([`minimal_response`]),
  which is what lets a 2-layer model discover that it should copy the required word out of the rubric,

with the loss on answer tokens only. The prompt-only model learns a broad distribution that rarely meets the rubric;
the rubric-conditioned one learns a sharp distribution that does. Rubrics are drawn fresh for every example, so the
model learns to *read* rubrics, not any one world's answers, and treats train and held-out topics alike.

Checkpoints are cached (see [`toy_cache_dir`]) under a hash of the settings, so the second call is instant.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..rubric import Rubric
from ..teacher import DEFAULT_TEACHER_PROMPT_TEMPLATE, build_teacher_prompt, render_for_teacher
from .tokenizer import build_toy_tokenizer
from .world import (
    PHRASINGS,
    TOPICS,
    WORLD_VERSION,
    ToyWorld,
    ignoring_response,
    make_world,
    minimal_response,
    prompt_messages,
    reference_response,
    sample_rubric,
)

#: Bump when the training recipe changes in a way the settings do not capture; it is part of the cache key.
PRETRAIN_VERSION = 1
#: The teacher view the model is pretrained on. A trainer must build its teacher prompt the same way.
TEACHER_PROMPT_TEMPLATE = DEFAULT_TEACHER_PROMPT_TEMPLATE
TEACHER_RENDER_STYLE = "numbered"
#: Whether that view lists the rubric's penalty criteria (see `RGSDConfig.teacher_penalties`).
TEACHER_PENALTIES = "show"
#: Written last into a prepared checkpoint; its presence marks the checkpoint complete.
METADATA_FILE = "toy_model.json"


@dataclass(frozen=True)
class ToyModelSettings:
    """Architecture and training recipe of the toy model. Every field is part of the cache key.

    Args:
        hidden_size: Width of the Qwen2 model.
        num_hidden_layers: Depth. Two layers are the least that can copy a word from the rubric by its cue (one to
            mark the word after "required", one to fetch it).
        num_attention_heads: Attention heads (as many key/value heads).
        intermediate_size: MLP width.
        steps: Optimiser steps.
        batch_size: Sequences per step.
        learning_rate: Peak AdamW learning rate, reached after `warmup_steps`, then cosine decay to a tenth.
        warmup_steps: Linear warm-up length.
        teacher_fraction: Share of steps whose batch is teacher-view examples; the rest are prompt-only. The
            teacher view is the harder skill (reading the rubric), so it gets the larger share.
        short_view_fraction: Share, at the first step, of rubric-conditioned batches that are a warm-up drill
            instead of the full teacher view: the rubric alone, answered with just its required words (and the
            closing word). It decays linearly to 0 at the last step. A 2-layer model finds "copy the required word"
            in a few hundred steps of this drill, but not in thousands of steps of full views with noisy answers;
            once found, the skill carries over to the full template.
    """

    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    intermediate_size: int = 128
    steps: int = 1500
    batch_size: int = 32
    learning_rate: float = 5e-3
    warmup_steps: int = 30
    teacher_fraction: float = 0.6
    short_view_fraction: float = 1.0

    @classmethod
    def quick(cls) -> ToyModelSettings:
        """The test recipe: the same model, a quarter of the steps. Its gap comes mostly from the general criteria
        (closing word, length); copying the required word has barely started."""
        return cls(steps=400)


def toy_cache_dir() -> Path:
    """Where prepared toy checkpoints live: `$TRL_RUBRIC_CACHE`, else `$XDG_CACHE_HOME/trl-rubric`, else
    `~/.cache/trl-rubric`."""
    if os.environ.get("TRL_RUBRIC_CACHE"):
        return Path(os.environ["TRL_RUBRIC_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "trl-rubric"


def _cache_key(settings: ToyModelSettings, seed: int) -> dict[str, Any]:
    return {
        "settings": asdict(settings),
        "seed": seed,
        "world_version": WORLD_VERSION,
        "pretrain_version": PRETRAIN_VERSION,
        "teacher_prompt_template": TEACHER_PROMPT_TEMPLATE,
        "teacher_render_style": TEACHER_RENDER_STYLE,
        # Only when it departs from "show" (the view before the switch existed), so existing caches stay valid.
        **({"teacher_penalties": TEACHER_PENALTIES} if TEACHER_PENALTIES != "show" else {}),
    }


def _key_hash(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def _example(rng: random.Random, view: str) -> tuple[list[dict[str, str]], str]:
    topic = rng.choice(TOPICS)
    messages = prompt_messages(topic, rng.randrange(len(PHRASINGS)))
    if view == "blind":
        return messages, ignoring_response(rng, topic)
    rubric = sample_rubric(rng, topic)
    if view == "short":
        # The warm-up drill: the rubric alone, answered with nothing but what it asks for.
        text = render_for_teacher(rubric, TEACHER_RENDER_STYLE, TEACHER_PENALTIES)
        return [{"role": "user", "content": text}], minimal_response(rubric)
    teacher_view = build_teacher_prompt(
        messages, rubric, TEACHER_PROMPT_TEMPLATE, TEACHER_RENDER_STYLE, TEACHER_PENALTIES
    )
    return teacher_view, reference_response(rng, topic, rubric)


def encode_example(tokenizer, messages: list[dict[str, str]], response: str) -> tuple[list[int], int]:
    """Token ids of a chat prompt plus its answer, exactly as TRL lays them out, and where the answer starts.

    The prompt is rendered with `apply_chat_template(..., add_generation_prompt=True)` (what `GRPOTrainer` feeds
    the model); the answer, with a leading space, and a closing `<|im_end|>` follow (what it samples, and where it
    stops). The leading space puts every answer word in the same token form as the rubric words it may copy.

    Returns:
        `(input_ids, prompt_length)`.
    """
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
    response_ids = tokenizer(" " + response + tokenizer.eos_token, add_special_tokens=False).input_ids
    return prompt_ids + response_ids, len(prompt_ids)


def _batches(tokenizer, settings: ToyModelSettings, seed: int) -> Iterator[dict[str, torch.Tensor]]:
    # One kind per batch: teacher views are ~5x longer than bare prompts, so mixing them would mostly pad.
    rng = random.Random(f"trl-rubric-toy-pretrain-{seed}")
    for step in range(settings.steps):
        if rng.random() >= settings.teacher_fraction:
            view = "blind"
        else:
            short_share = settings.short_view_fraction * (1 - step / settings.steps)
            view = "short" if rng.random() < short_share else "teacher"
        rows = [encode_example(tokenizer, *_example(rng, view)) for _ in range(settings.batch_size)]
        width = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((len(rows), width), tokenizer.pad_token_id)
        labels = torch.full((len(rows), width), -100)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (ids, start) in enumerate(rows):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            labels[i, start : len(ids)] = torch.tensor(ids[start:])  # loss on the answer and its <|im_end|> only
            mask[i, : len(ids)] = 1
        yield {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def _build_model(tokenizer, settings: ToyModelSettings):
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=settings.hidden_size,
        intermediate_size=settings.intermediate_size,
        num_hidden_layers=settings.num_hidden_layers,
        num_attention_heads=settings.num_attention_heads,
        num_key_value_heads=settings.num_attention_heads,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = Qwen2ForCausalLM(config)
    # Plain ancestral sampling, as GRPOTrainer samples by default (temperature 1, no top-k / top-p truncation).
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
    )
    return model


def _answer_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    # The LM head costs as much as the whole body here (a ~900-token vocab on a 64-wide model), and only the answer
    # tokens carry loss, so project just the positions that predict them: ~10 of ~100 per teacher-view sequence.
    hidden = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != -100
    logits = model.lm_head(hidden[:, :-1][keep])
    return torch.nn.functional.cross_entropy(logits, targets[keep])


def _train(settings: ToyModelSettings, seed: int, progress: bool) -> tuple[Any, Any, dict[str, Any]]:
    from tqdm.auto import tqdm

    tokenizer = build_toy_tokenizer()
    torch.manual_seed(seed)
    model = _build_model(tokenizer, settings)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, betas=(0.9, 0.95), weight_decay=0.0)

    def lr_factor(step: int) -> float:
        if step < settings.warmup_steps:
            return (step + 1) / settings.warmup_steps
        done = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * done))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    start = time.perf_counter()
    losses: list[float] = []
    bar = tqdm(
        _batches(tokenizer, settings, seed), total=settings.steps, desc="pretraining toy model", disable=not progress
    )
    for batch in bar:
        loss = _answer_loss(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
    model.eval()
    stats = {
        "train_seconds": round(time.perf_counter() - start, 1),
        "final_loss": round(sum(losses[-20:]) / len(losses[-20:]), 4),
        "num_parameters": sum(p.numel() for p in model.parameters()),
    }
    return model, tokenizer, stats


@contextlib.contextmanager
def exclusive(lock_path: Path):
    """Hold an exclusive file lock on `lock_path` (created if needed) for the `with` block.

    Serialises preparation across processes, so two demos started together build a cached model once, not twice, on
    a shared CPU. The rename in [`atomic_directory`] is what makes the result safe; the lock only saves work. No lock
    on non-POSIX systems.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _is_prepared(path: Path, key: dict[str, Any]) -> bool:
    try:
        meta = json.loads((path / METADATA_FILE).read_text())
    except (OSError, ValueError):
        return False
    return meta.get("key") == key


@contextlib.contextmanager
def _torch_threads(num_threads: int | None):
    previous = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(min(num_threads, previous))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def prepare_toy_model(
    output_dir: str | os.PathLike | None = None,
    seed: int = 0,
    settings: ToyModelSettings | None = None,
    quick: bool = False,
    force: bool = False,
    progress: bool = True,
    num_threads: int | None = 1,
) -> str:
    """Pretrain the toy world's model (or reuse a prepared one) and return its directory.

    The directory loads with `AutoModelForCausalLM` / `AutoTokenizer` and carries `toy_model.json` with the settings,
    the teacher template and render style it was trained on, the training time and the final loss. Preparation
    writes to a temporary sibling and renames it into place, so concurrent callers never see a half-written model.

    Args:
        output_dir: Where to put the model. Default: `toy_cache_dir() / "toy-<hash of settings and seed>"`.
        seed: Seed of the initialisation and of the data order.
        settings: Architecture and recipe; default `ToyModelSettings()` (about 2 minutes on 2 CPU cores).
        quick: Use `ToyModelSettings.quick()` (for tests) when `settings` is not given.
        force: Retrain even if a matching model is already there.
        progress: Show a tqdm progress bar while training.
        num_threads: Cap on torch CPU threads while training; `None` leaves it. One thread is the default because
            on a busy machine torch's spinning worker threads make 2 threads several times slower than 1.

    Returns:
        The model directory, as a string.
    """
    settings = settings or (ToyModelSettings.quick() if quick else ToyModelSettings())
    key = _cache_key(settings, seed)
    digest = _key_hash(key)
    target = Path(output_dir) if output_dir is not None else toy_cache_dir() / f"toy-{digest}"
    if not force and _is_prepared(target, key):
        return str(target)
    if target.exists() and not force and not (target / METADATA_FILE).exists() and any(target.iterdir()):
        raise FileExistsError(f"{target} exists and is not a toy model; pick another output_dir or pass force=True")
    with exclusive(target.parent / f".{target.name}.lock"):
        if not force and _is_prepared(target, key):  # another process finished it while we waited
            return str(target)
        with _torch_threads(num_threads):
            model, tokenizer, stats = _train(settings, seed, progress)
        with atomic_directory(target) as staging:
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            meta = {"key": key, **stats}
            (staging / METADATA_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return str(target)


@contextlib.contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `target` to write into; on success it replaces `target` by a rename, so readers
    never see a half-written folder. On failure the temporary folder is removed and `target` is left as it was."""
    target = Path(target)
    staging = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        yield staging
        if target.exists():
            shutil.rmtree(target)
        os.rename(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _clipped_mean(values: list[float]) -> float:
    # HealthBench convention: single answers may score below 0, the mean is clipped to [0, 1].
    return min(1.0, max(0.0, sum(values) / len(values))) if values else float("nan")


@torch.no_grad()
def _sample(model, tokenizer, prompts: list[list[dict[str, str]]], max_new_tokens: int, batch_size: int) -> list[str]:
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i : i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
        generated = model.generate(
            **enc,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max_new_tokens,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        out += tokenizer.batch_decode(generated[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return [t.strip() for t in out]


def measure_gap(
    model_path: str | os.PathLike,
    world: ToyWorld,
    n: int = 4,
    seed: int = 0,
    max_new_tokens: int = 20,
    batch_size: int = 64,
    max_prompts: int | None = None,
    teacher_prompt_template: str = TEACHER_PROMPT_TEMPLATE,
    render_style: str = TEACHER_RENDER_STYLE,
    teacher_penalties: str = TEACHER_PENALTIES,
    num_threads: int | None = 1,
) -> dict[str, dict[str, Any]]:
    """The conditioning gap: how much better the model answers when its prompt includes the rubric.

    For every prompt of each split, samples `n` answers at temperature 1 (as the trainers sample) from the prompt
    alone and `n` from the teacher view (`build_teacher_prompt`), grades them with the world's `RuleJudge` and
    averages `Rubric.score`.

    Args:
        model_path: A causal LM directory with a chat tokenizer (a prepared toy model, or a trained student).
        world: The toy world whose train and held-out prompts to use.
        n: Samples per prompt and condition.
        seed: Sampling seed (the global torch RNG is restored afterwards).
        max_new_tokens: Answer length cap, in tokens.
        batch_size: Prompts per `generate` call.
        max_prompts: Use only the first `max_prompts` prompts of each split.
        teacher_prompt_template: Template of the rubric-conditioned view.
        render_style: How the rubric is rendered into it.
        teacher_penalties: Whether it lists the rubric's penalty criteria (`"show"` or `"omit"`).
        num_threads: Cap on torch CPU threads while sampling; `None` leaves it.

    Returns:
        `{"train": {...}, "heldout": {...}}`, each with `score_without_rubric`, `score_with_rubric`, `gap` (means of
        `Rubric.score` clipped to [0, 1]), `raw_score_without_rubric` and `raw_score_with_rubric` (unclipped means),
        `num_prompts`, `num_samples`, and `met_by_criterion`: per criterion title, the share of answers meeting it
        `{"without": ..., "with": ...}`.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_path)
    model.eval()
    judge = world.judge()
    report: dict[str, dict[str, Any]] = {}
    with torch.random.fork_rng(devices=[]), _torch_threads(num_threads):
        torch.manual_seed(seed)
        for split, rows in (("train", world.train_rows), ("heldout", world.heldout_rows)):
            rows = rows[:max_prompts] if max_prompts is not None else rows
            rubrics = [Rubric.from_any(r["rubric"]) for r in rows for _ in range(n)]
            plain = [r["prompt"] for r in rows for _ in range(n)]
            teacher = [
                build_teacher_prompt(p, rb, teacher_prompt_template, render_style, teacher_penalties)
                for p, rb in zip(plain, rubrics, strict=True)
            ]
            entry: dict[str, Any] = {"num_prompts": len(rows), "num_samples": len(plain)}
            met: dict[str, dict[str, list[bool]]] = {}
            for condition, prompts in (("without", plain), ("with", teacher)):
                answers = _sample(model, tokenizer, prompts, max_new_tokens, batch_size)
                scores = []
                for answer, rubric in zip(answers, rubrics, strict=True):
                    verdicts = judge.verdicts(answer, rubric)
                    scores.append(rubric.score(verdicts))
                    for criterion, verdict in zip(rubric, verdicts, strict=True):
                        met.setdefault(criterion.title or criterion.text, {"without": [], "with": []})
                        met[criterion.title or criterion.text][condition].append(bool(verdict))
                entry[f"score_{condition}_rubric"] = _clipped_mean(scores)
                # Unclipped too: a rubric-blind model's mean is often below 0 (penalties), where clipping hides progress.
                entry[f"raw_score_{condition}_rubric"] = sum(scores) / len(scores)
            entry["gap"] = entry["score_with_rubric"] - entry["score_without_rubric"]
            entry["met_by_criterion"] = {
                title: {c: sum(v) / len(v) for c, v in conds.items()} for title, conds in sorted(met.items())
            }
            report[split] = entry
    return report


def main(argv: list[str] | None = None) -> None:
    """`python -m trl_rubric.toy.pretrain [--quick] [--seed N] [--force]`: prepare the toy model, print its gap."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--quick", action="store_true", help="the small test recipe")
    parser.add_argument("--seed", type=int, default=0, help="pretraining seed")
    parser.add_argument("--world-seed", type=int, default=0, help="seed of the world the gap is measured on")
    parser.add_argument("--force", action="store_true", help="retrain even if cached")
    parser.add_argument("--samples", type=int, default=4, help="samples per prompt and condition")
    args = parser.parse_args(argv)
    path = prepare_toy_model(seed=args.seed, quick=args.quick, force=args.force)
    meta = json.loads((Path(path) / METADATA_FILE).read_text())
    print(f"toy model: {path} ({meta['num_parameters']:,} parameters, trained in {meta['train_seconds']} s)")
    report = measure_gap(path, make_world(args.world_seed), n=args.samples)
    print(f"{'split':<8} {'without rubric':>15} {'with rubric':>12} {'gap':>7}")
    for split, entry in report.items():
        without, with_, gap = entry["score_without_rubric"], entry["score_with_rubric"], entry["gap"]
        print(f"{split:<8} {without:>15.3f} {with_:>12.3f} {gap:>+7.3f}")


if __name__ == "__main__":
    main()
