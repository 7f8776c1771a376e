from trl_rubric import __version__
from trl_rubric.cli import main


def test_version_and_help(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"trl-rubric {__version__}"
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("rgsd", "grpo", "eval", "gap", "demo"):
        assert command in out


def test_unknown_command_exits_2(capsys):
    assert main(["nope"]) == 2
    assert "unknown command 'nope'" in capsys.readouterr().err
