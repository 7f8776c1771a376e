"""RGSD correct by default (issue 14): logit processing, the initial policy as teacher, clipping, EMA, skipped work."""

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from trl_rubric import losses
from trl_rubric.testing import make_rubric_rows, rgsd_test_config
from trl_rubric.trainers.rgsd import RGSDConfig, RGSDTrainer


def _config(tmp_path, **overrides):
    return rgsd_test_config(tmp_path / "out", **overrides)


def _dataset(n=4):
    return Dataset.from_list(make_rubric_rows(n, conversational=True))


# ---------------------------------------------------------------- logit scale and soft-capping


def _tiny_model_of_class(kind, path, tokenizer_path):
    """A random tiny Cohere / Granite / Gemma-2 model with logit processing strong enough to matter, built offline."""
    import transformers

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    if kind == "cohere":
        config = transformers.CohereConfig(**common, logit_scale=4.0)
        cls = transformers.CohereForCausalLM
    elif kind == "granite":
        config = transformers.GraniteConfig(**common, logits_scaling=0.25)
        cls = transformers.GraniteForCausalLM
    else:
        config = transformers.Gemma2Config(**common, head_dim=8, final_logit_softcapping=0.05)
        cls = transformers.Gemma2ForCausalLM
    torch.manual_seed(1)
    model = cls(config)
    with torch.no_grad():  # logits large enough that scale and cap change the distribution clearly
        model.get_output_embeddings().weight.mul_(20.0)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=True
    )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def _own_logps(path, input_ids, attention_mask, T):
    model = AutoModelForCausalLM.from_pretrained(path)
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
    return torch.log_softmax(logits[:, -T - 1 : -1].float(), -1)


@pytest.mark.parametrize("student_kind,teacher_kind", [("cohere", "granite"), ("gemma2", "cohere"), ("granite", None)])
def test_divergence_uses_each_models_own_logit_scale_and_softcap(
    tiny_model_path, tmp_path, monkeypatch, student_kind, teacher_kind
):
    student = _tiny_model_of_class(student_kind, tmp_path / "student", tiny_model_path)
    teacher = _tiny_model_of_class(teacher_kind, tmp_path / "teacher", tiny_model_path) if teacher_kind else None
    trainer = RGSDTrainer(
        student, args=_config(tmp_path, token_clip=None), train_dataset=_dataset(), teacher_model=teacher
    )
    batch = trainer._generate_and_score_completions(list(_dataset()))
    seen = {}
    real = losses.token_divergence

    def spy(*args, **kwargs):
        seen["args"], seen["kwargs"] = args, kwargs
        return real(*args, **kwargs)

    monkeypatch.setattr(losses, "token_divergence", spy)
    trainer._compute_loss(trainer.model, batch)
    s_hidden, s_w, s_b, t_hidden, t_w, t_b = (a.detach() if a is not None else None for a in seen["args"])
    kw = seen["kwargs"]

    def rgsd_logps(hidden, weight, bias, who):
        logits = hidden @ weight.T + (0 if bias is None else bias)
        scale, cap = kw.get(f"{who}_logit_scale", 1.0), kw.get(f"{who}_final_logit_softcapping")
        return torch.log_softmax(losses.transform_logits(logits, 1.0, scale, cap).float(), -1)

    mask = batch["rgsd_loss_mask"].bool()
    T = batch["completion_ids"].size(1)
    s_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    s_mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    expected_s = _own_logps(student, s_ids, s_mask, T)[mask]
    expected_t = _own_logps(teacher or student, *trainer._teacher_inputs(batch))[mask]
    plain = torch.log_softmax(s_hidden @ s_w.T, -1)
    assert (plain.exp() - expected_s.exp()).abs().sum(-1).max() > 0.05  # the processing matters for this model
    torch.testing.assert_close(rgsd_logps(s_hidden, s_w, s_b, "student"), expected_s, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(rgsd_logps(t_hidden, t_w, t_b, "teacher"), expected_t, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- clipping


def test_signed_clip_is_symmetric_for_the_sampled_token_estimate():
    x = torch.tensor([0.2, -0.2, 0.01, -0.01], requires_grad=True)
    clamped, mask = losses.clip_token_divergence(x, 0.05, "clamp", signed=True)
    assert mask.tolist() == [True, True, False, False]
    assert clamped.tolist() == pytest.approx([0.05, -0.05, 0.01, -0.01])
    (g,) = torch.autograd.grad(clamped.sum(), x)
    assert g.tolist() == [0.0, 0.0, 1.0, 1.0]
    scaled, _ = losses.clip_token_divergence(x, 0.05, "scale", signed=True)
    (g,) = torch.autograd.grad(scaled.sum(), x)
    assert g.tolist() == pytest.approx([0.25, 0.25, 1.0, 1.0])


@pytest.mark.parametrize("mode", ["clamp", "scale", None])
def test_sampled_token_clip_in_exact_expectation(mode):
    # Enumerate every token y ~ p_student: the expected surrogate gradient, against a closed-form reference.
    torch.manual_seed(0)
    z = torch.randn(8, dtype=torch.float64, requires_grad=True)
    teacher = torch.log_softmax(torch.randn(8, dtype=torch.float64) * 2, -1)
    logp = torch.log_softmax(z, -1)
    p = logp.exp().detach()
    tau = 0.5 if mode else None
    expected = torch.zeros_like(z)
    for y in range(8):
        estimate = losses.sampled_token_reverse_kl(logp[y : y + 1], teacher[y : y + 1])
        clipped, _ = losses.clip_token_divergence(estimate, tau, mode or "clamp", signed=True)
        (g,) = torch.autograd.grad(clipped.sum(), z, retain_graph=True)
        expected += p[y] * g
    r = (logp - teacher).detach()
    assert (r > 0.5).any() and (r < -0.5).any()  # both sides are clipped in this setup
    if mode is None:
        (true,) = torch.autograd.grad((logp.exp() * (logp - teacher)).sum(), z)  # ∇ KL(student‖teacher)
        torch.testing.assert_close(expected, true)
        return
    coef = r.clamp(-tau, tau) if mode == "scale" else torch.where(r.abs() > tau, torch.zeros_like(r), r)
    # ∇_z log p(y) = onehot(y) - p
    reference = sum(p[y] * coef[y] * (torch.nn.functional.one_hot(torch.tensor(y), 8) - p) for y in range(8))
    torch.testing.assert_close(expected, reference)


def _confident_teacher(tmp_path, tiny_model_path):
    """A separate teacher whose next-token distributions are near one-hot, so every token's JSD is far above 0.05."""
    from trl_rubric.testing import make_tiny_model

    path = make_tiny_model(tmp_path / "confident", seed=5, tokenizer=AutoTokenizer.from_pretrained(tiny_model_path))
    model = AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(300.0)
    return model


def test_mostly_clipped_window_warns_once_naming_the_fields(tiny_model_path, tmp_path, caplog):
    teacher = _confident_teacher(tmp_path, tiny_model_path)
    trainer = RGSDTrainer(
        tiny_model_path,
        args=_config(tmp_path, max_steps=3, token_clip=0.05),
        train_dataset=_dataset(8),
        teacher_model=teacher,
    )
    with caplog.at_level("WARNING", logger="trl_rubric.trainers.rgsd"):
        trainer.train()
    warnings = [r.getMessage() for r in caplog.records if "had their divergence clipped" in r.getMessage()]
    assert len(warnings) == 1
    assert "token_clip=0.05" in warnings[0] and "token_clip_mode='clamp'" in warnings[0]
    assert trainer.state.log_history[0]["rgsd/clipped_frac"] > 0.5


@pytest.mark.parametrize("tau,clipped", [(0.05, True), (1e6, False)])
def test_per_entry_clip_reports_its_clipped_fraction_and_warns(tiny_model_path, tmp_path, caplog, tau, clipped):
    # per_entry clips inside the divergence; a token counts as clipped when one of its entries went over tau
    teacher = _confident_teacher(tmp_path, tiny_model_path)
    trainer = RGSDTrainer(
        tiny_model_path,
        args=_config(tmp_path, max_steps=2, token_clip=tau, token_clip_mode="per_entry"),
        train_dataset=_dataset(8),
        teacher_model=teacher,
    )
    with caplog.at_level("WARNING", logger="trl_rubric.trainers.rgsd"):
        trainer.train()
    warnings = [r.getMessage() for r in caplog.records if "had their divergence clipped" in r.getMessage()]
    frac = trainer.state.log_history[0]["rgsd/clipped_frac"]
    if clipped:
        assert frac > 0.5 and len(warnings) == 1 and "token_clip_mode='per_entry'" in warnings[0]
    else:
        assert frac == 0 and not warnings


def test_confident_teacher_moves_the_weights_when_the_clip_keeps_gradients(tiny_model_path, tmp_path):
    teacher = _confident_teacher(tmp_path, tiny_model_path)
    trainer = RGSDTrainer(
        tiny_model_path,
        args=_config(tmp_path, token_clip=0.05, token_clip_mode="scale"),
        train_dataset=_dataset(8),
        teacher_model=teacher,
    )
    before = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert trainer.state.log_history[0]["rgsd/clipped_frac"] > 0.5
    assert trainer.state.log_history[0]["grad_norm"] > 0
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())


def test_per_entry_clip_is_refused_with_sampled_token(tmp_path):
    with pytest.raises(ValueError, match="per_entry.*sampled_token"):
        _config(tmp_path, token_clip_mode="per_entry", distillation_support="sampled_token")
    assert _config(tmp_path, token_clip_mode="per_entry").token_clip_mode == "per_entry"


def _logps_of(model, input_ids, attention_mask, T):
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
    return torch.log_softmax(logits[:, -T - 1 : -1].float(), -1)


def test_per_entry_clip_trainer_loss_matches_a_naive_reference_and_learns(tiny_model_path, tmp_path):
    """token_clip_mode='per_entry' reaches the divergence: the trainer's loss is the naive per-entry-clipped JSD."""
    teacher = _confident_teacher(tmp_path, tiny_model_path)
    trainer = RGSDTrainer(
        tiny_model_path,
        args=_config(tmp_path, token_clip=0.05, token_clip_mode="per_entry"),
        train_dataset=_dataset(8),
        teacher_model=teacher,
    )
    batch = trainer._generate_and_score_completions(list(_dataset()))
    loss = trainer._compute_loss(trainer.model, batch)

    T = batch["completion_ids"].size(1)
    s_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    s_mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    p_s = _logps_of(trainer.model, s_ids, s_mask, T).exp()
    p_t = _logps_of(teacher, *trainer._teacher_inputs(batch)).exp()
    m = 0.5 * p_s + 0.5 * p_t  # beta 0.5: each vocabulary entry's JSD term, clipped at tau before the sum
    terms = 0.5 * torch.xlogy(p_t, p_t / m) + 0.5 * torch.xlogy(p_s, p_s / m)  # 0 log 0 = 0: teacher underflows
    per_token = terms.clamp(max=0.05).sum(-1)
    mask = batch["rgsd_loss_mask"].float()
    expected = losses.reduce_token_loss(
        per_token * mask,
        mask,
        trainer.loss_type,
        num_items_in_batch=batch["rgsd_num_items_in_batch"],
        num_processes=1,
        max_completion_length=trainer.max_completion_length,
        gradient_accumulation_steps=trainer.args.gradient_accumulation_steps,
        steps_per_generation=trainer.args.steps_per_generation,
    )
    torch.testing.assert_close(loss.detach(), expected, atol=1e-5, rtol=1e-4)
    assert per_token[mask.bool()].max() > 0.05  # per-token values above tau: a per-token clamp would differ

    before = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert trainer.state.log_history[0]["grad_norm"] > 0
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())


# ---------------------------------------------------------------- smaller ones


@pytest.mark.parametrize("loss_type", ["cispo", "sapo", "vespo"])
def test_policy_only_loss_types_are_refused_by_the_config(tmp_path, loss_type):
    with pytest.raises(ValueError, match=f"loss_type is '{loss_type}'"):
        _config(tmp_path, loss_type=loss_type)


def test_logged_loss_is_not_divided_by_gradient_accumulation(tiny_model_path, tmp_path):
    trainer = RGSDTrainer(tiny_model_path, args=_config(tmp_path, token_clip=None), train_dataset=_dataset())
    batch = trainer._generate_and_score_completions(list(_dataset()))
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    full = trainer._compute_loss(trainer.model, batch).item()
    trainer.current_gradient_accumulation_steps = 4
    scaled = trainer._compute_loss(trainer.model, batch).item()
    assert scaled == pytest.approx(full / 4)
    assert trainer._metrics["train"]["rgsd/loss"][-2:] == pytest.approx([full, full])


# ---------------------------------------------------------------- EMA teacher


def _ema_run(callback_update, steps=200, rate=0.05):
    from types import SimpleNamespace

    torch.manual_seed(0)
    policy = torch.nn.Linear(64, 64).to(torch.bfloat16)
    teacher = torch.nn.Linear(64, 64).to(torch.bfloat16)
    teacher.load_state_dict(policy.state_dict())
    exact = [p.detach().double().clone() for p in teacher.parameters()]
    args = SimpleNamespace(teacher_sync_steps=1, teacher_update_rate=rate)
    for step in range(1, steps + 1):
        with torch.no_grad():  # realistic optimizer steps: about 1e-3 relative per step
            for p in policy.parameters():
                p.add_(torch.randn_like(p) * p.abs().mean() * 1e-3)
        callback_update(policy, teacher, args, step)
        for e, p in zip(exact, policy.parameters(), strict=True):
            e.mul_(1 - rate).add_(p.detach().double(), alpha=rate)
    return teacher, exact, policy


def test_bf16_ema_teacher_tracks_a_float64_ema():
    from types import SimpleNamespace

    from trl_rubric.teacher import EMATeacherCallback

    callbacks = {}

    def ours(policy, teacher, args, step):
        cb = callbacks.setdefault("cb", EMATeacherCallback(teacher))
        cb.on_step_end(args, SimpleNamespace(global_step=step), None, model=policy)

    teacher, exact, _ = _ema_run(ours)
    for got, want in zip(teacher.parameters(), exact, strict=True):
        # the exact average, rounded once to bf16
        torch.testing.assert_close(got.double(), want.to(torch.bfloat16).double(), atol=0, rtol=0)

    def in_place(policy, teacher, args, step):  # TRL's in-place update, for contrast
        for t, p in zip(teacher.parameters(), policy.parameters(), strict=True):
            t.data.mul_(1 - args.teacher_update_rate).add_(p.data, alpha=args.teacher_update_rate)

    stale, exact, _ = _ema_run(in_place)
    wrong = sum(
        (t.double() != e.to(torch.bfloat16).double()).sum().item()
        for t, e in zip(stale.parameters(), exact, strict=True)
    )
    assert wrong / sum(p.numel() for p in stale.parameters()) > 0.3


# ---------------------------------------------------------------- the base teacher is the initial policy


def _step0_loss(trainer):
    """Loss at step 0 with the teacher shown exactly the student's prompt: zero iff teacher == initial policy."""
    batch = trainer._generate_and_score_completions(list(_dataset()))
    with torch.no_grad():
        return trainer._compute_loss(trainer.model, batch).item()


_SAME_VIEW = dict(teacher_prompt_template="{prompt}", token_clip=None)


def test_in_memory_model_is_copied_not_reloaded(tiny_model_path, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    with torch.no_grad():  # an in-memory change the checkpoint on disk does not have (an SFT stage, merged adapters)
        for p in model.model.layers[0].parameters():
            p.add_(torch.randn_like(p) * 0.5)
    trainer = RGSDTrainer(model, args=_config(tmp_path, **_SAME_VIEW), train_dataset=_dataset())
    student = trainer.model.state_dict()
    assert all(torch.equal(v, student[k]) for k, v in trainer.teacher_model.state_dict().items())
    assert _step0_loss(trainer) < 1e-6


def test_uncopyable_model_object_gives_a_clear_error(tiny_model_path, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)

    def refuse(memo):
        raise RuntimeError("cannot pickle this")

    model.__deepcopy__ = refuse  # as a model with unpicklable state would
    with pytest.raises(ValueError, match="could not be copied.*save_pretrained"):
        RGSDTrainer(model, args=_config(tmp_path), train_dataset=_dataset())


def test_nonzero_lora_init_keeps_a_frozen_copy_of_the_initial_adapter(tiny_model_path, tmp_path):
    from peft import LoraConfig

    peft_config = LoraConfig(
        r=4, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type="CAUSAL_LM"
    )
    trainer = RGSDTrainer(
        tiny_model_path, args=_config(tmp_path, **_SAME_VIEW), train_dataset=_dataset(), peft_config=peft_config
    )
    assert trainer._teacher_adapter == "rgsd_teacher" and trainer.teacher_model is None
    assert _step0_loss(trainer) < 1e-6
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all(".default." in n for n in trainable)
    # the copy stays frozen through training (with the rubric shown again, so there is something to learn)
    from trl_rubric.teacher import DEFAULT_TEACHER_PROMPT_TEMPLATE
    from trl_rubric.teacher_context import build_teacher_context

    trainer.args.teacher_prompt_template = DEFAULT_TEACHER_PROMPT_TEMPLATE
    trainer.teacher_context = build_teacher_context(trainer.args)  # the provider reads the template when built
    copy_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if ".rgsd_teacher." in n}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    assert all(torch.equal(v, after[n]) for n, v in copy_before.items())
    assert any(not torch.equal(v, after[n.replace(".rgsd_teacher.", ".default.")]) for n, v in copy_before.items())


def test_loaded_peft_model_teacher_is_the_loaded_adapter(tiny_model_path, tmp_path):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_path),
        LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    trainer = RGSDTrainer(model, args=_config(tmp_path, **_SAME_VIEW), train_dataset=_dataset())
    assert trainer._teacher_adapter == "rgsd_teacher"
    assert _step0_loss(trainer) < 1e-6


def test_default_lora_needs_no_copy(tiny_model_path, tmp_path):
    from peft import LoraConfig

    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = RGSDTrainer(
        tiny_model_path, args=_config(tmp_path, **_SAME_VIEW), train_dataset=_dataset(), peft_config=peft_config
    )
    assert trainer._teacher_adapter is None
    assert _step0_loss(trainer) < 1e-6


def test_loaded_lora_on_embeddings_is_copied_into_the_teacher(tiny_model_path, tmp_path):
    # PEFT names embedding LoRA weights `lora_embedding_A.default` (no trailing dot): a name match missed them, so the
    # "base" teacher's copy kept its own fresh init and was not the initial policy
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_path),
        LoraConfig(r=4, lora_alpha=32, target_modules=["embed_tokens", "q_proj"], init_lora_weights=False),
    )
    trainer = RGSDTrainer(model, args=_config(tmp_path, **_SAME_VIEW), train_dataset=_dataset())
    assert trainer._teacher_adapter == "rgsd_teacher"
    params = dict(trainer.model.named_parameters())
    copied = [n for n in params if n.endswith("lora_embedding_B.rgsd_teacher")]
    assert copied and all(torch.equal(params[n], params[n.replace("rgsd_teacher", "default")]) for n in copied)
    assert not any(params[n].requires_grad for n in copied)
    assert _step0_loss(trainer) < 1e-6


@pytest.mark.parametrize("init", [True, False])
def test_peft_model_passed_in_gets_a_teacher_copy_only_when_its_adapter_changes_the_model(
    tiny_model_path, tmp_path, init
):
    # LoRA's default init adds nothing (B = 0 on linear layers, A = 0 on embeddings): no copy, no rgsd_teacher/ saved
    from peft import LoraConfig, get_peft_model

    from trl_rubric.teacher import adapter_starts_at_zero

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_path),
        LoraConfig(r=4, lora_alpha=32, target_modules=["embed_tokens", "q_proj"], init_lora_weights=init),
    )
    assert adapter_starts_at_zero(model) is init
    trainer = RGSDTrainer(model, args=_config(tmp_path, **_SAME_VIEW), train_dataset=_dataset())
    assert trainer._teacher_adapter == (None if init else "rgsd_teacher")
    assert _step0_loss(trainer) < 1e-6
    trainer.save_model(str(tmp_path / "saved"))
    assert (tmp_path / "saved" / "adapter_model.safetensors").exists()
    assert (tmp_path / "saved" / "rgsd_teacher").exists() is (not init)


def test_trained_modules_to_save_copy_does_not_start_at_zero(tiny_model_path):
    from peft import LoraConfig, get_peft_model

    from trl_rubric.teacher import adapter_starts_at_zero

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_path),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], modules_to_save=["lm_head"]),
    )
    assert adapter_starts_at_zero(model)
    with torch.no_grad():
        model.base_model.model.lm_head.modules_to_save["default"].weight.add_(0.1)
    assert not adapter_starts_at_zero(model)


def test_peft_modules_to_save_lm_head_teacher_reads_the_original_head(tmp_path):
    from peft import LoraConfig

    from trl_rubric.testing import make_tiny_model

    path = make_tiny_model(tmp_path / "untied", tie_word_embeddings=False)
    initial_head = AutoModelForCausalLM.from_pretrained(path).lm_head.weight.detach().clone()
    peft_config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"], task_type="CAUSAL_LM"
    )
    trainer = RGSDTrainer(
        path, args=_config(tmp_path, token_clip=None), train_dataset=_dataset(8), peft_config=peft_config
    )
    trainer.train()
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    trained_head = unwrapped.get_output_embeddings().weight.detach()
    assert not torch.equal(trained_head, initial_head)  # the trainable copy moved
    batch = trainer._generate_and_score_completions(list(_dataset()))
    _, teacher_head, _ = trainer._self_teacher_hidden(unwrapped, batch)
    torch.testing.assert_close(teacher_head, initial_head, atol=0, rtol=0)


# ---------------------------------------------------------------- no GRPO work in pure RGSD


def _count_scoring_forwards(trainer):
    """Forward passes of the policy made while building a generation batch, outside `generate`."""
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    state = {"generating": False, "forwards": 0}
    real_generate = unwrapped.generate

    def generate(*args, **kwargs):
        state["generating"] = True
        try:
            return real_generate(*args, **kwargs)
        finally:
            state["generating"] = False

    def count(module, args, kwargs):
        if not state["generating"]:
            state["forwards"] += 1

    unwrapped.generate = generate
    handle = unwrapped.register_forward_pre_hook(count, with_kwargs=True)
    try:
        trainer._generate_and_score_completions(list(_dataset(4)))
    finally:
        handle.remove()
        del unwrapped.generate
    return state["forwards"]


def test_pure_rgsd_skips_the_old_logprob_forward(tiny_model_path, tmp_path):
    # steps_per_generation > gradient_accumulation_steps: GRPO would score the completions once more, for nothing
    args = _config(tmp_path, steps_per_generation=2, per_device_train_batch_size=2)
    trainer = RGSDTrainer(tiny_model_path, args=args, train_dataset=_dataset())
    assert _count_scoring_forwards(trainer) == 0
    assert trainer.vllm_importance_sampling_correction is False  # nor vLLM's importance-sampling correction


def test_hybrid_mode_keeps_the_old_logprob_forward(tiny_model_path, tmp_path):
    args = _config(
        tmp_path, steps_per_generation=2, per_device_train_batch_size=2, num_generations=2, distillation_weight=0.5
    )
    trainer = RGSDTrainer(
        tiny_model_path,
        reward_funcs=lambda completions, **kw: [1.0] * len(completions),
        args=args,
        train_dataset=_dataset(),
    )
    assert _count_scoring_forwards(trainer) == 1


def test_grpo_beta_is_refused_in_pure_rgsd(tmp_path):
    with pytest.raises(ValueError, match="beta is 0.04.*distillation_beta"):
        _config(tmp_path, beta=0.04)
    assert _config(tmp_path, beta=0.04, distillation_weight=0.5, num_generations=2).beta == 0.04


class _ScriptedJudge:
    """A judge with fixed verdicts; a `None` verdict is unknown, and `verdicts=None` fails on every criterion."""

    def __new__(cls, verdicts):
        from trl_rubric.judges.base import Grade, RubricJudge

        class Scripted(RubricJudge):
            async def _grade(self, prompt, response, rubric):
                return Grade.from_verdicts(rubric, [None] * len(rubric) if verdicts is None else verdicts)

        return Scripted()


def _reward(verdicts, rubric, **kwargs):
    import asyncio

    from trl_rubric import RubricReward

    logged = {}
    rewards = asyncio.run(
        RubricReward(_ScriptedJudge(verdicts), **kwargs)(
            prompts=["q"], completions=["a"], rubric=[rubric], log_metric=lambda k, v: logged.__setitem__(k, v)
        )
    )
    return rewards[0], logged


@pytest.mark.parametrize(
    "rubric,verdicts",
    [
        (["a", "b", "c"], [True, None, None]),  # one of three criteria graded
        (
            [{"text": "a", "weight": 5}, {"text": "b", "weight": 5}, {"text": "harm", "weight": -10}],
            [True, True, None],
        ),
    ],
)
def test_partly_graded_completion_has_an_unknown_reward_and_is_counted(rubric, verdicts):
    reward, logged = _reward(verdicts, rubric)
    assert reward is None
    assert logged["judge/under_graded"] == 1.0 and logged["judge/graded_frac"] < 0.75
    scored, _ = _reward(verdicts, rubric, min_graded_fraction=0.0)
    assert scored == 1.0  # what the known criteria alone say: the inflated score the minimum guards against
    full, logged = _reward([True] * len(rubric), rubric)
    assert logged["judge/under_graded"] == 0.0 and logged["judge/graded_frac"] == 1.0


def test_evaluation_reports_the_graded_fraction():
    from trl_rubric.evaluation.generation import Generations
    from trl_rubric.evaluation.grading import _grade_examples

    rubric = [{"text": "a", "weight": 3}, {"text": "b", "weight": 1}]
    result = _grade_examples(
        _ScriptedJudge([True, None]), ["q"], Generations(["a"], [[1]]), [rubric], None, False, 0, 0.95, 0, {}
    )
    assert result.examples[0]["graded_fraction"] == pytest.approx(0.75)


def test_hybrid_judge_failure_is_unknown_not_zero(tiny_model_path, tmp_path):
    from trl_rubric import RubricReward

    judge = RubricReward(_ScriptedJudge(None))
    args = _config(tmp_path, num_generations=2, distillation_weight=0.5)
    trainer = RGSDTrainer(
        tiny_model_path,
        reward_funcs=[judge, lambda completions, **kw: [1.0] * len(completions)],
        args=args,
        train_dataset=_dataset(),
    )
    rows = list(_dataset(2))
    completions = [[{"role": "assistant", "content": "fine"}]] * 2
    rewards = trainer._calculate_rewards(rows, [r["prompt"] for r in rows], completions, [[1], [1]])
    assert torch.isnan(rewards).all()  # not [nan, 1.0], which TRL's nansum would count as a judge score of 0


def test_separate_teacher_with_another_chat_template_warns(tiny_model_path, tmp_path, caplog):
    from trl_rubric.testing import make_tiny_model

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    tokenizer.chat_template = "{% for m in messages %}<<{{ m['role'] }}>> {{ m['content'] }}{% endfor %}"
    teacher = make_tiny_model(tmp_path / "other-template", seed=3, tokenizer=tokenizer)
    with caplog.at_level("WARNING", logger="trl_rubric.trainers.rgsd"):
        RGSDTrainer(tiny_model_path, args=_config(tmp_path), train_dataset=_dataset(), teacher_model=teacher)
    assert any("chat template differs" in r.getMessage() for r in caplog.records)


def test_default_is_no_clip_and_every_token_gives_a_gradient(tiny_model_path, tmp_path):
    """No clip by default (decided on SmolLM2, docs/benchmarks.md): the loss is the plain mean JSD and no token is
    counted as clipped, even with a teacher far from the student."""
    assert RGSDConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False).token_clip is None
    teacher = _confident_teacher(tmp_path, tiny_model_path)
    trainer = RGSDTrainer(
        tiny_model_path, args=_config(tmp_path, max_steps=1), train_dataset=_dataset(4), teacher_model=teacher
    )
    trainer.train()
    log = trainer.state.log_history[0]
    assert log["rgsd/clipped_frac"] == 0 and log["rgsd/loss"] == pytest.approx(log["rgsd/divergence"], rel=1e-4)
    assert log["rgsd/divergence"] > 0.05  # above the old clamp, so a 0.05 clip would have changed the loss
