"""What the training commands share: data arguments, model loading, multi-process relaunch and error reporting."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

from ..data import RubricDatasetError
from ..rubric import RubricError

#: Options consumed by the launcher rather than by the training script.
LAUNCH_OPTIONS = ("--accelerate_config", "--num_processes", "--main_process_port", "--num_machines", "--machine_rank")


#: Help of every command's `--num_threads` (demo, rgsd, grpo, eval, gap): one default, one reason.
NUM_THREADS_HELP = (
    "Torch CPU threads for the whole command; 0 keeps torch's default (one per core). 1 (the default) is fastest for "
    "small models and on a shared machine, where extra threads mostly wait on each other."
)


def num_threads_field():
    """The `num_threads` dataclass field, the same in every command."""
    return field(default=1, metadata={"help": NUM_THREADS_HELP})


@contextmanager
def torch_threads(num_threads: int):
    """Run the body with `num_threads` torch CPU threads (`0`: leave torch's setting), restoring the previous count.

    Raises:
        UsageError: for a negative count.
    """
    if num_threads < 0:
        raise UsageError(f"num_threads is {num_threads}; expected 0 (torch's default) or more")
    import torch

    previous = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass
class RubricDataArguments:
    r"""
    Where the rubric data comes from. Read by `trl-rubric rgsd`, `trl-rubric grpo` and the other commands.

    Parameters:
        > Parameters that control the dataset

        dataset_name (`str` or `None`, *optional*, defaults to `None`):
            Hub dataset id, local `.json`/`.jsonl`/`.parquet`/`.csv` file, or a `save_to_disk` folder.
        dataset_config (`str` or `None`, *optional*, defaults to `None`):
            Hub configuration (subset) name.
        dataset_train_split (`str`, *optional*, defaults to `"train"`):
            Split to train on.
        dataset_test_split (`str` or `None`, *optional*, defaults to `None`):
            Split to evaluate on during training (used when `eval_strategy` is not `"no"`).
        rubric_format (`str`, *optional*, defaults to `"auto"`):
            Rubric format: `auto`, `rar`, `healthbench`, `rubrichub`, `researchrubrics`, `normalized` or `strings`.
        dataset_prompt_column (`str` or `None`, *optional*, defaults to `None`):
            Source column of the prompt; detected (`prompt`, `question`, ...) when unset.
        dataset_rubric_column (`str` or `None`, *optional*, defaults to `None`):
            Source column of the rubric; detected (`rubric`, `rubrics`, `criteria`) when unset.
        system_prompt (`str` or `None`, *optional*, defaults to `None`):
            System turn added to every chat prompt that has none.
        on_bad_rows (`str`, *optional*, defaults to `"raise"`):
            `raise` stops at the first malformed row (naming it); `skip` drops malformed rows and reports how many.
        max_train_samples (`int` or `None`, *optional*, defaults to `None`):
            Train on the first N rows only.

        > Parameters that control the process

        num_threads (`int`, *optional*, defaults to `1`):
            Torch CPU threads for the whole command (data loading, training, saving); `0` keeps torch's default (one
            per core). One is fastest for small models and on a shared machine, where extra threads mostly wait on
            each other; raise it (or pass 0) to train a larger model on a CPU you have to yourself. GPU runs barely
            use them. Each process of a multi-process launch gets this many.
    """

    dataset_name: str | None = field(default=None, metadata={"help": "Hub id, local file or save_to_disk folder."})
    dataset_config: str | None = field(default=None, metadata={"help": "Hub configuration (subset) name."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_test_split: str | None = field(default=None, metadata={"help": "Split to evaluate on during training."})
    rubric_format: str = field(
        default="auto",
        metadata={"help": "Rubric format: auto, rar, healthbench, rubrichub, researchrubrics, normalized, strings."},
    )
    dataset_prompt_column: str | None = field(default=None, metadata={"help": "Source column of the prompt."})
    dataset_rubric_column: str | None = field(default=None, metadata={"help": "Source column of the rubric."})
    system_prompt: str | None = field(default=None, metadata={"help": "System turn added to chat prompts."})
    on_bad_rows: str = field(default="raise", metadata={"help": "raise (default) or skip malformed rows."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Train on the first N rows only."})
    num_threads: int = num_threads_field()


#: `model_name_or_path: toy://quick` (or `toy://full`) and `dataset_name: toy://train` (or `toy://heldout`) use the
#: offline toy world (see `trl_rubric.toy`), so a recipe can run anywhere without downloads.
TOY_SCHEME = "toy://"


class UsageError(ValueError):
    """A bad command line or recipe: reported in one line with exit code 2, without a traceback."""


def one_line(error: BaseException) -> str:
    """An error message on one line, capped, for `trl-rubric <cmd>: error: ...`."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 600 else text[:599] + "…"


def trl_parser(dataclass_types, prog: str):
    """A `trl.TrlParser` whose argument errors raise [`UsageError`] (one line) instead of printing usage and exiting."""
    from trl import TrlParser

    class _Parser(TrlParser):
        def error(self, message):
            raise UsageError(f"{message} (see `{prog} --help`)")

    return _Parser(dataclass_types=list(dataclass_types), prog=prog)


def load_datasets(data_args: RubricDataArguments, want_eval: bool, pitfall_polarity: str = "as_is"):
    """The train (and optional eval) datasets, normalised and validated row by row.

    `pitfall_polarity` comes from the trainer's config (`RGSDConfig` / `RubricGRPOConfig`), so one field governs how
    RaR pitfalls are signed everywhere.
    """
    from ..data import load_rubric_dataset

    if not data_args.dataset_name:
        raise UsageError("no dataset: set dataset_name (a Hub id, a local .jsonl/.json/.parquet file or a folder)")
    if data_args.dataset_name.startswith(TOY_SCHEME):
        return _toy_dataset(data_args.dataset_name), None
    if data_args.dataset_name.startswith(REAL_DATA_SCHEME):
        return real_dataset(data_args.dataset_name), None

    def load(split, limit=None):
        return load_rubric_dataset(
            data_args.dataset_name,
            split=split,
            format=data_args.rubric_format,
            prompt_column=data_args.dataset_prompt_column,
            rubric_column=data_args.dataset_rubric_column,
            subset=data_args.dataset_config,
            system_prompt=data_args.system_prompt,
            pitfall_polarity=pitfall_polarity,
            on_error=data_args.on_bad_rows,
            num_samples=limit,
        )

    train = load(data_args.dataset_train_split, data_args.max_train_samples)
    evaluation = load(data_args.dataset_test_split) if want_eval and data_args.dataset_test_split else None
    return train, evaluation


def _toy_dataset(name: str):
    from ..toy import make_world

    split = name[len(TOY_SCHEME) :]
    world = make_world(seed=0)
    if split == "train":
        return world.train_dataset()
    if split == "heldout":
        return world.heldout_dataset()
    raise UsageError(f"dataset_name {name!r}: expected toy://train or toy://heldout")


#: `dataset_name: smollm2://train` (or `smollm2://heldout`) is the real-model health and science rubric world;
#: `smollm2://<world>/train|heldout` names any world of `trl_rubric.real.worlds.WORLDS` (`health`, `instructions`).
REAL_DATA_SCHEME = "smollm2://"


def real_dataset(name: str):
    """A real-model world's train or held-out split: `smollm2://train|heldout` (the health and science world) or
    `smollm2://<world>/train|heldout`, e.g. `smollm2://instructions/train`."""
    from ..real.worlds import DEFAULT_WORLD, WORLDS, make_named_world

    world_name, _, split = name[len(REAL_DATA_SCHEME) :].rpartition("/")
    world_name = world_name or DEFAULT_WORLD
    expected = (
        f"expected smollm2://train|heldout or smollm2://<world>/train|heldout with world one of {sorted(WORLDS)}"
    )
    if world_name not in WORLDS or split not in ("train", "heldout"):
        raise UsageError(f"dataset_name {name!r}: {expected}")
    world = make_named_world(world_name)
    return world.train_dataset() if split == "train" else world.heldout_dataset()


def _toy_model(name: str) -> str:
    from ..toy import prepare_toy_model

    size = name[len(TOY_SCHEME) :]
    if size not in ("quick", "full"):
        raise UsageError(f"model_name_or_path {name!r}: expected toy://quick or toy://full")
    return prepare_toy_model(quick=size == "quick")


def resolve_model_path(name: str) -> str:
    """`toy://quick|full` and `smollm2://` become their prepared local folders; other names are returned unchanged."""
    if name.startswith(TOY_SCHEME):
        return _toy_model(name)
    if name == "smollm2" or name.startswith("smollm2://"):
        from ..real.model import RealModelError, resolve_model_alias

        try:
            return resolve_model_alias(name)
        except RealModelError as e:
            raise UsageError(str(e)) from None
    return name


#: Where a run that starts from a PEFT adapter keeps the adapter merged into its base, under its `output_dir`. The
#: leading underscore keeps it out of Hub pushes (`Trainer.push_to_hub` skips `_*`).
START_MODEL_DIR = "_start_model"


def start_from_adapter(path: str, model_args, training_args) -> str:
    """`path` itself, or, when it is a PEFT adapter folder (a first training phase's output), that adapter merged into
    its base at `output_dir/_start_model` (`trl_rubric.evaluation.merge_adapter`), so training goes on from the
    adapter's weights and RGSD's teacher is that model shown the rubric. One process per machine merges while the
    others wait; a resumed run reuses the merged folder."""
    from ..evaluation import EvaluationError
    from ..evaluation.loading import adapter_base, merge_adapter

    try:
        base = adapter_base(path)
        if base is None:
            return path
        from accelerate import PartialState

        # absolute: the adapters this run saves name it as their base, and are loaded from anywhere
        target = os.path.abspath(os.path.join(training_args.output_dir, START_MODEL_DIR))
        state = PartialState()
        if state.is_local_main_process:
            print(f"model_name_or_path {path!r} is a PEFT adapter on {base!r}: training starts from it merged into "
                  f"its base, in {target}")  # fmt: skip
        with state.local_main_process_first():
            return merge_adapter(
                path, target, dtype=model_args.dtype or "auto", trust_remote_code=training_args.trust_remote_code
            )
    except EvaluationError as e:
        raise UsageError(f"model_name_or_path: {e}") from None


def prepare_model_init(model_args, training_args) -> None:
    """Fill `training_args.model_init_kwargs` from `ModelConfig`, as TRL's own scripts do."""
    if not model_args.model_name_or_path:
        raise UsageError("no model: set model_name_or_path (a Hub id or a local folder)")
    model_args.model_name_or_path = resolve_model_path(model_args.model_name_or_path)
    path = model_args.model_name_or_path
    if (path.startswith((".", "/", "~")) or os.sep in path.strip("/").replace("/", "", 1)) and not os.path.exists(
        os.path.expanduser(path)
    ):
        raise UsageError(f"model_name_or_path {path!r} does not exist")
    model_args.model_name_or_path = start_from_adapter(path, model_args, training_args)
    kwargs = dict(
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
        attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype,
    )
    kwargs.update(training_args.model_init_kwargs or {})
    training_args.model_init_kwargs = kwargs


def split_launch_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separate launcher options (`--accelerate_config`, `--num_processes`, ...) from the script's own."""
    launch, rest = [], []
    it = iter(argv)
    for arg in it:
        name = arg.split("=", 1)[0]
        if name in LAUNCH_OPTIONS:
            value = arg.split("=", 1)[1] if "=" in arg else next(it, None)
            if value is None:
                raise UsageError(f"{name} needs a value")
            launch += [name, value]
        else:
            rest.append(arg)
    return launch, rest


def relaunch(module: str, launch: list[str], script_args: list[str]) -> int:
    """Run `module` through `accelerate launch` with the launcher options, as `trl grpo` does."""
    from accelerate.commands.launch import launch_command, launch_command_parser

    args = list(launch)
    if "--accelerate_config" in args:
        i = args.index("--accelerate_config")
        path = args[i + 1]
        if not os.path.isfile(path):
            raise UsageError(f"--accelerate_config {path!r} is not a file (see recipes/accelerate/)")
        args[i : i + 2] = ["--config_file", path]
    launch_command(launch_command_parser().parse_args([*args, "-m", module, *script_args]))
    return 0


def run_command(
    name: str,
    module: str,
    make_parser: Callable[[], Any],
    build: Callable[..., Any],
    execute: Callable[..., Any],
    argv: Sequence[str] | None,
) -> int:
    """Parse `argv` with TRL's parser, relaunch under accelerate if asked, build, then execute.

    Bad input found while parsing or in `build(*parsed)` (unknown options, wrong types, invalid config values, a
    missing dataset or model, malformed rows, incompatible options) becomes one line,
    `trl-rubric <name>: error: ...`, and exit code 2 (set `TRL_RUBRIC_DEBUG=1` for the traceback). Errors raised by
    `execute(built, *parsed)` (training itself) propagate with their traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    with ExitStack() as stack:
        try:
            launch, script_argv = split_launch_args(argv)
            if launch and "LOCAL_RANK" not in os.environ:
                return relaunch(module, launch, script_argv)
            parser = make_parser()
            *parsed, remaining = parser.parse_args_and_config(script_argv, return_remaining_strings=True)
            if remaining:
                unknown = [r for r in remaining if r.startswith("--")] or remaining
                raise UsageError(f"unknown option(s) {unknown}; run `trl-rubric {name} --help` for the list")
            num_threads = next((p.num_threads for p in parsed if hasattr(p, "num_threads")), 0)
            stack.enter_context(torch_threads(num_threads))
            built = build(*parsed)
        except (UsageError, SetupError, RubricDatasetError, RubricError, ValueError, FileNotFoundError) as e:
            if os.environ.get("TRL_RUBRIC_DEBUG"):
                raise
            print(f"trl-rubric {name}: error: {one_line(e)}", file=sys.stderr)
            return 2
        return int(execute(built, *parsed) or 0)


class SetupError(Exception):
    """Wraps a `ValueError`/`TypeError`/`OSError` raised while building the trainer, before training starts."""


def finish_training(trainer, training_args, data_args) -> None:
    """Train, save, write the card and push, like TRL's scripts."""
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    trainer.accelerator.print(f"Model saved to {training_args.output_dir}")
    if trainer.accelerator.is_main_process:
        trainer.create_model_card(
            model_name=os.path.basename(os.path.normpath(training_args.output_dir)),
            dataset_name=data_args.dataset_name,
        )
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=data_args.dataset_name)
        trainer.accelerator.print(f"Model pushed to https://huggingface.co/{trainer.hub_model_id}")
