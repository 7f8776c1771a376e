"""Labels files for `trl-rubric judge-check`: read, validate and write labelled verdicts.

A labels file is JSON Lines (or a JSON list), one response per row:

    {"prompt": "...", "response": "...", "rubric": [{"text": "...", "weight": 5}, ...],
     "labels": [true, false, "cannot_assess", null]}

`prompt` is a string or chat messages, `rubric` anything [`Rubric.from_any`] reads, and `labels` one label per
criterion in rubric order: met (`true`, `"met"`, `"MET"`, 1), unmet (`false`, `"unmet"`, 0), `"cannot_assess"`, or
`null` for no label (counted, never scored). Labels may come from people, from a stronger judge, or from the exact
checks of a rule-checked world.

The `responses.jsonl` that `trl-rubric eval` writes is read as is: each criterion's `verdict` becomes its label. So a
rule-checked world labels itself: run `eval` with `--judge_backend rule`, then check an LLM judge against its
`responses.jsonl` (or convert it once with [`write_labels`] and edit the labels by hand).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..rubric import Rubric, RubricError
from .judge_check import CANNOT_ASSESS, MET, UNMET, LabelError, verdict_class

_AS_LABEL = {MET: True, UNMET: False, CANNOT_ASSESS: CANNOT_ASSESS}


@dataclass
class LabelledRow:
    """One labelled response. `labels` hold `True` / `False` / `"cannot_assess"` / `None`, or are `None` when the row
    carries none (a reference judge will label it)."""

    prompt: Any
    response: str
    rubric: Rubric
    labels: list[bool | str | None] | None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "response": self.response,
            "rubric": self.rubric.to_list(),
            "labels": self.labels,
            **self.extra,
        }


def as_label(value: Any, where: str = "label") -> bool | str | None:
    """A label as a labels file stores it: `True` / `False` / `"cannot_assess"` / `None`."""
    return _AS_LABEL.get(verdict_class(value, where))


#: Keys of an eval `responses.jsonl` criterion that describe the verdict, not the criterion.
_VERDICT_KEYS = ("verdict", "outcome", "cannot_assess", "explanation")


def _eval_label(criterion: Any) -> Any:
    if not isinstance(criterion, dict):
        return None
    if criterion.get("outcome") is not None:
        return criterion["outcome"]
    if criterion.get("cannot_assess") is True:
        return CANNOT_ASSESS
    return criterion.get("verdict")


def _row(obj: Any, i: int, source: str, require_labels: bool) -> LabelledRow:
    where = f"{source} row {i}"
    if not isinstance(obj, dict):
        raise LabelError(f"{where} is {type(obj).__name__} {str(obj)[:60]!r}; expected an object")
    prompt = obj.get("prompt")
    if not (isinstance(prompt, str) and prompt.strip()) and not (isinstance(prompt, list) and prompt):
        raise LabelError(f"{where}: field 'prompt' is {str(prompt)[:60]!r}; expected a non-empty string or messages")
    response = obj.get("response")
    if not isinstance(response, str):
        raise LabelError(f"{where}: field 'response' is {str(response)[:60]!r}; expected a string")
    criteria_with_verdicts = "labels" not in obj and isinstance(obj.get("criteria"), list)
    raw_rubric = obj.get("criteria") if criteria_with_verdicts else obj.get("rubric")
    if raw_rubric is None:
        raise LabelError(f"{where}: no field 'rubric'; expected the response's rubric (a list of criteria)")
    if criteria_with_verdicts:  # eval's responses.jsonl: the verdict sits inside each criterion
        raw_rubric = [
            {k: v for k, v in c.items() if k not in _VERDICT_KEYS} if isinstance(c, dict) else c for c in raw_rubric
        ]
    try:
        rubric = Rubric.from_any(raw_rubric)
    except RubricError as e:
        raise LabelError(f"{where}: field 'rubric': {e}") from None
    if criteria_with_verdicts:
        # A cannot-assess verdict is None in `verdict`; `outcome` (or a `cannot_assess` flag), where given, tells it
        # apart from an unknown one.
        raw_labels = [_eval_label(c) for c in obj["criteria"]]
        label_field = "criteria[].verdict"
    else:
        raw_labels = obj.get("labels")
        label_field = "labels"
    if raw_labels is None:
        if require_labels:
            raise LabelError(
                f"{where}: no field 'labels'; expected one label per criterion (or pass a reference judge, "
                "--reference_judge_backend, to label the rows)"
            )
        labels = None
    else:
        if not isinstance(raw_labels, list):
            raise LabelError(
                f"{where}: field 'labels' is {str(raw_labels)[:60]!r}; expected a list, one per criterion"
            )
        if len(raw_labels) != len(rubric):
            raise LabelError(
                f"{where}: field '{label_field}' has {len(raw_labels)} labels for a rubric of {len(rubric)} criteria"
            )
        labels = [as_label(v, f"{where}: field '{label_field}' item {j + 1}") for j, v in enumerate(raw_labels)]
    extra = {k: obj[k] for k in ("index", "num_tokens", "labeller") if k in obj}
    return LabelledRow(prompt=prompt, response=response, rubric=rubric, labels=labels, extra=extra)


def read_labels(path: str | os.PathLike, require_labels: bool = True) -> list[LabelledRow]:
    """Read a labels file (JSON Lines or a JSON list), or eval's `responses.jsonl`, validating every row.

    Args:
        path: The file.
        require_labels: If `False`, rows without labels are kept with `labels=None` (a reference judge labels them).

    Raises:
        LabelError: naming the row (0-based), the field and the value; or the file when it is missing or empty.
    """
    path = Path(os.path.expanduser(str(path)))
    if not path.is_file():
        raise LabelError(f"labels file {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8")
    name = path.name
    if not text.strip():
        raise LabelError(f"labels file {name!r} is empty; expected one labelled response per line")
    objects: list[Any]
    if text.lstrip().startswith("["):
        try:
            objects = json.loads(text)
        except json.JSONDecodeError as e:
            raise LabelError(f"labels file {name!r} is not valid JSON ({e.msg}, line {e.lineno})") from None
    else:
        objects = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                objects.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise LabelError(f"labels file {name!r} line {lineno} is not valid JSON ({e.msg})") from None
    rows = [_row(obj, i, name, require_labels) for i, obj in enumerate(objects)]
    if not rows:
        raise LabelError(f"labels file {name!r} has no rows")
    return rows


def write_labels(rows: list[LabelledRow], path: str | os.PathLike) -> str:
    """Write rows as a labels file (JSON Lines) that [`read_labels`] reads back; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row.to_dict(), ensure_ascii=False) + "\n")
    return str(path)


def responses_to_labels(responses_path: str | os.PathLike, labels_path: str | os.PathLike) -> str:
    """Turn eval's `responses.jsonl` into a labels file: each criterion's verdict becomes its label.

    Rows whose grade failed keep `null` labels (counted, not scored). Returns the path written.
    """
    return write_labels(read_labels(responses_path), labels_path)
