"""`trl-rubric gap`: the conditioning-gap preflight. Does the model do better when it sees the rubric?

    trl-rubric gap --model_name_or_path Qwen/Qwen3-0.6B --dataset_name train.jsonl \\
        --judge_backend openai --judge_base_url http://localhost:8000/v1 --judge_model Qwen/Qwen3-8B

RGSD (Rubric-Guided Self-Distillation, arXiv 2606.12507) distills what the model does *with* the rubric in its context
into the model *without* it, so it only helps when that difference, the conditioning gap, is large. This command runs
the same model on a sample of the training set twice (student's view: prompt only; teacher's view: the RGSD teacher
prompt), grades both answers with the same judge, and says whether RGSD is worth the GPU hours.

Writes `results.json`, `report.md`, `responses.jsonl`, `length_histogram.png`, and the per-token view
(`token_view.html`, `token_view.png`) into `--output_dir`.
"""

from __future__ import annotations

import os
import sys

from ..teacher import TEACHER_PENALTIES
from ._eval_args import GapArguments, grading_kwargs
from .eval import (
    UsageError,
    _pct,
    build_judge_from_args,
    build_parser,
    check_common_args,
    check_teacher_view_args,
    load_dataset_from_args,
    load_generator_from_args,
    run_command,
    split_to_read,
    warn_on_judge_failures,
)

COMMAND = "gap"


def make_parser():
    """The parser of `trl-rubric gap`: `parse_args_and_config()` returns `(GapArguments, JudgeArguments)`."""
    return build_parser(COMMAND, GapArguments)


def run_gap(args: GapArguments, judge_args) -> int:
    """The body of `trl-rubric gap` once options are parsed."""
    if args.compare or args.n_samples_per_prompt != 1:
        raise UsageError("--compare and --n_samples_per_prompt are options of `trl-rubric eval`, not of gap")
    from ..evaluation import (
        conditioning_gap,
        load_model_and_tokenizer,
        select_examples,
        token_logratio_view,
        write_gap_outputs,
    )

    check_common_args(args)
    if args.n_token_views < 0:
        raise UsageError(f"--n_token_views is {args.n_token_views}; expected 0 or more")
    check_teacher_view_args(args)
    dataset = select_examples(load_dataset_from_args(args, COMMAND), args.n_samples, args.seed)
    judge = build_judge_from_args(judge_args)
    model, tokenizer, generate_fn = load_generator_from_args(args)
    if args.compare_views:
        return run_compare_views(args, judge_args, dataset, judge, model, tokenizer, generate_fn)
    result = conditioning_gap(
        model,
        dataset,
        judge,
        tokenizer=tokenizer,
        teacher_prompt_template=args.teacher_prompt_template,
        rubric_render_style=args.rubric_render_style,
        teacher_penalties=args.teacher_penalties,
        n_samples=None,  # already sampled above
        **grading_kwargs(args, judge_args),
        min_gap=args.min_gap,
        max_length_ratio=args.max_length_ratio,
        generate_fn=generate_fn,
        n_token_views=args.n_token_views if model is not None else 0,
    )
    if args.use_vllm and args.n_token_views > 0:
        # vLLM generated the answers; the per-token view needs plain forward passes of a transformers model.
        model, tokenizer = load_model_and_tokenizer(
            args.model_name_or_path, args.base_model_name_or_path, args.dtype, args.device, args.trust_remote_code
        )
        k = min(args.n_token_views, len(dataset))
        result.token_views = token_logratio_view(
            model,
            tokenizer,
            list(dataset["prompt"][:k]),
            list(dataset["rubric"][:k]),
            result.student_token_ids[:k],
            teacher_prompt_template=args.teacher_prompt_template,
            rubric_render_style=args.rubric_render_style,
            teacher_penalties=args.teacher_penalties,
        )
    result.settings.update(
        model_name_or_path=args.model_name_or_path,
        dataset_name=args.dataset_name,
        split=split_to_read(args, COMMAND),
        n_samples=args.n_samples,
        judge_backend=getattr(judge_args, "judge_backend", None),
        judge_model=getattr(judge_args, "judge_model", None),
    )
    files = write_gap_outputs(result, args.output_dir, plots=args.plots)
    warn_on_judge_failures(COMMAND, " without the rubric", result.without_rubric)
    warn_on_judge_failures(COMMAND, " with the rubric", result.with_rubric)

    def fmt(x):
        return "n/a" if x is None else f"{x:.3f}"

    ci = result.gap_ci
    print(
        f"score without rubric {fmt(result.score_without_rubric)} | with rubric {fmt(result.score_with_rubric)} | "
        f"gap {fmt(result.gap)}" + (f" (CI {ci[0]:+.3f} to {ci[1]:+.3f})" if ci else "")
    )

    def fmt_len(x):
        return "n/a" if x is None else f"{x:.1f}"

    print(
        f"mean length without rubric {fmt_len(result.mean_length_without_rubric)} tokens, with rubric "
        f"{fmt_len(result.mean_length_with_rubric)} (ratio {fmt(result.length_ratio)}) | "
        f"{result.n_paired} of {result.n_examples} prompts scored in both views"
    )
    m_without, m_with = result.without_rubric.metrics, result.with_rubric.metrics
    print(
        f"strict completion (every criterion met, no penalty) without rubric {_pct(m_without.strict_completion)}, "
        f"with rubric {_pct(m_with.strict_completion)}"
    )
    d_without, d_with = result.without_rubric.metrics.degeneration, result.with_rubric.metrics.degeneration
    if d_without and d_with and d_with["n"]:
        # The teacher's own degeneration is what RGSD distils into the student.
        print(
            f"degenerate answers without rubric {100 * d_without['degenerate']:.1f}%, with rubric (the teacher) "
            f"{100 * d_with['degenerate']:.1f}% (repeats a line {100 * d_with['repeats_line']:.1f}%, copies rubric "
            f"text {100 * d_with['copies_rubric']:.1f}%, speaks of requirements {100 * d_with['meta_talk']:.1f}%)"
        )
    for line in result.verdict:
        print(line)
    print(f"wrote {', '.join(os.path.basename(p) for p in files.values())} to {args.output_dir}")
    # A run that measured nothing (every grade failed) must not look like a success to scripts and CI.
    return 0 if result.gap is not None else 1


def run_compare_views(args: GapArguments, judge_args, dataset, judge, model, tokenizer, generate_fn) -> int:
    """`trl-rubric gap --compare_views`: the gap of each teacher view on the same prompts, and the recommended one."""
    import json

    from ..evaluation.views import candidate_views, compare_teacher_views
    from ..rubric import RENDER_STYLES

    for style in args.compare_render_styles:
        if style not in RENDER_STYLES:
            raise UsageError(f"--compare_render_styles has {style!r}; expected some of {RENDER_STYLES}")
    for i, template in enumerate(args.compare_templates):
        if "{prompt}" not in template or "{rubric}" not in template:
            raise UsageError(f"--compare_templates item {i + 1} must contain {{prompt}} and {{rubric}}")
    if args.max_degeneration_margin < 0:
        raise UsageError(f"--max_degeneration_margin is {args.max_degeneration_margin}; expected 0 or more")
    # The configured penalties first, so a tie keeps what the user has.
    penalties = (args.teacher_penalties, *(p for p in TEACHER_PENALTIES if p != args.teacher_penalties))
    views = candidate_views(
        args.teacher_prompt_template,
        args.rubric_render_style,
        penalties=penalties,
        render_styles=tuple(args.compare_render_styles),
        templates=tuple(args.compare_templates),
    )
    comparison = compare_teacher_views(
        model,
        dataset,
        judge,
        views,
        tokenizer=tokenizer,
        n_samples=None,  # already sampled
        **grading_kwargs(args, judge_args),
        max_degeneration_margin=args.max_degeneration_margin,
        generate_fn=generate_fn,
    )
    os.makedirs(args.output_dir, exist_ok=True)
    out = comparison.to_dict()
    out["settings"] = {
        "model_name_or_path": args.model_name_or_path,
        "dataset_name": args.dataset_name,
        "split": split_to_read(args, COMMAND),
        "n_samples": args.n_samples,
        "max_completion_length": args.max_completion_length,
        "temperature": args.temperature,
        "seed": args.seed,
        "judge_backend": getattr(judge_args, "judge_backend", None),
        "judge_model": getattr(judge_args, "judge_model", None),
    }
    with open(os.path.join(args.output_dir, "views.json"), "w") as f:
        json.dump(out, f, indent=2)
    report = comparison.report()
    with open(os.path.join(args.output_dir, "views.md"), "w") as f:
        f.write(f"# Teacher views: {args.dataset_name}\n\n{report}\n")
    for name, gap in comparison.gaps.items():
        warn_on_judge_failures(COMMAND, f" ({name})", gap.with_rubric)
    print(report)
    print(f"wrote views.json, views.md to {args.output_dir}")
    return 0 if comparison.recommended is not None else 1


def main(argv: list[str] | None = None) -> int:
    """`trl-rubric gap [--config recipe.yaml] [--option value ...]`.

    Returns:
        The exit code: 0 on success, 1 when no prompt could be scored in both views, 2 on bad input.
    """
    return run_command(COMMAND, argv, make_parser, run_gap)


if __name__ == "__main__":
    sys.exit(main())
