"""RGSDConfig.degenerate_rollouts="unlikelihood": flagged spans mapped to tokens, and -log(1 - p_student) on them,
against a plain reference (values and gradients), and its effect on the student after a few steps."""

from __future__ import annotations

import pytest
import torch
from _rgsd_reference import (
    assert_matches_reference,
    completion_log_softmax,
    student_log_softmax,
    trainer_loss_and_grads,
)

from trl_rubric.losses.unlikelihood import (
    char_spans_to_token_mask,
    sampled_token_unlikelihood,
    token_char_ends,
    unlikelihood_from_logps,
)
from trl_rubric.testing import make_rubric_rows, make_tokenizer, rgsd_test_config


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def _covered(tokenizer, ids, mask):
    return tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if m], skip_special_tokens=True)


@pytest.mark.parametrize("text", ["Tips: drink water. Drink water!", "Café au lait, café noir, café crème ☕ ☕"])
def test_char_spans_map_to_the_fewest_tokens_that_cover_them(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    start = text.rindex("afé" if "afé" in text else "Drink")
    span = (start, start + 4)
    mask = char_spans_to_token_mask(tokenizer, ids, [span])
    assert text[span[0] : span[1]] in _covered(tokenizer, ids, mask)
    assert not mask[-1]  # the end-of-sequence token decodes to nothing
    hit = [i for i, m in enumerate(mask) if m]
    assert hit == list(range(hit[0], hit[-1] + 1))  # one contiguous run
    # Minimal: without its first or last token the run no longer covers the span.
    decoded = tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    assert decoded == text
    ends = token_char_ends(tokenizer, ids)
    assert ends[-1] == len(text) and ends == sorted(ends)
    assert (ends[hit[0] - 1] if hit[0] else 0) <= span[0] < ends[hit[0]]
    assert ends[hit[-1] - 1] < span[1] <= ends[hit[-1]]
    assert char_spans_to_token_mask(tokenizer, ids, []) == [False] * len(ids)


def test_unlikelihood_is_minus_log_one_minus_p_and_bounded():
    p = torch.tensor([1e-4, 0.3, 0.9, 1.0])
    got = unlikelihood_from_logps(p.log())
    torch.testing.assert_close(got[:3], -torch.log1p(-p[:3]))
    assert got[3] == pytest.approx(-torch.log(torch.tensor(1e-6)).item())  # 1 - p floored, never inf


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_sampled_token_unlikelihood_matches_a_full_softmax_reference(chunk_size):
    torch.manual_seed(0)
    hidden = torch.randn(5, 8, requires_grad=True)
    weight = torch.randn(40, 8, requires_grad=True)
    targets = torch.randint(0, 40, (5,))
    got, logps = sampled_token_unlikelihood(hidden, weight, None, targets, temperature=0.7, chunk_size=chunk_size)
    p = torch.softmax(hidden @ weight.T / 0.7, -1).gather(-1, targets[:, None]).squeeze(-1)
    expected = -torch.log(1 - p)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logps, p.log().detach(), atol=1e-5, rtol=1e-5)
    g_got = torch.autograd.grad(got.sum(), (hidden, weight))
    g_ref = torch.autograd.grad(expected.sum(), (hidden, weight))
    for a, b in zip(g_got, g_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- the trainer


def _trainer(
    tiny_model_path, tmp_path, monkeypatch, flagged=(0,), peft_config=None, reward_funcs=None, n_rows=4, **overrides
):
    """An RGSD trainer whose degeneration checks flag the rows in `flagged` and give each the span from a quarter to
    half of its decoded text (the tiny model writes random tokens, so the real checks would flag nothing)."""
    from datasets import Dataset

    import trl_rubric.trainers.rgsd as rgsd
    import trl_rubric.trainers.rgsd_rollouts as rgsd_rollouts
    import trl_rubric.trainers.rgsd_unlikelihood as rgsd_unlikelihood

    def flags(metrics, prefix, answers, rubrics, reduce=None, **kwargs):
        return [{"degenerate": i in flagged} for i in range(len(answers))]

    def spans(text, rubric):
        return {"degenerate": [(len(text) // 4, len(text) // 2)] if text else []}

    monkeypatch.setattr(rgsd_rollouts, "log_degeneration", flags)
    monkeypatch.setattr(rgsd_unlikelihood, "degeneration_spans", spans)
    rows = make_rubric_rows(n_rows)
    config = dict(degenerate_rollouts="unlikelihood", token_clip=None, max_completion_length=16)
    args = rgsd_test_config(tmp_path / "out", **{**config, **overrides})
    trainer = rgsd.RGSDTrainer(
        tiny_model_path, reward_funcs, args=args, train_dataset=Dataset.from_list(rows), peft_config=peft_config
    )
    trainer.model.train()
    return trainer, rows


def test_flagged_spans_become_unlikelihood_tokens_of_their_row_only(tiny_model_path, tmp_path, monkeypatch):
    trainer, rows = _trainer(tiny_model_path, tmp_path, monkeypatch)
    batch = trainer._generate_and_score_completions(rows)
    unlikely, kept = batch["rgsd_unlikelihood_mask"], batch["rgsd_loss_mask"].bool()
    completion = batch["completion_mask"].bool()
    assert unlikely[0].any() and not unlikely[1:].any()
    assert not kept[0].any() and kept[1:].equal(completion[1:])  # dropped from the distillation, as with "drop"
    ids = batch["completion_ids"][0][completion[0]].tolist()
    text = trainer.processing_class.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    span_text = text[len(text) // 4 : len(text) // 2]
    assert span_text in _covered(trainer.processing_class, ids, unlikely[0][completion[0]].tolist())
    # Each unlikelihood token counts as one loss token in the normaliser.
    assert batch["rgsd_num_items_in_batch"].item() == kept.sum().item() + unlikely.sum().item()
    assert trainer._metrics["train"]["rgsd/degenerate_dropped"] == [1]


@pytest.mark.parametrize(
    ("loss_type", "chunk", "lora"),
    [("dapo", None, False), ("grpo", 3, False), ("bnpo", None, False), ("dapo", 2, True)],
)
def test_unlikelihood_loss_matches_a_plain_reference_in_value_and_gradient(
    tiny_model_path, tmp_path, monkeypatch, loss_type, chunk, lora
):
    from peft import LoraConfig

    weight = 0.7
    # LoRA: the student is base + adapter, the teacher the base alone; equal at step 0 (B starts at zero).
    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]) if lora else None
    trainer, rows = _trainer(
        tiny_model_path, tmp_path, monkeypatch, flagged=(0, 2), loss_type=loss_type, peft_config=peft_config,
        distillation_chunk_size=chunk, degenerate_unlikelihood_weight=weight,
    )  # fmt: skip
    batch = trainer._generate_and_score_completions(rows)
    loss, got_grads, params = trainer_loss_and_grads(trainer, batch)

    # Reference: full softmaxes from plain forwards; beta 0.5 JSD on the kept rows, -log(1 - p) on the span tokens.
    s_logp = student_log_softmax(trainer.model, batch)
    with torch.no_grad():
        t_logp = completion_log_softmax(
            trainer.model, *trainer._teacher_inputs(batch)
        )  # the frozen teacher is step 0's model
    p_s, p_t = s_logp.exp(), t_logp.exp()
    m = 0.5 * p_s + 0.5 * p_t
    jsd = (0.5 * torch.xlogy(p_t, p_t / m) + 0.5 * p_s * (s_logp - m.log())).sum(-1)
    p_sampled = s_logp.gather(-1, batch["completion_ids"][..., None]).squeeze(-1).exp()
    kept, unlikely = batch["rgsd_loss_mask"].bool(), batch["rgsd_unlikelihood_mask"]
    assert unlikely[[0, 2]].any() and not (kept & unlikely).any()
    per_token = torch.where(kept, jsd, 0.0) + torch.where(unlikely, weight * -torch.log(1 - p_sampled), 0.0)
    assert_matches_reference(trainer, batch, loss, got_grads, params, per_token, kept | unlikely, loss_type)
    metrics = trainer._metrics["train"]
    assert metrics["rgsd/unlikelihood_tokens"] == [unlikely.sum().item()]
    mean_term = -torch.log(1 - p_sampled[unlikely]).mean().item()
    assert metrics["rgsd/unlikelihood"] == [pytest.approx(mean_term, rel=1e-4)]


def _flagged_logp(trainer, batch):
    with torch.no_grad():
        logp = student_log_softmax(trainer.model, batch).gather(-1, batch["completion_ids"][..., None]).squeeze(-1)
    return logp[batch["unlikely"]].mean().item()


@pytest.mark.parametrize("policy", ["drop", "unlikelihood"])
def test_unlikelihood_lowers_the_students_probability_of_its_flagged_tokens_and_drop_does_not(
    tiny_model_path, tmp_path, monkeypatch, policy
):
    torch.manual_seed(0)
    trainer, rows = _trainer(tiny_model_path, tmp_path, monkeypatch, degenerate_rollouts=policy)
    batch = trainer._generate_and_score_completions(rows)
    # The same span tokens in both runs (a drop batch carries no mask of its own).
    batch["unlikely"] = torch.zeros_like(batch["completion_mask"], dtype=torch.bool)
    batch["unlikely"][0, 4:8] = batch["completion_mask"][0, 4:8].bool()
    if policy == "unlikelihood":
        batch["rgsd_unlikelihood_mask"] = batch["unlikely"]
        batch["rgsd_num_items_in_batch"] = batch["rgsd_loss_mask"].sum() + batch["unlikely"].sum()
    optimizer = torch.optim.Adam(trainer.model.parameters(), lr=1e-2)
    before = _flagged_logp(trainer, batch)
    for _ in range(10):
        trainer._compute_loss(trainer.model, batch).backward()
        optimizer.step()
        optimizer.zero_grad()
    change = _flagged_logp(trainer, batch) - before
    # Measured: about -0.58 with unlikelihood, -0.03 with drop (the other rows' distillation moves them a little).
    if policy == "unlikelihood":
        assert change < -0.3, change
    else:
        assert abs(change) < 0.1, change


def test_hybrid_mode_keeps_the_flagged_answer_in_the_grpo_term(tiny_model_path, tmp_path, monkeypatch):
    from trl import GRPOTrainer

    def reward_len(completions, **kwargs):
        return [float(len(c)) for c in completions]

    trainer, rows = _trainer(
        tiny_model_path, tmp_path, monkeypatch, reward_funcs=reward_len, num_generations=2, distillation_weight=0.5
    )
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer's loop, read by GRPO's dapo normaliser
    batch = trainer._generate_and_score_completions(rows[:2] * 2)
    assert batch["rgsd_unlikelihood_mask"][0].any() and batch["completion_mask"][0].all()
    mixed = trainer._compute_loss(trainer.model, batch).item()
    grpo = GRPOTrainer._compute_loss(trainer, trainer.model, batch).item()
    trainer._rgsd_hybrid = False
    pure = trainer._compute_loss(trainer.model, batch).item()  # distillation plus unlikelihood
    assert mixed == pytest.approx(0.5 * pure + 0.5 * grpo, rel=1e-4, abs=1e-6)
    assert trainer._metrics["train"]["rgsd/unlikelihood_tokens"][-1] > 0


@pytest.mark.parametrize("weight", [-0.5, float("inf"), float("nan"), "1"])
def test_config_refuses_a_bad_unlikelihood_weight(weight):
    from trl_rubric.trainers.rgsd import RGSDConfig

    with pytest.raises(ValueError, match="degenerate_unlikelihood_weight"):
        RGSDConfig(
            output_dir="/tmp/x", use_cpu=True, bf16=False, degenerate_rollouts="unlikelihood",
            degenerate_unlikelihood_weight=weight,
        )  # fmt: skip
    assert RGSDConfig(output_dir="/tmp/x", use_cpu=True, bf16=False, degenerate_rollouts="unlikelihood")


@pytest.mark.parametrize("accumulation", [1, 2])
def test_a_training_run_with_unlikelihood_logs_its_metrics(tiny_model_path, tmp_path, monkeypatch, accumulation):
    # With accumulation 2 a generation batch of 8 is shuffled and split over two steps, masks included.
    trainer, _ = _trainer(
        tiny_model_path, tmp_path, monkeypatch, n_rows=8 * accumulation, gradient_accumulation_steps=accumulation,
        steps_per_generation=accumulation,
    )  # fmt: skip
    trainer.train()
    logs = [e for e in trainer.state.log_history if "rgsd/unlikelihood_tokens" in e]
    assert logs and all(e["rgsd/unlikelihood_tokens"] > 0 and e["rgsd/unlikelihood"] > 0 for e in logs)
    assert all(e["rgsd/degenerate_dropped"] >= 1 for e in logs)
