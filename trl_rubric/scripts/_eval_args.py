"""The option classes of `trl-rubric eval` and `trl-rubric gap`, in one module both commands import.

`EvalArguments` is every `eval` option; `GapArguments` adds the teacher's context, the per-token view and the verdict
thresholds. `gap` reuses `eval`'s helpers and `eval` accepts a gap recipe, so both classes live here, below both
commands, and neither command imports the other's options.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..teacher import DEFAULT_TEACHER_PENALTIES, DEFAULT_TEACHER_PROMPT_TEMPLATE
from ._common import num_threads_field

#: Old option names of `eval` and `gap`, still read (with a warning): `{old: new}`. `dataset_split` maps to the split
#: that command reads, see [`split_to_read`].
DEPRECATED_ALIASES = {
    "prompt_column": "dataset_prompt_column",
    "rubric_column": "dataset_rubric_column",
    "max_new_tokens": "max_completion_length",
    "dataset_split": None,
}


@dataclass
class EvalArguments:
    """Options of `trl-rubric eval`, grouped as model, data, generation and report; each field's `help` says what it
    changes. The judge's options (`--judge_backend`, `--judge_model`, ...) come from `JudgeArguments`.
    """

    # > Model
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Model to evaluate: a local folder or a Hub id. A folder with adapter_config.json is loaded as a "
            "PEFT (LoRA) adapter on its base model."
        },
    )
    base_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Base model for an adapter; defaults to the base named in adapter_config.json."},
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = field(
        default="auto", metadata={"help": "Weights dtype; `auto` uses the checkpoint's."}
    )
    device: str | None = field(
        default=None,
        metadata={"help": "Device for the model (`cpu`, `cuda`, `cuda:1`); defaults to CUDA if available."},
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the Hub."})

    # > Data
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Rubric dataset: a Hub id, a local .json/.jsonl/.parquet/.csv file or a save_to_disk folder "
            "(anything load_rubric_dataset reads)."
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub configuration (subset) name."})
    dataset_train_split: str = field(
        default="train",
        metadata={"help": "The training split: `gap` samples it; `eval` reads it when dataset_test_split is unset."},
    )
    dataset_test_split: str | None = field(
        default=None, metadata={"help": "The held-out split: `eval` reads it when set (`gap` never does)."}
    )
    dataset_prompt_column: str | None = field(
        default=None, metadata={"help": "Prompt column; detected (prompt, question, ...) if not given."}
    )
    dataset_rubric_column: str | None = field(
        default=None, metadata={"help": "Rubric column; detected (rubric, rubrics, criteria) if not given."}
    )
    rubric_format: Literal["auto", "rar", "healthbench", "rubrichub", "researchrubrics", "normalized", "strings"] = (
        field(default="auto", metadata={"help": "Rubric format; `auto` detects it from each criterion's keys."})
    )
    pitfall_polarity: Literal["as_is", "negative", "positive"] = field(
        default="as_is", metadata={"help": "How to sign RaR 'Pitfall' criteria (see Rubric.from_any)."}
    )
    system_prompt: str | None = field(
        default=None, metadata={"help": "System turn prepended to prompts that have none."}
    )
    on_bad_rows: Literal["raise", "skip"] = field(
        default="raise", metadata={"help": "raise (default) stops at the first malformed row; skip drops them."}
    )
    n_samples: int | None = field(
        default=None,
        metadata={
            "help": "Evaluate a seeded random subset of this many prompts (all prompts if unset). The same seed "
            "picks the same prompts, so checkpoints compare on the same questions."
        },
    )
    seed: int = field(
        default=0, metadata={"help": "Seed for the subset, the sampling and the bootstrap; same seed, same run."}
    )
    num_threads: int = num_threads_field()

    # > Generation
    max_completion_length: int = field(default=512, metadata={"help": "Longest answer, in tokens."})
    n_samples_per_prompt: int = field(
        default=1,
        metadata={
            "help": "eval: answers sampled per prompt, each graded (needs temperature > 0 when above 1). More answers "
            "average out sampling noise when two checkpoints are compared with --compare."
        },
    )
    temperature: float = field(
        default=1.0, metadata={"help": "Sampling temperature (1.0 matches training rollouts); 0 means greedy."}
    )
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling threshold."})
    batch_size: int = field(default=8, metadata={"help": "Prompts per generation batch (transformers)."})
    # A JSON string on the command line; a YAML recipe may give a mapping, which stays a dict.
    generation_kwargs: str | None = field(
        default=None,
        metadata={
            "help": "eval: further generation arguments as a JSON object (a mapping in a YAML recipe), e.g. "
            "'{\"no_repeat_ngram_size\": 4}' or '{\"repetition_penalty\": 1.2}': passed to model.generate, or to "
            "vLLM's SamplingParams with --use_vllm (which has repetition_penalty but no no_repeat_ngram_size). "
            "Recorded in results.json; --compare flags two runs decoded differently."
        },
    )
    degeneration_guard: int | None = field(
        default=None,
        metadata={
            "help": "eval: decode with trl_rubric.evaluation.DegenerationGuard: no word n-gram of this many tokens "
            "twice in one answer (case ignored; the prompt is not searched), no bare or doubled list markers, no line "
            "or answer ending on a repeat of an earlier line; 0 drops the n-gram ban. An inference setting: score the "
            "base model the same way. Transformers generation only. Recorded with all its options in results.json."
        },
    )
    use_vllm: bool = field(
        default=False, metadata={"help": "Generate with vLLM (must be installed: pip install 'trl-rubric[vllm]')."}
    )
    vllm_gpu_memory_utilization: float = field(
        default=0.9, metadata={"help": "Fraction of GPU memory vLLM may use (with --use_vllm)."}
    )

    # > Report
    output_dir: str = field(default="trl-rubric-eval", metadata={"help": "Folder for results and charts."})
    compare: list[str] = field(
        default_factory=list,
        metadata={
            "help": "eval: --compare DIR_A DIR_B compares two eval output folders made on the same prompts, paired "
            "by prompt (B - A with a bootstrap interval over prompts), writes comparison.json to output_dir and "
            "generates nothing."
        },
    )
    bootstrap_samples: int = field(
        default=1000, metadata={"help": "Bootstrap resamples for confidence intervals; 0 disables them."}
    )
    confidence_level: float = field(default=0.95, metadata={"help": "Coverage of the confidence intervals."})
    plots: bool = field(default=True, metadata={"help": "Write PNG charts (needs matplotlib: the `plot` extra)."})
    progress: bool = field(default=True, metadata={"help": "Show progress bars."})

    # > Deprecated aliases (read with a warning)
    dataset_split: str | None = field(
        default=None, metadata={"help": "Deprecated: use dataset_test_split (eval) or dataset_train_split (gap)."}
    )
    prompt_column: str | None = field(default=None, metadata={"help": "Deprecated: use dataset_prompt_column."})
    rubric_column: str | None = field(default=None, metadata={"help": "Deprecated: use dataset_rubric_column."})
    max_new_tokens: int | None = field(default=None, metadata={"help": "Deprecated: use max_completion_length."})


@dataclass
class GapArguments(EvalArguments):
    """Options of `trl-rubric gap`: those of `trl-rubric eval`, plus the teacher's context (the same fields as
    `RGSDConfig`), the per-token view and the verdict thresholds.
    """

    n_samples: int | None = field(
        default=64,
        metadata={
            "help": "Training prompts to sample (seeded); more prompts give a tighter interval on the gap, at the "
            "cost of two generations and two gradings per prompt."
        },
    )
    output_dir: str = field(default="trl-rubric-gap", metadata={"help": "Folder for results and charts."})
    teacher_prompt_template: str = field(
        default=DEFAULT_TEACHER_PROMPT_TEMPLATE,
        metadata={
            "help": "Teacher context with {prompt} and {rubric} placeholders; use the one you will train RGSD with."
        },
    )
    rubric_render_style: Literal["numbered", "weighted", "json"] = field(
        default="numbered", metadata={"help": "How the rubric is written into the teacher context."}
    )
    teacher_penalties: Literal["show", "omit"] = field(
        default=DEFAULT_TEACHER_PENALTIES,
        metadata={
            "help": "Whether the teacher context shows the rubric's penalty criteria (show) or leaves them out "
            "(omit); use the value you will train RGSD with. Answers are graded against the whole rubric either way."
        },
    )
    compare_views: bool = field(
        default=False,
        metadata={
            "help": "Compare teacher views instead of measuring one: penalties shown and omitted (plus any "
            "--compare_render_styles / --compare_templates) on the same prompts, paired, with each view's degenerate "
            "answers, and recommend one (trl_rubric.evaluation.views). Writes views.json and views.md."
        },
    )
    compare_render_styles: list[str] = field(
        default_factory=list,
        metadata={"help": "With --compare_views: extra rubric render styles to compare (numbered, weighted, json)."},
    )
    compare_templates: list[str] = field(
        default_factory=list,
        metadata={
            "help": "With --compare_views: extra teacher templates to compare, each with {prompt} and {rubric}."
        },
    )
    max_degeneration_margin: float = field(
        default=0.05,
        metadata={
            "help": "With --compare_views: the highest-gap view is passed over when its degenerate-answer rate is "
            "more than this (0-1 scale) above the cleanest view's."
        },
    )
    n_token_views: int = field(
        default=4,
        metadata={
            "help": "Student completions to show token by token, shaded by log p_teacher - log p_student "
            "(token_view.html / .png); 0 skips it."
        },
    )
    min_gap: float = field(
        default=0.05,
        metadata={"help": "Smallest gap (0-1 scale) for which RGSD is recommended; below it, GRPO with a judge is."},
    )
    max_length_ratio: float = field(
        default=1.3,
        metadata={"help": "Warn that the gap may be mere length when answers with the rubric are this much longer."},
    )


def parse_generation_kwargs(value: str | dict | None) -> dict:
    """`--generation_kwargs` as a dict: a JSON object on the command line, a mapping in a recipe, or nothing."""
    from ..evaluation.generation import check_generation_kwargs

    if value is None or value == "":
        return {}
    if isinstance(value, str):
        import json

        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"--generation_kwargs is not JSON ({e.msg}): {value!r}") from None
    if not isinstance(value, dict):
        raise ValueError(
            f"--generation_kwargs is {value!r}; expected a JSON object such as '{{\"no_repeat_ngram_size\": 4}}'"
        )
    return check_generation_kwargs(value)


def grading_kwargs(args: EvalArguments, judge_args) -> dict:
    """The generation, grading and interval settings that `eval`, `gap` and `gap --compare_views` pass alike."""
    return dict(
        max_new_tokens=args.max_completion_length,
        batch_size=args.batch_size,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        judge_max_concurrency=getattr(judge_args, "judge_max_concurrency", None),
        n_bootstrap=args.bootstrap_samples,
        confidence_level=args.confidence_level,
        progress=args.progress,
    )
