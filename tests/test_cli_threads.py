"""`--num_threads` on every command: the same default (1) and the count is set for the command, then restored."""

import pytest
import torch

from trl_rubric.scripts import _common, demo, gap, grpo, rgsd
from trl_rubric.scripts import eval as eval_script


@pytest.fixture
def two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("module", [rgsd, grpo], ids=["rgsd", "grpo"])
def test_training_commands_build_and_train_with_num_threads_then_restore_it(module, tmp_path, two_threads):
    seen = []

    def build(*parsed):
        seen.append(("build", torch.get_num_threads()))
        return "trainer"

    def execute(built, *parsed):
        seen.append(("train", torch.get_num_threads()))
        return 0

    argv = ["--output_dir", str(tmp_path), "--dataset_name", "toy://train", "--use_cpu", "--bf16", "false"]
    assert (
        _common.run_command("x", module.MODULE, module.make_parser, build, execute, [*argv, "--num_threads", "3"]) == 0
    )
    assert seen == [("build", 3), ("train", 3)] and torch.get_num_threads() == 2
    seen.clear()
    assert _common.run_command("x", module.MODULE, module.make_parser, build, execute, argv) == 0
    assert seen == [("build", 1), ("train", 1)] and torch.get_num_threads() == 2  # the default is one thread
    seen.clear()
    assert (
        _common.run_command("x", module.MODULE, module.make_parser, build, execute, [*argv, "--num_threads", "0"]) == 0
    )
    assert seen == [("build", 2), ("train", 2)]  # 0 leaves torch's setting


@pytest.mark.parametrize("module", [eval_script, gap], ids=["eval", "gap"])
def test_eval_and_gap_run_with_num_threads_then_restore_it(module, two_threads):
    seen = []

    def body(args, judge_args):
        seen.append(torch.get_num_threads())
        return 0

    assert eval_script.run_command(module.COMMAND, ["--num_threads", "3"], module.make_parser, body) == 0
    assert eval_script.run_command(module.COMMAND, [], module.make_parser, body) == 0
    assert seen == [3, 1] and torch.get_num_threads() == 2


def test_negative_num_threads_is_a_usage_error_on_every_command(tmp_path, capsys):
    never = pytest.fail
    assert (
        _common.run_command(
            "rgsd",
            rgsd.MODULE,
            rgsd.make_parser,
            never,
            never,
            ["--output_dir", str(tmp_path), "--use_cpu", "--num_threads", "-1"],
        )
        == 2
    )
    assert "num_threads is -1; expected 0 (torch's default) or more" in capsys.readouterr().err
    assert eval_script.run_command("eval", ["--num_threads", "-1"], eval_script.make_parser, never) == 2
    assert "num_threads is -1" in capsys.readouterr().err


def test_every_command_shares_one_num_threads_default_and_help():
    from trl_rubric.scripts._eval_args import EvalArguments, GapArguments

    for cls in (_common.RubricDataArguments, EvalArguments, GapArguments, demo.DemoArguments):
        field = cls.__dataclass_fields__["num_threads"]
        assert field.default == 1 and field.metadata["help"] == _common.NUM_THREADS_HELP, cls
