"""Faults during training: the judge endpoint goes down mid-run (RubricGRPO, real HTTP FakeJudgeServer), and the
teacher produces non-finite activations (RGSD).

Covered elsewhere and not repeated here: single-grade faults, retries and out-of-range / duplicated criterion ids
(`tests/test_judges.py::test_each_fault_is_retried_then_reported_unknown`), and the no-update step with an in-process
rule judge (`tests/test_rubric_grpo.py`). This file runs the whole training loop through an outage of the endpoint.
"""

import logging
import math

import torch
from datasets import Dataset
from transformers import TrainerCallback

from trl_rubric.testing import make_rubric_rows
from trl_rubric.testing.judge_server import FakeJudgeServer
from trl_rubric.trainers.rubric_grpo import RubricGRPOConfig, RubricGRPOTrainer

DOWN_AFTER, UP_AFTER, STEPS = 2, 4, 6  # the judge is gone for steps 3 and 4
PER_STEP = 4  # completions per step


class Outage(TrainerCallback):
    """Stops the judge server after step DOWN_AFTER and starts it again (same port) after step UP_AFTER; keeps a
    copy of the weights after every step."""

    def __init__(self, server):
        self.server = server
        self.snapshots = {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.snapshots[state.global_step] = [p.detach().clone() for p in model.parameters()]
        if state.global_step == DOWN_AFTER:
            self.server.stop()
        elif state.global_step == UP_AFTER:
            self.server.start()
        elif state.global_step == UP_AFTER + 1:
            # One step later, a partial fault: two of the next step's four requests get a 500 (no retries).
            self.server.inject("500", times=2)


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_training_rides_out_a_judge_outage(tiny_model_path, tmp_path, caplog):
    def length(completions, **kwargs):  # a second reward that never fails, and varies within every group
        return [len(c[0]["content"]) / 10 for c in completions]

    with FakeJudgeServer() as server:
        args = RubricGRPOConfig(
            output_dir=str(tmp_path),
            use_cpu=True,
            bf16=False,
            report_to="none",
            per_device_train_batch_size=PER_STEP,
            num_generations=2,
            max_completion_length=6,
            max_steps=STEPS,
            learning_rate=1e-2,
            logging_steps=1,
            save_strategy="no",
            seed=0,
            disable_tqdm=True,
            judge_backend="openai",
            judge_model="fake-judge",
            judge_base_url=server.url,
            judge_max_retries=0,
            judge_timeout=5.0,
            judge_probe=True,
        )
        outage = Outage(server)
        trainer = RubricGRPOTrainer(
            tiny_model_path,
            reward_funcs=[length],
            args=args,
            train_dataset=Dataset.from_list(make_rubric_rows(16, conversational=True)),
            callbacks=[outage],
        )
        rewards_by_step = []
        calculate = trainer._calculate_rewards

        def recording(*a, **kw):
            rewards = calculate(*a, **kw)
            rewards_by_step.append(rewards.clone())
            return rewards

        trainer._calculate_rewards = recording
        initial = [p.detach().clone() for p in trainer.model.parameters()]
        with caplog.at_level(logging.WARNING, logger="trl_rubric"):
            trainer.train()  # no exception escapes
        requests_after = server.requests

    assert trainer.state.global_step == STEPS
    logs = {e["step"]: e for e in trainer.state.log_history if "judge/calls" in e}
    assert sorted(logs) == list(range(1, STEPS + 1))

    # Rewards: the outage window is all NaN (both columns, so the other reward cannot stand in for the judge),
    # the partial fault NaNs exactly two completions, everything else is graded.
    assert len(rewards_by_step) == STEPS
    for step, rewards in enumerate(rewards_by_step, start=1):
        unknown = torch.isnan(rewards).all(dim=1)
        assert torch.equal(unknown, torch.isnan(rewards).any(dim=1)), f"step {step}: a row is half NaN"
        expected = {3: PER_STEP, 4: PER_STEP, 6: 2}.get(step, 0)
        assert int(unknown.sum()) == expected, f"step {step}: {rewards}"

    # Metrics: failures counted in the window and in the partial fault, not elsewhere; calls succeed once back.
    failures = [logs[s]["judge/failures"] for s in range(1, STEPS + 1)]
    assert failures == [0, 0, PER_STEP, PER_STEP, 0, 2]
    assert [logs[s]["judge/unknown_frac"] for s in (3, 4)] == [1.0, 1.0]
    assert logs[5]["judge/unknown_frac"] == 0.0 and logs[6]["judge/unknown_frac"] == 0.5
    assert [logs[s]["judge/all_unknown_steps"] for s in range(1, STEPS + 1)] == [0, 0, 1, 2, 2, 2]
    assert requests_after == (STEPS - 2) * PER_STEP, "no request reached the stopped server; all others did"

    # Updates: none while the judge was gone (not even from Adam's momentum), normal ones before and after.
    snaps = outage.snapshots
    assert not same(initial, snaps[1]) and not same(snaps[1], snaps[2])
    assert same(snaps[2], snaps[3]) and same(snaps[3], snaps[4]), "ungraded steps must not move the weights"
    assert not same(snaps[4], snaps[5]) and not same(snaps[5], snaps[6]), "training resumes once the judge is back"
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert all(math.isfinite(logs[s]["loss"]) for s in logs)

    # Why the steps were skipped is said in the log, with the judge's own error.
    skipped = [r.getMessage() for r in caplog.records if "graded none of the completions" in r.getMessage()]
    assert len(skipped) == 2 and all("connection failed" in m for m in skipped)


# --- non-finite teacher activations ---------------------------------------------------------------------------------


def test_nonfinite_teacher_activations_are_masked_counted_and_never_reach_the_weights(tiny_model_path, tmp_path):
    """A forward hook makes the teacher's final hidden state inf / NaN at one completion position of every row, on
    steps 2 and 3 only. Those tokens are left out of the loss and counted; the other tokens still train."""
    from trl_rubric.trainers.rgsd import RGSDConfig, RGSDTrainer

    poisoned_steps = {2, 3}
    args = RGSDConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        bf16=False,
        report_to="none",
        per_device_train_batch_size=4,
        max_completion_length=6,
        max_steps=4,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        seed=0,
        disable_tqdm=True,
    )
    trainer = RGSDTrainer(
        tiny_model_path, args=args, train_dataset=Dataset.from_list(make_rubric_rows(8, conversational=True))
    )
    assert trainer.teacher_model is not None, "base teacher without PEFT is a frozen copy, hooked separately"
    state = {"step": 0}

    def poison(module, inputs, output):
        if state["step"] not in poisoned_steps:
            return output
        output = output.clone()
        output[:, -2, :] = float("inf")  # position -2 predicts the last completion token
        output[0, -2, 0] = float("nan")
        return output

    trainer.accelerator.unwrap_model(trainer.teacher_model).model.norm.register_forward_hook(poison)

    class StepCounter(TrainerCallback):
        def on_step_begin(self, args, train_state, control, **kwargs):
            state["step"] = train_state.global_step + 1

    trainer.add_callback(StepCounter())
    in_loss = {}  # step -> how many poisoned positions are real (unpadded) completion tokens
    compute = trainer._compute_loss

    def recording(model, inputs):
        in_loss[state["step"]] = int(inputs["rgsd_loss_mask"][:, -1].sum())
        return compute(model, inputs)

    trainer._compute_loss = recording
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()

    logs = {e["step"]: e for e in trainer.state.log_history if "rgsd/nonfinite_tokens" in e}
    counted = {s: logs[s]["rgsd/nonfinite_tokens"] for s in sorted(logs)}
    expected = {s: float(in_loss[s]) if s in poisoned_steps else 0.0 for s in sorted(logs)}
    assert counted == expected and all(counted[s] > 0 for s in poisoned_steps)
    for s, entry in logs.items():
        assert math.isfinite(entry["loss"]) and math.isfinite(entry["grad_norm"]), f"step {s}: {entry}"
        assert math.isfinite(entry["rgsd/divergence"])
    assert all(logs[s]["rgsd/divergence"] > 0 for s in poisoned_steps), "the finite tokens still give a loss"
    after = list(trainer.model.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert not same(before, after)
