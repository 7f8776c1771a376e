"""Checkpoint and resume: a run stopped at a checkpoint and resumed ends exactly where the uninterrupted run does.

RGSD with every teacher kind: 6 steps straight vs. 3 steps + checkpoint, then resumed to 6, on CPU with a fixed seed.
Generation samples, so equality needs the RNG state (Trainer's `rng_state.pth`), the data order and, inside a
generation round, GRPO's generation buffer to come back; losses and weights are compared exactly (float tolerance).
RubricGRPO with a judge cache: a resumed run regenerates the completions it had already graded and sends no request
for them.
"""

import shutil

import pytest
import torch
from datasets import Dataset

from trl_rubric.testing import make_rubric_rows
from trl_rubric.testing.judge_server import FakeJudgeServer
from trl_rubric.trainers.resume import GENERATION_BUFFER_FILE
from trl_rubric.trainers.rgsd import TEACHER_STATE_FILE, RGSDConfig, RGSDTrainer
from trl_rubric.trainers.rubric_grpo import RubricGRPOConfig, RubricGRPOTrainer

STEPS, CHECKPOINT = 6, 3


def rgsd_args(output_dir, **overrides):
    # 8 rows, 4 per step: 2 steps per epoch, so the checkpoint at step 3 sits inside the second epoch.
    kwargs = dict(
        output_dir=str(output_dir),
        use_cpu=True,
        bf16=False,
        report_to="none",
        per_device_train_batch_size=4,
        max_completion_length=6,
        max_steps=STEPS,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="steps",
        save_steps=CHECKPOINT,
        seed=0,
        teacher_update_rate=0.5,
        disable_tqdm=True,
    )
    kwargs.update(overrides)
    return RGSDConfig(**kwargs)


def recording(trainer):
    """Record the prompts of every generation round, to say *what* diverged when a comparison fails."""
    rounds = []
    generate = trainer._generate_and_score_completions

    def wrapped(inputs):
        rounds.append([x["prompt"][-1]["content"] for x in inputs])
        return generate(inputs)

    trainer._generate_and_score_completions = wrapped
    return rounds


def losses_by_step(trainer):
    return {e["step"]: e["loss"] for e in trainer.state.log_history if "loss" in e}


def resume_copy(full_dir, resumed_dir):
    """The checkpoint the uninterrupted run wrote at step 3, as the only thing in a fresh output dir."""
    checkpoint = resumed_dir / f"checkpoint-{CHECKPOINT}"
    shutil.copytree(full_dir / f"checkpoint-{CHECKPOINT}", checkpoint)
    return checkpoint


def assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=1e-6, msg=f"{key} differs after resuming")


@pytest.mark.parametrize(
    "kind, context",
    [("base", "rubric"), ("ema", "rubric"), ("live", "rubric"), ("base", "rubric+reference"), ("base", "skills")],
)
def test_resumed_rgsd_run_matches_the_uninterrupted_run(kind, context, tiny_model_path, tmp_path):
    rows = make_rubric_rows(8, conversational=True)
    for i, row in enumerate(rows):
        row["reference"] = f"reference answer {i}"
    dataset = Dataset.from_list(rows)
    bank = tmp_path / "skills.txt"  # for "skills": K = 2 teachers per rollout, from this bank
    bank.write_text("check the dose\nlist fever warning signs\nexplain heart risk\n", encoding="utf-8")
    context_args = dict(teacher_context=context, skill_bank=str(bank), num_teacher_contexts=2)
    full = RGSDTrainer(
        tiny_model_path,
        args=rgsd_args(tmp_path / "full", teacher_model_kind=kind, **context_args),
        train_dataset=dataset,
    )
    full_rounds = recording(full)
    initial = {k: v.clone() for k, v in full.model.state_dict().items()}
    full.train()
    checkpoint = resume_copy(tmp_path / "full", tmp_path / "resumed")
    if kind == "ema":
        saved = torch.load(checkpoint / TEACHER_STATE_FILE, weights_only=True)
        assert saved.keys() == initial.keys()
        assert any(not torch.equal(saved[k], initial[k]) for k in saved), "the checkpoint holds the moved EMA teacher"

    resumed = RGSDTrainer(
        tiny_model_path,
        args=rgsd_args(tmp_path / "resumed", teacher_model_kind=kind, **context_args),
        train_dataset=dataset,
    )
    resumed_rounds = recording(resumed)
    resumed.train(resume_from_checkpoint=str(checkpoint))

    assert resumed_rounds == full_rounds[CHECKPOINT:], "the resumed run must see the same prompts in the same order"
    full_losses, resumed_losses = losses_by_step(full), losses_by_step(resumed)
    for step in range(CHECKPOINT + 1, STEPS + 1):
        assert resumed_losses[step] == pytest.approx(full_losses[step], rel=1e-6, abs=1e-9), f"step {step}"
    assert_same_state(resumed.model, full.model)
    if kind == "ema":
        assert_same_state(resumed.teacher_model, full.teacher_model)


def test_resumed_bf16_ema_run_keeps_the_fp32_average(tiny_model_path, tmp_path):
    """A bf16 EMA teacher is an fp32 average rounded; the checkpoint keeps the average, so resuming is exact."""
    dataset = Dataset.from_list(make_rubric_rows(8, conversational=True))
    bf16 = dict(teacher_model_kind="ema", teacher_update_rate=0.3, model_init_kwargs={"dtype": torch.bfloat16})
    full = RGSDTrainer(tiny_model_path, args=rgsd_args(tmp_path / "full", **bf16), train_dataset=dataset)
    assert next(full.teacher_model.parameters()).dtype == torch.bfloat16
    full.train()
    checkpoint = resume_copy(tmp_path / "full", tmp_path / "resumed")
    assert (checkpoint / "rgsd_teacher_fp32_rank0.pt").exists()
    resumed = RGSDTrainer(tiny_model_path, args=rgsd_args(tmp_path / "resumed", **bf16), train_dataset=dataset)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    for i, shadow in full._ema_callback.shadow.items():
        torch.testing.assert_close(resumed._ema_callback.shadow[i], shadow, rtol=0, atol=0)
    assert_same_state(resumed.teacher_model, full.teacher_model)


def test_resuming_an_ema_run_without_its_teacher_state_fails_clearly(tiny_model_path, tmp_path):
    dataset = Dataset.from_list(make_rubric_rows(8, conversational=True))
    args = rgsd_args(tmp_path / "full", teacher_model_kind="ema", max_steps=CHECKPOINT)
    RGSDTrainer(tiny_model_path, args=args, train_dataset=dataset).train()
    checkpoint = resume_copy(tmp_path / "full", tmp_path / "resumed")
    (checkpoint / TEACHER_STATE_FILE).unlink()
    trainer = RGSDTrainer(
        tiny_model_path, args=rgsd_args(tmp_path / "resumed", teacher_model_kind="ema"), train_dataset=dataset
    )
    with pytest.raises(FileNotFoundError, match="holds no rgsd_teacher.pt; the EMA teacher cannot be restored"):
        trainer.train(resume_from_checkpoint=str(checkpoint))


def test_resume_inside_a_generation_round_trains_on_the_buffered_completions(tiny_model_path, tmp_path):
    """steps_per_generation=2: one generation feeds two optimizer steps, and the checkpoint at step 3 falls between
    them. Without the saved buffer, the resumed step 4 would generate afresh and step 5 would reuse that."""
    dataset = Dataset.from_list(make_rubric_rows(8, conversational=True))
    full = RGSDTrainer(
        tiny_model_path, args=rgsd_args(tmp_path / "full", steps_per_generation=2), train_dataset=dataset
    )
    full_rounds = recording(full)
    full.train()
    checkpoint = resume_copy(tmp_path / "full", tmp_path / "resumed")
    assert (checkpoint / GENERATION_BUFFER_FILE.format(rank=0)).exists()
    assert not (tmp_path / "full" / f"checkpoint-{STEPS}" / GENERATION_BUFFER_FILE.format(rank=0)).exists(), (
        "a checkpoint on a generation boundary needs no buffer"
    )

    resumed = RGSDTrainer(
        tiny_model_path, args=rgsd_args(tmp_path / "resumed", steps_per_generation=2), train_dataset=dataset
    )
    resumed_rounds = recording(resumed)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert len(full_rounds) == 3 and resumed_rounds == full_rounds[2:], "step 4 reuses the buffer; step 5 generates"
    full_losses, resumed_losses = losses_by_step(full), losses_by_step(resumed)
    for step in range(CHECKPOINT + 1, STEPS + 1):
        assert resumed_losses[step] == pytest.approx(full_losses[step], rel=1e-6, abs=1e-9), f"step {step}"
    assert_same_state(resumed.model, full.model)


def test_resumed_rubric_grpo_run_sends_no_request_for_completions_already_graded(tiny_model_path, tmp_path):
    """A run checkpointed at step 3 went on to step 6, then died. Resumed from step 3, it regenerates the very same
    completions for steps 4-6 (restored weights, optimizer, RNG and data order), which the on-disk judge cache already
    holds; only step 7 is new. A constant learning rate keeps steps 4-6 identical although max_steps grows to 7."""
    rows = make_rubric_rows(4, conversational=True)  # 2 prompts per step: the checkpoint at step 3 is in epoch 2

    def length(completions, **kwargs):  # varies within every group, so each step updates the weights
        return [len(c[0]["content"]) / 10 for c in completions]

    def args(output_dir, max_steps, url):
        return RubricGRPOConfig(
            output_dir=str(output_dir),
            use_cpu=True,
            bf16=False,
            report_to="none",
            per_device_train_batch_size=4,
            num_generations=2,
            max_completion_length=6,
            max_steps=max_steps,
            learning_rate=1e-2,
            lr_scheduler_type="constant",
            logging_steps=1,
            save_strategy="steps",
            save_steps=CHECKPOINT,
            seed=0,
            disable_tqdm=True,
            judge_backend="openai",
            judge_model="fake-judge",
            judge_base_url=url,
            judge_max_retries=0,
            judge_probe=False,
            judge_cache_dir=str(tmp_path / "judge-cache"),
        )

    with FakeJudgeServer() as server:
        dataset = Dataset.from_list(rows)
        first = RubricGRPOTrainer(
            tiny_model_path,
            reward_funcs=[length],
            args=args(tmp_path / "full", STEPS, server.url),
            train_dataset=dataset,
        )
        first.train()
        assert server.requests == STEPS * 4
        checkpoint = resume_copy(tmp_path / "full", tmp_path / "resumed")
        server.reset_counters()

        resumed = RubricGRPOTrainer(
            tiny_model_path,
            reward_funcs=[length],
            args=args(tmp_path / "resumed", STEPS + 1, server.url),
            train_dataset=dataset,
        )
        resumed.train(resume_from_checkpoint=str(checkpoint))
        assert server.requests == 4, "only step 7's four completions are new to the judge"

    # The log history comes back from the checkpoint too (steps 1-3), then grows from step 4.
    logs = {e["step"]: e for e in resumed.state.log_history if "judge/calls" in e}
    assert sorted(logs) == list(range(1, STEPS + 2))
    assert [logs[s]["judge/cache_hits"] for s in (4, 5, 6)] == [4, 4, 4]
    assert [logs[s]["judge/calls"] for s in (4, 5, 6)] == [0, 0, 0]
    assert logs[7]["judge/calls"] == 4 and logs[7]["judge/cache_hits"] == 0
    first_logs = {e["step"]: e for e in first.state.log_history if "judge/calls" in e}
    for step in (4, 5, 6):
        assert logs[step]["loss"] == pytest.approx(first_logs[step]["loss"], rel=1e-6, abs=1e-9)


def test_resumed_rubric_grpo_run_matches_the_uninterrupted_run_inside_a_generation_round(tiny_model_path, tmp_path):
    """RubricGRPO with steps_per_generation=2: the checkpoint at step 3 falls inside a generation round and inside
    the second epoch. Graded by an in-process rule judge (response length parity), so every step has signal."""
    from trl_rubric.judges import RuleJudge

    def parity(criterion):
        k = len(criterion.text) % 3 + 2
        return lambda response: len(response) % k == 0

    def args(output_dir):
        return RubricGRPOConfig(
            output_dir=str(output_dir),
            use_cpu=True,
            bf16=False,
            report_to="none",
            per_device_train_batch_size=4,
            num_generations=2,
            steps_per_generation=2,
            max_completion_length=6,
            max_steps=STEPS,
            learning_rate=1e-2,
            logging_steps=1,
            save_strategy="steps",
            save_steps=CHECKPOINT,
            seed=0,
            disable_tqdm=True,
        )

    dataset = Dataset.from_list(make_rubric_rows(8, conversational=True))  # 4 prompts per round: 2 rounds per epoch
    full = RubricGRPOTrainer(
        tiny_model_path, args=args(tmp_path / "full"), train_dataset=dataset, judge=RuleJudge(resolver=parity)
    )
    full_rounds = recording(full)
    full.train()
    checkpoint = resume_copy(tmp_path / "full", tmp_path / "resumed")
    assert (checkpoint / GENERATION_BUFFER_FILE.format(rank=0)).exists()
    resumed = RubricGRPOTrainer(
        tiny_model_path, args=args(tmp_path / "resumed"), train_dataset=dataset, judge=RuleJudge(resolver=parity)
    )
    resumed_rounds = recording(resumed)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed_rounds == full_rounds[2:]
    full_losses, resumed_losses = losses_by_step(full), losses_by_step(resumed)
    assert any(full_losses[s] != 0 for s in range(CHECKPOINT + 1, STEPS + 1)), "the steps compared must train"
    for step in range(CHECKPOINT + 1, STEPS + 1):
        assert resumed_losses[step] == pytest.approx(full_losses[step], rel=1e-6, abs=1e-9), f"step {step}"
    assert_same_state(resumed.model, full.model)
