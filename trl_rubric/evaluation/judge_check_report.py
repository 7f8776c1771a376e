"""judge-check's files: `results.json`, `report.md`, `verdicts.jsonl` and, with matplotlib, `judge_check.png`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .judge_check import JudgeCheckResult


def _f(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _ci(ci: tuple[float, float] | list[float] | None) -> str:
    return "" if not ci else f" [{ci[0]:.3f}, {ci[1]:.3f}]"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def summary_line(result: JudgeCheckResult) -> str:
    """One line for the console: kappa and accuracy with intervals, the false rates, and what was left out."""
    o = result.overall
    return (
        f"kappa {_f(o['kappa'])}{_ci(o.get('kappa_ci'))} | accuracy {_f(o['accuracy'])}{_ci(o.get('accuracy_ci'))} | "
        f"false-met {_pct(o['false_met_rate'])} | false-unmet {_pct(o['false_unmet_rate'])} | {o['n']} verdicts "
        f"scored; judge unknown {o['judge_unknown']}, judge cannot-assess {o['judge_cannot_assess']}, "
        f"label cannot-assess {o['label_cannot_assess']}, unlabelled {o['label_unknown']}"
    )


def _table(groups: dict[str, dict[str, Any]], name: str, with_ci: bool) -> list[str]:
    lines = [
        f"| {name} | n | accuracy | kappa | false-met | false-unmet | judge met | label met | cannot assess | unknown |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, s in groups.items():
        acc = _f(s["accuracy"]) + (_ci(s.get("accuracy_ci")) if with_ci else "")
        kappa = _f(s["kappa"]) + (_ci(s.get("kappa_ci")) if with_ci else "")
        label = key.replace("|", "\\|").replace("\n", " ")
        lines.append(
            f"| {label} | {s['n']} | {acc} | {kappa} | {_pct(s['false_met_rate'])} | {_pct(s['false_unmet_rate'])} "
            f"| {_pct(s['judge_met_rate'])} | {_pct(s['label_met_rate'])} "
            f"| {s['judge_cannot_assess']} | {s['judge_unknown']} |"
        )
    return lines


def report_markdown(result: JudgeCheckResult) -> str:
    o, bias = result.overall, result.length_bias
    level = round(100 * result.config.get("confidence_level", 0.95))
    lines = ["# Judge check", "", summary_line(result), ""]
    lines += [
        f"Intervals: {level}% percentile bootstrap over the {o['n_responses']} responses "
        f"({result.config.get('n_resamples')} resamples, seed {result.config.get('seed')}). Kappa is agreement beyond "
        "chance: 0 for a judge that always says the same thing, 1 for full agreement. False-met: the judge says met "
        "where the label says unmet; false-unmet: the reverse. Cannot-assess and unknown verdicts are counted, never "
        "scored.",
        "",
        "## By category",
        "",
        *_table(result.by_category, "category", with_ci=True),
        "",
        "## Least reliable criteria",
        "",
    ]
    if result.least_reliable:
        lines += [
            f"{i}. {t} (kappa {_f(result.by_criterion[t]['kappa'])}, accuracy {_f(result.by_criterion[t]['accuracy'])}"
            f", n {result.by_criterion[t]['n']})"
            for i, t in enumerate(result.least_reliable, start=1)
        ]
    else:
        lines.append(
            f"None: every criterion with {result.config.get('min_pairs')} or more scored verdicts agrees fully."
        )
    slope = "n/a (answer lengths do not vary)" if bias["slope"] is None else f"{bias['slope']:+.3f}"
    lines += [
        "",
        "## Length bias",
        "",
        f"Logistic slope of the judge's met verdict on the standardised log word count, at a fixed label: {slope}"
        f"{_ci(bias.get('slope_ci'))} (log-odds per standard deviation; 0 means length does not sway the judge).",
        "",
        "| words | judge met rate, label met (n) | judge met rate, label unmet (n) |",
        "|---|---|---|",
    ]
    for t in bias["terciles"]:
        lines.append(
            f"| {t['words'][0]}-{t['words'][1]} | {_pct(t['met_rate_label_met'])} ({t['n_label_met']}) "
            f"| {_pct(t['met_rate_label_unmet'])} ({t['n_label_unmet']}) |"
        )
    lines += ["", "## By criterion", "", *_table(result.by_criterion, "criterion", with_ci=False), ""]
    return "\n".join(lines)


def plot_judge_check(result: JudgeCheckResult, path: str | os.PathLike) -> str:
    """Kappa per criterion (least reliable at the top) and the met rate by length tercile given the label."""
    from .plots import _plain, _require_matplotlib

    Figure = _require_matplotlib()
    names = [t for t, s in result.by_criterion.items() if s["kappa"] is not None]
    names.sort(key=lambda t: result.by_criterion[t]["kappa"], reverse=True)
    fig = Figure(figsize=(11, max(3.0, 0.3 * len(names) + 1.5)), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[3, 2])
    kappas = [result.by_criterion[t]["kappa"] for t in names]
    left.barh(range(len(names)), kappas, color=["#c0392b" if k < 0.4 else "#2e86c1" for k in kappas])
    left.set_yticks(range(len(names)), [_plain(t, 45) for t in names], fontsize=7)
    left.axvline(0, color="grey", lw=0.8)
    left.set_xlim(-1, 1)
    left.set_xlabel("Cohen's kappa (judge vs labels)")
    left.set_title("Agreement per criterion", fontsize=9, loc="left")
    terciles = result.length_bias["terciles"]
    xs = [f"{t['words'][0]}-{t['words'][1]}" for t in terciles]
    for key, name, colour in (("met_rate_label_met", "label met", "#27ae60"), ("met_rate_label_unmet", "label unmet",
                                                                              "#c0392b")):  # fmt: skip
        ys = [t[key] if t[key] is not None else float("nan") for t in terciles]
        right.plot(xs, ys, marker="o", label=name, color=colour)
    right.set_ylim(0, 1)
    right.set_xlabel("answer length (words), terciles")
    right.set_ylabel("judge's met rate")
    slope = result.length_bias["slope"]
    right.set_title("Length bias" + ("" if slope is None else f" (slope {slope:+.2f})"), fontsize=9, loc="left")
    right.legend(fontsize=7)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return str(path)


def write_judge_check_outputs(
    result: JudgeCheckResult,
    output_dir: str | os.PathLike,
    verdict_rows: list[dict[str, Any]] | None = None,
    plots: bool = True,
) -> tuple[dict[str, str], str | None]:
    """Write `results.json`, `report.md`, `verdicts.jsonl` (when `verdict_rows` are given) and `judge_check.png`.

    Returns:
        `({name: path}, note)`, the note saying why the chart was skipped (no matplotlib), else `None`.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"results": out / "results.json", "report": out / "report.md"}
    files["results"].write_text(json.dumps(result.to_dict(), indent=2, default=str), encoding="utf-8")
    if verdict_rows is not None:
        files["verdicts"] = out / "verdicts.jsonl"
        with open(files["verdicts"], "w", encoding="utf-8") as f:
            for row in verdict_rows:
                f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    markdown = report_markdown(result)
    note = None
    if plots:
        try:
            files["plot"] = Path(plot_judge_check(result, out / "judge_check.png"))
            markdown += "\n![judge check](judge_check.png)\n"
        except ImportError as e:
            note = f"chart skipped: {e}"
    markdown += "\n## Settings\n\n```json\n" + json.dumps(result.config, indent=2, default=str) + "\n```\n"
    files["report"].write_text(markdown, encoding="utf-8")
    return {k: str(v) for k, v in files.items()}, note
