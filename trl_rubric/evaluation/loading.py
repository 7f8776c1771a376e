"""Model loading for evaluation: path checks, PEFT adapters, dtype and device."""

from __future__ import annotations

import json
import logging
import os

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


def _resolve_model(model, tokenizer):
    if isinstance(model, (str, os.PathLike)):
        loaded, loaded_tok = load_model_and_tokenizer(os.fspath(model))
        return loaded, tokenizer if tokenizer is not None else loaded_tok
    if tokenizer is None and model is not None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model.config._name_or_path)
    return model, tokenizer
