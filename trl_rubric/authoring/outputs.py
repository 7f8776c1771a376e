"""Reading the rows to author for, and writing `rubrics.jsonl`, `summary.json` and `report.md`."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..data import PROMPT_COLUMNS, RubricDatasetError, _load_raw, _normalise_prompt, _pick_column, load_rubric_dataset


def read_rows(
    name_or_path: Any, split: str = "train", subset: str | None = None, prompt_column: str | None = None
) -> tuple[list[dict[str, Any]], str]:
    """Rows of any dataset `load_rubric_dataset` reads (a rubric column is not needed), and the prompt column.

    Every prompt is checked (a string or chat messages ending in a user turn); an error names the row and the field.
    """
    raw = _load_raw(name_or_path, split, subset)
    rows = [dict(r) for r in raw]
    if not rows:
        raise RubricDatasetError("dataset is empty; expected at least one row with a prompt")
    columns = list(dict.fromkeys(k for row in rows for k in row))
    column = _pick_column(columns, prompt_column, PROMPT_COLUMNS, "prompt")
    for index, row in enumerate(rows):
        if row.get(column) is None:
            raise RubricDatasetError(f"rubric row {index}: field {column!r} is missing (None)")
        _normalise_prompt(row[column], index, column, True, None)
    return rows, column


def column_text(rows: Sequence[dict[str, Any]], column: str | None, what: str) -> list[str | None]:
    """The string values of `column` (or `None`s without one); an error names a row whose value is not a string."""
    if column is None:
        return [None] * len(rows)
    out = []
    for index, row in enumerate(rows):
        if column not in row:
            raise RubricDatasetError(f"row {index} has no {what} column {column!r}; columns are {list(row)}")
        value = row[column]
        if value is not None and not isinstance(value, str):
            raise RubricDatasetError(f"row {index}: field {column!r} is {value!r}; expected the {what} as text")
        out.append(value)
    return out


def criteria_stats(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Criteria per row (mean, min, max) and how many are penalties."""
    counts = [len(r["rubric"]) for r in rows]
    penalties = sum(1 for r in rows for c in r["rubric"] if c["weight"] < 0)
    if not counts:
        return {"mean": None, "min": None, "max": None, "penalties": 0}
    return {"mean": sum(counts) / len(counts), "min": min(counts), "max": max(counts), "penalties": penalties}


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def write_outputs(rows: Sequence[dict[str, Any]], summary: dict[str, Any], output_dir: str | os.PathLike):
    """Write `rubrics.jsonl` (validated again by reading it back with [`load_rubric_dataset`]), `summary.json` and
    `report.md`; return their paths."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: str(out / name) for name in ("rubrics.jsonl", "summary.json", "report.md")}
    with open(paths["rubrics.jsonl"], "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(_jsonable(row), ensure_ascii=False) + "\n")
    if rows:
        # What we wrote must load as training data; a failure here is our bug, so it raises.
        load_rubric_dataset(paths["rubrics.jsonl"], format="normalized")
    with open(paths["summary.json"], "w", encoding="utf-8") as f:
        json.dump(_jsonable(summary), f, indent=2, ensure_ascii=False)
    with open(paths["report.md"], "w", encoding="utf-8") as f:
        f.write(report_markdown(summary))
    return paths


def report_markdown(summary: dict[str, Any]) -> str:
    """A short human-readable report of `summary.json`."""
    lines = ["# Rubric authoring", ""]
    author = summary.get("author") or {}
    if author:
        lines.append(f"Author: `{author.get('backend')}` / `{author.get('model')}`, mode `{summary.get('mode')}`.")
        lines.append("")
    lines += [
        "| rows in | authored | failed | written |",
        "|---|---|---|---|",
        f"| {summary['rows_in']} | {summary.get('authored', '-')} | {len(summary.get('failed', []))} | "
        f"{summary['written']} |",
        "",
    ]
    crit = summary.get("criteria_per_row") or {}
    if crit.get("mean") is not None:
        lines.append(
            f"Criteria per row: mean {crit['mean']:.1f} (min {crit['min']}, max {crit['max']}); "
            f"{crit['penalties']} penalty criteria in all."
        )
    usage = summary.get("usage")
    if usage:
        lines.append(
            f"Author calls: {usage['calls']} ({usage['attempts']} attempts, {usage['cached']} rows from cache); "
            f"tokens: {usage['prompt_tokens']} prompt, {usage['completion_tokens']} completion."
        )
    failed = summary.get("failed") or []
    if failed:
        lines += ["", "## Skipped rows", ""]
        lines += [f"- row {f['row']}: {f['reason']}" for f in failed[:20]]
        if len(failed) > 20:
            lines.append(f"- ... and {len(failed) - 20} more (see summary.json)")
    for name, report in (summary.get("filters") or {}).items():
        dropped = report.get("dropped", [])
        kept = report.get("kept", report.get("rows"))
        extra = f", {report['criteria_dropped']} criteria merged" if "criteria_dropped" in report else ""
        lines += ["", f"## Filter `{name}`", "", f"{report.get('rows')} rows in, {kept} kept{extra}."]
        lines += [f"- row {d['row']}: {d['reason']}" for d in dropped[:10]]
    return "\n".join(lines) + "\n"
