"""How `RGSDTrainer` builds its teacher: a frozen copy of the initial policy, a separate model, the policy itself
(PEFT adapters disabled, or the live weights), or an EMA copy; checked for a shared vocabulary and prepared for the
engine (DeepSpeed, FSDP, DDP)."""

from __future__ import annotations

import copy
import logging
import os

from accelerate.utils import is_peft_model
from transformers import AutoTokenizer
from trl.models import prepare_deepspeed, prepare_fsdp
from trl.trainer.utils import create_model_from_path, get_config_model_id

from ..teacher import (
    EMATeacherCallback,
    adapter_starts_at_zero,
    add_frozen_adapter_copy,
    freeze,
    teacher_chat_template_differs,
    teacher_shares_tokenizer,
)

logger = logging.getLogger(__name__)


def build_teacher(trainer, teacher_model, quantization_config):
    """The teacher model `RGSDTrainer` scores completions with, or None when the policy itself scores (PEFT "base"
    with adapters disabled, or "live"). Checks the vocabularies match, freezes it, prepares it for the engine, and
    registers the EMA callback for `teacher_model_kind="ema"`."""
    args, kind = trainer.args, trainer.args.teacher_model_kind
    peft = is_peft_model(trainer.model)
    if teacher_model is None and kind == "base" and peft:
        # A frozen copy only when the adapter changes the model now (loaded or non-zero init): one that adds
        # nothing leaves the policy with adapters disabled equal to the initial policy, and saves no teacher folder
        if not adapter_starts_at_zero(trainer.model):
            trainer._teacher_adapter = add_frozen_adapter_copy(trainer.model)
        return None  # the policy itself scores, with adapters disabled or the frozen initial adapter: no copy
    if teacher_model is None and kind == "live":
        return None
    if teacher_model is None and kind == "ema" and peft:
        raise ValueError(
            "teacher_model_kind='ema' is not supported with a PEFT model yet. Use 'base' (adapters disabled, "
            "no extra memory) or 'live', or train without PEFT."
        )
    init_kwargs = dict(args.model_init_kwargs or {})
    if quantization_config is not None:
        init_kwargs["quantization_config"] = quantization_config
    if args.distributed_state.distributed_type in ["MULTI_GPU", "DEEPSPEED"]:
        init_kwargs["device_map"] = None
    init_kwargs.setdefault("trust_remote_code", args.trust_remote_code)
    init_kwargs.setdefault("dtype", trainer.model.dtype)
    init_kwargs.setdefault("attn_implementation", trainer.model.config._attn_implementation)
    if teacher_model is None:
        # A frozen copy of the initial policy. A path is reloaded, as GRPOTrainer builds its reference model; a
        # model object is copied, since it may differ from the checkpoint its config names (an SFT stage in the
        # same script, merged adapters).
        source = get_config_model_id(trainer.model.config)
        if trainer._rgsd_model_is_path and source and (os.path.isdir(source) or hub_id_like(source)):
            teacher = create_model_from_path(source, **init_kwargs)
        else:
            try:
                teacher = copy.deepcopy(trainer.model)
            except Exception as e:
                raise ValueError(
                    f"teacher_model_kind='base' needs a frozen copy of the policy, but the model object could not "
                    f"be copied ({type(e).__name__}: {e}). Save it with save_pretrained and pass the path, or pass "
                    "teacher_model= explicitly."
                ) from e
    elif isinstance(teacher_model, str):
        teacher_tokenizer = AutoTokenizer.from_pretrained(teacher_model)
        reason = teacher_shares_tokenizer(trainer._tokenizer, teacher_tokenizer)
        if reason is not None:
            raise ValueError(f"teacher_model {teacher_model!r}: {reason}")
        template = teacher_chat_template_differs(trainer._tokenizer, teacher_tokenizer)
        if template is not None:
            logger.warning("teacher_model %r: %s", teacher_model, template)
        teacher = create_model_from_path(teacher_model, **init_kwargs)
    else:
        teacher = teacher_model
    s_vocab, t_vocab = head_rows(trainer.model), head_rows(teacher)
    if s_vocab != t_vocab:
        raise ValueError(
            f"the teacher's LM head has {t_vocab} rows but the student's has {s_vocab}; RGSD compares their "
            "next-token distributions, so both must share a tokenizer and vocabulary."
        )
    teacher = freeze(teacher)
    if trainer.is_deepspeed_enabled:
        teacher = prepare_deepspeed(teacher, trainer.accelerator)
    elif trainer.is_fsdp_enabled:
        teacher = prepare_fsdp(teacher, trainer.accelerator)
    else:
        teacher = trainer.accelerator.prepare_model(teacher, evaluation_mode=True)
    if kind == "ema":
        trainer._ema_callback = EMATeacherCallback(teacher, accelerator=trainer.accelerator)
        trainer.add_callback(trainer._ema_callback)
    return teacher


def head_rows(model) -> int:
    # A ZeRO-3 partition has shape [0]; DeepSpeed keeps the real one in `ds_shape`
    weight = model.get_output_embeddings().weight
    return getattr(weight, "ds_shape", weight.shape)[0]


def hub_id_like(source: str | None) -> bool:
    return bool(source) and source.count("/") == 1 and not os.path.exists(source)
