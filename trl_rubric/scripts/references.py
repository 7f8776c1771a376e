"""`trl-rubric references`: reference answers the model writes itself, for the reference teacher context.

    trl-rubric references --model_name_or_path Qwen/Qwen3-0.6B --dataset_name train.jsonl --n_candidates 4 \\
        --judge_backend openai --judge_base_url http://localhost:8000/v1 --judge_model Qwen/Qwen3-8B \\
        --output_dir refs/
    trl-rubric rgsd --dataset_name refs/references.jsonl --teacher_context reference ...

For every training row the model answers `--n_candidates` times with the rubric in view (the RGSD teacher's view:
`--teacher_prompt_template`, `--rubric_render_style`, `--teacher_penalties`), the judge grades every answer against
the rubric, answers the degeneration checks flag (repeated lines, pasted criteria, talk about the requirements) are
set aside, and the best answer left becomes the row's `reference` (`trl_rubric.authoring.build_self_references`).
Training with `teacher_context=reference` then shows the teacher that answer instead of the rubric. The judge is
called `n_candidates` times per row, here, once; never during training.

Writes `references.jsonl` (the rows that got a reference, every column kept, the reference added) and
`summary.json` (settings, counts, the rows left without a reference and why, every candidate's score and flag)
into `--output_dir`.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field

from ._eval_args import GapArguments
from .eval import (
    UsageError,
    build_judge_from_args,
    build_parser,
    check_common_args,
    check_teacher_view_args,
    load_dataset_from_args,
    load_generator_from_args,
    run_command,
    split_to_read,
)

COMMAND = "references"


@dataclass
class ReferencesArguments(GapArguments):
    """Options of `trl-rubric references`: those of `trl-rubric gap` (model, data, generation, the teacher's view,
    the judge), plus how many candidates to write and where the references go. The gap's own report options
    (`--compare_views`, `--n_token_views`, `--min_gap`) do not apply.
    """

    n_samples: int | None = field(
        default=None, metadata={"help": "Rows to give a reference (a seeded subset); all rows if unset."}
    )
    output_dir: str = field(default="trl-rubric-references", metadata={"help": "Folder for references.jsonl."})
    n_candidates: int = field(
        default=4,
        metadata={
            "help": "Answers written per row with the rubric in view; the best clean one is kept. More candidates "
            "give better references and fewer rows without one, at one generation and one judge call each."
        },
    )
    min_score: float | None = field(
        default=None,
        metadata={"help": "Rows whose best clean answer scores below this (0-1) get no reference; unset: any."},
    )
    reference_column: str = field(
        default="reference",
        metadata={"help": "Column the references are written to (RGSDConfig.reference_column reads it)."},
    )


def make_parser():
    """The parser of `trl-rubric references`: `parse_args_and_config()` returns `(ReferencesArguments,
    JudgeArguments)`."""
    return build_parser(COMMAND, ReferencesArguments)


def run_references(args: ReferencesArguments, judge_args) -> int:
    """The body of `trl-rubric references` once options are parsed."""
    from ..authoring import build_self_references
    from ..evaluation import select_examples

    if args.compare or args.compare_views or args.n_samples_per_prompt != 1:
        raise UsageError(
            "--compare, --compare_views and --n_samples_per_prompt are options of eval and gap; references takes "
            "--n_candidates"
        )
    check_common_args(args)
    if args.n_candidates < 1:
        raise UsageError(f"--n_candidates is {args.n_candidates}; expected at least 1")
    if args.n_candidates > 1 and args.temperature == 0:
        raise UsageError(f"--n_candidates {args.n_candidates} with temperature 0 writes the same answer each time")
    if args.min_score is not None and not 0 <= args.min_score <= 1:
        raise UsageError(f"--min_score is {args.min_score}; expected a score between 0 and 1")
    check_teacher_view_args(args)
    dataset = select_examples(load_dataset_from_args(args, COMMAND), args.n_samples, args.seed)
    if args.reference_column in dataset.column_names:
        raise UsageError(
            f"{args.dataset_name} already has a {args.reference_column!r} column; set --reference_column to another name"
        )
    judge = build_judge_from_args(judge_args)
    model, tokenizer, generate_fn = load_generator_from_args(args)
    out = build_self_references(
        model,
        dataset,
        judge,
        tokenizer=tokenizer,
        n_candidates=args.n_candidates,
        teacher_prompt_template=args.teacher_prompt_template,
        rubric_render_style=args.rubric_render_style,
        teacher_penalties=args.teacher_penalties,
        reference_column=args.reference_column,
        min_score=args.min_score,
        max_new_tokens=args.max_completion_length,
        batch_size=args.batch_size,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        judge_max_concurrency=getattr(judge_args, "judge_max_concurrency", None),
        progress=args.progress,
        generate_fn=generate_fn,
    )
    os.makedirs(args.output_dir, exist_ok=True)
    path = os.path.join(args.output_dir, "references.jsonl")
    out.dataset.to_json(path, lines=True, force_ascii=False)
    summary = {
        "settings": {
            "model_name_or_path": args.model_name_or_path,
            "dataset_name": args.dataset_name,
            "split": split_to_read(args, COMMAND),
            "n_samples": args.n_samples,
            "n_candidates": args.n_candidates,
            "min_score": args.min_score,
            "teacher_prompt_template": args.teacher_prompt_template,
            "rubric_render_style": args.rubric_render_style,
            "teacher_penalties": args.teacher_penalties,
            "max_completion_length": args.max_completion_length,
            "temperature": args.temperature,
            "seed": args.seed,
            "judge_backend": getattr(judge_args, "judge_backend", None),
            "judge_model": getattr(judge_args, "judge_model", None),
        },
        "stats": out.stats,
        "dropped": {str(i): why for i, why in out.dropped.items()},
        "records": out.records,
    }
    with open(os.path.join(args.output_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    s = out.stats

    def fmt(x):
        return "n/a" if x is None else f"{x:.3f}"

    print(
        f"{s['kept']} of {s['rows']} rows got a reference | {s['candidates']} candidates, "
        f"{100 * s['flagged_share']:.1f}% flagged as degenerate, {s['ungraded']} ungraded"
    )
    print(
        f"mean score: every candidate {fmt(s['mean_candidate_score'])}, clean candidates "
        f"{fmt(s['mean_clean_candidate_score'])}, references {fmt(s['mean_reference_score'])} | "
        f"{s['truncated_references']} references ran into --max_completion_length"
    )
    if out.dropped:
        reasons: dict[str, int] = {}
        for why in out.dropped.values():
            reasons[why] = reasons.get(why, 0) + 1
        print("rows without a reference: " + ", ".join(f"{n} {why}" for why, n in sorted(reasons.items())))
    print(f"wrote references.jsonl, summary.json to {args.output_dir}")
    print(f"train with: trl-rubric rgsd --dataset_name {path} --teacher_context reference")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`trl-rubric references [--config recipe.yaml] [--option value ...]`.

    Returns:
        The exit code: 0 on success, 2 on bad input or when no row got a reference.
    """
    return run_command(COMMAND, argv, make_parser, run_references)


if __name__ == "__main__":
    sys.exit(main())
