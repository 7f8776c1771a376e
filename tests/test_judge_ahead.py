"""`judge_ahead=True`: RubricGRPO grades batch k+1 while training on batch k.

Pinned here: every reward applied is the judge's grade of that very completion (the same numbers a synchronous call
gives for the same completions); batches graded ahead carry the sampling policy's log-probabilities; the staleness is
logged; settings it cannot keep correct are refused; a resumed run replays the uninterrupted one exactly.
"""

import asyncio
import hashlib
import shutil

import pytest
import torch
from datasets import Dataset

from trl_rubric.judges import RuleJudge
from trl_rubric.rewards import RubricReward
from trl_rubric.testing import make_rubric_rows
from trl_rubric.trainers.judge_ahead import AHEAD_STALE, JudgeAheadMixin
from trl_rubric.trainers.rubric_grpo import RubricGRPOConfig, RubricGRPOTrainer


def parity_judge():
    """Verdicts from a hash of (criterion, answer): deterministic, and they split random completions about evenly."""

    def resolver(criterion):
        return lambda response: hashlib.sha256(f"{criterion.text}|{response}".encode()).digest()[0] % 2 == 0

    return RuleJudge(resolver=resolver)


def args(output_dir, **overrides):
    kwargs = dict(
        output_dir=str(output_dir),
        use_cpu=True,
        bf16=False,
        report_to="none",
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=6,
        max_steps=4,
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        judge_probe=False,
        seed=0,
        judge_ahead=True,
        disable_tqdm=True,
    )
    kwargs.update(overrides)
    return RubricGRPOConfig(**kwargs)


def recording(trainer):
    """Record (completions, rubric rewards, has old log-probs) of every generation round."""
    rounds = []
    calculate, generate = trainer._calculate_rewards, trainer._generate_and_score_completions

    def calculate_rewards(inputs, prompts, completions, completion_ids_list):
        rewards = calculate(inputs, prompts, completions, completion_ids_list)
        rounds.append({"inputs": inputs, "prompts": prompts, "completions": completions, "rewards": rewards[:, 0]})
        return rewards

    def generate_and_score(inputs):
        output = generate(inputs)
        rounds[-1]["old_logps"] = output.get("old_per_token_logps")
        rounds[-1]["completion_ids"] = output["completion_ids"]
        return output

    trainer._calculate_rewards = calculate_rewards
    trainer._generate_and_score_completions = generate_and_score
    return rounds


@pytest.mark.parametrize(
    "accumulation, expected_stale",
    # 8 prompts. One per micro-batch: 4 steps per epoch, step 1 synchronous. Two micro-batches per step (and two per
    # generation): 2 steps per epoch, and the first step of each epoch is synchronous (nothing to read ahead).
    [(1, [0.0, 1.0, 1.0, 1.0]), (2, [0.0, 1.0, 0.0, 1.0])],
)
def test_rewards_graded_ahead_equal_synchronous_grading_of_the_same_completions(
    accumulation, expected_stale, tiny_model_path, tmp_path
):
    dataset = Dataset.from_list(make_rubric_rows(8, conversational=True, seed=1))
    settings = dict(gradient_accumulation_steps=accumulation, steps_per_generation=accumulation)
    trainer = RubricGRPOTrainer(
        tiny_model_path, args=args(tmp_path, **settings), train_dataset=dataset, judge=parity_judge()
    )
    rounds = recording(trainer)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))

    stale = [e[AHEAD_STALE] for e in trainer.state.log_history if AHEAD_STALE in e]
    assert stale == expected_stale
    assert len(rounds) == 4
    reference = RubricReward(parity_judge(), num_generations=2)
    for i, r in enumerate(rounds):
        rubrics = [x["rubric"] for x in r["inputs"]]
        expected = asyncio.run(reference(prompts=r["prompts"], completions=r["completions"], rubric=rubrics))
        expected = torch.tensor([float("nan") if e is None else e for e in expected])
        torch.testing.assert_close(r["rewards"], expected, equal_nan=True, msg=f"round {i}")
    # Graded-ahead batches carry log-probabilities of the policy that sampled them (the step before), so GRPO's ratio
    # corrects the one-step lag; the synchronous first step needs none (on-policy).
    for r, stale_step in zip(rounds, expected_stale, strict=True):
        if stale_step:
            assert r["old_logps"] is not None and r["old_logps"].shape == r["completion_ids"].shape
        elif accumulation == 1:
            assert r["old_logps"] is None  # on-policy: TRL needs none
    ratios = [e for e in trainer.state.log_history if "clip_ratio/region_mean" in e]
    assert ratios, "GRPO logged its clipped-ratio metrics"


def test_batch_graded_ahead_is_scored_like_a_synchronous_batch(tiny_model_path, tmp_path):
    """Same completions, same grades, same advantages: score a batch ahead, then the same batch synchronously."""
    dataset = Dataset.from_list(make_rubric_rows(4, conversational=True, seed=1))
    trainer = RubricGRPOTrainer(
        tiny_model_path, args=args(tmp_path, max_steps=1), train_dataset=dataset, judge=parity_judge()
    )
    trainer.model.train()
    inputs = [dict(row) for row in dataset.select([0, 0, 1, 1])]
    pending = trainer._ahead_submit(trainer._ahead_start(inputs))
    ahead = trainer._ahead_finish(inputs, pending, pending.future.result())
    generated = pending.generated
    trainer._generate = lambda prompts: generated
    try:
        synchronous = super(JudgeAheadMixin, trainer)._generate_and_score_completions(inputs)
    finally:
        del trainer._generate
    for key in ("completion_ids", "completion_mask", "prompt_ids", "advantages"):
        torch.testing.assert_close(ahead[key], synchronous[key], msg=key)
    assert ahead["old_per_token_logps"].shape == ahead["completion_ids"].shape


def test_judge_ahead_refuses_settings_it_cannot_keep_correct(tiny_model_path, tmp_path):
    dataset = Dataset.from_list(make_rubric_rows(4, conversational=True))
    with pytest.raises(ValueError, match=r"judge_ahead=True cannot be used with num_iterations=2"):
        RubricGRPOTrainer(
            tiny_model_path, args=args(tmp_path, num_iterations=2), train_dataset=dataset, judge=parity_judge()
        )
    with pytest.raises(ValueError, match=r"steps_per_generation=2 differs from gradient_accumulation_steps=1"):
        RubricGRPOTrainer(
            tiny_model_path, args=args(tmp_path, steps_per_generation=2), train_dataset=dataset, judge=parity_judge()
        )


def test_resumed_judge_ahead_run_matches_the_uninterrupted_run(tiny_model_path, tmp_path):
    """No batch is sampled ahead across a checkpoint, so the resumed run trains on what the uninterrupted one did."""
    dataset = Dataset.from_list(make_rubric_rows(8, conversational=True, seed=1))
    saving = dict(max_steps=5, save_strategy="steps", save_steps=2)
    full = RubricGRPOTrainer(
        tiny_model_path, args=args(tmp_path / "full", **saving), train_dataset=dataset, judge=parity_judge()
    )
    full_rounds = recording(full)
    full.train()
    stale = [e[AHEAD_STALE] for e in full.state.log_history if AHEAD_STALE in e]
    assert stale == [0.0, 1.0, 0.0, 1.0, 0.0], "synchronous after each checkpoint (steps 2 and 4)"

    checkpoint = tmp_path / "resumed" / "checkpoint-2"
    shutil.copytree(tmp_path / "full" / "checkpoint-2", checkpoint)
    resumed = RubricGRPOTrainer(
        tiny_model_path, args=args(tmp_path / "resumed", **saving), train_dataset=dataset, judge=parity_judge()
    )
    resumed_rounds = recording(resumed)
    resumed.train(resume_from_checkpoint=str(checkpoint))

    assert [r["completions"] for r in resumed_rounds] == [r["completions"] for r in full_rounds[2:]]
    losses = lambda t: {e["step"]: e["loss"] for e in t.state.log_history if "loss" in e}  # noqa: E731
    full_losses, resumed_losses = losses(full), losses(resumed)
    for step in range(3, 6):
        assert resumed_losses[step] == pytest.approx(full_losses[step], rel=1e-6, abs=1e-9), f"step {step}"
    for a, b in zip(full.model.parameters(), resumed.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_trl_seams_judge_ahead_relies_on_keep_their_shape():
    """Fails loudly if a TRL or transformers upgrade changes a seam judge_ahead uses (it reads `_generate`'s tuple)."""
    import inspect

    from transformers import Trainer
    from trl import GRPOTrainer

    expected = {
        (Trainer, "get_batch_samples"): ["self", "epoch_iterator", "num_batches", "device"],
        (GRPOTrainer, "_generate"): ["self", "prompts"],
        (GRPOTrainer, "_generate_and_score_completions"): ["self", "inputs"],
    }
    for (cls, name), params in expected.items():
        assert list(inspect.signature(getattr(cls, name)).parameters) == params, name
    source = inspect.getsource(GRPOTrainer._generate_and_score_completions)
    # The 8-tuple whose first four items (prompt ids, completion ids, tool mask, completions) judge_ahead reads.
    assert (
        "prompt_ids_list,\n            completion_ids_list,\n            tool_mask_list,\n            completions,"
        in (source)
    )
    assert "= self._generate(prompts)" in source


def test_grading_ahead_sees_the_trainer_state_of_sampling_time(tiny_model_path, tmp_path):
    """The background grading gets a snapshot, not the live state that training moves on meanwhile."""
    dataset = Dataset.from_list(make_rubric_rows(8, conversational=True, seed=1))
    trainer = RubricGRPOTrainer(tiny_model_path, args=args(tmp_path), train_dataset=dataset, judge=parity_judge())
    seen, call = [], trainer.rubric_reward.__class__.__call__

    async def recording_call(self, prompts, completions, **kwargs):
        state = kwargs["trainer_state"]
        seen.append((state is trainer.state, state.global_step))
        return await call(self, prompts, completions, **kwargs)

    trainer.rubric_reward.__class__.__call__ = recording_call
    try:
        trainer.train()
    finally:
        trainer.rubric_reward.__class__.__call__ = call
    # Step 1 grades synchronously (the live state, global_step 0); each later batch is graded from a copy taken when
    # it was sampled, during the step before the one that trains on it.
    assert seen == [(True, 0), (False, 0), (False, 1), (False, 2)]


def test_evaluation_during_a_judge_ahead_run_grades_synchronously(tiny_model_path, tmp_path):
    rows = make_rubric_rows(12, conversational=True, seed=1)
    train, held_out = Dataset.from_list(rows[:8]), Dataset.from_list(rows[8:])
    settings = dict(eval_strategy="steps", eval_steps=2, per_device_eval_batch_size=4)
    trainer = RubricGRPOTrainer(
        tiny_model_path,
        args=args(tmp_path, **settings),
        train_dataset=train,
        eval_dataset=held_out,
        judge=parity_judge(),
    )
    trainer.train()
    stale = [e[AHEAD_STALE] for e in trainer.state.log_history if AHEAD_STALE in e]
    assert stale == [0.0, 1.0, 1.0, 1.0], "evaluation does not break the read-ahead"
    evals = [e for e in trainer.state.log_history if "eval_reward" in e]
    assert [e["step"] for e in evals] == [2, 4] and all(e["eval_reward"] == e["eval_reward"] for e in evals)
