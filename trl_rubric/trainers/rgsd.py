"""Rubric-Guided Self-Distillation ("Rubric-Guided Self-Distillation", arXiv 2606.12507) as a drop-in GRPOTrainer.

The student (the policy) sees the prompt and samples one completion through GRPO's own generation path. The teacher,
by default the frozen initial policy, reads the prompt with the rubric woven in, followed by the same completion
tokens. The loss is a per-token divergence between the two next-token distributions on the completion. No judge is
called during training.

The trainer only orchestrates: rubric parsing lives in `rubric.py`, the teacher context and teacher models in
`teacher.py`, and the loss math in `losses.py`.
"""

from __future__ import annotations

import copy
import logging
import os
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from accelerate.utils import gather, is_peft_model
from datasets import Dataset
from transformers import AutoTokenizer, PreTrainedModel
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOConfig, GRPOTrainer
from trl.models import prepare_deepspeed, prepare_fsdp
from trl.models.utils import _ForwardRedirection, disable_gradient_checkpointing
from trl.trainer.utils import create_model_from_path, get_config_model_id, pad, use_adapter

from .. import losses
from ..data import named_datasets, validate_rubric_column
from ..model_card import RubricModelCardMixin
from ..rubric import PITFALL_POLARITIES, RENDER_STYLES, Rubric, RubricError
from ..teacher import (
    DEFAULT_TEACHER_PROMPT_TEMPLATE,
    TEACHER_MODEL_KINDS,
    build_teacher_prompt,
    freeze,
    teacher_shares_tokenizer,
)
from .resume import ExactResumeMixin

logger = logging.getLogger(__name__)

DISTILLATION_SUPPORTS = ("full", "topk", "sampled_token")
TEACHER_STATE_FILE = "rgsd_teacher.pt"


@dataclass
class RGSDConfig(GRPOConfig):
    r"""
    Configuration for [`RGSDTrainer`]: every [`~trl.GRPOConfig`] field, plus the fields below.

    Rubric-Guided Self-Distillation (arXiv 2606.12507) samples one completion per prompt and distils a
    rubric-conditioned teacher into the prompt-only student, so `num_generations` defaults to 1 here, and no reward
    function is needed.

    > Parameters that control the teacher

        teacher_model_kind (`str`, *optional*, defaults to `"base"`):
            Which weights score the completions. `"base"`: the frozen initial policy (the paper's choice; with a PEFT
            model, the same model with adapters disabled, so no copy). `"ema"`: an exponential moving average of the
            policy, updated every `teacher_sync_steps` with rate `teacher_update_rate`. `"live"`: the current policy
            weights, without gradients. A separate teacher (`teacher_model_name_or_path`, or `teacher_model=` on the
            trainer) is always frozen and needs the default `"base"`.
        teacher_update_rate (`float`, *optional*, defaults to `0.05`):
            EMA rate for `teacher_model_kind="ema"`: `teacher = (1 - rate) * teacher + rate * policy`.
        teacher_sync_steps (`int`, *optional*, defaults to `1`):
            Optimizer steps between EMA updates for `teacher_model_kind="ema"`.
        teacher_model_name_or_path (`str` or `None`, *optional*, defaults to `None`):
            A separate, frozen teacher model (path or Hub id) with the student's tokenizer, e.g. a larger model of the
            same family; as TRL's `GKDConfig`. The trainer's `teacher_model` argument takes precedence. Lets recipes
            and the `trl-rubric rgsd` command use a separate teacher.

    > Parameters that control the teacher context

        teacher_prompt_template (`str`, *optional*, defaults to [`DEFAULT_TEACHER_PROMPT_TEMPLATE`]):
            Text with `{prompt}` and `{rubric}` placeholders that builds the teacher's view. For chat prompts it fills
            the last user turn; system turns are kept.
        rubric_render_style (`str`, *optional*, defaults to `"numbered"`):
            How the rubric is rendered for the teacher: `"numbered"`, `"weighted"` or `"json"`.
        rubric_column (`str`, *optional*, defaults to `"rubric"`):
            Dataset column holding each prompt's rubric, in any format `Rubric.from_any` reads.
        pitfall_polarity (`str`, *optional*, defaults to `"as_is"`):
            How RaR "Pitfall" criteria are signed when rubrics are parsed (`as_is`, `negative`, `positive`); it shows
            in the `weighted` and `json` render styles.
        max_teacher_prompt_length (`int` or `None`, *optional*, defaults to `None`):
            Longest teacher prompt allowed, in tokens. Longer ones raise an error naming the row, checked on the
            whole training set before training starts. Teacher prompts are never truncated.

    > Parameters that control the distillation loss

        distillation_beta (`float`, *optional*, defaults to `0.5`):
            Divergence between student and teacher: `0.0` is the forward KL(teacher‖student), `1.0` the reverse
            KL(student‖teacher), values in between the generalized Jensen-Shannon divergence. 0.5 is the paper's.
        distillation_support (`str`, *optional*, defaults to `"full"`):
            `"full"`: the whole vocabulary, computed from hidden states in token chunks so that no logits tensor is
            ever materialised. `"topk"`: the top-k tokens (plus a tail bucket). `"sampled_token"`: the reverse-KL
            estimator on the sampled token only, the cheapest.
        distillation_top_k (`int`, *optional*, defaults to `20`):
            k for `distillation_support="topk"`.
        distillation_top_k_source (`str`, *optional*, defaults to `"teacher"`):
            Whose top-k tokens form the support: `"teacher"` or `"student"`.
        distillation_top_k_tail (`bool`, *optional*, defaults to `True`):
            Add a bucket holding the probability mass outside the top-k.
        distillation_chunk_size (`int` or `None`, *optional*, defaults to `None`):
            Tokens per call of the full-vocabulary divergence kernel. `None` picks 128 on CPU, where TRL's torch
            fallback would otherwise allocate 4096-token tiles (128 keeps peak memory flat), and one call on GPUs,
            where the Triton kernel tiles the tokens itself and every extra call costs a full fp32 LM-head gradient.
        token_clip (`float` or `None`, *optional*, defaults to `0.05`):
            Clamp each token's divergence at this value (tau). `None` turns clipping off.
        token_clip_mode (`str`, *optional*, defaults to `"clamp"`):
            `"clamp"`: tokens above tau give no gradient. `"scale"`: their value is tau and their gradient is scaled
            by tau / divergence, so the direction is kept.
        mask_thinking (`bool`, *optional*, defaults to `False`):
            Leave tokens between `thinking_start` and `thinking_end` (inclusive) out of the loss. Use it for thinking
            models: the teacher's reasoning mentions the criteria.
        thinking_start (`str`, *optional*, defaults to `"<think>"`):
            Text that opens a thinking block.
        thinking_end (`str`, *optional*, defaults to `"</think>"`):
            Text that closes a thinking block.
        num_loss_tokens_to_skip (`int`, *optional*, defaults to `0`):
            Leave the first N completion tokens of every sample out of the loss.
        distillation_weight (`float`, *optional*, defaults to `1.0`):
            Hybrid mode. With reward functions and `num_generations >= 2`, the loss is
            `(1 - w) * GRPO loss + w * distillation loss`. The default 1.0 is pure RGSD; rewards are then only logged.
    """

    num_generations: int | None = field(
        default=1,
        metadata={"help": "Completions sampled per prompt. RGSD needs one; hybrid mode needs at least 2."},
    )
    teacher_model_kind: Literal["base", "ema", "live"] = field(
        default="base",
        metadata={"help": "Teacher weights: 'base' (frozen initial policy), 'ema' or 'live'."},
    )
    teacher_update_rate: float = field(default=0.05, metadata={"help": "EMA rate for teacher_model_kind='ema'."})
    teacher_sync_steps: int = field(default=1, metadata={"help": "Optimizer steps between EMA teacher updates."})
    teacher_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Separate frozen teacher (path or Hub id) sharing the student's tokenizer; default: none."},
    )
    teacher_prompt_template: str = field(
        default=DEFAULT_TEACHER_PROMPT_TEMPLATE,
        metadata={"help": "Teacher context with {prompt} and {rubric} placeholders."},
    )
    rubric_render_style: Literal["numbered", "weighted", "json"] = field(
        default="numbered", metadata={"help": "Rubric rendering for the teacher: numbered, weighted or json."}
    )
    rubric_column: str = field(default="rubric", metadata={"help": "Dataset column holding the rubric."})
    pitfall_polarity: Literal["as_is", "negative", "positive"] = field(
        default="as_is", metadata={"help": "Sign of RaR pitfall criteria: as_is, negative or positive."}
    )
    max_teacher_prompt_length: int | None = field(
        default=None,
        metadata={"help": "Longest teacher prompt in tokens; longer rows raise an error. Never truncated."},
    )
    distillation_beta: float = field(
        default=0.5,
        metadata={"help": "0 = forward KL(teacher||student), 1 = reverse KL(student||teacher), between = JSD."},
    )
    distillation_support: Literal["full", "topk", "sampled_token"] = field(
        default="full", metadata={"help": "Divergence support: full, topk or sampled_token."}
    )
    distillation_top_k: int = field(default=20, metadata={"help": "k for distillation_support='topk'."})
    distillation_top_k_source: Literal["teacher", "student"] = field(
        default="teacher", metadata={"help": "Whose top-k forms the support: teacher or student."}
    )
    distillation_top_k_tail: bool = field(
        default=True, metadata={"help": "Add a bucket for the mass outside the top-k."}
    )
    distillation_chunk_size: int | None = field(
        default=None,
        metadata={"help": "Tokens per divergence-kernel call; None = 128 on CPU, one call on GPU."},
    )
    token_clip: float | None = field(
        default=0.05, metadata={"help": "Clamp each token's divergence at tau; None disables."}
    )
    token_clip_mode: Literal["clamp", "scale"] = field(
        default="clamp", metadata={"help": "clamp (no gradient above tau) or scale (gradient scaled by tau/div)."}
    )
    mask_thinking: bool = field(
        default=False, metadata={"help": "Exclude tokens inside thinking blocks from the loss."}
    )
    thinking_start: str = field(default="<think>", metadata={"help": "Text opening a thinking block."})
    thinking_end: str = field(default="</think>", metadata={"help": "Text closing a thinking block."})
    num_loss_tokens_to_skip: int = field(
        default=0, metadata={"help": "Exclude the first N completion tokens of each sample from the loss."}
    )
    distillation_weight: float = field(
        default=1.0,
        metadata={"help": "Hybrid mode: loss = (1-w) * GRPO + w * distillation. 1.0 = pure RGSD."},
    )

    def __post_init__(self):
        self._check_rgsd_fields()
        if self.num_generations != 1:
            super().__post_init__()
            return
        # GRPOConfig rejects num_generations < 2 because group advantages need a group. RGSD has no advantages, so
        # one rollout is the method itself. TRL raises at the very end of its checks, so finishing the remaining
        # checks here keeps every other validation intact (`tests/test_trl_contract.py` pins this).
        try:
            super().__post_init__()
        except ValueError as e:
            if "at least 2 generations" not in str(e):
                raise
            self._finish_grpo_post_init()

    def _finish_grpo_post_init(self) -> None:
        # The checks GRPOConfig.__post_init__ runs after its num_generations check (TRL 1.16).
        if self.vllm_importance_sampling_cap is not None:
            self.vllm_importance_sampling_clip_max = self.vllm_importance_sampling_cap
        lo, hi = self.vllm_importance_sampling_clip_min, self.vllm_importance_sampling_clip_max
        if lo is not None and hi is not None and lo >= hi:
            raise ValueError(
                f"vllm_importance_sampling_clip_min ({lo}) must be less than vllm_importance_sampling_clip_max ({hi})."
            )
        if (
            self.vllm_importance_sampling_correction
            and self.vllm_importance_sampling_mode in ("token_truncate", "sequence_truncate")
            and lo is None
            and hi is None
        ):
            raise ValueError(
                "At least one of `vllm_importance_sampling_clip_min` or `vllm_importance_sampling_clip_max` "
                "must be set when `vllm_importance_sampling_mode` is a `*_truncate` mode."
            )

    def _check_rgsd_fields(self) -> None:
        def choice(name, options):
            value = getattr(self, name)
            if value not in options:
                raise ValueError(f"{name} is {value!r}; expected one of {tuple(options)}")

        choice("teacher_model_kind", TEACHER_MODEL_KINDS)
        choice("distillation_support", DISTILLATION_SUPPORTS)
        choice("distillation_top_k_source", ("teacher", "student"))
        choice("rubric_render_style", RENDER_STYLES)
        choice("token_clip_mode", ("clamp", "scale"))
        choice("pitfall_polarity", PITFALL_POLARITIES)
        if not 0.0 <= self.distillation_beta <= 1.0:
            raise ValueError(f"distillation_beta is {self.distillation_beta}; expected a value in [0, 1]")
        if not 0.0 <= self.distillation_weight <= 1.0:
            raise ValueError(f"distillation_weight is {self.distillation_weight}; expected a value in [0, 1]")
        if self.token_clip is not None and self.token_clip <= 0:
            raise ValueError(f"token_clip is {self.token_clip}; expected a positive number or None")
        if not 0.0 < self.teacher_update_rate <= 1.0:
            raise ValueError(f"teacher_update_rate is {self.teacher_update_rate}; expected a value in (0, 1]")
        if self.teacher_sync_steps < 1:
            raise ValueError(f"teacher_sync_steps is {self.teacher_sync_steps}; expected at least 1")
        if self.distillation_chunk_size is not None and self.distillation_chunk_size < 1:
            raise ValueError(f"distillation_chunk_size is {self.distillation_chunk_size}; expected at least 1")
        if self.num_loss_tokens_to_skip < 0:
            raise ValueError(f"num_loss_tokens_to_skip is {self.num_loss_tokens_to_skip}; expected >= 0")
        if "{prompt}" not in self.teacher_prompt_template:
            raise ValueError(f"teacher_prompt_template must contain {{prompt}}; got {self.teacher_prompt_template!r}")
        if "{rubric}" not in self.teacher_prompt_template:
            logger.warning(
                "teacher_prompt_template has no {rubric} placeholder: the teacher will not see the rubric, so this "
                "run is plain self-distillation (a useful control, but not RGSD)."
            )


def _no_reward(prompts, completions, **kwargs):
    """Placeholder so GRPOTrainer accepts a run without rewards; RGSDTrainer never calls it."""
    raise RuntimeError("RGSDTrainer's placeholder reward must never be called")


class RGSDTrainer(ExactResumeMixin, RubricModelCardMixin, GRPOTrainer):
    """Rubric-Guided Self-Distillation trainer: a [`~trl.GRPOTrainer`] whose loss distils a rubric-aware teacher.

    Takes the same arguments as `GRPOTrainer`, with `reward_funcs` optional, plus `teacher_model` (a path or a model
    with the same tokenizer, e.g. a larger model of the same family) to use a separate teacher.

    Example:

    ```python
    from trl_rubric import RGSDConfig, RGSDTrainer, load_rubric_dataset

    dataset = load_rubric_dataset("my_rubrics.jsonl")  # {prompt, rubric} rows
    trainer = RGSDTrainer(model="Qwen/Qwen2.5-3B-Instruct", args=RGSDConfig(output_dir="out"), train_dataset=dataset)
    trainer.train()
    ```
    """

    _tag_names = ["trl", "trl-rubric", "rgsd"]
    _name = "RGSD"
    _paper = {
        "title": "Rubric-Guided Self-Distillation",
        "id": "2606.12507",
        "citation": (
            "@article{rgsd2026,\n"
            "    title        = {{Rubric-Guided Self-Distillation}},\n"
            "    year         = 2026,\n"
            "    eprint       = {arXiv:2606.12507}\n"
            "}"
        ),
    }

    def __init__(
        self,
        model: str | PreTrainedModel,
        reward_funcs: Any = None,
        args: RGSDConfig | None = None,
        train_dataset: Dataset | None = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        reward_processing_classes: Any = None,
        callbacks: Any = None,
        optimizers: tuple = (None, None),
        quantization_config: Any = None,
        peft_config: Any = None,
        tools: Any = None,
        rollout_func: Any = None,
        environment_factory: Any = None,
        teacher_model: str | PreTrainedModel | None = None,
    ):
        if args is None:
            name = model if isinstance(model, str) else get_config_model_id(model.config)
            args = RGSDConfig(f"{name.split('/')[-1]}-RGSD")
        elif not isinstance(args, RGSDConfig):
            raise TypeError(
                f"RGSDTrainer needs an RGSDConfig, got {type(args).__name__}. Replace GRPOConfig with RGSDConfig "
                "(it takes the same arguments)."
            )
        if isinstance(reward_funcs, (list, tuple)) and len(reward_funcs) == 0:
            reward_funcs = None
        self._rgsd_has_rewards = reward_funcs is not None
        self._rgsd_hybrid = self._rgsd_has_rewards and args.distillation_weight < 1.0
        if args.distillation_weight < 1.0 and not self._rgsd_has_rewards:
            raise ValueError(
                f"distillation_weight is {args.distillation_weight}, which mixes in a GRPO loss, but no reward_funcs "
                "were given. Pass reward functions, or set distillation_weight=1.0 for pure RGSD."
            )
        if self._rgsd_hybrid and args.num_generations < 2:
            raise ValueError(
                f"hybrid mode (distillation_weight={args.distillation_weight}) needs group advantages, so "
                f"num_generations must be at least 2; got {args.num_generations}."
            )
        if teacher_model is None:
            teacher_model = args.teacher_model_name_or_path  # the config's way to a separate teacher (recipes, CLI)
        if teacher_model is not None and args.teacher_model_kind != "base":
            raise ValueError(
                f"a separate teacher_model is always frozen; teacher_model_kind={args.teacher_model_kind!r} "
                "applies to the policy's own weights. Leave teacher_model_kind='base' or drop teacher_model."
            )
        for name, dataset in named_datasets(train_dataset, eval_dataset):
            validate_rubric_column(dataset, args.rubric_column, name, args.pitfall_polarity)

        super().__init__(
            model=model,
            reward_funcs=reward_funcs if self._rgsd_has_rewards else _no_reward,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            reward_processing_classes=reward_processing_classes,
            callbacks=callbacks,
            optimizers=optimizers,
            quantization_config=quantization_config,
            peft_config=peft_config,
            tools=tools,
            rollout_func=rollout_func,
            environment_factory=environment_factory,
        )
        if self._is_vlm:
            raise ValueError("RGSDTrainer supports text-only models for now; got a vision-language model.")
        if not hasattr(self, "_forward_redirection"):
            self._forward_redirection = _ForwardRedirection()
        self.teacher_model = self._build_teacher(teacher_model, quantization_config)
        #: What scored the completions, as stated in model cards.
        self.teacher_description = (
            f"separate model {teacher_model if isinstance(teacher_model, str) else get_config_model_id(teacher_model.config)}"
            if teacher_model is not None
            else f"{args.teacher_model_kind} (the policy's own {'initial' if args.teacher_model_kind == 'base' else args.teacher_model_kind} weights)"
        )
        self._thinking_ids = (
            (
                self._tokenizer.encode(args.thinking_start, add_special_tokens=False),
                self._tokenizer.encode(args.thinking_end, add_special_tokens=False),
            )
            if args.mask_thinking
            else None
        )
        if args.max_teacher_prompt_length is not None and isinstance(train_dataset, Dataset):
            self._check_teacher_prompt_lengths(train_dataset)

    # ------------------------------------------------------------------ teacher

    def _build_teacher(self, teacher_model, quantization_config):
        args, kind = self.args, self.args.teacher_model_kind
        peft = is_peft_model(self.model)
        if teacher_model is None and (kind == "live" or (kind == "base" and peft)):
            return None  # the policy itself scores, live or with adapters disabled: no copy
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
        init_kwargs.setdefault("dtype", self.model.dtype)
        init_kwargs.setdefault("attn_implementation", self.model.config._attn_implementation)
        if teacher_model is None:
            # A frozen copy of the initial policy, built the way GRPOTrainer builds its reference model.
            source = get_config_model_id(self.model.config)
            if source and (os.path.isdir(source) or _hub_id_like(source)):
                teacher = create_model_from_path(source, **init_kwargs)
            else:
                teacher = copy.deepcopy(self.model)
        elif isinstance(teacher_model, str):
            reason = teacher_shares_tokenizer(self._tokenizer, AutoTokenizer.from_pretrained(teacher_model))
            if reason is not None:
                raise ValueError(f"teacher_model {teacher_model!r}: {reason}")
            teacher = create_model_from_path(teacher_model, **init_kwargs)
        else:
            teacher = teacher_model
        s_vocab, t_vocab = _head_rows(self.model), _head_rows(teacher)
        if s_vocab != t_vocab:
            raise ValueError(
                f"the teacher's LM head has {t_vocab} rows but the student's has {s_vocab}; RGSD compares their "
                "next-token distributions, so both must share a tokenizer and vocabulary."
            )
        teacher = freeze(teacher)
        if self.is_deepspeed_enabled:
            teacher = prepare_deepspeed(teacher, self.accelerator)
        elif self.is_fsdp_enabled:
            teacher = prepare_fsdp(teacher, self.accelerator)
        else:
            teacher = self.accelerator.prepare_model(teacher, evaluation_mode=True)
        if kind == "ema":
            from trl.experimental.sdft.teacher_sync import SyncTeacherModelCallback

            self.add_callback(SyncTeacherModelCallback(teacher_model=teacher, accelerator=self.accelerator))
        return teacher

    def _teacher_prompts(self, inputs: list[dict[str, Any]]) -> list:
        args = self.args
        prompts = []
        for x in inputs:
            try:
                rubric = Rubric.from_any(x[args.rubric_column], pitfall_polarity=args.pitfall_polarity)
            except (RubricError, KeyError) as e:
                raise ValueError(f"a training row has an unusable {args.rubric_column!r} column: {e}") from None
            prompts.append(
                build_teacher_prompt(x["prompt"], rubric, args.teacher_prompt_template, args.rubric_render_style)
            )
        return prompts

    def _check_teacher_prompt_lengths(self, dataset: Dataset) -> None:
        limit = self.args.max_teacher_prompt_length
        for start in range(0, len(dataset), 256):
            rows = dataset.select(range(start, min(start + 256, len(dataset))))
            ids, _, _ = self._tokenize_prompts(self._teacher_prompts(list(rows)))
            for offset, row_ids in enumerate(ids):
                if len(row_ids) > limit:
                    raise ValueError(
                        f"train_dataset row {start + offset}: the teacher prompt (prompt + rubric) is "
                        f"{len(row_ids)} tokens, over max_teacher_prompt_length={limit}. Teacher prompts are never "
                        "truncated: shorten the rubric, raise the limit, or drop the row."
                    )

    # ------------------------------------------------------------------ generation

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        device = self.accelerator.device
        mode = "train" if self.model.training else "eval"

        teacher_prompts = self._teacher_prompts(inputs)
        teacher_ids, _, _ = self._tokenize_prompts(teacher_prompts)
        limit = self.args.max_teacher_prompt_length
        if limit is not None:
            longest = max(len(ids) for ids in teacher_ids)
            if longest > limit:
                raise ValueError(
                    f"a teacher prompt is {longest} tokens, over max_teacher_prompt_length={limit}; teacher prompts "
                    "are never truncated."
                )
        teacher_ids = [torch.tensor(ids, device=device) for ids in teacher_ids]
        output["teacher_prompt_ids"] = pad(
            teacher_ids, padding_value=self._tokenizer.pad_token_id, padding_side="left"
        )
        output["teacher_prompt_mask"] = pad(
            [torch.ones_like(ids) for ids in teacher_ids], padding_value=0, padding_side="left"
        )

        loss_mask = output["completion_mask"]
        if "tool_mask" in output:
            loss_mask = loss_mask * output["tool_mask"]
        if self._thinking_ids is not None:
            keep = self._thinking_keep_mask(output["prompt_ids"], output["prompt_mask"], output["completion_ids"])
            thinking_tokens = self.accelerator.gather((loss_mask * (~keep)).sum()).sum()
            self._metrics[mode]["rgsd/thinking_frac"].append(
                (thinking_tokens / self.accelerator.gather(loss_mask.sum()).sum().clamp(min=1)).item()
            )
            loss_mask = loss_mask * keep
        if self.args.num_loss_tokens_to_skip:
            loss_mask = losses.skip_first_tokens_mask(loss_mask, self.args.num_loss_tokens_to_skip)
        output["rgsd_loss_mask"] = loss_mask.to(output["completion_mask"].dtype)
        # Normaliser for token-sum losses, over the whole generation batch and all processes (like GRPO's).
        output["rgsd_num_items_in_batch"] = self.accelerator.gather(loss_mask.sum()).sum()
        if not self._rgsd_hybrid:
            output["advantages"] = torch.zeros_like(output["advantages"])

        prompt_lengths = self.accelerator.gather(output["teacher_prompt_mask"].sum(1).float())
        self._metrics[mode]["rgsd/teacher_prompt_length"].append(prompt_lengths.mean().item())
        return output

    def _thinking_keep_mask(self, prompt_ids, prompt_mask, completion_ids):
        """Loss mask without thinking blocks; rows whose prompt already opened a block start inside it."""
        start, end = self._thinking_ids
        # Chat templates that end the generation prompt with the start delimiter (e.g. "<think>\n") leave the
        # completion inside the block: a row is open when its prompt's last start comes after its last end.
        real_prompts = prompt_ids.masked_fill(prompt_mask == 0, -1)
        opened = losses.thinking_mask(real_prompts, start, end, open_at_start=False)
        end_ids = torch.tensor(end, device=prompt_ids.device)
        ends_closed = (prompt_ids[:, -len(end) :] == end_ids).all(dim=1)  # a block closed by the prompt's last tokens
        open_rows = (~opened[:, -1]) & (prompt_mask[:, -1] == 1) & ~ends_closed
        closed_keep = losses.thinking_mask(completion_ids, start, end, open_at_start=False)
        if not open_rows.any():
            return closed_keep
        open_keep = losses.thinking_mask(completion_ids, start, end, open_at_start=True)
        return torch.where(open_rows[:, None], open_keep, closed_keep)

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        if self._rgsd_has_rewards:
            return super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        # Pure RGSD: no reward exists; zeros keep GRPO's bookkeeping valid and are never used (advantages are reset).
        return gather(torch.zeros(len(prompts), len(self.reward_funcs), device=self.accelerator.device))

    # ------------------------------------------------------------------ loss

    @staticmethod
    def _last_hidden_state(unwrapped, input_ids, attention_mask, logits_to_keep):
        """Backbone hidden states that predict the last `logits_to_keep` tokens, shape `[B, T, H]`."""
        if is_peft_model(unwrapped):
            unwrapped = unwrapped.base_model.model
        # Positions from the mask, so a left-padded row sees the same positions as the unpadded sequence.
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        hidden = unwrapped.base_model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state
        return hidden[:, -logits_to_keep - 1 : -1, :]

    def _teacher_inputs(self, inputs):
        input_ids = torch.cat([inputs["teacher_prompt_ids"], inputs["completion_ids"]], dim=1)
        attention_mask = torch.cat([inputs["teacher_prompt_mask"], inputs["completion_mask"]], dim=1)
        return input_ids, attention_mask, inputs["completion_ids"].size(1)

    def _separate_teacher_hidden(self, inputs):
        unwrapped = self.accelerator.unwrap_model(self.teacher_model)
        with torch.no_grad():
            # Through the wrapper's forward, so FSDP / DeepSpeed gather the teacher's sharded weights.
            hidden = self._forward_redirection(
                self.teacher_model, unwrapped, self._last_hidden_state, unwrapped, *self._teacher_inputs(inputs)
            )
        return (hidden, *self._separate_teacher_head())

    def _separate_teacher_head(self):
        head = self.accelerator.unwrap_model(self.teacher_model).get_output_embeddings()
        return head.weight, head.bias

    def _self_teacher_hidden(self, unwrapped, inputs):
        ctx = (
            use_adapter(unwrapped, None)
            if is_peft_model(unwrapped) and self.args.teacher_model_kind == "base"
            else nullcontext()
        )
        with torch.no_grad(), ctx, disable_gradient_checkpointing(unwrapped, self.args.gradient_checkpointing_kwargs):
            hidden = self._last_hidden_state(unwrapped, *self._teacher_inputs(inputs))
        head = unwrapped.get_output_embeddings()
        # The parameters themselves: under ZeRO-3 `token_divergence` must gather them (a detached partition is empty).
        # No gradient reaches them through the teacher side.
        return hidden, head.weight, head.bias

    def _rgsd_loss(self, unwrapped, inputs, teacher):
        """Distillation (and, in hybrid mode, GRPO) loss; runs inside the policy wrapper's forward."""
        mode = "train" if self.model.training else "eval"
        if teacher is None:
            t_hidden, t_weight, t_bias = self._self_teacher_hidden(unwrapped, inputs)
        else:
            # Only the hidden states come in through the policy wrapper's forward; the head is looked up again here,
            # because DeepSpeed copies tensor arguments and the copy of a ZeRO-3 partition can no longer be gathered
            t_hidden = teacher
            t_weight, t_bias = self._separate_teacher_head()

        input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        T = inputs["completion_ids"].size(1)
        s_hidden = self._last_hidden_state(unwrapped, input_ids, attention_mask, T)
        head = unwrapped.get_output_embeddings()

        mask = inputs["rgsd_loss_mask"].bool()
        # The sampled tokens' log-probs cost two more vocabulary passes; outside `sampled_token` they only feed the
        # `rgsd/teacher_logratio` metric, so they are computed on the steps that get logged.
        want_logps = self.args.distillation_support == "sampled_token" or self._logged_step()
        chunk_size = self.args.distillation_chunk_size or (128 if s_hidden.device.type == "cpu" else None)
        out = losses.token_divergence(
            s_hidden[mask],
            head.weight,
            head.bias,
            t_hidden[mask].to(s_hidden.dtype),
            t_weight,
            t_bias,
            beta=self.args.distillation_beta,
            support=self.args.distillation_support,
            target_ids=inputs["completion_ids"][mask] if want_logps else None,
            top_k=self.args.distillation_top_k,
            top_k_source=self.args.distillation_top_k_source,
            top_k_tail=self.args.distillation_top_k_tail,
            temperature=self.temperature,
            chunk_size=chunk_size,
        )
        clipped, clipped_mask = losses.clip_token_divergence(
            out.divergence, self.args.token_clip, mode=self.args.token_clip_mode
        )
        finite = out.finite
        per_token = s_hidden.new_zeros(mask.shape, dtype=clipped.dtype)
        per_token = per_token.masked_scatter(mask, torch.where(finite, clipped, torch.zeros_like(clipped)))
        loss_mask = torch.zeros_like(mask)
        loss_mask = loss_mask.masked_scatter(mask, finite)
        loss = losses.reduce_token_loss(
            per_token,
            loss_mask.to(per_token.dtype),
            self.loss_type,
            num_items_in_batch=inputs["rgsd_num_items_in_batch"],
            num_processes=self.accelerator.num_processes,
            max_completion_length=self.max_completion_length,
            gradient_accumulation_steps=self._accumulation_steps() if mode == "train" else 1,
            steps_per_generation=self.args.steps_per_generation if mode == "train" else 1,
        )
        distill_loss = loss.detach()
        if self._rgsd_hybrid:
            grpo_loss = GRPOTrainer._compute_loss(self, unwrapped, inputs)
            w = self.args.distillation_weight
            loss = (1.0 - w) * grpo_loss + w * loss

        f = finite.float()
        stats = torch.stack(
            [
                (out.divergence.detach() * f).nan_to_num().sum(),
                (clipped_mask.float() * f).sum(),
                ((out.teacher_logps - out.student_logps) * f).nan_to_num().sum()
                if out.teacher_logps is not None
                else out.divergence.new_zeros(()),
                (out.entropy * f).nan_to_num().sum() if out.entropy is not None else out.divergence.new_zeros(()),
                f.sum(),
                (~finite).float().sum(),
                distill_loss.float(),
                f.sum() if out.teacher_logps is not None else out.divergence.new_zeros(()),
            ]
        )
        return loss, stats

    def _logged_step(self) -> bool:
        """Whether the optimizer step being computed ends a logging window (always true outside training)."""
        if not self.model.training:
            return True
        every = self.state.logging_steps or self.args.logging_steps
        every = max(1, int(every if every >= 1 else every * max(self.state.max_steps, 1)))
        return (self.state.global_step + 1) % every == 0

    def _accumulation_steps(self) -> int:
        # Set by Trainer inside its training loop; a direct call (tests, notebooks) uses the configured value.
        return getattr(self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps)

    def _compute_loss(self, model, inputs):
        mode = "train" if self.model.training else "eval"
        teacher = self._separate_teacher_hidden(inputs)[0] if self.teacher_model is not None else None
        unwrapped = self.accelerator.unwrap_model(model)
        # One pass through the policy wrapper's forward: DDP prepares its gradient hooks and FSDP / DeepSpeed keep
        # the sharded weights (LM head included) gathered while the divergence is computed from hidden states.
        loss, stats = self._forward_redirection(model, unwrapped, self._rgsd_loss, unwrapped, inputs, teacher)
        totals = self.accelerator.reduce(stats.detach().float(), reduction="sum")
        n = totals[4].clamp(min=1.0)
        metrics = self._metrics[mode]
        metrics["rgsd/divergence"].append((totals[0] / n).item())
        metrics["rgsd/clipped_frac"].append((totals[1] / n).item())
        if totals[7] > 0:
            metrics["rgsd/teacher_logratio"].append((totals[2] / totals[7]).item())
        metrics["entropy"].append((totals[3] / n).item())
        metrics["rgsd/nonfinite_tokens"].append(totals[5].item())
        metrics["rgsd/loss"].append((totals[6] / self.accelerator.num_processes).item())
        return loss

    # ------------------------------------------------------------------ logging and checkpoints

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if not self._rgsd_has_rewards:
            mode = "train" if self.model.training else "eval"
            for key in list(self._metrics[mode]):
                if key in ("reward", "reward_std", "frac_reward_zero_std") or key.startswith("rewards/"):
                    del self._metrics[mode][key]
        super().log(logs, start_time)

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.args.teacher_model_kind == "ema" and self.teacher_model is not None:
            # Every process joins: under ZeRO-3 and FSDP, get_state_dict gathers the shards collectively
            state = self.accelerator.get_state_dict(self.teacher_model)
            if self.args.should_save:
                folder = os.path.join(
                    self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
                )
                torch.save({k: v.detach().cpu() for k, v in state.items()}, os.path.join(folder, TEACHER_STATE_FILE))

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None or self.args.teacher_model_kind != "ema" or self.teacher_model is None:
            return
        self._load_teacher_state(checkpoint)

    def _load_teacher_state(self, checkpoint: str) -> None:
        """Restore the EMA teacher saved in `checkpoint`, on every process, whatever the engine."""
        path = os.path.join(checkpoint, TEACHER_STATE_FILE)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"resuming an EMA-teacher run from {checkpoint}, but it holds no {TEACHER_STATE_FILE}; the EMA "
                "teacher cannot be restored"
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        teacher = self.accelerator.unwrap_model(self.teacher_model)
        if self.is_fsdp_enabled and getattr(self.accelerator, "is_fsdp2", False):
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

            # Full tensors in, each process keeps its shard
            set_model_state_dict(teacher, state, options=StateDictOptions(full_state_dict=True))
        elif is_deepspeed_zero3_enabled():
            import deepspeed

            # Gathered, loaded on rank 0, re-partitioned from it on exit
            with deepspeed.zero.GatheredParameters(list(teacher.parameters()), modifier_rank=0):
                if self.accelerator.is_main_process:
                    teacher.load_state_dict(state)
        else:
            teacher.load_state_dict(state)


def _head_rows(model) -> int:
    # A ZeRO-3 partition has shape [0]; DeepSpeed keeps the real one in `ds_shape`
    weight = model.get_output_embeddings().weight
    return getattr(weight, "ds_shape", weight.shape)[0]


def _hub_id_like(source: str | None) -> bool:
    return bool(source) and source.count("/") == 1 and not os.path.exists(source)


__all__ = ["RGSDConfig", "RGSDTrainer"]
