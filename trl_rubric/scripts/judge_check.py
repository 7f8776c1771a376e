"""`trl-rubric judge-check`: how far can this judge be trusted? Its verdicts against labelled verdicts, or a second judge.

    trl-rubric judge-check --labels_file labels.jsonl \\
        --judge_backend openai --judge_base_url http://localhost:8000/v1 --judge_model Qwen/Qwen3-8B

    # against a second (reference) judge instead of the file's labels
    trl-rubric judge-check --labels_file rows.jsonl --judge_backend transformers --judge_model smollm2:// \\
        --reference_judge_backend openai --reference_judge_model Qwen/Qwen3-32B

The labels file is JSON Lines of `{prompt, response, rubric, labels}` (see `trl_rubric.evaluation.judge_labels`); the
`responses.jsonl` that `trl-rubric eval` writes works as is, its verdicts being the labels (so `eval --judge_backend
rule` on a rule-checked world gives exact labels). The judge grades every row; the command reports accuracy, Cohen's
kappa, false-met and false-unmet rates per criterion and category, length bias and the least reliable criteria, with
bootstrap intervals, and writes `results.json`, `report.md`, `verdicts.jsonl` and `judge_check.png` into
`--output_dir`. The judge's options (`--judge_*`) are those of `trl-rubric eval`; the reference judge's are the same
names with a `reference_` prefix.
"""

from __future__ import annotations

import os
import random
import sys
import typing
from dataclasses import MISSING, dataclass, field, fields, make_dataclass
from typing import Any

from ..judges.factory import JudgeArguments
from ._common import UsageError, one_line, trl_parser

COMMAND = "judge-check"
REFERENCE_PREFIX = "reference_"


@dataclass
class _JudgeCheckOptions:
    """Options of `trl-rubric judge-check`: the labelled rows, the report, and (as `reference_judge_*`) an optional
    second judge whose verdicts serve as the labels. The judge under test takes eval's `--judge_*` options."""

    # > Labels
    labels_file: str | None = field(
        default=None,
        metadata={
            "help": "JSON Lines of {prompt, response, rubric, labels} (one label per criterion: true/false/"
            "'cannot_assess'/null), or the responses.jsonl of `trl-rubric eval` (its verdicts are the labels)."
        },
    )
    n_samples: int | None = field(
        default=None, metadata={"help": "Check a seeded random subset of this many rows (all rows if unset)."}
    )
    save_labels: str | None = field(
        default=None,
        metadata={
            "help": "Also write the rows with the labels used (the reference judge's, if any) as a labels file here."
        },
    )

    # > Report
    output_dir: str = field(default="trl-rubric-judge-check", metadata={"help": "Folder for results and the chart."})
    bootstrap_samples: int = field(
        default=1000, metadata={"help": "Bootstrap resamples (over responses) for the intervals; 0 disables them."}
    )
    confidence_level: float = field(default=0.95, metadata={"help": "Coverage of the intervals."})
    seed: int = field(default=0, metadata={"help": "Seed of the subset and the bootstrap; same seed, same report."})
    min_pairs: int = field(
        default=5, metadata={"help": "Fewest scored verdicts for a criterion to be ranked among the least reliable."}
    )
    n_least_reliable: int = field(default=5, metadata={"help": "How many least reliable criteria to name."})
    plots: bool = field(default=True, metadata={"help": "Write judge_check.png (needs matplotlib: the `plot` extra)."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar while grading."})


def _reference_fields() -> list[tuple[str, Any, Any]]:
    """`reference_<field>` for every field of [`JudgeArguments`], same type, default and help; the backend defaults to
    `None` (no reference judge: the file's labels are used)."""
    hints = typing.get_type_hints(JudgeArguments)
    out = []
    for f in fields(JudgeArguments):
        typ, default = hints[f.name], f.default
        if f.name == "judge_backend":
            typ, default = typ | None, None
        assert default is not MISSING, f.name
        text = f.metadata.get("help", "")
        if f.name == "judge_backend":
            text = (
                "Backend of a reference judge whose verdicts replace the file's labels (unset: use the labels). "
                + text
            )
        meta = {"help": f"Reference judge: {text}"}
        out.append((REFERENCE_PREFIX + f.name, typ, field(default=default, metadata=meta)))
    return out


JudgeCheckArguments = make_dataclass("JudgeCheckArguments", _reference_fields(), bases=(_JudgeCheckOptions,))
JudgeCheckArguments.__module__ = __name__
JudgeCheckArguments.__doc__ = _JudgeCheckOptions.__doc__


def make_parser():
    """The parser of `trl-rubric judge-check`: `(JudgeCheckArguments, JudgeArguments)`."""
    return trl_parser([JudgeCheckArguments, JudgeArguments], f"trl-rubric {COMMAND}")


def reference_judge_args(args) -> JudgeArguments | None:
    """The reference judge's [`JudgeArguments`] (validated as the main judge's are), or `None` without one."""
    if getattr(args, REFERENCE_PREFIX + "judge_backend") is None:
        return None
    return JudgeArguments(**{f.name: getattr(args, REFERENCE_PREFIX + f.name) for f in fields(JudgeArguments)})


def _build_judge(judge_args: JudgeArguments, role: str):
    from ..judges.base import JudgeUnavailableError
    from ._common import resolve_model_path
    from .eval import build_judge_from_args

    if judge_args.judge_mode == "implicit":
        raise UsageError(
            f"the {role} uses judge_mode 'implicit' (one rating per answer): judge-check needs a verdict per "
            "criterion; use 'batched' or 'per_criterion'"
        )
    if judge_args.judge_backend == "transformers" and judge_args.judge_model:
        judge_args.judge_model = resolve_model_path(judge_args.judge_model)  # smollm2:// and toy:// aliases
    try:
        return build_judge_from_args(judge_args)
    except JudgeUnavailableError as e:
        raise UsageError(f"the {role} does not answer: {one_line(e)}") from None


def _check_args(args) -> None:
    if not args.labels_file:
        raise UsageError("no labels file given; pass --labels_file <labels.jsonl or eval's responses.jsonl>")
    if args.n_samples is not None and args.n_samples < 1:
        raise UsageError(f"--n_samples is {args.n_samples}; expected a positive number")
    if not 0 < args.confidence_level < 1:
        raise UsageError(f"--confidence_level is {args.confidence_level}; expected a number in (0, 1)")
    if args.bootstrap_samples < 0:
        raise UsageError(f"--bootstrap_samples is {args.bootstrap_samples}; expected 0 or more")


def build(args, judge_args):
    """Everything that can fail on bad input, before any grading: rows, judge, reference judge."""
    from ..evaluation.judge_labels import read_labels

    _check_args(args)
    reference = reference_judge_args(args)
    rows = read_labels(args.labels_file, require_labels=reference is None)
    if args.n_samples is not None and args.n_samples < len(rows):
        keep = sorted(random.Random(args.seed).sample(range(len(rows)), args.n_samples))
        rows = [rows[i] for i in keep]
    judge = _build_judge(judge_args, "judge")
    reference_judge = _build_judge(reference, "reference judge") if reference is not None else None
    return rows, judge, reference_judge


def judge_verdicts(grade) -> list[Any]:
    """A grade's per-criterion outcomes for [`check_judge`]: met / unmet / cannot_assess / unknown."""
    return list(grade.outcomes)


def _grade(judge, rows, judge_args, progress: bool):
    return judge.grade_many_sync(
        [r.prompt for r in rows],
        [r.response for r in rows],
        [r.rubric for r in rows],
        max_concurrency=judge_args.judge_max_concurrency,
        progress=progress,
    )


def _judge_record(judge_args: JudgeArguments | None, judge) -> dict[str, Any] | None:
    if judge_args is None:
        return None
    # As eval records it: no URL (it may carry a token) and nothing about the key.
    keep = ("judge_backend", "judge_model", "judge_mode")
    record = {k: getattr(judge_args, k) for k in keep}
    record["name"] = getattr(judge, "name", type(judge).__name__)
    return record


def execute(built, args, judge_args) -> int:
    from ..evaluation.judge_check import check_judge
    from ..evaluation.judge_check_report import summary_line, write_judge_check_outputs
    from ..evaluation.judge_labels import as_label, write_labels

    rows, judge, reference_judge = built
    before = judge.stats.snapshot()
    grades = _grade(judge, rows, judge_args, args.progress)
    stats = judge.stats.since(before)
    if reference_judge is not None:
        for row, grade in zip(rows, _grade(reference_judge, rows, reference_judge_args(args), args.progress),
                              strict=True):  # fmt: skip
            row.labels = [as_label(v) for v in judge_verdicts(grade)]
            row.extra["labeller"] = getattr(reference_judge, "name", "reference judge")
    verdicts = [judge_verdicts(g) for g in grades]
    result = check_judge(
        verdicts,
        [r.labels for r in rows],
        [r.rubric for r in rows],
        [r.response for r in rows],
        n_resamples=args.bootstrap_samples,
        confidence_level=args.confidence_level,
        seed=args.seed,
        min_pairs=args.min_pairs,
        n_least_reliable=args.n_least_reliable,
    )
    result.config.update(
        labels_file=args.labels_file,
        n_rows=len(rows),
        judge=_judge_record(judge_args, judge),
        reference_judge=_judge_record(reference_judge_args(args), reference_judge),
        judge_calls=stats.calls,
        judge_failed_grades=stats.failures,
    )
    verdict_rows = [
        {
            "index": i,
            "prompt": r.prompt,
            "response": r.response,
            "criteria": [c.text for c in r.rubric],
            "labels": r.labels,
            "judge": v,
            "judge_explanations": list(g.explanations),
            "judge_error": g.error,
        }
        for i, (r, v, g) in enumerate(zip(rows, verdicts, grades, strict=True))
    ]
    files, note = write_judge_check_outputs(result, args.output_dir, verdict_rows, plots=args.plots)
    if args.save_labels:
        write_labels(rows, args.save_labels)
    print(summary_line(result))
    if result.least_reliable:
        print("least reliable: " + "; ".join(result.least_reliable))
    if note:
        print(f"trl-rubric {COMMAND}: {note}", file=sys.stderr)
    print(f"wrote {', '.join(os.path.basename(p) for p in files.values())} to {args.output_dir}")
    # Nothing scored (every grade failed, or no labels) must not look like a success to scripts and CI.
    return 0 if result.overall["n"] > 0 else 1


def main(argv: list[str] | None = None) -> int:
    """`trl-rubric judge-check [--config recipe.yaml] [--option value ...]`.

    Returns:
        The exit code: 0 on success, 1 when no verdict could be scored, 2 on bad input.
    """
    from ._common import run_command

    return run_command(COMMAND, "trl_rubric.scripts.judge_check", make_parser, build, execute, argv)


if __name__ == "__main__":
    sys.exit(main())
