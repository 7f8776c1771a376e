"""EMA teacher of a PEFT policy: a second adapter, the EMA of the trained one, scored through the policy itself.

Checked against plain references: a loop that averages the policy adapter's recorded history by hand, and a fresh
base model with the teacher adapter's LoRA merged into its weights by hand (linear, embedding and `modules_to_save`).
"""

import shutil

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, TrainerCallback

from trl_rubric.testing import make_rubric_rows, make_tiny_model, rgsd_test_config
from trl_rubric.trainers.rgsd import TEACHER_STATE_FILE, RGSDTrainer

TARGETS = ["embed_tokens", "q_proj", "v_proj"]


@pytest.fixture(scope="module")
def untied_model_path(tmp_path_factory):
    # Untied, so a trained lm_head copy (modules_to_save) and embedding LoRA change different weights
    return make_tiny_model(tmp_path_factory.mktemp("untied"), tie_word_embeddings=False)


def _lora(**overrides):
    from peft import LoraConfig

    kwargs = dict(r=4, lora_alpha=8, target_modules=TARGETS, modules_to_save=["lm_head"], task_type="CAUSAL_LM")
    kwargs.update(overrides)
    return LoraConfig(**kwargs)


def _dataset(n=8):
    return Dataset.from_list(make_rubric_rows(n, conversational=True))


def _adapter(model, name):
    from peft import get_peft_model_state_dict

    return {
        k: v.detach().clone()
        for k, v in get_peft_model_state_dict(model, adapter_name=name, save_embedding_layers=False).items()
    }


def _trainer(path, tmp_path, peft_config=None, **overrides):
    kwargs = dict(teacher_model_kind="ema", teacher_update_rate=0.3, token_clip=None, max_steps=3)
    kwargs.update(overrides)
    return RGSDTrainer(
        path, args=rgsd_test_config(tmp_path / "out", **kwargs), train_dataset=_dataset(), peft_config=peft_config
    )


class _RecordPolicyAdapter(TrainerCallback):
    """The trained adapter's weights after every optimizer step (before the EMA callback, added later, moves)."""

    def __init__(self, model):
        self.model, self.history = model, []

    def on_step_end(self, args, state, control, **kwargs):
        self.history.append(_adapter(self.model, "default"))


def _train_recording(trainer):
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    initial_teacher = _adapter(unwrapped, "rgsd_teacher")
    recorder = _RecordPolicyAdapter(unwrapped)
    # Before the EMA callback, so each record is the policy the EMA step of the same optimizer step reads
    trainer.callback_handler.callbacks.insert(0, recorder)
    trainer.train()
    return unwrapped, initial_teacher, recorder.history


def _ema_reference(initial, history, rate, sync_steps=1):
    teacher = {k: v.clone() for k, v in initial.items()}
    for step, policy in enumerate(history, start=1):
        if step % sync_steps == 0:
            teacher = {k: (1 - rate) * teacher[k] + rate * policy[k] for k in teacher}
    return teacher


@pytest.mark.parametrize("sync_steps", [1, 2])
def test_teacher_adapter_is_the_ema_of_the_policy_adapters_history(untied_model_path, tmp_path, sync_steps):
    trainer = _trainer(untied_model_path, tmp_path, _lora(), teacher_sync_steps=sync_steps)
    assert trainer.teacher_model is None and trainer._teacher_adapter == "rgsd_teacher"
    unwrapped, initial, history = _train_recording(trainer)
    assert len(history) == 3
    teacher = _adapter(unwrapped, "rgsd_teacher")
    expected = _ema_reference(initial, history, 0.3, sync_steps)
    assert teacher.keys() == expected.keys()
    assert any("lora_embedding" in k for k in teacher) and any("lm_head" in k for k in teacher)
    for key in expected:
        torch.testing.assert_close(teacher[key], expected[key], rtol=1e-6, atol=1e-7, msg=key)
    # it moved, and it is not the policy: a real average
    assert any(not torch.equal(teacher[k], initial[k]) for k in teacher)
    assert any(not torch.allclose(teacher[k], history[-1][k]) for k in teacher)
    # only the trained adapter is trained: the teacher adapter's parameters are frozen
    trainable = [n for n, p in unwrapped.named_parameters() if p.requires_grad]
    assert trainable and not any("rgsd_teacher" in n for n in trainable)


def test_zero_initialised_lora_gives_a_teacher_that_starts_as_the_base_model(untied_model_path, tmp_path):
    trainer = _trainer(untied_model_path, tmp_path, _lora())
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    batch = trainer._generate_and_score_completions(list(_dataset(4)))
    hidden, head, _ = trainer._self_teacher_hidden(unwrapped, batch)
    base = AutoModelForCausalLM.from_pretrained(untied_model_path)
    expected = trainer._last_hidden_state(base, *trainer._teacher_inputs(batch))
    torch.testing.assert_close(hidden, expected.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(head, base.lm_head.weight, rtol=0, atol=0)


def _merged_by_hand(path, adapter, scaling):
    """A fresh base model with `adapter` (PEFT's keys) merged into its weights by hand: W + s * B @ A for linear LoRA,
    E + s * (B @ A)^T for embedding LoRA, and the `modules_to_save` copy in place of its module."""
    model = AutoModelForCausalLM.from_pretrained(path)
    params = dict(model.named_parameters())
    prefix = "base_model.model."
    with torch.no_grad():
        for key, value in adapter.items():
            name = key[len(prefix) :]
            if ".lora_A." in name:
                module = name.split(".lora_A.")[0]
                b = adapter[prefix + module + ".lora_B.weight"]
                params[module + ".weight"] += scaling * b @ value
            elif name.endswith(".lora_embedding_A"):
                module = name[: -len(".lora_embedding_A")]
                b = adapter[prefix + module + ".lora_embedding_B"]
                params[module + ".weight"] += scaling * (b @ value).T
            elif "lora_" not in name:
                params[name].copy_(value)
    return model


@pytest.mark.parametrize("lora_dropout", [0.0, 0.5])
def test_teacher_pass_is_the_model_with_the_teacher_adapters_weights_merged(untied_model_path, tmp_path, lora_dropout):
    # With LoRA dropout (TRL's ModelConfig default is 0.05) the teacher adapter has none: the teacher pass runs in the
    # policy's train mode and must still be the merged model, not a noisy draw
    trainer = _trainer(untied_model_path, tmp_path, _lora(lora_dropout=lora_dropout))
    unwrapped, _, _ = _train_recording(trainer)
    unwrapped.train()
    teacher = _adapter(unwrapped, "rgsd_teacher")
    assert any(v.any() for k, v in teacher.items() if "lora_B" in k or "lora_embedding_A" in k), "a teacher that moved"
    reference = _merged_by_hand(untied_model_path, teacher, scaling=8 / 4)
    batch = trainer._generate_and_score_completions(list(_dataset(4)))
    hidden, head, _ = trainer._self_teacher_hidden(unwrapped, batch)
    expected = trainer._last_hidden_state(reference, *trainer._teacher_inputs(batch))
    torch.testing.assert_close(hidden, expected.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(head, reference.lm_head.weight, rtol=0, atol=0)
    # and the student pass still reads the trained adapter, not the teacher's
    assert unwrapped.active_adapter == "default"
    trained_head = unwrapped.get_output_embeddings().weight
    assert not torch.equal(trained_head, head)


def test_rate_one_makes_the_teacher_the_live_policy(untied_model_path, tmp_path):
    trainer = _trainer(untied_model_path, tmp_path, _lora(), teacher_update_rate=1.0)
    unwrapped, _, _ = _train_recording(trainer)
    policy, teacher = _adapter(unwrapped, "default"), _adapter(unwrapped, "rgsd_teacher")
    assert all(torch.equal(teacher[k], policy[k]) for k in policy)
    batch = trainer._generate_and_score_completions(list(_dataset(4)))
    hidden, head, _ = trainer._self_teacher_hidden(unwrapped, batch)
    with torch.no_grad():
        live = trainer._last_hidden_state(unwrapped, *trainer._teacher_inputs(batch))
    torch.testing.assert_close(hidden, live, rtol=0, atol=0)
    torch.testing.assert_close(head, unwrapped.get_output_embeddings().weight, rtol=0, atol=0)


def test_tiny_rate_keeps_the_teacher_at_the_initial_adapter(untied_model_path, tmp_path):
    # A non-zero LoRA init, so "the initial adapter" is not the base model
    trainer = _trainer(untied_model_path, tmp_path, _lora(init_lora_weights=False), teacher_update_rate=1e-9)
    unwrapped, initial, history = _train_recording(trainer)
    assert any(not torch.allclose(history[-1][k], initial[k]) for k in initial), "the policy adapter moved"
    teacher = _adapter(unwrapped, "rgsd_teacher")
    for key in initial:
        torch.testing.assert_close(teacher[key], initial[key], rtol=1e-6, atol=1e-7, msg=key)


def test_bf16_modules_to_save_copy_keeps_an_fp32_average(untied_model_path, tmp_path):
    from peft import get_peft_model

    # The lm_head copy stays in the model's bf16 (PEFT casts LoRA weights to fp32, not modules_to_save copies)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(untied_model_path, dtype=torch.bfloat16), _lora())
    trainer = _trainer(model, tmp_path, teacher_update_rate=0.01, learning_rate=1e-3)
    unwrapped, initial, history = _train_recording(trainer)
    head_key = next(k for k in initial if "lm_head" in k)
    assert initial[head_key].dtype == torch.bfloat16
    shadow = trainer._ema_callback.shadow
    assert set(shadow) == {head_key}, "only the low-precision weight has a shadow"
    expected = _ema_reference(
        {head_key: initial[head_key].float()}, [{head_key: h[head_key].float()} for h in history], 0.01
    )
    torch.testing.assert_close(shadow[head_key], expected[head_key], rtol=1e-6, atol=1e-7)
    teacher = _adapter(unwrapped, "rgsd_teacher")
    assert torch.equal(teacher[head_key], shadow[head_key].to(torch.bfloat16))


def _losses(trainer):
    return {e["step"]: e["loss"] for e in trainer.state.log_history if "loss" in e}


@pytest.mark.parametrize("peft_folder", [True, False])
def test_resumed_peft_ema_run_matches_the_uninterrupted_run(untied_model_path, tmp_path, peft_folder):
    # Trainer reloads every adapter folder PEFT saved (rgsd_teacher/ too); without that folder (an engine that does
    # not write it) the teacher adapter comes back from rgsd_teacher.pt alone, and the resume is as exact
    kwargs = dict(max_steps=4, save_strategy="steps", save_steps=2, per_device_train_batch_size=4)
    full = _trainer(untied_model_path, tmp_path / "full", _lora(), **kwargs)
    full.train()
    checkpoint = tmp_path / "resumed" / "out" / "checkpoint-2"
    shutil.copytree(tmp_path / "full" / "out" / "checkpoint-2", checkpoint)
    saved = torch.load(checkpoint / TEACHER_STATE_FILE, weights_only=True)
    assert saved.keys() == _adapter(full.accelerator.unwrap_model(full.model), "rgsd_teacher").keys()
    # The teacher adapter is also written, loadable, by PEFT next to the trained one
    assert (checkpoint / "rgsd_teacher" / "adapter_model.safetensors").exists()

    if not peft_folder:
        shutil.rmtree(checkpoint / "rgsd_teacher")
    resumed = _trainer(untied_model_path, tmp_path / "resumed", _lora(), **kwargs)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    full_losses, resumed_losses = _losses(full), _losses(resumed)
    for step in (3, 4):
        assert resumed_losses[step] == pytest.approx(full_losses[step], rel=1e-6, abs=1e-9), f"step {step}"
    a = _adapter(full.accelerator.unwrap_model(full.model), "rgsd_teacher")
    b = _adapter(resumed.accelerator.unwrap_model(resumed.model), "rgsd_teacher")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6, msg=key)

    # The final save holds the teacher adapter too, loadable on its own onto the base model
    from peft import PeftModel

    full.save_model(str(tmp_path / "final"))
    loaded = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(untied_model_path), str(tmp_path / "final" / "rgsd_teacher")
    )
    reloaded = _adapter(loaded, "default")
    assert reloaded.keys() == a.keys()
    for key in a:
        torch.testing.assert_close(reloaded[key], a[key], rtol=0, atol=0, msg=key)


def test_resuming_a_peft_ema_run_without_its_teacher_adapter_fails_clearly(untied_model_path, tmp_path):
    kwargs = dict(max_steps=4, save_strategy="steps", save_steps=2)
    full = _trainer(untied_model_path, tmp_path / "full", _lora(), **kwargs)
    full.train()
    checkpoint = tmp_path / "resumed" / "out" / "checkpoint-2"
    shutil.copytree(tmp_path / "full" / "out" / "checkpoint-2", checkpoint)
    (checkpoint / TEACHER_STATE_FILE).unlink()
    resumed = _trainer(untied_model_path, tmp_path / "resumed", _lora(), **kwargs)
    with pytest.raises(FileNotFoundError, match="holds no rgsd_teacher.pt"):
        resumed.train(resume_from_checkpoint=str(checkpoint))


def test_resumed_bf16_peft_ema_run_keeps_the_fp32_average_of_the_head_copy(untied_model_path, tmp_path):
    from peft import get_peft_model

    def trainer(out):
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(untied_model_path, dtype=torch.bfloat16), _lora())
        kwargs = dict(max_steps=4, save_strategy="steps", save_steps=2, teacher_update_rate=0.01, learning_rate=1e-3)
        return _trainer(model, out, **kwargs)

    full = trainer(tmp_path / "full")
    full.train()
    checkpoint = tmp_path / "resumed" / "out" / "checkpoint-2"
    shutil.copytree(tmp_path / "full" / "out" / "checkpoint-2", checkpoint)
    assert (checkpoint / "rgsd_teacher_fp32_rank0.pt").exists()
    resumed = trainer(tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert full._ema_callback.shadow.keys() == resumed._ema_callback.shadow.keys() != set()
    for key, shadow in full._ema_callback.shadow.items():
        torch.testing.assert_close(resumed._ema_callback.shadow[key], shadow, rtol=0, atol=0)


def test_peft_ema_teacher_is_refused_under_zero3_before_training(untied_model_path, tmp_path, monkeypatch):
    import trl_rubric.trainers.rgsd_teacher as rgsd_teacher

    monkeypatch.setattr(rgsd_teacher, "is_deepspeed_zero3_enabled", lambda: True)
    with pytest.raises(ValueError, match="not supported under DeepSpeed ZeRO-3"):
        _trainer(untied_model_path, tmp_path, _lora())


class _HeadAfterStep(TrainerCallback):
    def __init__(self):
        self.heads = {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.heads[state.global_step] = model.get_output_embeddings().weight.detach().clone()


@pytest.mark.parametrize("kind, init", [("ema", True), ("base", False)])
def test_vllm_sync_pushes_the_trained_head_copy_not_the_teachers(untied_model_path, tmp_path, kind, init):
    # TRL renames only the trained adapter's modules_to_save copy for vLLM; the teacher adapter's copy went under its
    # PEFT name, which vLLM does not know, and the first sync failed
    from trl_rubric.testing.fake_vllm import fake_vllm

    heads = _HeadAfterStep()
    with fake_vllm() as engines:
        trainer = _trainer(
            untied_model_path,
            tmp_path,
            _lora(init_lora_weights=init),
            teacher_model_kind=kind,
            use_vllm=True,
            vllm_mode="colocate",
            max_steps=2,
        )
        assert trainer._teacher_adapter == "rgsd_teacher"
        trainer.add_callback(heads)
        trainer.train()
    syncs = engines[0].llm.syncs
    assert len(syncs) >= 2 and not any("modules_to_save" in name for sync in syncs for name in sync)
    torch.testing.assert_close(syncs[1]["lm_head.weight"], heads.heads[1], rtol=0, atol=0)
    assert not torch.equal(syncs[0]["lm_head.weight"], syncs[1]["lm_head.weight"]), "the trained head reached vLLM"
