"""Multi-process launch: `--accelerate_config/--num_processes` re-launch through `accelerate launch -m`."""

import subprocess
import sys

import pytest

from trl_rubric.cli import main
from trl_rubric.scripts import _common


def test_launch_options_relaunch_the_module_through_accelerate(monkeypatch, tmp_path):
    captured = {}
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(
        "accelerate.commands.launch.launch_command", lambda args: captured.setdefault("args", args), raising=True
    )
    config = tmp_path / "zero3.yaml"
    config.write_text("distributed_type: DEEPSPEED\n")
    argv = ["rgsd", "--config", "recipe.yaml", "--accelerate_config", str(config), "--num_processes", "8", "--lr", "1"]
    assert main(argv) == 0
    args = captured["args"]
    assert args.config_file == str(config)
    assert args.num_processes == 8
    assert args.module is True and args.training_script == "trl_rubric.scripts.rgsd"
    # everything that is not a launcher option goes to the script, in order
    assert args.training_script_args == ["--config", "recipe.yaml", "--lr", "1"]


def test_missing_accelerate_config_is_a_one_line_error(capsys, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert main(["grpo", "--accelerate_config", "nope.yaml", "--num_processes", "2"]) == 2
    err = capsys.readouterr().err
    assert "trl-rubric grpo: error: --accelerate_config 'nope.yaml' is not a file" in err


def test_split_launch_args_keeps_script_args():
    launch, rest = _common.split_launch_args(["--num_processes=4", "--max_steps", "3", "--main_process_port", "29501"])
    assert launch == ["--num_processes", "4", "--main_process_port", "29501"]
    assert rest == ["--max_steps", "3"]
    with pytest.raises(_common.UsageError, match="--num_processes needs a value"):
        _common.split_launch_args(["--num_processes"])


@pytest.mark.parametrize("module", ["rgsd", "grpo", "eval", "gap", "demo"])
def test_scripts_run_as_modules(module):
    # `accelerate launch -m trl_rubric.scripts.<module>` runs exactly this
    out = subprocess.run(
        [sys.executable, "-m", f"trl_rubric.scripts.{module}", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "usage:" in out.stdout


@pytest.mark.parametrize(
    "argv,message",
    [
        (["rgsd", "--no_such_field", "1"], "unknown option"),
        (
            ["rgsd", "--model_name_or_path", "x", "--distillation_beta", "2.0", "--dataset_name", "y"],
            "distillation_beta",
        ),
        (["grpo", "--model_name_or_path", "./missing-model", "--dataset_name", "d.jsonl"], "does not exist"),
        (["rgsd", "--model_name_or_path", "Qwen/Qwen2.5-0.5B-Instruct"], "no dataset"),
    ],
)
def test_bad_config_is_one_line_and_exit_2(argv, message, capsys):
    # TrainingArguments refuses bf16 on a CPU before anything else; that message is clear too, but not the one tested
    assert main([*argv, "--use_cpu", "true", "--bf16", "false"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
