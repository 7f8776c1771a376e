"""`trl-rubric eval`: generate answers with a model, grade them against their rubrics, and write a report.

    trl-rubric eval --model_name_or_path Qwen/Qwen3-0.6B --dataset_name data.jsonl \\
        --judge_backend openai --judge_base_url http://localhost:8000/v1 --judge_model Qwen/Qwen3-8B \\
        --n_samples 200 --output_dir eval_base

Writes `results.json`, `report.md`, `responses.jsonl`, `score_by_category.png` and `length_histogram.png` into
`--output_dir`. Every option can also come from a YAML recipe (`--config recipe.yaml`), with command-line overrides.
A training recipe works as is: options are named as in training (`dataset_train_split`, `dataset_prompt_column`,
`max_completion_length`, ...), and training-only fields are ignored. The helpers here are shared with `trl-rubric gap`.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from dataclasses import fields
from typing import Any

from ..evaluation import EvaluationError
from ._common import TOY_SCHEME, UsageError, _toy_dataset, one_line, torch_threads, trl_parser
from ._eval_args import DEPRECATED_ALIASES, EvalArguments, GapArguments, grading_kwargs, parse_generation_kwargs

COMMAND = "eval"

logger = logging.getLogger(__name__)


def build_parser(command: str, args_type: type):
    """A `TrlParser` for `(args_type, JudgeArguments)` whose errors raise [`UsageError`] instead of exiting."""
    from ..judges.factory import JudgeArguments

    return trl_parser([args_type, JudgeArguments], f"trl-rubric {command}")


def make_parser():
    """The parser of `trl-rubric eval`: `parse_args_and_config()` returns `(EvalArguments, JudgeArguments)`."""
    return build_parser(COMMAND, EvalArguments)


#: Commands that read the training split (`eval` reads the held-out one when there is one).
TRAIN_SPLIT_COMMANDS = ("gap", "references")


def split_to_read(args: EvalArguments, command: str) -> str:
    """The split a command reads: `gap` measures the training prompts and `references` writes references for them;
    `eval` reads the held-out ones when there are any."""
    if command in TRAIN_SPLIT_COMMANDS or not args.dataset_test_split:
        return args.dataset_train_split
    return args.dataset_test_split


def _training_field_names() -> set[str]:
    from trl import ModelConfig

    from ..trainers.rgsd import RGSDConfig
    from ..trainers.rubric_grpo import RubricGRPOConfig
    from ._common import LAUNCH_OPTIONS, RubricDataArguments

    # GapArguments: gap-only fields (a gap recipe read by `eval`)
    classes = (RGSDConfig, RubricGRPOConfig, ModelConfig, RubricDataArguments, GapArguments)
    names = {f.name for cls in classes for f in fields(cls)}
    return names | {o[2:] for o in LAUNCH_OPTIONS}


def _option_names(strings: list[str]) -> list[str]:
    return [s[2:].split("=", 1)[0] for s in strings if s.startswith("--")]


def _config_keys(argv: list[str]) -> set[str]:
    import yaml

    if "--config" not in argv or argv.index("--config") + 1 >= len(argv):
        return set()
    with open(argv[argv.index("--config") + 1], encoding="utf-8") as f:
        return set(yaml.safe_load(f) or {})


def parse_command_args(command: str, make_parser: Callable, argv: list[str]):
    """Parse `argv` (a recipe plus overrides) into `(args, judge_args)` for `eval` or `gap`.

    A training recipe works as is: its training-only fields are ignored (logged at debug level), and its `output_dir`
    (the training run's folder) gets a `<command>/` subfolder for the report. A field no command knows is an error,
    as is an unknown command-line option. Deprecated option names are mapped to the current ones with a warning.
    """
    script_args, judge_args, from_config, from_cli = make_parser().parse_args_and_config(
        argv, return_remaining_strings=True, separate_remaining_strings=True
    )
    if from_cli:
        raise UsageError(f"unknown option(s) {from_cli}; run `trl-rubric {command} --help` for the list")
    ignored = _option_names(from_config)
    if ignored:
        unknown = sorted(set(ignored) - _training_field_names())
        if unknown:
            raise UsageError(
                f"unknown field(s) {unknown} in the recipe: neither `trl-rubric {command}` nor training nor another "
                "trl-rubric command knows them"
            )
        logger.debug("trl-rubric %s: ignoring recipe fields of training or other commands: %s", command, ignored)
        given = {a[2:].split("=", 1)[0] for a in argv if a.startswith("--")}
        if "output_dir" in _config_keys(argv) and "output_dir" not in given:
            script_args.output_dir = os.path.join(script_args.output_dir, command)
    for old, new in DEPRECATED_ALIASES.items():
        value = getattr(script_args, old)
        if value is None:
            continue
        new = new or ("dataset_train_split" if command in TRAIN_SPLIT_COMMANDS else "dataset_test_split")
        logger.warning("trl-rubric %s: option %r is deprecated; use %r", command, old, new)
        setattr(script_args, new, value)
        setattr(script_args, old, None)
    return script_args, judge_args


def _expected_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [ValueError, OSError, ImportError]
    try:
        from ..judges.base import JudgeUnavailableError

        errors.append(JudgeUnavailableError)
    except ImportError:
        pass
    return tuple(errors)


def run_command(command: str, argv: list[str] | None, make_parser: Callable, body: Callable[[Any, Any], int]) -> int:
    """Parse `argv` with `make_parser()` and run `body`, turning expected errors into one line and exit code 2.

    Set `TRL_RUBRIC_DEBUG=1` to get the traceback instead.
    """
    prog = f"trl-rubric {command}"
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        script_args, judge_args = parse_command_args(command, make_parser, argv)
        with torch_threads(script_args.num_threads):
            return int(body(script_args, judge_args) or 0)
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else 0
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except _expected_errors() as e:
        if os.environ.get("TRL_RUBRIC_DEBUG"):
            raise
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except StopIteration:
        # `datasets` raises a bare StopIteration on an empty JSON Lines file.
        print(f"{prog}: error: the dataset file is empty; expected rows with a prompt and a rubric", file=sys.stderr)
        return 2


def check_common_args(args: EvalArguments) -> None:
    """Fail fast on options that would only break after the model has loaded."""
    from ..evaluation import check_model_path
    from ._common import resolve_model_path

    if args.model_name_or_path:
        args.model_name_or_path = resolve_model_path(args.model_name_or_path)
    check_model_path(args.model_name_or_path)
    if not args.dataset_name:
        raise UsageError("no dataset given; pass --dataset_name <Hub id or local file>")
    if args.n_samples is not None and args.n_samples < 1:
        raise UsageError(f"--n_samples is {args.n_samples}; expected a positive number")
    if args.max_completion_length < 1:
        raise UsageError(f"--max_completion_length is {args.max_completion_length}; expected at least 1")
    if args.batch_size < 1:
        raise UsageError(f"--batch_size is {args.batch_size}; expected at least 1")
    if args.temperature < 0:
        raise UsageError(f"--temperature is {args.temperature}; expected 0 (greedy) or more")
    if not 0 < args.confidence_level < 1:
        raise UsageError(f"--confidence_level is {args.confidence_level}; expected a number in (0, 1)")


def check_teacher_view_args(args) -> None:
    """`gap` and `references`: the teacher's view (template placeholders, penalties) is usable before a model loads."""
    from ..teacher import TEACHER_PENALTIES

    for placeholder in ("{prompt}", "{rubric}"):
        if placeholder not in args.teacher_prompt_template:
            raise UsageError(f"--teacher_prompt_template must contain {placeholder}")
    if args.teacher_penalties not in TEACHER_PENALTIES:
        raise UsageError(f"--teacher_penalties is {args.teacher_penalties!r}; expected one of {TEACHER_PENALTIES}")


def _empty_local_file(path: str) -> bool:
    if not os.path.isfile(path) or os.path.getsize(path) > 1_000_000:
        return False
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read().strip() in ("", "[]", "{}")


def load_dataset_from_args(args: EvalArguments, command: str):
    """The rubric dataset named by the options (the split [`split_to_read`] picks), validated row by row."""
    from ..data import RubricDatasetError, load_rubric_dataset
    from ._common import REAL_DATA_SCHEME, real_dataset

    if args.dataset_name.startswith(TOY_SCHEME):
        return _toy_dataset(args.dataset_name)
    if args.dataset_name.startswith(REAL_DATA_SCHEME):
        return real_dataset(args.dataset_name)
    if _empty_local_file(os.path.expanduser(args.dataset_name)):
        raise RubricDatasetError(
            f"dataset file {args.dataset_name!r} is empty; expected rows with a prompt and a rubric"
        )
    return load_rubric_dataset(
        os.path.expanduser(args.dataset_name),
        split=split_to_read(args, command),
        format=args.rubric_format,
        prompt_column=args.dataset_prompt_column,
        rubric_column=args.dataset_rubric_column,
        subset=args.dataset_config,
        system_prompt=args.system_prompt,
        pitfall_polarity=args.pitfall_polarity,
        on_error=args.on_bad_rows,
    )


def build_judge_from_args(judge_args):
    """The judge, probed once (unless `--judge_probe false`) so that an unreachable endpoint fails before any
    generation."""
    from ..judges.factory import build_judge

    judge = build_judge(judge_args)
    probe = getattr(judge, "probe_sync", None)
    if probe is not None and getattr(judge_args, "judge_probe", True):
        probe()
    return judge


def _adapter_base(args: EvalArguments) -> tuple[str, str | None]:
    """`(model to serve, adapter folder or None)` for vLLM."""
    import json

    path = os.path.expanduser(args.model_name_or_path)
    config = os.path.join(path, "adapter_config.json")
    if not os.path.isfile(config):
        return path, None
    with open(config, encoding="utf-8") as f:
        base = args.base_model_name_or_path or json.load(f).get("base_model_name_or_path")
    if not base:
        raise EvaluationError(f"{config} names no base_model_name_or_path; pass --base_model_name_or_path")
    return base, path


def load_generator_from_args(args: EvalArguments, generation_kwargs: dict | None = None):
    """`(model, tokenizer, generate_fn)`: a transformers model, or with --use_vllm no model and a vLLM generator
    (which takes `generation_kwargs` into its sampling parameters)."""
    from ..evaluation import VLLMGenerator, load_model_and_tokenizer

    if not args.use_vllm:
        model, tokenizer = load_model_and_tokenizer(
            args.model_name_or_path, args.base_model_name_or_path, args.dtype, args.device, args.trust_remote_code
        )
        return model, tokenizer, None
    from transformers import AutoTokenizer

    base, adapter = _adapter_base(args)
    try:
        tokenizer = AutoTokenizer.from_pretrained(adapter or base, trust_remote_code=args.trust_remote_code)
    except OSError as e:
        raise EvaluationError(f"cannot load the tokenizer of {args.model_name_or_path!r}: {one_line(e)}") from None
    generator = VLLMGenerator(
        base,
        tokenizer,
        adapter=adapter,
        max_new_tokens=args.max_completion_length,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        gpu_memory_utilization=args.vllm_gpu_memory_utilization,
        dtype=args.dtype,
        sampling_kwargs=generation_kwargs,
    )
    return None, tokenizer, generator


def warn_on_judge_failures(command: str, view: str, result) -> None:
    """Tell the user, on stderr, when grades failed, with the judge's first error, since failures shrink the sample."""
    rate = result.metrics.judge_failure_rate
    if rate == 0:
        return
    first = next((e["judge_error"] for e in result.examples if e["failed"] and e["judge_error"]), None)
    detail = f"; first error: {first}" if first else ""
    print(
        f"trl-rubric {command}: warning: {_pct(rate)} of grades{view} have no score and are left out{detail}",
        file=sys.stderr,
    )


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def run_eval(args: EvalArguments, judge_args) -> int:
    """The body of `trl-rubric eval` once options are parsed."""
    from ..evaluation import evaluate, select_examples, write_eval_outputs

    if args.compare:
        return run_compare(args)
    extra = parse_generation_kwargs(args.generation_kwargs)
    if args.degeneration_guard is not None:
        if args.degeneration_guard < 0:
            raise UsageError(
                f"--degeneration_guard is {args.degeneration_guard}; expected 0 (no n-gram ban, the line and marker bans only) or more"
            )
        if args.use_vllm:
            raise UsageError("--degeneration_guard is a transformers logits processor; drop --use_vllm to use it")
    check_common_args(args)
    if args.n_samples_per_prompt < 1:
        raise UsageError(f"--n_samples_per_prompt is {args.n_samples_per_prompt}; expected at least 1")
    if args.n_samples_per_prompt > 1 and args.temperature == 0:
        raise UsageError(
            f"--n_samples_per_prompt {args.n_samples_per_prompt} with temperature 0 samples the same greedy answer "
            "each time; set --temperature above 0 or --n_samples_per_prompt 1"
        )
    # Cheap checks first: a bad dataset or judge should not wait for a model to load.
    dataset = select_examples(load_dataset_from_args(args, COMMAND), args.n_samples, args.seed)
    judge = build_judge_from_args(judge_args)
    model, tokenizer, generate_fn = load_generator_from_args(args, extra)
    result = evaluate(
        model,
        dataset,
        judge,
        tokenizer=tokenizer,
        **grading_kwargs(args, judge_args),
        generate_fn=generate_fn,
        n_samples_per_prompt=args.n_samples_per_prompt,
        generation_kwargs=None if generate_fn is not None else extra,  # the vLLM generator took them
        degeneration_guard=args.degeneration_guard,
    )
    result.config.update(
        generation_kwargs=extra,
        model_name_or_path=args.model_name_or_path,
        dataset_name=args.dataset_name,
        split=split_to_read(args, COMMAND),
        judge_backend=getattr(judge_args, "judge_backend", None),
        judge_model=getattr(judge_args, "judge_model", None),
    )
    files = write_eval_outputs(result, args.output_dir, plots=args.plots)
    warn_on_judge_failures(COMMAND, "", result)
    m = result.metrics
    ci = m.weighted_score_ci
    ci_text = f" ({round(100 * m.confidence_level)}% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else ""
    score = "n/a" if m.weighted_score is None else f"{m.weighted_score:.3f}"
    unweighted = "n/a" if m.unweighted_score is None else f"{m.unweighted_score:.3f}"
    mean_len = "n/a" if m.mean_length is None else f"{m.mean_length:.1f}"
    print(f"weighted score {score}{ci_text} | unweighted {unweighted} | strict completion {_pct(m.strict_completion)}")
    print(
        f"length: mean {mean_len} tokens, median {m.median_length} | judge failures {_pct(m.judge_failure_rate)} "
        f"| {m.n_examples} examples"
    )
    if m.degeneration and m.degeneration["n"]:
        d = m.degeneration
        print(
            f"degenerate answers {_pct(d['degenerate'])} (repeats a line {_pct(d['repeats_line'])}, copies rubric "
            f"text {_pct(d['copies_rubric'])}, speaks of requirements {_pct(d['meta_talk'])})"
        )
    print(f"wrote {', '.join(os.path.basename(p) for p in files.values())} to {args.output_dir}")
    # A run that scored nothing (every grade failed) must not look like a success to scripts and CI.
    return 0 if m.n_scored > 0 else 1


def run_compare(args: EvalArguments) -> int:
    """`trl-rubric eval --compare DIR_A DIR_B`: the paired comparison of two eval runs, printed and saved."""
    import json

    from ..evaluation import compare_eval_runs

    if len(args.compare) != 2:
        raise UsageError(f"--compare takes two eval output folders (A then B); got {len(args.compare)}")
    comparison = compare_eval_runs(
        *args.compare, n_bootstrap=args.bootstrap_samples, confidence_level=args.confidence_level, seed=args.seed
    )
    for key, (a, b) in comparison.settings_differ.items():
        print(f"trl-rubric eval: warning: the runs differ in {key}: A {a!r}, B {b!r}", file=sys.stderr)
    os.makedirs(args.output_dir, exist_ok=True)
    path = os.path.join(args.output_dir, "comparison.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(comparison.to_dict(), f, indent=2)
        f.write("\n")
    print(comparison.summary())
    print(f"wrote comparison.json to {args.output_dir}")
    return 0 if comparison.n_prompts > 0 else 1


def main(argv: list[str] | None = None) -> int:
    """`trl-rubric eval [--config recipe.yaml] [--option value ...]`.

    Returns:
        The exit code: 0 on success, 1 when the judge scored no response, 2 on bad input.
    """
    return run_command(COMMAND, argv, make_parser, run_eval)


if __name__ == "__main__":
    sys.exit(main())
