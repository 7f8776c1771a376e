"""The `trl-rubric` console script: `trl-rubric <command> [--config recipe.yaml] [--field value ...]`.

Each command lives in `trl_rubric.scripts.<command>` and exposes `main(argv) -> int`; this module only dispatches,
so `python -m trl_rubric.scripts.<command>` (and `accelerate launch -m ...`) runs the same code.
"""

from __future__ import annotations

import importlib
import sys

from . import __version__

COMMANDS = {
    "rgsd": "Train with Rubric-Guided Self-Distillation (RGSDTrainer).",
    "grpo": "Train with GRPO and a rubric judge (RubricGRPOTrainer).",
    "eval": "Generate answers and grade them against their rubrics.",
    "gap": "Conditioning-gap preflight: does the model do better when it sees the rubric?",
    "demo": "Offline toy world: prepare a tiny model, train it with RGSD, and report.",
    "env": "Print library versions for bug reports.",
    "judge-check": "Check a judge's verdicts against labelled verdicts or a second judge (kappa, bias).",
    "rubrics": "Author rubrics from prompts (and reference answers) with an LLM, then filter them.",
    "references": "Reference answers the model writes itself: the best clean answer of a few, shown the rubric.",
}


def _usage() -> str:
    lines = [f"usage: trl-rubric <command> [options]   (trl-rubric {__version__})", "", "commands:"]
    width = max(len(name) for name in COMMANDS)
    lines += [f"  {name:<{width}} {help_}" for name, help_ in COMMANDS.items()]
    lines += ["", "Run `trl-rubric <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"trl-rubric {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"trl-rubric: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    # `judge-check` lives in `trl_rubric.scripts.judge_check`: module names cannot hold a dash.
    module_name = f"trl_rubric.scripts.{command.replace('-', '_')}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:
            raise
        print(f"trl-rubric: command {command!r} is not available in this build", file=sys.stderr)
        return 2
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
