import inspect
import logging

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer

from trl_rubric.teacher import build_teacher_prompt
from trl_rubric.testing import make_rubric_rows, make_tiny_model, make_tokenizer, rgsd_test_config
from trl_rubric.trainers.rgsd import RGSDConfig, RGSDTrainer


def _config(tmp_path, **overrides):
    return rgsd_test_config(tmp_path / "out", **overrides)


def _dataset(n=8, conversational=True):
    return Dataset.from_list(make_rubric_rows(n, conversational=conversational))


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _changed(before, model):
    after = model.state_dict()
    return [k for k in before if not torch.equal(before[k], after[k].detach().cpu())]


# ---------------------------------------------------------------- config


def test_config_allows_one_generation_and_keeps_grpo_checks():
    cfg = RGSDConfig(output_dir="/tmp/x", use_cpu=True, bf16=False, per_device_train_batch_size=3)
    assert cfg.num_generations == 1
    assert cfg.generation_batch_size == 3
    with pytest.raises(ValueError, match="at least 2 generations"):
        GRPOConfig(output_dir="/tmp/x", use_cpu=True, bf16=False, num_generations=1, per_device_train_batch_size=2)
    # the checks TRL runs after its generation check still run for RGSD
    with pytest.raises(ValueError, match="must be less than"):
        RGSDConfig(
            output_dir="/tmp/x",
            use_cpu=True,
            bf16=False,
            vllm_importance_sampling_clip_min=2.0,
            vllm_importance_sampling_clip_max=1.0,
        )


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("teacher_model_kind", "frozen", "teacher_model_kind is 'frozen'"),
        ("distillation_support", "all", "distillation_support is 'all'"),
        ("distillation_beta", 1.5, "distillation_beta is 1.5"),
        ("token_clip", -1.0, "token_clip is -1.0"),
        ("rubric_render_style", "fancy", "rubric_render_style is 'fancy'"),
        ("teacher_penalties", "hide", "teacher_penalties is 'hide'"),
        ("teacher_prompt_template", "no placeholders", "must contain {prompt}"),
    ],
)
def test_config_rejects_bad_values_by_name(field, value, message):
    with pytest.raises(ValueError, match=message):
        RGSDConfig(output_dir="/tmp/x", use_cpu=True, bf16=False, **{field: value})


def test_bad_rubric_row_fails_before_training(tiny_model_path, tmp_path):
    rows = make_rubric_rows(4)
    rows[2]["rubric"] = [{"text": "a", "weight": -1.0, "category": None, "title": None, "tags": []}]
    with pytest.raises(
        ValueError, match="train_dataset row 2: column 'rubric': rubric has no criterion with a positive"
    ):
        RGSDTrainer(tiny_model_path, args=_config(tmp_path), train_dataset=Dataset.from_list(rows))
    with pytest.raises(ValueError, match="has no 'rubric' column"):
        RGSDTrainer(tiny_model_path, args=_config(tmp_path), train_dataset=Dataset.from_list([{"prompt": "hi"}]))


def test_grpo_config_is_refused_with_a_hint(tiny_model_path, tmp_path):
    args = GRPOConfig(
        output_dir=str(tmp_path), use_cpu=True, bf16=False, per_device_train_batch_size=2, num_generations=2
    )
    with pytest.raises(TypeError, match="Replace GRPOConfig with RGSDConfig"):
        RGSDTrainer(tiny_model_path, args=args, train_dataset=_dataset())


def test_teacher_prompt_length_limit_names_the_row(tiny_model_path, tmp_path):
    rows = make_rubric_rows(4)
    rows[3]["rubric"] = [{"text": "mention " + "fever " * 200, "weight": 1.0}]
    with pytest.raises(ValueError, match="train_dataset row 3: the teacher prompt"):
        RGSDTrainer(
            tiny_model_path,
            args=_config(tmp_path, max_teacher_prompt_length=256),
            train_dataset=Dataset.from_list(rows),
        )


# ---------------------------------------------------------------- alignment


def _manual_logps(model, tokenizer, prompt, completion_ids):
    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1]
    return torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(completion_ids)[:, None])[:, 0]


def test_teacher_and_student_logps_match_manual_forwards(tiny_model_path, tmp_path):
    dataset = _dataset(4)
    trainer = RGSDTrainer(tiny_model_path, args=_config(tmp_path), train_dataset=dataset)
    rows = list(dataset)
    batch = trainer._generate_and_score_completions(rows)
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    t_hidden, t_weight, _ = trainer._separate_teacher_hidden(batch)
    T = batch["completion_ids"].size(1)
    s_hidden = trainer._last_hidden_state(
        unwrapped,
        torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1),
        torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1),
        T,
    ).detach()
    head = unwrapped.get_output_embeddings().weight
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    checked = 0
    for i, row in enumerate(rows):
        n = int(batch["completion_mask"][i].sum())
        completion = batch["completion_ids"][i, :n].tolist()
        teacher_prompt = build_teacher_prompt(row["prompt"], row["rubric"])
        expected_t = _manual_logps(model, tokenizer, teacher_prompt, completion)
        expected_s = _manual_logps(model, tokenizer, row["prompt"], completion)
        got_t = torch.log_softmax(t_hidden[i, :n] @ t_weight.T, -1).gather(-1, torch.tensor(completion)[:, None])[:, 0]
        got_s = torch.log_softmax(s_hidden[i, :n] @ head.T, -1).gather(-1, torch.tensor(completion)[:, None])[:, 0]
        torch.testing.assert_close(got_t, expected_t, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(got_s, expected_s, atol=1e-4, rtol=1e-4)
        checked += n
    assert checked > 0
    # the teacher really sees the rubric, the student does not
    tok = trainer.processing_class
    teacher_text = tok.decode(batch["teacher_prompt_ids"][0][batch["teacher_prompt_mask"][0].bool()])
    student_text = tok.decode(batch["prompt_ids"][0][batch["prompt_mask"][0].bool()])
    first_criterion = rows[0]["rubric"][0]["text"]
    assert first_criterion in teacher_text and first_criterion not in student_text


# ---------------------------------------------------------------- loss behaviour


def test_live_teacher_without_rubric_gives_zero_loss_and_gradient(tiny_model_path, tmp_path):
    args = _config(tmp_path, teacher_model_kind="live", teacher_prompt_template="{prompt}", token_clip=None)
    trainer = RGSDTrainer(tiny_model_path, args=args, train_dataset=_dataset(4))
    batch = trainer._generate_and_score_completions(list(_dataset(4)))
    trainer.model.zero_grad()
    loss = trainer._compute_loss(trainer.model, batch)
    loss.backward()
    assert abs(loss.item()) < 1e-6
    grads = [p.grad.abs().max().item() for p in trainer.model.parameters() if p.grad is not None]
    assert grads and max(grads) < 1e-6


def test_rubric_teacher_gives_positive_loss_and_gradient(tiny_model_path, tmp_path):
    trainer = RGSDTrainer(tiny_model_path, args=_config(tmp_path, token_clip=None), train_dataset=_dataset(4))
    batch = trainer._generate_and_score_completions(list(_dataset(4)))
    loss = trainer._compute_loss(trainer.model, batch)
    loss.backward()
    assert loss.item() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.model.parameters())
    # the frozen copy never gets gradients
    assert all(p.grad is None and not p.requires_grad for p in trainer.teacher_model.parameters())


def test_nonfinite_teacher_tokens_are_masked_and_counted(tiny_model_path, tmp_path):
    trainer = RGSDTrainer(tiny_model_path, args=_config(tmp_path), train_dataset=_dataset(4))
    trainer.model.train()
    batch = trainer._generate_and_score_completions(list(_dataset(4)))
    hidden, weight, bias = trainer._separate_teacher_hidden(batch)
    mask = batch["rgsd_loss_mask"].bool()
    poisoned = hidden.clone()
    rows, cols = mask.nonzero(as_tuple=True)
    poisoned[rows[0], cols[0]] = float("inf")
    poisoned[rows[-1], cols[-1]] = float("nan")
    trainer._separate_teacher_hidden = lambda inputs: (poisoned, weight, bias)
    trainer.model.zero_grad()
    loss = trainer._compute_loss(trainer.model, batch)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in trainer.model.parameters() if p.grad is not None)
    assert trainer._metrics["train"]["rgsd/nonfinite_tokens"][-1] == 2


# ---------------------------------------------------------------- training runs


def test_two_step_run_logs_rgsd_metrics_and_calls_no_reward(tiny_model_path, tmp_path):
    trainer = RGSDTrainer(tiny_model_path, args=_config(tmp_path), train_dataset=_dataset())
    before = _weights(trainer.model)
    trainer.train()
    assert _changed(before, trainer.model)
    logs = [entry for entry in trainer.state.log_history if "rgsd/divergence" in entry]
    assert len(logs) == 2
    for key in ("rgsd/loss", "rgsd/clipped_frac", "rgsd/teacher_logratio", "completions/mean_length"):
        assert key in logs[0]
    assert not any(key.startswith("rewards/") or key == "reward" for key in logs[0])


def test_gradient_accumulation_and_steps_per_generation(tiny_model_path, tmp_path):
    args = _config(tmp_path, per_device_train_batch_size=2, gradient_accumulation_steps=2, steps_per_generation=4)
    trainer = RGSDTrainer(tiny_model_path, args=args, train_dataset=_dataset())
    calls = []
    original = trainer._generate_and_score_completions

    def counting(inputs):
        calls.append(len(inputs))
        return original(inputs)

    trainer._generate_and_score_completions = counting
    trainer.train()
    assert trainer.state.global_step == 2
    assert calls == [8]  # one generation round of 2 x 4 prompts feeds both optimizer steps


def test_mask_thinking_drops_thinking_tokens_from_the_loss(tmp_path):
    tokenizer = make_tokenizer(corpus=["<think> step check </think> answer " * 5] * 50)
    path = make_tiny_model(tmp_path / "think-model", tokenizer=tokenizer)
    args = _config(tmp_path, mask_thinking=True, max_completion_length=12)
    trainer = RGSDTrainer(path, args=args, train_dataset=_dataset(4))
    trainer.model.train()
    start = tokenizer.encode("<think>", add_special_tokens=False)
    end = tokenizer.encode("</think>", add_special_tokens=False)
    forced = torch.tensor([start + tokenizer.encode(" step", add_special_tokens=False) + end + [5, 6]])
    trainer_batch = trainer._generate_and_score_completions(list(_dataset(4)))
    ids = trainer_batch["completion_ids"].clone()
    n = min(ids.size(1), forced.size(1))
    ids[0, :n] = forced[0, :n]
    from trl_rubric import losses

    keep = losses.thinking_mask(ids, start, end)
    inside = len(start) + 1 + len(end)
    assert not keep[0, : min(inside, n)].any()
    assert keep[0, inside:n].all()
    assert "rgsd/thinking_frac" in trainer._metrics["train"]


def test_learning_lowers_divergence_on_a_held_batch(tiny_model_path, tmp_path):
    # A random tiny model barely reacts to the rubric, so the teacher here is another random model with the same
    # tokenizer: a large, known gap the student must close.
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    teacher = make_tiny_model(tmp_path / "teacher", seed=11, tokenizer=tokenizer)
    dataset = _dataset(8)
    args = _config(tmp_path, max_steps=20, learning_rate=3e-3, per_device_train_batch_size=8, token_clip=None)
    trainer = RGSDTrainer(tiny_model_path, args=args, train_dataset=dataset, teacher_model=teacher)
    trainer.model.train()
    held = trainer._generate_and_score_completions(list(dataset))

    def held_divergence():
        with torch.no_grad():
            trainer._compute_loss(trainer.model, held)
        return trainer._metrics["train"]["rgsd/divergence"][-1]

    before = held_divergence()
    trainer.train()
    after = held_divergence()
    assert after < 0.8 * before, (before, after)


def test_peft_base_teacher_disables_adapters_without_a_copy(tiny_model_path, tmp_path):
    from peft import LoraConfig

    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = RGSDTrainer(tiny_model_path, args=_config(tmp_path), train_dataset=_dataset(), peft_config=peft_config)
    assert trainer.teacher_model is None
    n_models = sum(isinstance(m, torch.nn.Embedding) for m in trainer.model.modules())
    assert n_models == 1  # one embedding table: no second copy of the model
    before = _weights(trainer.model)
    trainer.train()
    changed = _changed(before, trainer.model)
    assert changed and all("lora_" in k for k in changed)
    # with adapters disabled the teacher is the untouched base model
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    batch = trainer._generate_and_score_completions(list(_dataset(4)))
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    hidden, _, _ = trainer._self_teacher_hidden(unwrapped, batch)
    expected = trainer._last_hidden_state(base, *trainer._teacher_inputs(batch))
    torch.testing.assert_close(hidden, expected.detach(), atol=1e-5, rtol=1e-5)


def test_ema_teacher_moves_and_is_saved_in_checkpoints(tiny_model_path, tmp_path):
    args = _config(tmp_path, teacher_model_kind="ema", teacher_update_rate=0.5, save_strategy="steps", save_steps=2)
    trainer = RGSDTrainer(tiny_model_path, args=args, train_dataset=_dataset())
    initial = _weights(trainer.teacher_model)
    trainer.train()
    assert _changed(initial, trainer.teacher_model)
    saved = torch.load(tmp_path / "out" / "checkpoint-2" / "rgsd_teacher.pt", weights_only=True)
    current = trainer.teacher_model.state_dict()
    assert all(torch.equal(saved[k], current[k]) for k in saved)


def test_separate_teacher_with_another_tokenizer_is_refused(tiny_model_path, tmp_path):
    other = make_tiny_model(tmp_path / "other", tokenizer=make_tokenizer(vocab_size=400, seed=3))
    with pytest.raises(ValueError, match="teacher's tokenizer differs"):
        RGSDTrainer(tiny_model_path, args=_config(tmp_path), train_dataset=_dataset(), teacher_model=other)


def test_separate_teacher_model_is_used(tiny_model_path, tmp_path):
    teacher_path = make_tiny_model(
        tmp_path / "teacher", seed=7, hidden_size=48, tokenizer=AutoTokenizer.from_pretrained(tiny_model_path)
    )
    trainer = RGSDTrainer(
        tiny_model_path, args=_config(tmp_path), train_dataset=_dataset(), teacher_model=teacher_path
    )
    assert trainer.teacher_model.config.hidden_size == 48
    trainer.train()
    assert trainer.state.global_step == 2


# ---------------------------------------------------------------- drop-in


def test_grpo_script_runs_with_only_class_names_changed(tiny_model_path, tmp_path, caplog):
    def script(config_cls, trainer_cls):
        def reward_len(completions, **kwargs):
            return [-abs(10 - len(c[0]["content"])) / 10 for c in completions]

        args = config_cls(
            output_dir=str(tmp_path / config_cls.__name__),
            use_cpu=True,
            bf16=False,
            per_device_train_batch_size=4,
            num_generations=2,
            max_completion_length=8,
            max_steps=2,
            report_to="none",
            logging_steps=1,
            save_strategy="no",
        )
        trainer = trainer_cls(model=tiny_model_path, reward_funcs=reward_len, args=args, train_dataset=_dataset())
        trainer.train()
        return trainer

    grpo = script(GRPOConfig, GRPOTrainer)
    rgsd = script(RGSDConfig, RGSDTrainer)
    assert grpo.state.global_step == rgsd.state.global_step == 2
    # with reward functions, RGSD logs them for monitoring
    assert any("rewards/reward_len/mean" in e for e in rgsd.state.log_history)
    assert any("rgsd/divergence" in e for e in rgsd.state.log_history)


def test_hybrid_mode_mixes_grpo_and_distillation(tiny_model_path, tmp_path):
    def reward_len(completions, **kwargs):
        return [float(len(c[0]["content"])) for c in completions]

    args = _config(tmp_path, num_generations=2, distillation_weight=0.5)
    trainer = RGSDTrainer(tiny_model_path, reward_funcs=reward_len, args=args, train_dataset=_dataset())
    batch = trainer._generate_and_score_completions(list(_dataset(2)) * 2)
    assert batch["advantages"].abs().sum() > 0  # group advantages are kept in hybrid mode
    mixed = trainer._compute_loss(trainer.model, batch).item()
    trainer.args.distillation_weight = 1.0
    trainer._rgsd_hybrid = False
    pure = trainer._compute_loss(trainer.model, batch).item()
    trainer.args.distillation_weight = 0.5
    trainer._rgsd_hybrid = True
    grpo = GRPOTrainer._compute_loss(trainer, trainer.model, batch).item()
    assert mixed == pytest.approx(0.5 * pure + 0.5 * grpo, rel=1e-4, abs=1e-6)
    with pytest.raises(ValueError, match="num_generations must be at least 2"):
        RGSDTrainer(
            tiny_model_path,
            reward_funcs=reward_len,
            args=_config(tmp_path, distillation_weight=0.5),
            train_dataset=_dataset(),
        )


def test_reward_only_mode_is_grpo_without_the_teacher_pass(tiny_model_path, tmp_path, monkeypatch):
    # distillation_weight=0.0 (the reward phase of "reward first, then RGSD"): GRPO's loss and gradients, and the
    # teacher and distillation passes, whose weight is 0, never run.
    def reward_len(completions, **kwargs):
        return [float(len(c[0]["content"])) for c in completions]

    args = _config(tmp_path, num_generations=2, distillation_weight=0.0)
    trainer = RGSDTrainer(tiny_model_path, reward_funcs=reward_len, args=args, train_dataset=_dataset())
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise AssertionError("the teacher or distillation pass ran")

    monkeypatch.setattr(trainer, "_teacher_contexts", refuse)  # no teacher prompt (nor critique call) is built
    batch = trainer._generate_and_score_completions(list(_dataset(2)) * 2)
    assert batch["advantages"].abs().sum() > 0 and "teacher_prompt_ids" not in batch

    def grads(compute):
        trainer.model.zero_grad()
        loss = compute()
        loss.backward()
        named = trainer.model.named_parameters()
        return loss.detach(), {n: p.grad.clone() for n, p in named if p.grad is not None}

    reference_loss, reference = grads(lambda: GRPOTrainer._compute_loss(trainer, trainer.model, batch))
    monkeypatch.setattr(trainer, "_rgsd_loss", refuse)
    monkeypatch.setattr(trainer, "_self_teacher_hidden", refuse)
    loss, got = grads(lambda: trainer._compute_loss(trainer.model, batch))
    assert calls == []
    assert torch.equal(loss, reference_loss) and reference.keys() == got.keys() and len(got) > 0
    for name, grad in reference.items():
        assert torch.equal(got[name], grad), name
    trainer.train()  # a whole run in this mode, which still logs the rollouts' degeneration checks
    assert trainer.state.global_step == args.max_steps and calls == []
    keys = set().union(*(e.keys() for e in trainer.state.log_history))
    assert "rgsd/degenerate" in keys and "rgsd/teacher_token_ratio" not in keys and "rgsd/divergence" not in keys


def test_rgsd_metrics_are_prefixed(tiny_model_path, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    trainer = RGSDTrainer(tiny_model_path, args=_config(tmp_path, max_steps=1), train_dataset=_dataset())
    trainer.train()
    keys = set().union(*(e.keys() for e in trainer.state.log_history))
    assert {"rgsd/loss", "rgsd/divergence", "rgsd/clipped_frac", "rgsd/teacher_logratio"} <= keys
    assert inspect.signature(RGSDTrainer.__init__).parameters["reward_funcs"].default is None


def test_thinking_block_opened_by_the_prompt_is_masked_from_the_first_token():
    class Stub:
        _thinking_ids = ([7], [8])

    prompts = torch.tensor([[0, 0, 5, 6, 7], [1, 2, 3, 4, 5], [1, 7, 3, 4, 8]])
    prompt_mask = torch.ones_like(prompts)
    prompt_mask[0, :2] = 0
    completions = torch.tensor([[9, 9, 8, 4, 4], [9, 7, 9, 8, 4], [9, 9, 9, 9, 9]])
    keep = RGSDTrainer._thinking_keep_mask(Stub(), prompts, prompt_mask, completions)
    assert keep.tolist() == [
        [False, False, False, True, True],  # prompt ends with <think>: reasoning until </think>
        [True, False, False, False, True],  # ordinary block inside the completion
        [True, True, True, True, True],  # the prompt closed its block: nothing to mask
    ]
