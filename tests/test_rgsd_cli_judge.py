"""`trl-rubric rgsd` and its judge: pure RGSD builds none; hybrid RGSD, `teacher_focus="unlearned"`,
`teacher_combine="sgsd_gate"` and `teacher_penalties="auto"` take one from the `judge_*` options, and say so clearly
when it is missing or dead. Also: an EMA teacher with LoRA through the CLI, and the model card's judge-call count."""

import asyncio
import json
import logging

import pytest

from trl_rubric.cli import main as cli
from trl_rubric.judges.rule import RuleJudge
from trl_rubric.rewards import RubricReward
from trl_rubric.scripts import rgsd as rgsd_script
from trl_rubric.testing.judge_server import FakeJudgeServer

WORDS = ["alpha", "beta", "gamma"]


@pytest.fixture(scope="module")
def rule_rows(tmp_path_factory):
    """Rows whose criteria the rule judge can check (`rule:contains:<word>`)."""
    rubric = [{"text": f"mentions {w}", "weight": 1.0, "tags": [f"rule:contains:{w}"]} for w in WORDS]
    path = tmp_path_factory.mktemp("rgsd-cli-judge") / "rows.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"question {i}: say something", "rubric": rubric}) + "\n"
                            for i in range(4)))  # fmt: skip
    return str(path)


def argv(dataset, model, output_dir, *extra):
    return [
        "rgsd",
        "--dataset_name", dataset,
        "--model_name_or_path", model,
        "--output_dir", str(output_dir),
        "--use_cpu", "true", "--bf16", "false", "--report_to", "none", "--save_strategy", "no",
        "--max_steps", "2", "--per_device_train_batch_size", "2", "--max_completion_length", "4",
        "--logging_steps", "1", "--disable_tqdm", "true",
        *extra,
    ]  # fmt: skip


def build(*args):
    """The trainer `trl-rubric rgsd` would train, from its arguments."""
    parser = rgsd_script.make_parser()
    *parsed, remaining = parser.parse_args_and_config(list(args[1:]), return_remaining_strings=True)
    assert remaining == []
    return rgsd_script.build_trainer(*parsed)


def error_line(code, err):
    assert code == 2, err[-2000:]
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("trl-rubric rgsd: error: ")]
    assert len(lines) == 1, err[-2000:]
    return lines[0]


def test_pure_rgsd_builds_no_judge(rule_rows, tiny_model_path, tmp_path):
    trainer = build(*argv(rule_rows, tiny_model_path, tmp_path))
    assert not trainer._rgsd_has_rewards
    assert not any(isinstance(f, RubricReward) for f in trainer.reward_funcs)
    assert trainer._view_judge is None


@pytest.mark.parametrize(
    "extra, named",
    [
        (["--teacher_focus", "unlearned"], "teacher_focus=unlearned"),
        (["--distillation_weight", "0.5", "--num_generations", "2"], "distillation_weight=0.5 (hybrid RGSD)"),
        (["--teacher_penalties", "auto"], "teacher_penalties=auto"),
    ],
)
def test_a_setting_that_needs_a_judge_without_one_is_one_line(
    extra, named, rule_rows, tiny_model_path, tmp_path, capfd
):
    line = error_line(cli(argv(rule_rows, tiny_model_path, tmp_path, *extra)), capfd.readouterr().err)
    assert f"{named} needs a judge: set judge_backend" in line
    assert not (tmp_path / "model.safetensors").exists()


def test_teacher_focus_with_the_rule_judge_trains_from_the_cli(rule_rows, tiny_model_path, tmp_path):
    extra = ["--teacher_focus", "unlearned", "--judge_backend", "rule"]
    trainer = build(*argv(rule_rows, tiny_model_path, tmp_path, *extra))
    rewards = [f for f in trainer.reward_funcs if isinstance(f, RubricReward)]
    assert len(rewards) == 1 and isinstance(rewards[0].judge, RuleJudge)
    assert trainer._teacher_focus is not None
    assert trainer.args.distillation_weight == 1.0  # the judge observes; the loss stays distillation

    out = tmp_path / "cli"
    assert cli(argv(rule_rows, tiny_model_path, out, *extra)) == 0
    card = (out / "README.md").read_text()
    # 2 steps x 2 rollouts, each graded once by the observing judge.
    assert "| train judge calls | 4 |" in card, card


def test_hybrid_rgsd_gets_the_judge_reward(rule_rows, tiny_model_path, tmp_path):
    trainer = build(
        *argv(rule_rows, tiny_model_path, tmp_path, "--distillation_weight", "0.5", "--num_generations", "2",
              "--judge_backend", "rule")
    )  # fmt: skip
    assert trainer._rgsd_hybrid
    assert [type(f.judge) for f in trainer.reward_funcs if isinstance(f, RubricReward)] == [RuleJudge]


def test_reward_criteria_reach_the_cli_reward_and_a_row_without_them_is_one_line(
    rule_rows, tiny_model_path, tmp_path, capfd
):
    hybrid = ("--distillation_weight", "0.5", "--num_generations", "2", "--judge_backend", "rule")
    trainer = build(*argv(rule_rows, tiny_model_path, tmp_path, *hybrid, "--reward_criteria", "mentions beta"))
    assert [f.criteria for f in trainer.reward_funcs if isinstance(f, RubricReward)] == [("mentions beta",)]
    code = cli(argv(rule_rows, tiny_model_path, tmp_path / "b", *hybrid, "--reward_criteria", "warning sign"))
    line = error_line(code, capfd.readouterr().err)
    assert "train_dataset row 0: column 'rubric': reward 'rubric_judge': no criterion has a title" in line


def test_auto_view_uses_the_judge_only_before_step_0(rule_rows, tiny_model_path, tmp_path):
    trainer = build(
        *argv(rule_rows, tiny_model_path, tmp_path, "--teacher_penalties", "auto", "--judge_backend", "rule")
    )
    assert isinstance(trainer._view_judge, RuleJudge)
    assert not trainer._rgsd_has_rewards  # no judge call during training


def test_a_dead_judge_stops_the_cli_before_the_model_loads(rule_rows, tiny_model_path, tmp_path, capfd, monkeypatch):
    from trl_rubric.trainers import rgsd

    with FakeJudgeServer() as server:
        dead = server.url
    monkeypatch.setattr(rgsd.RGSDTrainer, "__init__", lambda *a, **k: pytest.fail("the model was loaded"))
    extra = [
        "--teacher_focus",
        "unlearned",
        "--judge_backend",
        "openai",
        "--judge_model",
        "m",
        "--judge_base_url",
        dead,
    ]
    line = error_line(cli(argv(rule_rows, tiny_model_path, tmp_path, *extra)), capfd.readouterr().err)
    assert f"judge endpoint {dead} did not answer the start-up probe" in line


def test_an_unused_judge_is_a_warning(rule_rows, tiny_model_path, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="trl_rubric.scripts.rgsd")
    trainer = build(*argv(rule_rows, tiny_model_path, tmp_path, "--judge_backend", "rule"))
    assert not trainer._rgsd_has_rewards
    assert "judge_backend=rule is set but unused" in caplog.text


def test_bad_judge_options_are_still_checked(rule_rows, tiny_model_path, tmp_path, capfd):
    code = cli(argv(rule_rows, tiny_model_path, tmp_path, "--judge_max_retries", "-1"))
    assert "judge_max_retries is -1" in error_line(code, capfd.readouterr().err)


def test_ema_teacher_with_lora_trains_from_the_cli(rule_rows, tiny_model_path, tmp_path):
    out = tmp_path / "ema"
    code = cli(
        argv(rule_rows, tiny_model_path, out, "--use_peft", "true", "--lora_r", "4", "--lora_target_modules",
             "q_proj", "v_proj", "--teacher_model_kind", "ema", "--teacher_update_rate", "0.5")
    )  # fmt: skip
    assert code == 0
    assert (out / "adapter_model.safetensors").exists()


def test_the_key_term_reward_recipe_is_grpo_on_that_criterion_alone(tiny_model_path, tmp_path):
    # recipes/rgsd_smollm2_key_term_reward.yaml, the first phase of "reward first, then RGSD", on the tiny model and
    # rows whose criteria carry the worlds' "key term" title: the rule judge pays for that criterion only.
    import os

    rubric = [
        {"title": "key term", "text": "mentions alpha", "weight": 2.0, "tags": ["rule:contains:alpha"]},
        {"title": "short", "text": "under 50 words", "weight": 1.0, "tags": ["rule:max_words:50"]},
    ]
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"question {i}", "rubric": rubric}) + "\n" for i in range(4)))
    recipe = os.path.join(os.path.dirname(__file__), "..", "recipes", "rgsd_smollm2_key_term_reward.yaml")
    trainer = build(
        "rgsd", "--config", recipe, "--model_name_or_path", tiny_model_path, "--dataset_name", str(rows),
        "--output_dir", str(tmp_path / "out"), "--per_device_train_batch_size", "8", "--max_steps", "1",
        "--max_completion_length", "4", "--disable_tqdm", "true",
    )  # fmt: skip
    assert trainer._rgsd_hybrid and trainer.args.distillation_weight == 0.0
    assert trainer.args.num_generations == 8 and trainer.args.rollout_degeneration_guard is None
    rewards = [f for f in trainer.reward_funcs if isinstance(f, RubricReward)]
    assert [type(f.judge) for f in rewards] == [RuleJudge] and rewards[0].criteria == ("key term",)
    looped = "alpha is here.\nalpha is here.\nalpha is here."
    answers = ["alpha " + " ".join(f"word{i}" for i in range(60)), "beta", looped]
    scores = asyncio.run(rewards[0](prompts=["question 0"] * 3, completions=answers, rubric=[rubric] * 3))
    # the long answer with the term is paid in full ("short" counts for nothing); a looped one is paid 0
    assert scores == [1.0, 0.0, 0.0]
    trainer.train()
    assert trainer.state.global_step == 1
