"""How `RGSDTrainer` builds its teacher: a frozen copy of the initial policy, a separate model, the policy itself
(PEFT adapters disabled, or the live weights), or an EMA copy; checked for a shared vocabulary and prepared for the
engine (DeepSpeed, FSDP, DDP)."""

from __future__ import annotations

import copy
import logging
import os

from accelerate.utils import is_peft_model
from transformers import AutoTokenizer
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
from trl.models import prepare_deepspeed, prepare_fsdp
from trl.trainer.utils import create_model_from_path, get_config_model_id

from ..teacher import (
    AdapterEMACallback,
    EMATeacherCallback,
    adapter_starts_at_zero,
    add_ema_adapter,
    add_frozen_adapter_copy,
    freeze,
    teacher_chat_template_differs,
    teacher_shares_tokenizer,
)

logger = logging.getLogger(__name__)


def build_teacher(trainer, teacher_model, quantization_config):
    """The teacher model `RGSDTrainer` scores completions with, or None when the policy itself scores (PEFT "base"
    with adapters disabled or a frozen adapter copy, PEFT "ema" with its EMA adapter, or "live"). Checks the vocabularies match, freezes it, prepares it for the engine, and
    registers the EMA callback for `teacher_model_kind="ema"`."""
    args, kind = trainer.args, trainer.args.teacher_model_kind
    peft = is_peft_model(trainer.model)
    if teacher_model is None and kind == "base" and peft:
        # A frozen copy only when the adapter changes the model now (loaded or non-zero init): one that adds
        # nothing leaves the policy with adapters disabled equal to the initial policy, and saves no teacher folder
        if not adapter_starts_at_zero(trainer.model):
            trainer._teacher_adapter = add_frozen_adapter_copy(trainer.model)
            keep_teacher_adapter_out_of_vllm(trainer)
        return None  # the policy itself scores, with adapters disabled or the frozen initial adapter: no copy
    if teacher_model is None and kind == "live":
        return None
    if teacher_model is None and kind == "ema" and peft:
        # A second adapter on the same base weights, the EMA of the trained one: one more adapter's memory
        if is_deepspeed_zero3_enabled():
            raise ValueError(
                "teacher_model_kind='ema' with a PEFT model keeps the EMA teacher as a second adapter updated in "
                "place, which is not supported under DeepSpeed ZeRO-3 (its partitioned adapter weights are not "
                "averaged). Use 'base' or 'live', ZeRO-2, or train without PEFT."
            )
        model = trainer.accelerator.unwrap_model(trainer.model)
        trainer._teacher_adapter = add_ema_adapter(model)
        trainer._ema_callback = AdapterEMACallback(model, teacher_adapter=trainer._teacher_adapter)
        trainer.add_callback(trainer._ema_callback)
        keep_teacher_adapter_out_of_vllm(trainer)
        return None  # the policy itself scores, with the EMA adapter active
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
        elif is_zero3_partitioned(trainer.model):
            # Loaded while a ZeRO-3 config was active: its parameters are empty partitions, which copy.deepcopy
            # would copy as such. A new model of the same class, built partitioned, takes the gathered weights.
            teacher = copy_zero3_model(trainer.model, init_kwargs)
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


def keep_teacher_adapter_out_of_vllm(trainer) -> None:
    """Leave the teacher adapter's `modules_to_save` copies (e.g. `lm_head.modules_to_save.rgsd_teacher.weight`) out of
    the weights TRL pushes to vLLM.

    TRL merges the active adapter, skips LoRA weights and renames the trained adapter's copies
    (`modules_to_save.default.`) to the module's own name, but passes any other adapter's copy under its PEFT name,
    which vLLM does not know (`load_weights` fails at the first sync). Every parameter is still iterated, so the
    collective gathers of DeepSpeed / FSDP run on every process as before."""
    generation = getattr(trainer, "vllm_generation", None)
    if generation is None:
        return
    iterate = generation._iter_named_params

    def named_params():
        for name, param in iterate():
            if "modules_to_save." not in name:
                yield name, param

    generation._iter_named_params = named_params


def is_zero3_partitioned(model) -> bool:
    """Whether `model`'s parameters are DeepSpeed ZeRO-3 partitions (they carry `ds_id`)."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


def copy_zero3_model(model, init_kwargs: dict):
    """A copy of a ZeRO-3-partitioned model, itself partitioned: a model of the same class is built from the config
    (under the active ZeRO-3 config, so partitioned from the start), and each parameter is gathered from the source
    and written into the copy one at a time, so at most one full parameter is held at once. Buffers are copied too."""
    import deepspeed
    import torch

    kwargs = {k: v for k, v in init_kwargs.items() if k in ("dtype", "attn_implementation")}
    try:
        teacher = type(model)._from_config(copy.deepcopy(model.config), **kwargs)
    except Exception as e:
        raise ValueError(
            "teacher_model_kind needs a frozen copy of the policy, which is partitioned by DeepSpeed ZeRO-3, and a "
            f"partitioned copy could not be built from its config ({type(e).__name__}: {e}). Pass the model as a path "
            "(it is then reloaded), or pass teacher_model= explicitly."
        ) from e
    source, target = dict(model.named_parameters()), dict(teacher.named_parameters())
    if source.keys() != target.keys():
        raise ValueError(
            "the ZeRO-3 policy's copy built from its config has other parameters than the policy "
            f"({sorted(source.keys() ^ target.keys())[:3]}); pass the model as a path or pass teacher_model="
        )
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    for name, param in source.items():
        with deepspeed.zero.GatheredParameters([param, target[name]], modifier_rank=0):
            if rank == 0:
                target[name].data.copy_(param.data)
    buffers = dict(teacher.named_buffers())
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name in buffers and buffers[name].shape == buffer.shape:
                buffers[name].copy_(buffer)
    return teacher


def check_teacher_prompt_lengths(trainer, dataset) -> None:
    """Raise a `ValueError` naming the row when a teacher prompt (prompt + rubric) of `dataset` is over
    `max_teacher_prompt_length` (teacher prompts are never truncated), before training starts."""
    provider = trainer.teacher_context
    limit, k = trainer.args.max_teacher_prompt_length, provider.num_contexts
    if provider.needs_completion:
        return  # contexts depend on the rollout: checked on every batch after sampling
    # A provider whose contexts cost a judge call (reason-first) gives a judge-free lower bound here; its full
    # prompts are checked on each batch, once written. A length check never pays for LLM calls.
    floor = getattr(provider, "contexts_for_length_check", None)
    for start in range(0, len(dataset), 256):
        rows = dataset.select(range(start, min(start + 256, len(dataset))))
        if floor is not None:
            prompts = [c.prompt for row in rows for c in floor(row)]
        else:
            prompts = trainer._teacher_prompts(list(rows))
        ids, _, _ = trainer._tokenize_prompts(prompts)
        for offset, row_ids in enumerate(ids):
            if len(row_ids) > limit:
                raise ValueError(
                    f"train_dataset row {start + offset // k}: the teacher prompt (prompt + rubric) is "
                    f"{len(row_ids)} tokens, over max_teacher_prompt_length={limit}. Teacher prompts are never "
                    "truncated: shorten the rubric, raise the limit, or drop the row."
                )


def head_rows(model) -> int:
    # A ZeRO-3 partition has shape [0]; DeepSpeed keeps the real one in `ds_shape`
    weight = model.get_output_embeddings().weight
    return getattr(weight, "ds_shape", weight.shape)[0]


def hub_id_like(source: str | None) -> bool:
    return bool(source) and source.count("/") == 1 and not os.path.exists(source)
