"""RGSDConfig.teacher_rollouts: which rows the teacher answers, that it answers them from its own prompt with its own
weights, the degeneration filter on its answers, and the NLL on them against a plain reference (values, gradients)."""

from __future__ import annotations

import pytest
import torch
from _rgsd_reference import (
    assert_matches_reference,
    completion_log_softmax,
    student_log_softmax,
    trainer_loss_and_grads,
)
from datasets import Dataset

from trl_rubric.testing import make_rubric_rows, rgsd_test_config
from trl_rubric.trainers.rgsd_rollouts import teacher_rollout_rows


@pytest.mark.parametrize(
    ("n", "share", "expected"),
    [(8, 0.25, [0, 0, 0, 1, 0, 0, 0, 1]), (4, 1.0, [1, 1, 1, 1]), (4, 0.0, [0, 0, 0, 0]), (10, 0.1, [0] * 9 + [1]),
     (4, 0.5, [0, 1, 0, 1])],
)  # fmt: skip
def test_teacher_rows_are_evenly_spaced_and_as_many_as_the_share(n, share, expected):
    rows = teacher_rollout_rows(n, share)
    assert rows == [bool(x) for x in expected]
    assert sum(rows) == int(n * share + 1e-9)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"teacher_rollouts": 1.5}, "teacher_rollouts is 1.5"),
        ({"teacher_rollouts": -0.1}, "teacher_rollouts is -0.1"),
        ({"teacher_rollouts": True}, "teacher_rollouts is True"),
        ({"teacher_rollout_loss": "kl"}, "teacher_rollout_loss"),
        ({"teacher_rollouts": 0.5, "distillation_weight": 0.5}, "GRPO's term needs the policy's own samples"),
        ({"teacher_rollouts": 0.5, "use_vllm": True}, "vLLM and continuous batching"),
    ],
)
def test_config_refuses_what_teacher_rollouts_cannot_run(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        rgsd_test_config(tmp_path, **overrides)


@pytest.mark.parametrize("case", ["several contexts", "reads the rollout"])
def test_trainer_refuses_teacher_contexts_the_teacher_cannot_sample_from(tiny_model_path, tmp_path, case):
    from trl_rubric.teacher_context import build_teacher_context
    from trl_rubric.trainers.rgsd import RGSDTrainer

    overrides = {"teacher_context": "criteria", "num_teacher_contexts": 2} if case == "several contexts" else {}
    args = rgsd_test_config(tmp_path, teacher_rollouts=0.5, **overrides)
    provider = build_teacher_context(args)
    if case == "reads the rollout":
        provider.needs_completion = True  # as a critique context is
    with pytest.raises(ValueError, match="one context per rollout" if case == "several contexts" else case):
        RGSDTrainer(
            tiny_model_path, args=args, train_dataset=Dataset.from_list(make_rubric_rows(4)), teacher_context=provider
        )


def _trainer(tiny_model_path, tmp_path, lora=False, **overrides):
    """An RGSD trainer with teacher rollouts whose policy no longer equals its teacher (weights perturbed after
    construction: the LoRA adapter, or the whole policy beside its frozen copy)."""
    from peft import LoraConfig

    from trl_rubric.trainers.rgsd import RGSDTrainer

    rows = make_rubric_rows(4)
    config = dict(
        teacher_rollouts=0.5, token_clip=None, max_completion_length=8, generation_kwargs={"do_sample": False}
    )
    args = rgsd_test_config(tmp_path / "out", **{**config, **overrides})
    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]) if lora else None
    trainer = RGSDTrainer(tiny_model_path, args=args, train_dataset=Dataset.from_list(rows), peft_config=peft_config)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in trainer.model.named_parameters():
            if p.requires_grad and (not lora or "lora_B" in name):
                p.add_(0.5 * torch.randn_like(p))
    trainer.model.train()
    return trainer, rows


def _greedy(model, tokenizer, prompt_ids, n):
    ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False)
    completion = out[0, len(prompt_ids) :].tolist()
    if tokenizer.eos_token_id in completion:
        completion = completion[: completion.index(tokenizer.eos_token_id) + 1]
    return completion


@pytest.mark.parametrize("lora", [False, True], ids=["frozen-copy", "lora"])
def test_teacher_rows_are_sampled_from_the_teacher_prompt_with_the_teacher_weights(tiny_model_path, tmp_path, lora):
    trainer, rows = _trainer(tiny_model_path, tmp_path, lora=lora)
    batch = trainer._generate_and_score_completions(rows)
    tokenizer = trainer.processing_class
    student_ids, _, _ = trainer._tokenize_prompts([r["prompt"] for r in rows])
    teacher_ids, _, _ = trainer._tokenize_prompts(trainer._teacher_prompts(rows))
    policy = trainer.accelerator.unwrap_model(trainer.model)
    if lora:
        teacher, teacher_ctx = policy, policy.disable_adapter
    else:
        teacher, teacher_ctx = trainer.accelerator.unwrap_model(trainer.teacher_model), torch.no_grad
    from_teacher = teacher_rollout_rows(len(rows), 0.5)
    assert batch["rgsd_teacher_nll_rows"].tolist() == from_teacher
    differ = 0
    for i, is_teacher in enumerate(from_teacher):
        got = batch["completion_ids"][i][batch["completion_mask"][i].bool()].tolist()
        # The student's prompt stays the row's prompt: the loss reads the answer under the student's view.
        assert batch["prompt_ids"][i][batch["prompt_mask"][i].bool()].tolist() == student_ids[i]
        with teacher_ctx():
            by_teacher = _greedy(teacher, tokenizer, teacher_ids[i], 8)
        by_student = _greedy(policy, tokenizer, student_ids[i], 8)
        assert got == (by_teacher if is_teacher else by_student)
        differ += by_teacher != by_student
    assert differ >= 2  # the check above can tell the two apart
    metrics = trainer._metrics["train"]
    assert metrics["rgsd/teacher_rollout_frac"] == [0.5]
    assert "rgsd/teacher_rollout/degenerate" in metrics and "rgsd/degenerate" in metrics


def test_eval_batches_are_the_students_own(tiny_model_path, tmp_path):
    trainer, rows = _trainer(tiny_model_path, tmp_path)
    trainer.model.eval()
    batch = trainer._generate_and_score_completions(rows)
    assert "rgsd_teacher_nll_rows" not in batch
    assert "rgsd/teacher_rollout_frac" not in trainer._metrics["eval"]


@pytest.mark.parametrize("filtered", [True, False])
def test_flagged_teacher_answers_leave_the_loss_and_flagged_student_answers_follow_degenerate_rollouts(
    tiny_model_path, tmp_path, monkeypatch, filtered
):
    import trl_rubric.trainers.rgsd_rollouts as rollouts

    def flags(metrics, prefix, answers, rubrics, reduce=None, **kwargs):
        reduce([len(answers), 0, 0, 0, len(answers)])  # as the real checks do, once per call on every process
        return [{"degenerate": True} for _ in answers]  # every answer flagged

    monkeypatch.setattr(rollouts, "log_degeneration", flags)
    trainer, rows = _trainer(tiny_model_path, tmp_path, teacher_rollout_filter=filtered)
    batch = trainer._generate_and_score_completions(rows)
    kept, completion = batch["rgsd_loss_mask"].bool(), batch["completion_mask"].bool()
    teacher = torch.tensor(teacher_rollout_rows(4, 0.5))
    assert kept[~teacher].equal(completion[~teacher])  # degenerate_rollouts="keep": the student's stay
    assert kept[teacher].equal(completion[teacher] & (not filtered))
    assert trainer._metrics["train"]["rgsd/teacher_rollout_dropped"] == [2 if filtered else 0]
    assert trainer._metrics["train"]["rgsd/teacher_context_failed"] == [0]


@pytest.mark.parametrize(
    ("loss_type", "chunk", "lora"), [("dapo", None, False), ("grpo", 3, False), ("bnpo", 2, True)]
)
def test_nll_on_teacher_rows_matches_a_plain_reference_in_value_and_gradient(
    tiny_model_path, tmp_path, loss_type, chunk, lora
):
    trainer, rows = _trainer(tiny_model_path, tmp_path, lora=lora, loss_type=loss_type, distillation_chunk_size=chunk)
    batch = trainer._generate_and_score_completions(rows)
    loss, got_grads, params = trainer_loss_and_grads(trainer, batch)

    # Reference: full softmaxes from plain forwards; beta 0.5 JSD on the student's rows, -log p_student (at the
    # sampling temperature) on the teacher's.
    policy = trainer.accelerator.unwrap_model(trainer.model)
    s_logit_scaled = student_log_softmax(policy if lora else trainer.model, batch, trainer.temperature)
    with torch.no_grad():
        if lora:
            with policy.disable_adapter():
                t_logp = completion_log_softmax(policy, *trainer._teacher_inputs(batch), trainer.temperature)
        else:
            teacher = trainer.accelerator.unwrap_model(trainer.teacher_model)
            t_logp = completion_log_softmax(teacher, *trainer._teacher_inputs(batch), trainer.temperature)
    p_s, p_t = s_logit_scaled.exp(), t_logp.exp()
    m = 0.5 * p_s + 0.5 * p_t
    jsd = (0.5 * torch.xlogy(p_t, p_t / m) + 0.5 * p_s * (s_logit_scaled - m.log())).sum(-1)
    nll = -s_logit_scaled.gather(-1, batch["completion_ids"][..., None]).squeeze(-1)
    teacher_rows = batch["rgsd_teacher_nll_rows"].bool()[:, None]
    kept = batch["rgsd_loss_mask"].bool()
    per_token = torch.where(kept & teacher_rows, nll, torch.where(kept, jsd, 0.0))
    assert (kept & teacher_rows).any() and (kept & ~teacher_rows).any()
    assert_matches_reference(trainer, batch, loss, got_grads, params, per_token, kept, loss_type)
    metrics = trainer._metrics["train"]
    assert metrics["rgsd/teacher_rollout_nll"] == [pytest.approx(nll[kept & teacher_rows].mean().item(), rel=1e-4)]


def test_divergence_loss_keeps_teacher_rows_in_the_distillation(tiny_model_path, tmp_path):
    trainer, rows = _trainer(tiny_model_path, tmp_path, teacher_rollout_loss="divergence")
    batch = trainer._generate_and_score_completions(rows)
    assert "rgsd_teacher_nll_rows" not in batch
    assert batch["rgsd_loss_mask"].bool().equal(batch["completion_mask"].bool())
    trainer._compute_loss(trainer.model, batch)
    assert "rgsd/teacher_rollout_nll" not in trainer._metrics["train"]


def test_training_with_teacher_rollouts_runs_and_logs_them(tiny_model_path, tmp_path):
    from trl_rubric.trainers.rgsd import RGSDTrainer

    args = rgsd_test_config(tmp_path / "out", teacher_rollouts=0.5)
    trainer = RGSDTrainer(tiny_model_path, args=args, train_dataset=Dataset.from_list(make_rubric_rows(8)))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    logs = [e for e in trainer.state.log_history if "rgsd/teacher_rollout_frac" in e]
    assert len(logs) == 2 and all(e["rgsd/teacher_rollout_frac"] == 0.5 for e in logs)
    assert all(e["rgsd/teacher_rollout_nll"] > 0 for e in logs)
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())


@pytest.mark.parametrize("lora", [False, True], ids=["frozen-copy", "lora"])
def test_all_teacher_rows_under_nll_skip_the_teacher_scoring_pass_and_equal_the_reference(
    tiny_model_path, tmp_path, monkeypatch, lora
):
    trainer, rows = _trainer(tiny_model_path, tmp_path, lora=lora, teacher_rollouts=1.0, teacher_rollout_filter=False)
    batch = trainer._generate_and_score_completions(rows)

    def unread(*args, **kwargs):
        raise AssertionError("the teacher's scoring pass ran, though no token reads it")

    monkeypatch.setattr(trainer, "_self_teacher_hidden", unread)
    monkeypatch.setattr(trainer, "_separate_teacher_hidden", unread)
    loss, got_grads, params = trainer_loss_and_grads(trainer, batch)
    model = trainer.accelerator.unwrap_model(trainer.model) if lora else trainer.model
    logp = student_log_softmax(model, batch, trainer.temperature)
    nll = -logp.gather(-1, batch["completion_ids"][..., None]).squeeze(-1)
    kept = batch["rgsd_loss_mask"].bool()
    assert kept.equal(batch["completion_mask"].bool())
    assert_matches_reference(trainer, batch, loss, got_grads, params, torch.where(kept, nll, 0.0), kept, "dapo")
    assert "rgsd/divergence" not in trainer._metrics["train"]  # nothing was distilled, so nothing is reported


def test_model_card_states_the_teacher_sampled_share(tiny_model_path, tmp_path):
    from trl_rubric.model_card import build_model_card, training_facts
    from trl_rubric.trainers.rgsd import RGSDTrainer

    data = Dataset.from_list(make_rubric_rows(4))
    plain = RGSDTrainer(tiny_model_path, args=rgsd_test_config(tmp_path / "a"), train_dataset=data)
    assert training_facts(plain)["teacher_rollouts"] is None
    assert "the teacher answered itself" not in str(build_model_card(plain))
    trainer = RGSDTrainer(
        tiny_model_path, args=rgsd_test_config(tmp_path / "b", teacher_rollouts=0.5), train_dataset=data
    )
    assert training_facts(trainer)["teacher_rollouts"] == (
        "50% of answers sampled by the teacher, learned by NLL, flagged ones filtered"
    )
    card = str(build_model_card(trainer))
    assert "50% of answers sampled by the teacher" in card and "the teacher answered itself" in card
