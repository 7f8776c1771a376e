"""The reward-hacking monitor: a second judge on held-out probe prompts, a warning when it and the training signal part.

The constructed case: the training judge pays for length, the monitor judge for brevity, and the policy's answers
grow step by step (scripted through the generation budget: the random tiny model writes to its cap). The training
signal rises, the monitor falls, the monitor warns. The same run without the growth stays quiet.
"""

import json
import random
import re
import warnings

import pytest
from datasets import Dataset

from trl_rubric.judges import RuleJudge
from trl_rubric.testing import make_rubric_rows
from trl_rubric.trainers.hacking_monitor import PROBES_FILE, HackingMonitor, RewardHackingWarning, hacking_check
from trl_rubric.trainers.rgsd import RGSDConfig, RGSDTrainer
from trl_rubric.trainers.rubric_grpo import RubricGRPOConfig, RubricGRPOTrainer

THRESHOLDS = (10, 20, 30, 40, 50, 60)


def length_rows(n):
    """Rows whose rubric pays one criterion per 10 characters of answer ("at least 10 characters", ...)."""
    rows = make_rubric_rows(n, conversational=True, seed=1)
    for row in rows:
        row["rubric"] = [{"text": f"at least {t} characters", "weight": 1.0} for t in THRESHOLDS]
    return rows


def probe_rows(n=4):
    rows = make_rubric_rows(n, conversational=True, seed=7)
    for row in rows:
        row["rubric"] = [{"text": f"under {t} characters", "weight": 1.0} for t in THRESHOLDS]
    return rows


def threshold(criterion):
    return int(re.search(r"\d+", criterion.text).group())


def length_judge():
    """The training judge that pays for length: any criterion "... N characters" is met by N characters or more."""
    return RuleJudge(resolver=lambda c: lambda r, t=threshold(c): len(r) >= t)


def brevity_judge():
    """The monitor judge: pays for brevity ("under N characters"), so padding answers lowers its score."""
    return RuleJudge(resolver=lambda c: lambda r, t=threshold(c): len(r) < t)


class GrowingAnswers:
    """Scripted drift: the answers' token budget grows by `step` tokens after every optimizer step."""

    def __init__(self, trainer, monitor, step=2):
        self.trainer, self.monitor, self.step = trainer, monitor, step

    def __call__(self, *args, **kwargs):
        self.trainer.generation_config.max_new_tokens += self.step
        self.monitor.max_new_tokens += self.step


def run(tmp_path, tiny_model_path, grow: bool):
    monitor = HackingMonitor(probe_rows(), brevity_judge(), every_n_steps=2, window=2, min_score_drop=0.05)
    args = RubricGRPOConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        bf16=False,
        report_to="none",
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=3,
        max_steps=6,
        learning_rate=1e-6,  # the drift is scripted; training barely moves the tiny model
        logging_steps=1,
        save_strategy="no",
        judge_probe=False,
        seed=0,
        disable_tqdm=True,
    )
    trainer = RubricGRPOTrainer(
        tiny_model_path,
        args=args,
        train_dataset=Dataset.from_list(length_rows(8)),
        judge=length_judge(),
        callbacks=[monitor],
    )
    if grow:
        from transformers import TrainerCallback

        grower = GrowingAnswers(trainer, monitor)
        trainer.add_callback(type("Grow", (TrainerCallback,), {"on_step_end": lambda self, *a, **k: grower()})())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    return trainer, monitor, [w for w in caught if issubclass(w.category, RewardHackingWarning)]


def test_monitor_warns_when_a_length_paying_judge_rises_while_the_monitor_falls(tmp_path, tiny_model_path):
    trainer, monitor, caught = run(tmp_path, tiny_model_path, grow=True)
    logged = [e for e in trainer.state.log_history if "monitor/score" in e]
    assert [e["step"] for e in logged] == [2, 4, 6]
    lengths = [length for _, length in monitor.lengths]
    assert lengths == sorted(lengths) and lengths[-1] > lengths[0], "the probe answers grew"
    assert monitor.scores[-1][1] < monitor.scores[0][1], "the brevity judge's score fell"
    assert caught, "a RewardHackingWarning was raised"
    assert "rewards/rubric_judge/mean rose" in str(caught[0].message)
    assert any(e.get("monitor/hacking_warning") == 1.0 for e in logged)
    assert all("monitor/length" in e and "monitor/signal" in e for e in logged)
    # The length-paying training judge, on the same probe answers, pulls away from the monitor.
    gaps = [e["monitor/gap"] for e in logged]
    assert gaps[-1] > gaps[0] and any("judges part on the same answers" in w["reasons"] for w in monitor.warnings)
    probes = [json.loads(line) for line in (tmp_path / PROBES_FILE).read_text().splitlines()]
    assert [p["step"] for p in probes] == [0, 2, 4, 6] and len(probes[-1]["answers"]) == 4
    assert probes[-1]["answers"][0]["answer"] == monitor.last_answers[0]


def test_monitor_stays_quiet_on_a_normal_run(tmp_path, tiny_model_path):
    trainer, monitor, caught = run(tmp_path, tiny_model_path, grow=False)
    assert not caught and not monitor.warnings
    logged = [e for e in trainer.state.log_history if "monitor/score" in e]
    assert len(logged) == 3 and all(e.get("monitor/hacking_warning", 0.0) == 0.0 for e in logged)
    assert all("monitor/gap" in e for e in logged), "RubricGRPO's own judge also grades the probe answers"


def probes_at(steps, means, spread=0.0, n=8, gaps=None):
    """Probes whose per-prompt scores are `mean +- spread` (a seeded draw per prompt), as `hacking_check` takes them."""
    out = []
    for i, (step, mean) in enumerate(zip(steps, means, strict=True)):
        rng = random.Random(step)
        scores = [mean + rng.choice((spread, -spread)) for _ in range(n)]
        scores = [x - (sum(scores) / n - mean) for x in scores]  # exactly `mean` on average
        out.append((step, scores, None if gaps is None else [gaps[i]] * n))
    return out


def test_hacking_check_on_scripted_signals():
    rising = [(s, 0.1 * s) for s in range(1, 7)]
    steps = (0, 2, 4, 6)
    falling = probes_at(steps, (0.8, 0.7, 0.5, 0.3))
    result = hacking_check(rising, falling, window=2)
    assert result["warning"] == 1.0 and result["reasons"] == ["signal up, monitor down"]
    assert result["signal_rise"] > 0 and result["score_change"] == pytest.approx(-0.4)
    # Both rising: the policy got better by both measures.
    assert hacking_check(rising, probes_at(steps, (0.3, 0.4, 0.5, 0.6)), window=2)["warning"] == 0.0
    # The monitor falls by less than min_score_drop: not a warning.
    assert hacking_check(rising, probes_at(steps, (0.5, 0.5, 0.5, 0.48)), window=2)["warning"] == 0.0
    # A fall of 0.2 on average, but the prompts swing by +-0.5 between probes: within the noise of 8 prompts.
    noisy = probes_at(steps, (0.5, 0.5, 0.5, 0.3), spread=0.5)
    result = hacking_check(rising, noisy, window=2)
    assert result["score_change"] == pytest.approx(-0.2) and result["score_change_se"] > 0.1
    assert result["warning"] == 0.0
    # Signal flat while the monitor falls: a worse policy, not a gamed judge.
    flat = [(s, 0.5) for s in range(1, 7)]
    assert hacking_check(flat, falling, window=2)["warning"] == 0.0
    assert hacking_check(rising, falling[:2], window=2) is None, "too few probes for the window"
    # The training judge's lead over the monitor on the same answers grows: warns without any signal trend.
    parting = probes_at(steps, (0.3, 0.3, 0.3, 0.3), gaps=(0.1, 0.2, 0.3, 0.5))
    result = hacking_check(flat, parting, window=2)
    assert result["reasons"] == ["judges part on the same answers"] and result["gap_change"] == pytest.approx(0.3)
    steady = probes_at(steps, (0.3, 0.3, 0.3, 0.3), gaps=(0.4, 0.4, 0.45, 0.45))
    assert hacking_check(flat, steady, window=2)["warning"] == 0.0


def test_monitor_refuses_bad_probe_rows_and_settings():
    with pytest.raises(ValueError, match=r"probe_dataset row 1: field 'rubric' is missing or empty"):
        HackingMonitor([{"prompt": "a", "rubric": ["x"]}, {"prompt": "b", "rubric": []}], brevity_judge())
    with pytest.raises(ValueError, match="every_n_steps is 0"):
        HackingMonitor(probe_rows(), brevity_judge(), every_n_steps=0)
    with pytest.raises(TypeError, match="needs a RubricJudge"):
        HackingMonitor(probe_rows(), judge=lambda *a: 1.0)


def test_rgsd_calls_a_judge_only_with_a_monitor_and_watches_the_teacher_logratio(tmp_path, tiny_model_path):
    judge = brevity_judge()
    monitor = HackingMonitor(probe_rows(2), judge, every_n_steps=1, window=1)
    args = RGSDConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        bf16=False,
        report_to="none",
        per_device_train_batch_size=2,
        max_completion_length=4,
        max_steps=2,
        logging_steps=1,
        save_strategy="no",
        seed=0,
        disable_tqdm=True,
    )
    trainer = RGSDTrainer(
        tiny_model_path, args=args, train_dataset=Dataset.from_list(length_rows(4)), callbacks=[monitor]
    )
    assert monitor.signal_key == "rgsd/teacher_logratio" and monitor.training_judge is None
    trainer.train()
    assert judge.stats.grades == 2 * 3, "2 probe answers at steps 0, 1 and 2, and no other grading"
    logged = [e for e in trainer.state.log_history if "monitor/score" in e]
    assert len(logged) == 2 and all("monitor/signal" in e for e in logged[1:])
    plain = RGSDTrainer(tiny_model_path, args=args, train_dataset=Dataset.from_list(length_rows(4)))
    assert not any(isinstance(c, HackingMonitor) for c in plain.callback_handler.callbacks)


def test_monitor_with_judge_ahead_grades_each_answer_once(tmp_path, tiny_model_path):
    """The probe waits for a read-ahead grading in flight before using the training judge; nothing is lost or doubled."""
    train_judge = length_judge()
    monitor = HackingMonitor(probe_rows(), brevity_judge(), every_n_steps=2, window=1)
    args = RubricGRPOConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        bf16=False,
        report_to="none",
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=4,
        max_steps=4,
        logging_steps=1,
        save_strategy="no",
        judge_probe=False,
        seed=0,
        disable_tqdm=True,
        judge_ahead=True,
    )
    trainer = RubricGRPOTrainer(
        tiny_model_path,
        args=args,
        train_dataset=Dataset.from_list(length_rows(8)),
        judge=train_judge,
        callbacks=[monitor],
    )
    trainer.train()
    # 4 steps x 4 completions for training, 3 probes (steps 0, 2, 4) x 4 probe answers for the gap.
    assert train_judge.stats.grades == 4 * 4 + 3 * 4
    assert [e["judge/ahead_stale"] for e in trainer.state.log_history if "judge/ahead_stale" in e] == [0, 1, 1, 1]
    assert len([e for e in trainer.state.log_history if "monitor/gap" in e]) == 2
