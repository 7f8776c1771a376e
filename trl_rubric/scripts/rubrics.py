"""`trl-rubric rubrics`: author rubrics for a dataset of prompts with an LLM, then filter them.

    trl-rubric rubrics --dataset_name questions.jsonl --reference_column reference \\
        --author_backend openai --author_model Qwen/Qwen3-32B --author_base_url http://localhost:8000/v1 \\
        --output_dir rubrics/

    # filters only, on any rubric dataset: drop near-duplicate criteria and prompts GRPO cannot learn from
    trl-rubric rubrics --skip_authoring true --dataset_name rubrics/rubrics.jsonl --filters validate,dedup,grpo \\
        --policy_model Qwen/Qwen3-0.6B --judge_backend openai --judge_model Qwen/Qwen3-8B --output_dir filtered/

Writes `rubrics.jsonl` (the prompt, the user's other columns, and `rubric` in the normalised form), `summary.json`
(rows in, written, failed rows with reasons, criteria per row, author calls and tokens, what each filter dropped) and
`report.md` into `--output_dir`. The author's API key is read from the variable `--author_api_key_env` names; it is
never logged or written. See `docs/authoring.md`.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field

from ..authoring.backend import AuthorArguments
from ..judges.factory import JudgeArguments
from ._common import (
    REAL_DATA_SCHEME,
    TOY_SCHEME,
    UsageError,
    real_dataset,
    resolve_model_path,
    run_command,
    trl_parser,
)

COMMAND = "rubrics"
FILTERS = ("validate", "dedup", "grpo", "rgsd")
logger = logging.getLogger(__name__)


@dataclass
class RubricsArguments:
    r"""
    Options of `trl-rubric rubrics`. The author model takes the `--author_*` options ([`AuthorArguments`]); the
    learnability filters grade with the `--judge_*` options of `trl-rubric eval`.

    Parameters:
        > Parameters that control the input

        dataset_name (`str` or `None`): Hub id, local `.json`/`.jsonl`/`.parquet`/`.csv` file, `save_to_disk` folder,
            or `smollm2://...` / `toy://...`, as for the other commands. A rubric column is not needed.
        dataset_config (`str` or `None`): Hub configuration name.
        dataset_split (`str`, defaults to `"train"`): Split to read.
        dataset_prompt_column (`str` or `None`): Prompt column; detected (`prompt`, `question`, ...) when unset.
        reference_column (`str` or `None`): Column of reference answers (`reference` and `process` modes; in
            `contrastive` mode the stronger answers when `strong_answer_column` is unset).
        strong_answer_column, policy_answer_column (`str` or `None`): Columns of a stronger model's and the policy's
            answers for `contrastive` mode. Without `policy_answer_column`, the policy's answers are generated from
            `policy_model` with our evaluation generation code.
        max_samples (`int` or `None`): Author for the first N rows only.

        > Parameters that control authoring

        mode (`str`, defaults to `"reference"`): `reference`, `keypoints`, `contrastive` or `process`.
        min_criteria, max_criteria (`int` or `None`): Criteria asked for and accepted per rubric; unset takes the
            mode's default (reference/keypoints 7-20, contrastive 3-10, process 2-6).
        max_copy_words (`int`, defaults to `12`): A criterion sharing more consecutive words with the reference
            copies it and the reply is asked again; 0 disables the check.
        skip_authoring (`bool`, defaults to `False`): Read the dataset's own rubrics and only run the filters.

        > Parameters that control the filters

        filters (`str`, defaults to `"validate,dedup"`): Comma-separated steps, run in order: `validate`, `dedup`,
            `grpo` (pass rate over `learnability_k` samples strictly inside the bounds), `rgsd` (per-prompt
            conditioning gap above `min_gap`). The last two need `policy_model` and a judge.
        dedup_threshold (`float`, defaults to `0.9`): Similarity (0-1) above which two criteria are the same.
        policy_model (`str` or `None`): The policy (path or Hub id, `smollm2://` works): answers for `contrastive`
            mode and samples for the learnability filters.
        learnability_k (`int`, defaults to `8`): Samples per prompt for `grpo` (pairs for `rgsd`: `rgsd_k`).
        pass_score (`float`, defaults to `0.7`): A sample passes when its rubric score is at least this.
        min_pass_rate, max_pass_rate (`float`, defaults to `0.0`, `1.0`): Exclusive bounds for `grpo`.
        rgsd_k (`int`, defaults to `2`): Pairs of samples per prompt for `rgsd`.
        min_gap (`float`, defaults to `0.0`): Smallest per-prompt conditioning gap kept by `rgsd`.
        max_new_tokens, temperature, batch_size, seed: Policy generation settings.

        > Output

        output_dir (`str`, defaults to `"trl-rubric-rubrics"`): Folder for `rubrics.jsonl`, `summary.json`,
            `report.md`.
    """

    dataset_name: str | None = field(default=None, metadata={"help": "Hub id, local file or folder of prompts."})
    dataset_config: str | None = field(default=None, metadata={"help": "Hub configuration (subset) name."})
    dataset_split: str = field(default="train", metadata={"help": "Split to read."})
    dataset_prompt_column: str | None = field(default=None, metadata={"help": "Prompt column (detected if unset)."})
    reference_column: str | None = field(default=None, metadata={"help": "Column of reference answers."})
    strong_answer_column: str | None = field(default=None, metadata={"help": "Stronger answers (contrastive)."})
    policy_answer_column: str | None = field(default=None, metadata={"help": "Policy answers (contrastive)."})
    max_samples: int | None = field(default=None, metadata={"help": "Author for the first N rows only."})
    mode: str = field(default="reference", metadata={"help": "reference, keypoints, contrastive or process."})
    min_criteria: int | None = field(default=None, metadata={"help": "Fewest criteria accepted (mode default)."})
    max_criteria: int | None = field(default=None, metadata={"help": "Most criteria accepted (mode default)."})
    max_copy_words: int = field(
        default=12, metadata={"help": "Most consecutive words a criterion may share with the reference (0: no check)."}
    )
    skip_authoring: bool = field(default=False, metadata={"help": "Only filter the dataset's own rubrics."})
    filters: str = field(default="validate,dedup", metadata={"help": "Steps in order: validate, dedup, grpo, rgsd."})
    dedup_threshold: float = field(default=0.9, metadata={"help": "Similarity above which criteria are merged."})
    policy_model: str | None = field(default=None, metadata={"help": "Policy model for contrastive and learnability."})
    learnability_k: int = field(default=8, metadata={"help": "Samples per prompt for the grpo filter."})
    pass_score: float = field(default=0.7, metadata={"help": "Score at which one sample passes (grpo filter)."})
    min_pass_rate: float = field(default=0.0, metadata={"help": "Exclusive lower bound on the pass rate (grpo)."})
    max_pass_rate: float = field(default=1.0, metadata={"help": "Exclusive upper bound on the pass rate (grpo)."})
    rgsd_k: int = field(default=2, metadata={"help": "Pairs of samples per prompt for the rgsd filter."})
    min_gap: float = field(default=0.0, metadata={"help": "Smallest per-prompt conditioning gap kept (rgsd)."})
    max_new_tokens: int = field(default=256, metadata={"help": "Policy generation budget."})
    temperature: float = field(default=1.0, metadata={"help": "Policy sampling temperature."})
    batch_size: int = field(default=8, metadata={"help": "Policy generation batch size."})
    seed: int = field(default=0, metadata={"help": "Seed of policy sampling."})
    output_dir: str = field(default="trl-rubric-rubrics", metadata={"help": "Folder for the outputs."})


def make_parser():
    """The parser of `trl-rubric rubrics`: `(RubricsArguments, AuthorArguments, JudgeArguments)`."""
    return trl_parser([RubricsArguments, AuthorArguments, JudgeArguments], f"trl-rubric {COMMAND}")


def _filters(args: RubricsArguments) -> list[str]:
    names = [f.strip() for f in (args.filters or "").split(",") if f.strip()]
    unknown = [f for f in names if f not in FILTERS]
    if unknown:
        raise UsageError(f"--filters has {unknown}; expected a comma-separated list of {list(FILTERS)}")
    if {"grpo", "rgsd"} & set(names) and not args.policy_model:
        raise UsageError("the grpo and rgsd filters sample the policy: set --policy_model")
    return names


def _read(args: RubricsArguments):
    from ..authoring.outputs import read_rows

    if not args.dataset_name:
        raise UsageError("no dataset: set --dataset_name (a Hub id, a local .jsonl/.json/.parquet file or a folder)")
    name = args.dataset_name
    if name.startswith((REAL_DATA_SCHEME, TOY_SCHEME)):
        from ._common import _toy_dataset

        name = list(real_dataset(name) if name.startswith(REAL_DATA_SCHEME) else _toy_dataset(name))
    rows, column = read_rows(name, args.dataset_split, args.dataset_config, args.dataset_prompt_column)
    if args.max_samples is not None:
        rows = rows[: args.max_samples]
    # The output's prompt column is `prompt`, whatever the input called it (load_rubric_dataset reads it first).
    return [{"prompt": r[column], **{k: v for k, v in r.items() if k not in (column, "prompt")}} for r in rows]


def build(args: RubricsArguments, author_args: AuthorArguments, judge_args: JudgeArguments):
    """Check every option and read the rows before any model loads or request is sent."""
    from ..authoring.prompts import AUTHOR_MODES

    if args.mode not in AUTHOR_MODES:
        raise UsageError(f"--mode is {args.mode!r}; expected one of {AUTHOR_MODES}")
    filters = _filters(args)
    rows = _read(args)
    if not args.skip_authoring:
        if not author_args.author_model:
            raise UsageError("--author_model is unset; name the author model (or pass --skip_authoring true)")
        if args.mode in ("reference", "process") and not args.reference_column:
            raise UsageError(f"mode {args.mode!r} needs --reference_column (the column of reference answers)")
        if args.mode == "contrastive":
            if not (args.strong_answer_column or args.reference_column):
                raise UsageError("mode 'contrastive' needs --strong_answer_column (or --reference_column)")
            if not (args.policy_answer_column or args.policy_model):
                raise UsageError("mode 'contrastive' needs --policy_answer_column or --policy_model")
        _inputs(rows, args, check=True)
    return rows, filters


def _policy(args: RubricsArguments):
    from ..evaluation import generate_responses, load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(resolve_model_path(args.policy_model))

    def generate(prompts, desc="generating"):
        return generate_responses(
            model,
            tokenizer,
            prompts,
            args.max_new_tokens,
            args.batch_size,
            args.temperature,
            1.0,
            args.seed,
            False,
            desc,
        )

    return model, tokenizer, generate


def _inputs(rows, args, check: bool = False):
    """What each row gives the author (reference, stronger and policy answers), read from the named columns; with
    `check`, a missing column or a missing value raises, naming the row."""
    from ..authoring.author import AuthoringInput, check_input
    from ..authoring.outputs import column_text

    references = column_text(rows, args.reference_column, "reference")
    strong = references
    if args.strong_answer_column:
        strong = column_text(rows, args.strong_answer_column, "stronger answer")
    weak = column_text(rows, args.policy_answer_column, "policy answer")
    items = [AuthoringInput(r["prompt"], *x) for r, *x in zip(rows, references, strong, weak, strict=True)]
    if check:
        skip = () if args.policy_answer_column else ("policy_answer",)
        for index, item in enumerate(items):
            check_input(args.mode, item, f"row {index}", skip)
    return items


def _author(rows, args, author_args, policy):
    """Author every row; return `(written rows, their source row numbers, failed, usage dict)`."""
    from ..authoring import RubricAuthor, build_author_backend

    if author_args.author_backend == "transformers":
        author_args.author_model = resolve_model_path(author_args.author_model)
    backend = build_author_backend(author_args)
    if author_args.author_probe and author_args.author_backend == "openai":
        backend.probe_sync()
    items = _inputs(rows, args)
    if args.mode == "contrastive" and not args.policy_answer_column:
        weak = policy()[2]([r["prompt"] for r in rows], "generating policy answers")
        for item, text in zip(items, getattr(weak, "texts", weak), strict=True):
            item.policy_answer = text
    author = RubricAuthor(
        backend, args.mode, args.min_criteria, args.max_criteria, args.max_copy_words, author_args.author_cache_dir
    )
    from ..authoring import AuthoredRubric

    usable = []
    for index, item in enumerate(items):
        try:
            author.check_input(item, f"row {index}")  # a generated policy answer can be empty
            usable.append(index)
        except ValueError as e:
            items[index] = AuthoredRubric(None, error=str(e))
    for index, result in zip(usable, author.author_many_sync([items[i] for i in usable]), strict=True):
        items[index] = result
    results = items
    written, origin, failed = [], [], []
    usage = {"calls": 0, "attempts": 0, "prompt_tokens": 0, "completion_tokens": 0, "cached": 0}
    for index, (row, result) in enumerate(zip(rows, results, strict=True)):
        usage["calls"] += result.usage.calls
        usage["attempts"] += result.usage.attempts
        usage["prompt_tokens"] += result.usage.prompt_tokens
        usage["completion_tokens"] += result.usage.completion_tokens
        usage["cached"] += int(result.cached)
        if result.rubric is None:
            # The last reply, cut short, shows what the author wrote instead (model output: no credentials in it).
            failed.append(
                {"row": index, "reason": result.error or "no rubric", "last_reply": (result.raw or "")[:500]}
            )
            continue
        written.append({**row, "rubric": result.rubric.to_list()})
        origin.append(index)
    return written, origin, failed, usage


def _run_filter(name, rows, args, judge_args, state):
    """One filter step over `rows` (with `prompt` and `rubric`): `(kept rows, report)`."""
    from ..authoring import dedup_rows, grpo_learnability, rgsd_learnability, validate_rows

    if name == "validate":
        return validate_rows(rows)
    if name == "dedup":
        return dedup_rows(rows, args.dedup_threshold)
    if "judge" not in state:
        from ..judges.factory import build_judge

        if judge_args.judge_backend == "transformers" and judge_args.judge_model:
            judge_args.judge_model = resolve_model_path(judge_args.judge_model)
        state["judge"] = build_judge(judge_args)
    judge = state["judge"]
    model, tokenizer, generate = state["policy"]()
    if name == "grpo":
        return grpo_learnability(
            rows,
            judge,
            generate,
            args.learnability_k,
            args.pass_score,
            args.min_pass_rate,
            args.max_pass_rate,
            judge_args.judge_max_concurrency,
        )
    from ..evaluation import conditioning_gap

    def gap_fn(dataset):
        return conditioning_gap(
            model,
            dataset,
            judge,
            tokenizer,
            n_samples=None,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            temperature=args.temperature,
            seed=args.seed,
            n_bootstrap=0,
            progress=False,
        )

    return rgsd_learnability(rows, gap_fn, args.rgsd_k, args.min_gap)


def execute(built, args: RubricsArguments, author_args: AuthorArguments, judge_args: JudgeArguments) -> int:
    """Author, filter and write; prints where the outputs are."""
    from ..authoring.outputs import criteria_stats, write_outputs

    rows, filters = built
    state = {}

    def policy():
        if "policy_model" not in state:
            state["policy_model"] = _policy(args)
        return state["policy_model"]

    state["policy"] = policy
    summary = {"rows_in": len(rows), "mode": None if args.skip_authoring else args.mode, "filters": {}}
    if args.skip_authoring:
        current, origin, failed = rows, list(range(len(rows))), []
        if "validate" not in filters:
            filters = ["validate", *filters]  # the dataset's own rubrics must parse before any other step
    else:
        current, origin, failed, usage = _author(rows, args, author_args, policy)
        summary.update(
            author={"backend": author_args.author_backend, "model": author_args.author_model},
            authored=len(current),
            usage=usage,
        )
    for name in filters:
        if not current:
            break
        current, report = _run_filter(name, current, args, judge_args, state)
        # Row numbers in every report are the input dataset's, whatever ran before.
        dropped = {d["row"] for d in report.get("dropped", [])}
        for d in report.get("dropped", []) + report.get("merged", []):
            d["row"] = origin[d["row"]]
        origin = [o for i, o in enumerate(origin) if i not in dropped]
        summary["filters"][name] = report
    summary.update(written=len(current), failed=failed, criteria_per_row=criteria_stats(current))
    paths = write_outputs(current, summary, args.output_dir)
    print(
        f"trl-rubric {COMMAND}: {len(current)} of {len(rows)} rows written to {paths['rubrics.jsonl']}"
        f" ({len(failed)} failed authoring; see {paths['summary.json']})"
    )
    return 0 if current else 1


def main(argv: list[str] | None = None) -> int:
    return run_command(COMMAND, f"trl_rubric.scripts.{COMMAND}", make_parser, build, execute, argv)


if __name__ == "__main__":
    sys.exit(main())
