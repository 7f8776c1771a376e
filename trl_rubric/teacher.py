"""The RGSD teacher: its rubric-conditioned context, and the model that reads it.

This module holds the teacher *context* (how a prompt and its rubric become the teacher's prompt). The teacher
*models* (base / ema / live / separate) are built in [`build_teacher`].
"""

from __future__ import annotations

import re
from typing import Any

import torch
from transformers import TrainerCallback

from .rubric import Rubric

#: Default teacher context, following the structure of the RGSD paper (arXiv 2606.12507) in our own words: the
#: question, the numbered criteria presented as hidden evaluation criteria, then an instruction to answer on its own
#: without referring to them. The wording stays neutral about what a criterion asks for: penalty criteria are rendered
#: under "A good answer avoids:" (see [`Rubric.render`]), so the template must not call every criterion a goal.
DEFAULT_TEACHER_PROMPT_TEMPLATE = (
    "{prompt}\n\n"
    "Hidden evaluation criteria (the reader will not see these):\n"
    "{rubric}\n\n"
    "Answer the question above on your own. Let the criteria guide your answer, "
    "but do not mention, quote or refer to them."
)


_PLACEHOLDER = re.compile(r"\{prompt\}|\{rubric\}")

#: Whether the teacher is shown the rubric's penalty criteria (negative weight): `"show"` lists them under "A good
#: answer avoids:" (the RGSD paper's setting); `"omit"` leaves them out of the teacher's context, since a small model
#: can be primed by a forbidden phrase it reads. Grading always uses the full rubric.
TEACHER_PENALTIES = ("show", "omit")
#: `"omit"`, decided on a real model: on SmolLM2-135M-Instruct a teacher shown the penalties wrote the forbidden
#: phrase in 17% of its answers and scored 0.260 against 0.412 without them (base 0.129), and an RGSD student trained
#: from the teacher without them gained +14.7pp on train prompts against +5.7pp (24 LoRA steps, docs/benchmarks.md).
DEFAULT_TEACHER_PENALTIES = "omit"


def _check_template(template: str) -> None:
    # `{rubric}` may be left out on purpose: a teacher that sees exactly the student's prompt is the no-rubric
    # control (pure self-distillation), which should give zero loss with a live teacher.
    if "{prompt}" not in template:
        raise ValueError(f"teacher_prompt_template must contain {{prompt}}; got {template!r}")


def weave(prompt: str | list[dict[str, Any]], fill) -> str | list[dict[str, Any]]:
    """Apply `fill(text) -> text` to a plain prompt, or to the last user turn of chat messages (other turns kept)."""
    if isinstance(prompt, str):
        return fill(prompt)
    messages = [dict(m) for m in prompt]
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=None)
    if last_user is None:
        raise ValueError(f"conversational prompt has no user turn to put the teacher context in: {prompt!r}")
    content = messages[last_user]["content"]
    if isinstance(content, list):  # multimodal blocks: extend the last text block
        blocks = [dict(b) for b in content]
        text_idx = max((i for i, b in enumerate(blocks) if b.get("type") == "text"), default=None)
        if text_idx is None:
            blocks.append({"type": "text", "text": fill("")})
        else:
            blocks[text_idx]["text"] = fill(blocks[text_idx]["text"])
        messages[last_user]["content"] = blocks
    else:
        messages[last_user]["content"] = fill(content)
    return messages


def check_teacher_penalties(penalties: str) -> None:
    """Raise a `ValueError` naming `penalties` unless it is one of [`TEACHER_PENALTIES`]."""
    if penalties not in TEACHER_PENALTIES:
        raise ValueError(f"teacher_penalties is {penalties!r}; expected one of {TEACHER_PENALTIES}")


def teacher_rubric(rubric: Any, penalties: str = DEFAULT_TEACHER_PENALTIES) -> Rubric:
    """The part of `rubric` the teacher is shown: all of it with `"show"`, its criteria of weight >= 0 with `"omit"`.

    A [`Rubric`] always holds a criterion of positive weight, so `"omit"` never leaves it empty.
    """
    check_teacher_penalties(penalties)
    rubric = Rubric.from_any(rubric)
    if penalties == "omit":
        rubric = Rubric(tuple(c for c in rubric.criteria if c.weight >= 0))
    return rubric


def render_for_teacher(rubric: Any, render_style: str = "numbered", penalties: str = DEFAULT_TEACHER_PENALTIES) -> str:
    """The rubric text the teacher reads: [`teacher_rubric`] rendered by [`Rubric.render`]."""
    return teacher_rubric(rubric, penalties).render(render_style)


def build_teacher_prompt(
    prompt: str | list[dict[str, Any]],
    rubric: Any,
    template: str = DEFAULT_TEACHER_PROMPT_TEMPLATE,
    render_style: str = "numbered",
    penalties: str = DEFAULT_TEACHER_PENALTIES,
) -> str | list[dict[str, Any]]:
    """The teacher's view of a prompt: the student's prompt with the rendered rubric woven in by `template`.

    A plain-string prompt becomes `template.format(prompt=..., rubric=...)`. For chat messages the rubric goes into
    the last user turn; system and earlier turns are kept unchanged.

    Args:
        prompt: The student's prompt, a string or a list of `{role, content}` messages.
        rubric: Anything [`Rubric.from_any`] reads.
        template: Text with `{prompt}` and `{rubric}` placeholders.
        render_style: How the rubric is rendered (see [`Rubric.render`]).
        penalties: `"show"` lists penalty criteria (negative weight) under "A good answer avoids:"; `"omit"` leaves
            them out, so the teacher reads only what a good answer contains (see [`TEACHER_PENALTIES`]).
    """
    _check_template(template)
    rendered = render_for_teacher(rubric, render_style, penalties)

    def fill(text: str) -> str:
        # One pass over the template only, not str.format or chained replace: prompts and rubrics often contain braces
        # (JSON, LaTeX, code), and a literal "{rubric}" inside the user's prompt must stay as written.
        return _PLACEHOLDER.sub(lambda m: text if m.group(0) == "{prompt}" else rendered, template)

    return weave(prompt, fill)


TEACHER_MODEL_KINDS = ("base", "ema", "live")


def teacher_shares_tokenizer(student_tokenizer, teacher_tokenizer) -> str | None:
    """Why two tokenizers cannot share completion token ids, or `None` when they can.

    The teacher scores the student's completion token ids as they are, so both models must map ids to the same
    strings. Comparing the vocabularies is exact and cheap.
    """
    s_vocab, t_vocab = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
    if s_vocab == t_vocab:
        return None
    only_student = sorted(set(s_vocab) - set(t_vocab))[:3]
    differing = [tok for tok in s_vocab if tok in t_vocab and s_vocab[tok] != t_vocab[tok]][:3]
    return (
        f"the teacher's tokenizer differs from the student's ({len(t_vocab)} vs {len(s_vocab)} tokens; "
        f"student-only tokens {only_student}, tokens with different ids {differing}). RGSD scores the student's "
        "token ids with the teacher, so both must use the same tokenizer."
    )


def teacher_chat_template_differs(student_tokenizer, teacher_tokenizer) -> str | None:
    """Why a separate teacher may read its prompts in a format it was not trained on, or `None` when it will not.

    The teacher's prompt is rendered with the student's chat template (both share token ids), so a teacher whose own
    template differs sees a foreign format, which weakens or skews its distributions.
    """
    student = getattr(student_tokenizer, "chat_template", None)
    teacher = getattr(teacher_tokenizer, "chat_template", None)
    if student == teacher:
        return None
    return (
        "the separate teacher's chat template differs from the student's; the teacher is prompted in the student's "
        "template, a format it may not have been trained on. Use a teacher of the same family and chat template, or "
        "check its distributions (rgsd/teacher_logratio) before a long run."
    )


def freeze(model):
    """Put a model in eval mode with no trainable parameters (a teacher never receives gradients)."""
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def _zero3(accelerator) -> bool:
    plugin = getattr(getattr(accelerator, "state", None), "deepspeed_plugin", None)
    return plugin is not None and plugin.zero_stage == 3


class EMATeacherCallback(TrainerCallback):
    """Keeps an EMA teacher, `teacher = (1 - rate) * teacher + rate * policy`, with the average held in fp32.

    TRL's `SyncTeacherModelCallback` updates the teacher in place in its own dtype. In bf16 a step of
    `rate * (policy - teacher)` is usually below half a unit in the last place and rounds away, so most weights never
    move. Here every low-precision parameter has an fp32 shadow that accumulates the exact average, and the teacher
    gets the shadow rounded to its dtype. fp32 and fp64 teachers are updated in place (no shadow).
    """

    def __init__(self, teacher_model, accelerator=None):
        self.teacher_model = teacher_model
        self.accelerator = accelerator
        self.shadow: dict[int, torch.Tensor] = {}

    def update(self, model, rate: float) -> None:
        """One EMA step towards `model`'s current weights."""
        teacher = self.teacher_model
        if self.accelerator is not None:
            model, teacher = self.accelerator.unwrap_model(model), self.accelerator.unwrap_model(teacher)
        if _zero3(self.accelerator) and self._same_partitions(model, teacher):
            self._update_partitions(model, teacher, rate)
        elif _zero3(self.accelerator):
            import deepspeed

            with deepspeed.zero.GatheredParameters(
                list(model.parameters()) + list(teacher.parameters()), modifier_rank=0
            ):
                if deepspeed.comm.get_rank() == 0:
                    self._update(model, teacher, rate)
        else:
            self._update(model, teacher, rate)

    @staticmethod
    def _same_partitions(model, teacher) -> bool:
        pairs = list(zip(teacher.parameters(), model.parameters(), strict=True))
        return all(
            hasattr(t, "ds_tensor") and hasattr(s, "ds_tensor") and t.ds_tensor.shape == s.ds_tensor.shape
            for t, s in pairs
        )

    @torch.no_grad()
    def _update_partitions(self, model, teacher, rate: float) -> None:
        """ZeRO-3: each process averages its own partition of every parameter (`ds_tensor`; the policy and the teacher
        are partitioned alike), with no communication, and holds the fp32 shadow of that partition only. Parameters
        DeepSpeed keeps whole (below its persistence threshold) are averaged whole too, as their full copy is used."""
        for i, (target, source) in enumerate(zip(teacher.parameters(), model.parameters(), strict=True)):
            if not target.is_floating_point():
                continue
            self._lerp(i, target.ds_tensor.data, source.ds_tensor.data, rate)
            if target.data.numel() == target.ds_numel and source.data.numel() == source.ds_numel:
                self._lerp(-1 - i, target.data, source.data, rate)

    @torch.no_grad()
    def _update(self, model, teacher, rate: float) -> None:
        for i, (target, source) in enumerate(zip(teacher.parameters(), model.parameters(), strict=True)):
            if target.is_floating_point():
                self._lerp(i, target.data, source.data, rate)

    def _lerp(self, key: int, target: torch.Tensor, source: torch.Tensor, rate: float) -> None:
        if target.dtype in (torch.float32, torch.float64):
            target.lerp_(source.to(target.dtype), rate)
            return
        shadow = self.shadow.get(key)
        if shadow is None:
            shadow = self.shadow[key] = target.float()
        shadow.lerp_(source.float(), rate)
        target.copy_(shadow)

    def load_shadow(self, saved: dict) -> None:
        device = next(self.teacher_model.parameters()).device
        self.shadow = {int(i): t.to(device) for i, t in saved.items()}

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % args.teacher_sync_steps == 0:
            self.update(kwargs["model"], args.teacher_update_rate)


#: Name of the frozen copy of the initial adapter that scores completions when adapters do not start at zero.
TEACHER_ADAPTER = "rgsd_teacher"


def adapter_starts_at_zero(model, adapter: str = "default") -> bool:
    """Whether the PEFT model with `adapter` active computes the same function as with adapters disabled.

    True only for a LoRA adapter each of whose layers adds nothing: its `B` (or, with no bias, its `A`) all zero,
    which covers the default init of linear layers (B = 0) and of embeddings (A = 0), and `modules_to_save` copies
    still equal to their originals. The adapter's weights are read with PEFT's `get_peft_model_state_dict`, so every
    layer type PEFT names its own way is seen. A loaded adapter, PiSSA / OLoRA / LoftQ / CorDA (which also rewrite the
    base weights), `init_lora_weights=False`, DoRA and other PEFT types give False: with adapters disabled, such a
    model may not be the initial policy.
    """
    from peft import get_peft_model_state_dict
    from peft.utils import ModulesToSaveWrapper

    config = model.peft_config.get(adapter)
    if config is None or str(getattr(config, "peft_type", "")).split(".")[-1] != "LORA":
        return False
    if getattr(config, "use_dora", False):
        return False
    state = get_peft_model_state_dict(model, adapter_name=adapter, save_embedding_layers=False)
    layers: dict[str, dict[str, list[torch.Tensor]]] = {}
    others = False
    for key, value in state.items():
        match = re.search(r"\.lora_(embedding_)?([AB])(\.(weight|bias))?$", key)
        if match is None:
            others = True  # modules_to_save copies (checked below), or an extra kind of weight
            continue
        part = "B_bias" if match.group(2) == "B" and match.group(4) == "bias" else match.group(2)
        layers.setdefault(key[: match.start()], {}).setdefault(part, []).append(value)
    if not layers:
        return False

    def zero(tensors):
        return all(not t.detach().any() for t in tensors)

    for parts in layers.values():
        if not (zero(parts.get("B", [])) and zero(parts.get("B_bias", []))) and not (
            zero(parts.get("A", [])) and zero(parts.get("B_bias", []))
        ):
            return False
    if others:
        wrappers = [m for m in model.modules() if isinstance(m, ModulesToSaveWrapper) and adapter in m.modules_to_save]
        if not wrappers:
            return False
        for wrapper in wrappers:
            original = wrapper.original_module.state_dict()
            copy = wrapper.modules_to_save[adapter].state_dict()
            if original.keys() != copy.keys() or any(not torch.equal(original[k], copy[k]) for k in original):
                return False
    return True


def copy_adapter(model, adapter: str = "default", name: str = TEACHER_ADAPTER) -> str:
    """Add a frozen copy of `adapter` (weights as they are now) under `name`, keeping `adapter` the one trained.

    The weights travel through PEFT's own `get_peft_model_state_dict` / `set_peft_model_state_dict`, so every layer
    PEFT adapts (linear, embedding, `modules_to_save`) is copied, whatever it names its weights. The copy has no LoRA
    dropout (dropout has no weights; the teacher pass must be deterministic). Raises what PEFT
    raises; [`add_frozen_adapter_copy`] and [`add_ema_adapter`] say what it means for their teacher."""
    import copy

    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    config = copy.deepcopy(model.peft_config[adapter])
    if getattr(config, "lora_dropout", 0.0):
        # A teacher scores in the policy's train mode: with the trained adapter's dropout its targets would be noisy
        config.lora_dropout = 0.0
    model.add_adapter(name, config)
    state = get_peft_model_state_dict(model, adapter_name=adapter, save_embedding_layers=False)
    result = set_peft_model_state_dict(model, {k: v.detach().clone() for k, v in state.items()}, adapter_name=name)
    missing = [k for k in getattr(result, "unexpected_keys", []) or []]
    if missing:
        raise ValueError(f"weights not taken by the copy: {missing[:3]}")
    model.set_adapter(adapter)  # the policy keeps training its own adapter; the copy stays frozen
    for param_name, param in model.named_parameters():
        if name in param_name.split("."):
            param.requires_grad_(False)
    return name


def add_frozen_adapter_copy(model, adapter: str = "default", name: str = TEACHER_ADAPTER) -> str:
    """Add a frozen copy of `adapter` (weights as they are now) under `name`, as `GRPOTrainer` keeps its reference."""
    try:
        return copy_adapter(model, adapter, name)
    except Exception as e:
        raise ValueError(
            f"the policy's PEFT adapter {adapter!r} does not start at zero (a loaded adapter or a non-zero init), so "
            f"with adapters disabled it is not the initial policy, and a frozen copy of it could not be made ({e}). "
            "Merge the adapter into the model first, use a zero-initialised LoRA, or pass teacher_model=."
        ) from e


def add_ema_adapter(model, adapter: str = "default", name: str = TEACHER_ADAPTER) -> str:
    """Add the EMA teacher's adapter: a frozen copy of `adapter` as it is now (a zero-initialised LoRA gives a teacher
    equal to the base model), which [`AdapterEMACallback`] then moves towards the trained adapter."""
    try:
        return copy_adapter(model, adapter, name)
    except Exception as e:
        raise ValueError(
            f"teacher_model_kind='ema' keeps the EMA teacher as a second PEFT adapter, a copy of the policy's "
            f"adapter {adapter!r}, and that copy could not be made ({type(e).__name__}: {e}). Use "
            "teacher_model_kind='base' or 'live', or merge the adapter into the model and train without PEFT."
        ) from e


class AdapterEMACallback(TrainerCallback):
    """The EMA teacher of a PEFT policy: a second adapter `teacher_adapter` on the same base weights, moved after
    optimizer steps by `teacher = (1 - rate) * teacher + rate * policy`, adapter weight by adapter weight.

    Both adapters are read once, at init, with PEFT's `get_peft_model_state_dict`, whose keys do not carry the adapter
    name, so the trained adapter's weights pair with the teacher's whatever PEFT calls them (linear and embedding LoRA,
    `modules_to_save` copies such as the LM head). Each pair is kept as two parameter names, looked up at every update
    (rebuilding PEFT's state dicts at every step made the update ~6x slower on SmolLM2-135M), and the teacher's parameter
    is updated in place; a low-precision weight (a bf16 `modules_to_save` copy) gets an fp32 shadow, as in
    [`EMATeacherCallback`]. Not for DeepSpeed ZeRO-3, whose partitioned parameters would be averaged as empty views.
    """

    def __init__(self, model, adapter: str = "default", teacher_adapter: str = TEACHER_ADAPTER):
        self.model, self.adapter, self.teacher_adapter = model, adapter, teacher_adapter
        self.shadow: dict[str, torch.Tensor] = {}
        # PEFT key -> (trained parameter's name, teacher parameter's name); refuses now what cannot be averaged
        self.names: dict[str, tuple[str, str]] = self._pair_names()

    def _pair_names(self) -> dict[str, tuple[str, str]]:
        from peft import get_peft_model_state_dict

        source = get_peft_model_state_dict(self.model, adapter_name=self.adapter, save_embedding_layers=False)
        target = get_peft_model_state_dict(self.model, adapter_name=self.teacher_adapter, save_embedding_layers=False)
        if source.keys() != target.keys():
            raise ValueError(
                f"the EMA teacher adapter {self.teacher_adapter!r} holds other weights than the trained adapter "
                f"{self.adapter!r}: {sorted(source.keys() ^ target.keys())[:3]}"
            )
        by_storage = {(p.data_ptr(), p.shape): n for n, p in self.model.named_parameters() if p.numel()}
        names, copies = {}, []
        for key in target:
            s, t = (by_storage.get((v.data_ptr(), v.shape)) for v in (source[key], target[key]))
            if s is None or t is None or s == t:
                copies.append(key)
            else:
                names[key] = (s, t)
        if copies:
            raise ValueError(
                f"PEFT's state dict gives copies, not the parameters, for the adapters' weights {copies[:3]}, so the "
                "EMA teacher adapter cannot be updated in place. Use teacher_model_kind='base' or 'live'."
            )
        return names

    def _pairs(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        params = dict(self.model.named_parameters())
        return {key: (params[s].data, params[t].data) for key, (s, t) in self.names.items()}

    @torch.no_grad()
    def update(self, rate: float) -> None:
        """One EMA step of the teacher adapter towards the trained adapter's current weights."""
        for key, (source, weight) in self._pairs().items():
            if not weight.is_floating_point():
                continue
            if weight.dtype in (torch.float32, torch.float64):
                weight.lerp_(source.to(weight.dtype), rate)
                continue
            shadow = self.shadow.get(key)
            if shadow is None:
                shadow = self.shadow[key] = weight.float()
            shadow.lerp_(source.float(), rate)
            weight.copy_(shadow)

    def teacher_state(self) -> dict[str, torch.Tensor]:
        """The teacher adapter's weights (PEFT's keys, no adapter name), on CPU, for a checkpoint."""
        return {k: weight.detach().cpu().clone() for k, (_, weight) in self._pairs().items()}

    @torch.no_grad()
    def load_teacher_state(self, state: dict[str, torch.Tensor]) -> None:
        """Write weights saved by [`teacher_state`] back into the teacher adapter."""
        if state.keys() != self.names.keys():
            raise ValueError(
                f"the saved EMA teacher adapter does not match this model's adapter: "
                f"{sorted(state.keys() ^ self.names.keys())[:3]} (was the checkpoint written with another LoRA config?)"
            )
        for key, (_, weight) in self._pairs().items():
            weight.copy_(state[key])

    def load_shadow(self, saved: dict) -> None:
        device = next(self.model.parameters()).device
        self.shadow = {str(k): t.to(device) for k, t in saved.items()}

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % args.teacher_sync_steps == 0:
            self.update(args.teacher_update_rate)
