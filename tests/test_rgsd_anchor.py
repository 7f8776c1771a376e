"""RGSDConfig.anchor_weight: the divergence to the initial policy on the student's own prompt, against a plain
reference in value and gradient (PEFT: adapters disabled; full fine-tuning: the frozen copy), the token selection,
the refusals, and its effect: it holds a student near the initial policy."""

from __future__ import annotations

import pytest
import torch
from _rgsd_reference import assert_matches_reference, completion_log_softmax

from trl_rubric import RGSDConfig, losses
from trl_rubric.losses import teacher_bias
from trl_rubric.testing import make_rubric_rows, rgsd_test_config
from trl_rubric.trainers.rgsd_anchor import add_anchor, anchor_token_mask, content_table


def test_anchor_token_mask_keeps_the_distilled_tokens_that_hold_a_letter():
    ids = torch.tensor([[5, 1, 7, 2], [3, 3, 9, 0]])
    loss_mask = torch.tensor([[1, 1, 1, 0], [1, 0, 1, 1]])
    content = frozenset({5, 7, 2, 3, 100})  # 100 is past the table's vocabulary: left out, no error
    table = content_table(content, vocab_size=12)
    assert table.tolist() == [i in content for i in range(12)]
    got = anchor_token_mask(ids, loss_mask, table)
    expected = [
        [bool(m) and i in content for i, m in zip(r, mr, strict=True)]
        for r, mr in zip(ids.tolist(), loss_mask.tolist(), strict=True)
    ]
    assert got.tolist() == expected
    assert anchor_token_mask(ids, loss_mask, None).equal(loss_mask.bool())


def test_add_anchor_adds_the_weighted_term_on_anchored_positions_and_skips_non_finite():
    per_token = torch.ones(2, 3)
    anchored = torch.tensor([[True, False, True], [False, True, False]])
    term = torch.tensor([0.5, float("nan"), 2.0])
    out, stats = add_anchor(per_token, anchored, term, 0.1)
    torch.testing.assert_close(out, torch.tensor([[1.05, 1.0, 1.0], [1.0, 1.2, 1.0]]))
    assert stats.tolist() == pytest.approx([2.5, 2.0])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(anchor_weight=-0.1), "anchor_weight is -0.1"),
        (dict(anchor_weight=float("inf")), "anchor_weight is inf"),
        (dict(anchor_weight=0.2, teacher_model_kind="ema"), "teacher_model_kind is 'ema'"),
        (dict(anchor_weight=0.2, teacher_model_kind="live"), "only the frozen 'base' teacher"),
        (dict(anchor_tokens="words"), "anchor_tokens"),
    ],
)
def test_config_refuses_an_anchor_it_cannot_build(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        rgsd_test_config(tmp_path, **overrides)


def test_trainer_refuses_an_anchor_with_a_separate_teacher(tiny_model_path, tmp_path):
    from datasets import Dataset

    from trl_rubric import RGSDTrainer

    args = rgsd_test_config(tmp_path, anchor_weight=0.3)
    with pytest.raises(ValueError, match="separate teacher_model was given"):
        RGSDTrainer(tiny_model_path, args=args, train_dataset=Dataset.from_list(make_rubric_rows(4)),
                    teacher_model=tiny_model_path)  # fmt: skip


def _jsd(s_logp, t_logp, beta=0.5):
    p_s, p_t = s_logp.exp(), t_logp.exp()
    m = beta * p_s + (1 - beta) * p_t
    return (beta * torch.xlogy(p_t, p_t / m) + (1 - beta) * p_s * (s_logp - m.log())).sum(-1)


def _trainer(tiny_model_path, tmp_path, lora, **overrides):
    from datasets import Dataset
    from peft import LoraConfig

    from trl_rubric import RGSDTrainer

    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]) if lora else None
    args = rgsd_test_config(tmp_path / "out", token_clip=None, max_completion_length=12, **overrides)
    rows = make_rubric_rows(4)
    trainer = RGSDTrainer(tiny_model_path, args=args, train_dataset=Dataset.from_list(rows), peft_config=peft_config)
    trainer.model.train()
    return trainer, rows


def _move_student(trainer, scale=0.3):
    """Move the trained weights off the initial policy (else the anchor is 0 with a zero gradient)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in trainer.model.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn_like(p) * (p.std() if p.numel() > 1 and p.std() > 0 else 1.0))


@pytest.mark.parametrize(
    ("lora", "tokens", "loss_type", "chunk"),
    [(True, "content", "dapo", None), (True, "all", "grpo", 3), (False, "content", "bnpo", 2)],
)
def test_anchor_loss_matches_a_plain_reference_in_value_and_gradient(
    tiny_model_path, tmp_path, lora, tokens, loss_type, chunk
):
    weight = 0.4
    trainer, rows = _trainer(tiny_model_path, tmp_path, lora, anchor_weight=weight, anchor_tokens=tokens,
                             loss_type=loss_type, distillation_chunk_size=chunk)  # fmt: skip
    assert (trainer.teacher_model is None) == lora  # PEFT: adapters disabled; full: the frozen copy
    batch = trainer._generate_and_score_completions(rows)
    _move_student(trainer)
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    loss = trainer._compute_loss(trainer.model, batch)
    got_grads = torch.autograd.grad(loss, params)

    T = batch["completion_ids"].size(1)
    s_view = trainer._student_inputs(batch)
    s_logp = completion_log_softmax(trainer.model, *s_view)
    with torch.no_grad():
        if lora:
            with trainer.model.disable_adapter():
                t_logp = completion_log_softmax(trainer.model, *trainer._teacher_inputs(batch))
                a_logp = completion_log_softmax(trainer.model, *s_view)
        else:
            t_logp = completion_log_softmax(trainer.teacher_model, *trainer._teacher_inputs(batch))
            a_logp = completion_log_softmax(trainer.teacher_model, *s_view)
    kept = batch["rgsd_loss_mask"].bool()
    content = teacher_bias.content_token_ids(trainer.processing_class)
    ids = batch["completion_ids"]
    anchored = kept & (
        torch.tensor([[i in content for i in r] for r in ids.tolist()]) if tokens == "content" else kept
    )
    assert anchored.any() and (tokens == "all" or not anchored.equal(kept))
    anchor = _jsd(s_logp, a_logp)
    assert anchor[anchored].min() > 1e-4  # the student moved: the anchor acts
    per_token = torch.where(kept, _jsd(s_logp, t_logp), 0.0) + torch.where(anchored, weight * anchor, 0.0)
    assert_matches_reference(trainer, batch, loss, got_grads, params, per_token, kept, loss_type)
    metrics = trainer._metrics["train"]
    assert metrics["rgsd/anchor_tokens"] == [anchored.sum().item()]
    assert metrics["rgsd/anchor_divergence"] == [pytest.approx(anchor[anchored].mean().item(), rel=1e-4)]
    assert T == kept.size(1)


def test_without_an_anchor_the_loss_and_metrics_are_unchanged(tiny_model_path, tmp_path):
    trainer, rows = _trainer(tiny_model_path, tmp_path, True)
    batch = trainer._generate_and_score_completions(rows)
    _move_student(trainer)
    loss = trainer._compute_loss(trainer.model, batch)
    s_logp = completion_log_softmax(trainer.model, *trainer._student_inputs(batch))
    with torch.no_grad(), trainer.model.disable_adapter():
        t_logp = completion_log_softmax(trainer.model, *trainer._teacher_inputs(batch))
    kept = batch["rgsd_loss_mask"].bool()
    expected = losses.reduce_token_loss(
        torch.where(kept, _jsd(s_logp, t_logp), 0.0), kept, trainer.loss_type,
        num_items_in_batch=batch["rgsd_num_items_in_batch"], max_completion_length=trainer.max_completion_length,
        gradient_accumulation_steps=trainer.args.gradient_accumulation_steps,
        steps_per_generation=trainer.args.steps_per_generation,
    )  # fmt: skip
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=1e-4)
    assert "rgsd/anchor_divergence" not in trainer._metrics["train"]


def _anchor_after_steps(trainer, batch, steps=8):
    optimizer = torch.optim.Adam([p for p in trainer.model.parameters() if p.requires_grad], lr=3e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        trainer._compute_loss(trainer.model, batch).backward()
        optimizer.step()
    s_view = trainer._student_inputs(batch)
    with torch.no_grad():
        s_logp = completion_log_softmax(trainer.model, *s_view)
        with trainer.model.disable_adapter():
            a_logp = completion_log_softmax(trainer.model, *s_view)
    kept = batch["rgsd_loss_mask"].bool()
    return _jsd(s_logp, a_logp)[kept].mean().item()


def test_the_anchor_keeps_the_student_nearer_the_initial_policy(tiny_model_path, tmp_path):
    drift = {}
    for weight in (0.0, 2.0):
        torch.manual_seed(0)
        trainer, rows = _trainer(
            tiny_model_path, tmp_path / str(weight), True, anchor_weight=weight, anchor_tokens="all"
        )
        batch = trainer._generate_and_score_completions(rows)
        drift[weight] = _anchor_after_steps(trainer, batch)
    assert drift[2.0] < 0.8 * drift[0.0], drift


def test_anchor_fields_are_documented_config_fields():
    names = {f for f in RGSDConfig.__dataclass_fields__}
    assert {"anchor_weight", "anchor_tokens"} <= names
    assert "anchor_weight (`float`" in RGSDConfig.__doc__ and "anchor_tokens (`str`" in RGSDConfig.__doc__
