"""Report writing: `results.json`, `report.md`, `responses.jsonl` and charts for `eval` and `gap`."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .gap import GapResult
from .grading import EvalResult
from .metrics import EvalMetrics
from .plots import _charts_available, plot_length_histogram, plot_score_by_category, plot_token_views
from .token_view import TokenView
from .token_view_html import write_token_view_html


def _fmt(value: Any, pct: bool = False) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{100 * value:.1f}%" if pct else f"{value:.4g}"
    return str(value)


def _group_table(title: str, groups: Mapping[str, Mapping[str, Any]], level: int = 2) -> list[str]:
    if not groups:
        return []
    lines = [f"{'#' * level} {title}", "", "| group | criteria judged | met rate | polarity |", "|---|---:|---:|---|"]
    for name, g in groups.items():
        name_md = name.replace("|", "\\|")
        lines.append(f"| {name_md} | {g['n']} | {_fmt(g['met_rate'], pct=True)} | {g['polarity']} |")
    return [*lines, ""]


#: Row labels of the degeneration table, by flag name.
_DEGENERATION_LABELS = {
    "repeats_line": "repeats a line or list item",
    "copies_rubric": "copies rubric text",
    "meta_talk": "speaks of requirements",
    "degenerate": "any of these (degenerate)",
}


def degeneration_markdown(columns: Mapping[str, Mapping[str, Any] | None], level: int = 2) -> list[str]:
    """A table of degeneration rates, one column per set of answers (`{column title: degeneration_rates(...)}`)."""
    columns = {k: v for k, v in columns.items() if v}
    if not columns:
        return []
    head = " | ".join(columns)
    lines = [f"{'#' * level} Degeneration", "", f"| share of answers that | {head} |",
             "|---|" + "---:|" * len(columns)]  # fmt: skip
    for name, label in _DEGENERATION_LABELS.items():
        lines.append(f"| {label} | " + " | ".join(_fmt(c.get(name), pct=True) for c in columns.values()) + " |")
    lines += ["", "Definitions and thresholds: `trl_rubric.evaluation.degeneration` (docs/evaluation.md).", ""]
    return lines


def metrics_markdown(metrics: EvalMetrics, level: int = 2) -> list[str]:
    """The metrics as Markdown table lines (used in `report.md`); breakdown headings at Markdown heading `level`."""
    ci = metrics.weighted_score_ci
    ci_text = f"{_fmt(ci[0])} – {_fmt(ci[1])}" if ci else "n/a"
    lines = [
        "| metric | value |",
        "|---|---:|",
        f"| weighted score (clipped mean) | {_fmt(metrics.weighted_score)} |",
        f"| {round(100 * metrics.confidence_level)}% bootstrap CI | {ci_text} |",
        f"| unweighted score | {_fmt(metrics.unweighted_score)} |",
        f"| strict completion | {_fmt(metrics.strict_completion, pct=True)} (of {metrics.n_strict_known}) |",
        f"| mean length (tokens) | {_fmt(metrics.mean_length)} |",
        f"| median length (tokens) | {_fmt(metrics.median_length)} |",
        f"| judge failure rate | {_fmt(metrics.judge_failure_rate, pct=True)} |",
        f"| unknown verdict rate | {_fmt(metrics.unknown_verdict_rate, pct=True)} |",
        f"| examples (scored) | {metrics.n_examples} ({metrics.n_scored}) |",
        "",
    ]
    if metrics.clean_score is not None:
        lines.insert(4, f"| clean score (degenerate answers earn nothing) | {_fmt(metrics.clean_score)} |")
    if metrics.judge_agreement is not None:  # a judge panel: mean pairwise agreement per criterion
        lines.insert(-2, f"| judge panel agreement | {_fmt(metrics.judge_agreement, pct=True)} |")
    return [
        *lines,
        *degeneration_markdown({"answers": metrics.degeneration}, level),
        *_group_table("By category", metrics.by_category, level),
        *_group_table("By criterion", metrics.by_criterion, level),
        *_group_table("By tag", metrics.by_tag, level),
    ]


def _write_jsonl(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _write_json(obj: Any, path: Path) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_eval_outputs(result: EvalResult, output_dir: str | os.PathLike, plots: bool = True) -> dict[str, str]:
    """Write `results.json`, `report.md`, `responses.jsonl` and, with matplotlib, `score_by_category.png` and
    `length_histogram.png` into `output_dir`.

    Returns:
        `{name: path}` of the files written.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"results": out / "results.json", "report": out / "report.md", "responses": out / "responses.jsonl"}
    _write_json(result.to_dict(), files["results"])
    _write_jsonl(result.table(), files["responses"])
    charts = []
    if plots and _charts_available():
        files["score_by_category"] = Path(plot_score_by_category(result.metrics, out / "score_by_category.png"))
        files["length_histogram"] = Path(plot_length_histogram(
            [r["num_tokens"] for r in result.examples], out / "length_histogram.png"))  # fmt: skip
        charts = ["score_by_category.png", "length_histogram.png"]
    lines = ["# Rubric evaluation", "", *metrics_markdown(result.metrics)]
    lines += [f"![{name}]({name})" for name in charts]
    lines += ["", "## Settings", "", "```json", json.dumps(result.config, indent=2, default=str), "```", ""]
    files["report"].write_text("\n".join(lines), encoding="utf-8")
    return {k: str(v) for k, v in files.items()}


def write_gap_outputs(
    result: GapResult,
    output_dir: str | os.PathLike,
    token_views: Sequence[TokenView] | None = None,
    plots: bool = True,
) -> dict[str, str]:
    """Write the gap preflight's files into `output_dir`: `results.json`, `report.md`, `responses.jsonl` (both views
    side by side) and, with matplotlib, `length_histogram.png`; with token views (`token_views`, else the result's
    own) also `token_view.html` and `token_view.png`.

    Returns:
        `{name: path}` of the files written.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"results": out / "results.json", "report": out / "report.md", "responses": out / "responses.jsonl"}
    token_views = list(result.token_views if token_views is None else token_views)
    payload = result.to_dict()
    payload["token_views"] = [v.to_dict() for v in token_views]
    _write_json(payload, files["results"])
    rows = []
    for a, b in zip(result.without_rubric.examples, result.with_rubric.examples, strict=True):
        rows.append({"index": a["index"], "prompt": a["prompt"], "without_rubric": a, "with_rubric": b})
    _write_jsonl(rows, files["responses"])
    charts = []
    if token_views:
        files["token_view_html"] = Path(write_token_view_html(token_views, out / "token_view.html",
                                                              "Where the rubric changes the model"))  # fmt: skip
    if plots and _charts_available():
        files["length_histogram"] = Path(plot_length_histogram(
            {
                "without rubric": [r["num_tokens"] for r in result.without_rubric.examples],
                "with rubric": [r["num_tokens"] for r in result.with_rubric.examples],
            },
            out / "length_histogram.png",
        ))  # fmt: skip
        charts.append("length_histogram.png")
        if token_views:
            files["token_view_png"] = Path(plot_token_views(token_views, out / "token_view.png"))
            charts.append("token_view.png")
    ci = result.gap_ci
    lines = [
        "# Conditioning-gap preflight",
        "",
        *[f"**{line}**" if i == 0 else line for i, line in enumerate(result.verdict)],
        "",
        "| | value |",
        "|---|---:|",
        f"| score without rubric (student's view) | {_fmt(result.score_without_rubric)} |",
        f"| score with rubric (teacher's view) | {_fmt(result.score_with_rubric)} |",
        f"| gap | {_fmt(result.gap)} |",
        f"| gap CI (paired bootstrap) | {f'{_fmt(ci[0])} – {_fmt(ci[1])}' if ci else 'n/a'} |",
        f"| strict completion without / with rubric | {_fmt(result.without_rubric.metrics.strict_completion, pct=True)}"
        f" / {_fmt(result.with_rubric.metrics.strict_completion, pct=True)} |",
        f"| clean score without / with rubric (degenerate answers earn nothing) | "
        f"{_fmt(result.without_rubric.metrics.clean_score)} / {_fmt(result.with_rubric.metrics.clean_score)} |",
        f"| length ratio (with / without) | {_fmt(result.length_ratio)} |",
        f"| prompts (scored in both views) | {result.n_examples} ({result.n_paired}) |",
        "",
        *degeneration_markdown(
            {
                "without rubric (student's view)": result.without_rubric.metrics.degeneration,
                "with rubric (teacher's view)": result.with_rubric.metrics.degeneration,
            }
        ),
        "## Without the rubric",
        "",
        *metrics_markdown(result.without_rubric.metrics, level=3),
        "## With the rubric",
        "",
        *metrics_markdown(result.with_rubric.metrics, level=3),
    ]
    if token_views:
        lines += ["Per-token view: [token_view.html](token_view.html)", ""]
    lines += [f"![{name}]({name})" for name in charts]
    lines += ["", "## Settings", "", "```json", json.dumps(result.settings, indent=2, default=str), "```", ""]
    files["report"].write_text("\n".join(lines), encoding="utf-8")
    return {k: str(v) for k, v in files.items()}
