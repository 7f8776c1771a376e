"""Model folders: path checks, loading for evaluation (PEFT adapters, dtype, device), and adapters merged into their
base so that training can start from them."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile

from .errors import EvaluationError

logger = logging.getLogger(__name__)


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
    is_adapter = os.path.isfile(os.path.join(path, "adapter_config.json"))
    base = (base_model_name_or_path or adapter_base(path)) if is_adapter else path
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


def _resolve_model(model, tokenizer):
    if isinstance(model, (str, os.PathLike)):
        loaded, loaded_tok = load_model_and_tokenizer(os.fspath(model))
        return loaded, tokenizer if tokenizer is not None else loaded_tok
    if tokenizer is None and model is not None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model.config._name_or_path)
    return model, tokenizer


def named_source(path: str | None) -> str | None:
    """The Hub id a local model folder says it was made from (`base_model` in its README.md metadata, the Hub's own
    convention), so a card names the real model rather than a cache path; `None` if it names none."""
    readme = os.path.join(path, "README.md") if path and os.path.isdir(path) else None
    if readme is None or not os.path.isfile(readme):
        return None
    from huggingface_hub import ModelCard

    try:
        base = ModelCard.load(readme).data.base_model
    except Exception:  # an unreadable card is no reason to fail a save
        return None
    base = base[0] if isinstance(base, list) and base else base
    return base if isinstance(base, str) and base else None


#: Written into a folder made by [`merge_adapter`]: which adapter it holds, so a later call can reuse or redo it.
MERGED_FROM_FILE = "merged_from.json"


def adapter_base(path: str | os.PathLike) -> str | None:
    """The base model a PEFT adapter folder names (`base_model_name_or_path` in its `adapter_config.json`), or `None`
    when `path` is not an adapter folder.

    Raises:
        EvaluationError: for an adapter folder whose config names no base model.
    """
    config = os.path.join(os.path.expanduser(os.fspath(path)), "adapter_config.json")
    if not os.path.isfile(config):
        return None
    with open(config, encoding="utf-8") as f:
        base = json.load(f).get("base_model_name_or_path")
    if not base:
        raise EvaluationError(
            f"{config} names no base_model_name_or_path; set it there (trl-rubric eval also takes "
            "--base_model_name_or_path)"
        )
    return base


def refuse_adapter_model(model: object, argument: str, trainer: str) -> None:
    """Refuse a PEFT adapter folder passed where a trainer needs a model (`model`, `teacher_model`): transformers would
    fail on it with an unrelated error, and training on an adapter stacked under a new one would leave its teacher
    (the policy with adapters disabled) at the adapter's base instead of the adapter's weights.

    Raises:
        ValueError: naming the folder, its base and the one call that fixes it.
    """
    if not isinstance(model, (str, os.PathLike)):
        return
    base = adapter_base(model)
    if base is not None:
        raise ValueError(
            f"{trainer}: {argument} {os.fspath(model)!r} is a PEFT adapter folder (base {base!r}), not a model. To "
            "train on from it, merge it into its base first: trl_rubric.evaluation.merge_adapter(folder, "
            "output_folder), then pass output_folder (the trl-rubric command line does this for you)."
        )


def _adapter_fingerprint(adapter: str) -> str:
    digest = hashlib.sha256()
    for name in sorted(os.listdir(adapter)):
        if name == "adapter_config.json" or name.startswith("adapter_model."):
            digest.update(name.encode())
            with open(os.path.join(adapter, name), "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def _write_merged_card(folder: str, adapter: str) -> None:
    # The card of a run that starts here names the model at the root ([`named_source`]), not this local folder.
    base = adapter_base(adapter)
    root = named_source(base) or base
    with open(os.path.join(folder, "README.md"), "w", encoding="utf-8") as f:
        f.write(
            f"---\nbase_model: {json.dumps(root)}\n---\n\n{root} with the PEFT adapter {adapter} merged into it "
            "(trl_rubric.merge_adapter).\n"
        )


def merge_adapter(
    adapter: str | os.PathLike,
    output_dir: str | os.PathLike,
    dtype: str = "auto",
    trust_remote_code: bool = False,
) -> str:
    """Merge a PEFT (LoRA) adapter into its base model and save the merged model with its tokenizer to `output_dir`,
    so that a second training phase can start from the first one's student (its RGSD teacher is then that student
    shown the rubric). Returns `output_dir`.

    The folder records which adapter it holds ([`MERGED_FROM_FILE`], a hash of the adapter's files): called again with
    the same adapter it is reused as it is (a resumed run, or every process of a distributed one after the first);
    with another adapter it is merged again. A folder at `output_dir` that this function did not write is never
    overwritten. The merged model is written to a temporary folder next to `output_dir` and renamed into place, so a
    process that sees the folder sees all of it.

    Args:
        adapter: The adapter folder (`adapter_config.json` and its weights), e.g. a trainer's `output_dir`.
        output_dir: Where the merged model goes.
        dtype: `"auto"` (the base's own dtype), `"float32"`, `"bfloat16"` or `"float16"`.
        trust_remote_code: Passed to transformers.

    Raises:
        EvaluationError: when `adapter` is not an adapter folder, or `output_dir` holds something else.
    """
    adapter, output_dir = os.path.expanduser(os.fspath(adapter)), os.path.expanduser(os.fspath(output_dir))
    if adapter_base(adapter) is None:
        raise EvaluationError(f"{adapter!r} is not a PEFT adapter folder (no adapter_config.json in it)")
    fingerprint = _adapter_fingerprint(adapter)
    record = os.path.join(output_dir, MERGED_FROM_FILE)
    if os.path.exists(output_dir):
        if not os.path.isfile(record):
            raise EvaluationError(
                f"cannot merge {adapter!r} into {output_dir!r}: that folder exists and was not written by "
                "merge_adapter; choose another output folder"
            )
        with open(record, encoding="utf-8") as f:
            if json.load(f).get("fingerprint") == fingerprint:
                logger.info("reusing %s: it already holds adapter %s merged into its base", output_dir, adapter)
                return output_dir
    model, tokenizer = load_model_and_tokenizer(
        adapter, dtype=dtype, device="cpu", trust_remote_code=trust_remote_code, merge_adapter=True
    )
    from peft import PeftModel

    if isinstance(model, PeftModel):
        raise EvaluationError(f"the adapter in {adapter!r} could not be merged into its base (see the warning above)")
    parent = os.path.dirname(os.path.abspath(output_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".merging-", dir=parent)
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        with open(os.path.join(staging, MERGED_FROM_FILE), "w", encoding="utf-8") as f:
            json.dump({"adapter": os.path.abspath(adapter), "fingerprint": fingerprint}, f, indent=2)
        _write_merged_card(staging, adapter)
        if os.path.exists(output_dir):
            shutil.rmtree(output_dir)  # an older merge of another adapter (checked above)
        os.rename(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("merged adapter %s into its base: %s", adapter, output_dir)
    return output_dir
