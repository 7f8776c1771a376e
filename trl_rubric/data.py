"""Load rubric datasets from the Hub, local files or memory into `{prompt, rubric, ...}` rows, validated up front."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import datasets
import datasets.exceptions
from datasets import Dataset, DatasetDict

from .rubric import RUBRIC_FORMATS, Rubric, RubricError, rule_tag_problem

logger = logging.getLogger(__name__)

# Column names used by the public rubric datasets, most specific first.
PROMPT_COLUMNS = ("prompt", "question", "query", "instruction", "problem")
RUBRIC_COLUMNS = ("rubric", "rubrics", "criteria")
_LOCAL_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}


class RubricDatasetError(RubricError):
    """A dataset that cannot be used for rubric training. The message names the row, the field and the value."""


def _load_raw(name_or_path: Any, split: str, subset: str | None) -> Dataset:
    if isinstance(name_or_path, DatasetDict):
        if split not in name_or_path:
            raise RubricDatasetError(f"dataset has no split {split!r}; available: {list(name_or_path)}")
        return name_or_path[split]
    if isinstance(name_or_path, Dataset):
        return name_or_path
    if isinstance(name_or_path, list):
        # Kept as Python rows: Arrow cannot even hold a malformed value such as a weight of "high" next to numbers,
        # and the point is to report that value by row.
        return name_or_path
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise RubricDatasetError(f"cannot load a dataset from {type(name_or_path).__name__}; pass a path or a Hub id")
    path = os.fspath(name_or_path)
    if os.path.isdir(path) and os.path.exists(os.path.join(path, "dataset_info.json")):
        return datasets.load_from_disk(path)
    if os.path.isdir(path) and os.path.exists(os.path.join(path, "dataset_dict.json")):
        return _load_raw(datasets.load_from_disk(path), split, subset)
    ext = os.path.splitext(path)[1].lower()
    if os.path.isfile(path):
        if ext not in _LOCAL_BUILDERS:
            raise RubricDatasetError(f"cannot read {path!r}: expected one of {sorted(_LOCAL_BUILDERS)}")
        if os.path.getsize(path) == 0 or (ext == ".json" and _is_empty_json_list(path)):
            raise RubricDatasetError(
                f"dataset file {path!r} is empty; expected at least one row with a prompt and a rubric"
            )
        try:
            return datasets.load_dataset(_LOCAL_BUILDERS[ext], data_files=path, split="train")
        except (ValueError, StopIteration, OSError, datasets.exceptions.DatasetsError) as e:
            # The builders' own messages (schema casts, empty generators) do not say which file is at fault.
            raise RubricDatasetError(f"cannot read dataset file {path!r}: {type(e).__name__}: {e}") from None
    if ext in _LOCAL_BUILDERS or path.startswith((".", "/", "~")):
        raise RubricDatasetError(f"dataset file {path!r} does not exist")
    return datasets.load_dataset(path, subset, split=split)


def _is_empty_json_list(path: str) -> bool:
    with open(path, encoding="utf-8") as f:
        head = f.read(64).strip()
    return head.replace(" ", "").replace("\n", "") == "[]"


def _pick_column(columns: Sequence[str], explicit: str | None, candidates: Sequence[str], what: str) -> str:
    if explicit is not None:
        if explicit not in columns:
            raise RubricDatasetError(f"{what} column {explicit!r} is not in the dataset; columns are {list(columns)}")
        return explicit
    for name in candidates:
        if name in columns:
            return name
    raise RubricDatasetError(
        f"found no {what} column among {list(columns)}; expected one of {list(candidates)}, "
        f"or name it with {what}_column=..."
    )


def _normalise_prompt(value: Any, index: int, column: str, conversational: bool, system_prompt: str | None):
    where = f"rubric row {index}: field {column!r}"
    if isinstance(value, str):
        if not value.strip():
            raise RubricDatasetError(f"{where} is an empty string; expected the prompt text")
        if not conversational:
            return value
        messages = [{"role": "user", "content": value}]
    elif isinstance(value, Sequence) and value and all(isinstance(m, Mapping) for m in value):
        messages = []
        for j, message in enumerate(value):
            if "role" not in message or not isinstance(message.get("content"), str):
                raise RubricDatasetError(f"{where} message {j} is {dict(message)!r}; expected {{role, content}}")
            messages.append({"role": message["role"], "content": message["content"]})
        if messages[-1]["role"] != "user":
            raise RubricDatasetError(
                f"{where} ends with a {messages[-1]['role']!r} turn; expected the last turn to be the user's"
            )
        if not conversational:
            if len(messages) != 1:
                raise RubricDatasetError(
                    f"{where} has {len(messages)} turns; conversational=False needs a single user turn"
                )
            return messages[0]["content"]
    else:
        raise RubricDatasetError(f"{where} is {value!r}; expected a string or a list of chat messages")
    if system_prompt and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system_prompt}, *messages]
    return messages


def _check_rule_tags(rubric: Rubric, index: int, column: str) -> None:
    # A misspelled `rule:` tag would otherwise load fine and fail only at grading, after generation.
    for number, criterion in enumerate(rubric, start=1):
        for tag in criterion.tags:
            problem = rule_tag_problem(tag)
            if problem is not None:
                raise RubricDatasetError(f"rubric row {index}, criterion {number}: field {column!r}: {problem}")


def load_rubric_dataset(
    name_or_path: str | os.PathLike | Dataset | DatasetDict | list[dict],
    split: str = "train",
    format: Literal["auto", "rar", "healthbench", "rubrichub", "researchrubrics", "normalized", "strings"] = "auto",
    prompt_column: str | None = None,
    rubric_column: str | None = None,
    subset: str | None = None,
    conversational: bool = True,
    system_prompt: str | None = None,
    pitfall_polarity: Literal["as_is", "negative", "positive"] = "as_is",
    on_error: Literal["raise", "skip"] = "raise",
    num_samples: int | None = None,
) -> Dataset:
    """Load and normalise a rubric dataset.

    Every row is validated before anything else happens, so a bad row stops the run before training starts.

    Args:
        name_or_path: A Hub id, a local `.json`/`.jsonl`/`.parquet`/`.csv` file, a `save_to_disk` folder, a
            `Dataset`/`DatasetDict`, or a list of dicts.
        split: Split to load from the Hub or from a `DatasetDict`.
        format: Rubric format of the criteria; `"auto"` detects it from each criterion's keys.
        prompt_column: Column holding the prompt. Default: the first of `prompt`, `question`, `query`,
            `instruction`, `problem`.
        rubric_column: Column holding the rubric. Default: the first of `rubric`, `rubrics`, `criteria`.
        subset: Hub configuration name, if the dataset has several.
        conversational: Return prompts as chat messages (default) or as plain strings.
        system_prompt: Prepended as a system turn to conversational prompts that lack one.
        pitfall_polarity: How to sign RaR "Pitfall" criteria; see [`Rubric.from_any`].
        on_error: `"raise"` (default) stops at malformed rows; `"skip"` drops them and logs how many.
        num_samples: Keep only the first `num_samples` rows (after validation).

    Returns:
        A `Dataset` with `prompt` and `rubric` (normalised criterion dicts); other columns pass through.

    Raises:
        RubricDatasetError: naming the row index, the field and the offending value.
    """
    if format not in RUBRIC_FORMATS:
        raise RubricDatasetError(f"unknown rubric format {format!r}; expected one of {RUBRIC_FORMATS}")
    if on_error not in ("raise", "skip"):
        raise RubricDatasetError(f"on_error is {on_error!r}; expected 'raise' or 'skip'")
    raw = _load_raw(name_or_path, split, subset)
    if len(raw) == 0:
        raise RubricDatasetError("dataset is empty; expected at least one row with a prompt and a rubric")
    columns = raw.column_names if isinstance(raw, Dataset) else list(dict.fromkeys(k for row in raw for k in row))
    p_col = _pick_column(columns, prompt_column, PROMPT_COLUMNS, "prompt")
    r_col = _pick_column(columns, rubric_column, RUBRIC_COLUMNS, "rubric")

    prompts, rubrics, keep, errors = [], [], [], []
    for index, row in enumerate(raw):
        try:
            if row.get(p_col) is None:
                raise RubricDatasetError(f"rubric row {index}: field {p_col!r} is missing (None)")
            prompt = _normalise_prompt(row[p_col], index, p_col, conversational, system_prompt)
            try:
                rubric = Rubric.from_any(row.get(r_col), format=format, pitfall_polarity=pitfall_polarity)
            except RubricError as e:
                raise RubricDatasetError(f"rubric row {index}: field {r_col!r}: {e}") from None
            _check_rule_tags(rubric, index, r_col)
        except RubricDatasetError as e:
            if on_error == "raise":
                raise
            errors.append(str(e))
            continue
        keep.append(index)
        prompts.append(prompt)
        rubrics.append(rubric.to_list())
    if errors:
        logger.warning("skipped %d malformed rubric rows of %d; first: %s", len(errors), len(raw), errors[0])
    if not keep:
        raise RubricDatasetError(f"every one of the {len(raw)} rows is malformed; first: {errors[0]}")

    dropped = {p_col, r_col, "prompt", "rubric"}
    if isinstance(raw, Dataset):
        rest = raw.select(keep) if len(keep) != len(raw) else raw
        rest = rest.remove_columns([c for c in dropped if c in rest.column_names])
        if rest.column_names:
            dataset = rest.add_column("prompt", prompts).add_column("rubric", rubrics)
        else:
            dataset = Dataset.from_dict({"prompt": prompts, "rubric": rubrics})
    else:
        dataset = Dataset.from_list(
            [
                {**{k: v for k, v in raw[i].items() if k not in dropped}, "prompt": p, "rubric": r}
                for i, p, r in zip(keep, prompts, rubrics, strict=True)
            ]
        )
    if num_samples is not None:
        dataset = dataset.select(range(min(num_samples, len(dataset))))
    return dataset


def validate_rubric_column(
    dataset: Any, column: str = "rubric", name: str = "dataset", pitfall_polarity: str = "as_is"
) -> None:
    """Check, before training, that a dataset has rows and that every row's rubric parses.

    Trainers call this on their train and eval datasets. Iterable datasets are skipped (their rows are checked as
    they stream).

    Raises:
        RubricDatasetError: naming the dataset, the row, the column and the problem.
    """
    columns = getattr(dataset, "column_names", None)
    if columns is None or not hasattr(dataset, "__len__"):
        return
    if len(dataset) == 0:
        # Otherwise Trainer "trains" for 0 steps and saves the untouched model without a word.
        raise RubricDatasetError(f"{name} is empty; expected at least one row with a prompt and a {column!r}")
    if column not in columns:
        raise RubricDatasetError(
            f"{name} has no {column!r} column (columns: {columns}); every prompt needs a rubric. Load the data with "
            "trl_rubric.load_rubric_dataset, or set rubric_column=..."
        )
    for index, value in enumerate(dataset[column]):
        try:
            Rubric.from_any(value, pitfall_polarity=pitfall_polarity)
        except RubricError as e:
            raise RubricDatasetError(f"{name} row {index}: column {column!r}: {e}") from None


def named_datasets(train_dataset: Any, eval_dataset: Any):
    """`(name, dataset)` pairs of a trainer's datasets, eval dicts included, for error messages."""
    if train_dataset is not None:
        yield "train_dataset", train_dataset
    if isinstance(eval_dataset, dict):
        for key, dataset in eval_dataset.items():
            yield f"eval_dataset[{key!r}]", dataset
    elif eval_dataset is not None:
        yield "eval_dataset", eval_dataset
