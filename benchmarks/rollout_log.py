"""What a run's training log says about one criterion on the rollouts: did its pass rate climb, and could it?

A student's scored answers say where a run ended; the rollouts' own verdicts say how it got there. Every trainer with
a `RubricReward` logs, per step and per criterion title, the pass rate on the step's rollouts and how many prompt
groups were `saturated` (every rollout passes), `unreachable` (none does) or `contrasting` (some do): only a
contrasting group gives GRPO an advantage on that criterion (`trl_rubric.criterion_diagnostics`). This script reads
those lines from one or more runs' `metrics.jsonl` (`MetricsFileCallback`; a `benchmarks/rgsd_sweep.py` setting's
folder holds one) and reports, per run:

- the criterion's rollout pass rate over the run, in windows of `--window` steps, and the change from the first
  window to the last with a 95% bootstrap interval over the steps of the two windows;
- the least-squares slope of the pass rate per step, in points per 10 steps;
- the share of the prompt groups that were saturated, unreachable or contrasting on it, pooled over the steps, and
  the share in the first and last window (a criterion the model cannot reach on a prompt gives GRPO nothing there);
- the share of steps with any reward contrast at all (`frac_reward_zero_std` below 1), and the rollouts' mean length
  and share cut at the length cap.

    .venv/bin/python benchmarks/rollout_log.py /work/runs/tbig_all/gk8_all /work/runs/tgk5_ts0/gk5_ts0 \\
        --criterion "key term" --window 8

A run is a folder holding `metrics.jsonl`, or the file itself. The criterion is its title as logged
(`criteria/<title>/pass_rate`, spaces as underscores; `key term` and `key_term` both work).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

STATUSES = ("saturated", "unreachable", "contrasting")


def read_log(path: str) -> list[dict[str, Any]]:
    """The training lines of a `metrics.jsonl` (those with a `reward`), in step order, values as numbers."""
    p = Path(path)
    if p.is_dir():
        p = p / "metrics.jsonl"
    if not p.exists():
        raise FileNotFoundError(f"{path}: no metrics.jsonl (a run folder or the file itself)")
    rows = []
    with open(p, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if "reward" not in row:
                continue  # the final summary or an evaluation line
            try:
                rows.append({k: float(v) for k, v in row.items() if isinstance(v, (int, float, str))})
            except ValueError as e:
                raise ValueError(f"{p}, line {n}: a value is not a number ({e})") from None
    return sorted(rows, key=lambda r: r["step"])


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def window_change(first: Sequence[float], last: Sequence[float], seed: int = 0, draws: int = 2000) -> dict[str, Any]:
    """mean(last) − mean(first), with a 95% interval from resampling each window's steps with replacement."""
    if not first or not last:
        return {"delta": None, "delta_ci": None}
    rng = random.Random(seed)
    stats = sorted(
        _mean(rng.choices(last, k=len(last))) - _mean(rng.choices(first, k=len(first))) for _ in range(draws)
    )
    return {
        "delta": _mean(last) - _mean(first),
        "delta_ci": (stats[int(0.025 * draws)], stats[int(0.975 * draws) - 1]),
    }


def slope(steps: Sequence[float], values: Sequence[float]) -> float | None:
    """The least-squares slope of `values` against `steps` (per step); `None` under two distinct steps."""
    if len(set(steps)) < 2:
        return None
    return statistics.linear_regression(steps, values).slope


def status_shares(rows: Sequence[dict[str, Any]], key: str) -> dict[str, float] | None:
    """The share of prompt groups in each status on criterion `key`, pooled over `rows`; `None` with no counts."""
    counts = {s: sum(r.get(f"criteria/{key}/{s}", 0.0) for r in rows) for s in STATUSES}
    total = sum(counts.values())
    return {s: c / total for s, c in counts.items()} if total else None


def summarize(rows: Sequence[dict[str, Any]], criterion: str, window: int) -> dict[str, Any]:
    """The report of one run's log on `criterion` (see the module doc)."""
    key = criterion.replace(" ", "_")
    rate_key = f"criteria/{key}/pass_rate"
    known = [r for r in rows if rate_key in r]
    if not known:
        raise ValueError(f"no {rate_key!r} in the log: the criteria logged are "
                         f"{sorted({k.split('/')[1] for r in rows for k in r if k.count('/') == 2 and k.startswith('criteria/')})}")  # fmt: skip
    rates = [r[rate_key] for r in known]
    windows = [rates[i : i + window] for i in range(0, len(rates), window)]
    # The first and last `window` steps; in a run shorter than two windows, its first and second halves.
    span = window if len(known) >= 2 * window else len(known) // 2
    first, last = known[:span], known[len(known) - span :]
    return {
        "steps": len(known),
        "pass_rate": _mean(rates),
        "windows": [_mean(w) for w in windows],
        "first_to_last": window_change(rates[:span], rates[len(known) - span :]),
        "slope_per_10_steps": None if (s := slope([r["step"] for r in known], rates)) is None else 10 * s,
        "groups": status_shares(known, key),
        "groups_first": status_shares(first, key),
        "groups_last": status_shares(last, key),
        "steps_with_contrast": _mean([float(r.get("frac_reward_zero_std", 0.0) < 1.0) for r in known]),
        "mean_length": _mean([r["completions/mean_length"] for r in known if "completions/mean_length" in r]),
        "clipped": _mean([r["completions/clipped_ratio"] for r in known if "completions/clipped_ratio" in r]),
    }


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 100:.0f}%"


def report_line(label: str, s: dict[str, Any]) -> str:
    ch = s["first_to_last"]
    change = (
        "n/a"
        if ch["delta"] is None
        else (f"{ch['delta'] * 100:+.1f}pp [{ch['delta_ci'][0] * 100:+.1f}, {ch['delta_ci'][1] * 100:+.1f}]")
    )
    groups = lambda g: "n/a" if g is None else " / ".join(_pct(g[k]) for k in STATUSES)  # noqa: E731
    slope10 = "n/a" if s["slope_per_10_steps"] is None else f"{s['slope_per_10_steps'] * 100:+.1f}pp"
    return (
        f"{label}: {s['steps']} steps, pass rate {s['pass_rate']:.2f}; windows "
        + " / ".join(f"{w:.2f}" for w in s["windows"])
        + f"; first → last window {change}; slope {slope10} per 10 steps; groups saturated / unreachable / "
        f"contrasting {groups(s['groups'])} (first window {groups(s['groups_first'])}, last {groups(s['groups_last'])}); "
        f"steps with any contrast {_pct(s['steps_with_contrast'])}; length {s['mean_length'] or float('nan'):.0f} "
        f"tokens, {_pct(s['clipped'])} at the cap"
    )


def main(argv=None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="Run folders holding metrics.jsonl, or the files.")
    p.add_argument("--criterion", default="key term", help="The criterion's title as logged.")
    p.add_argument("--window", type=int, default=8, help="Steps per window.")
    p.add_argument("--labels", nargs="+", default=None, help="One name per run (default: the paths).")
    p.add_argument("--output", default=None, help="JSON file to write the reports to.")
    args = p.parse_args(argv)
    if args.window < 1:
        p.error(f"--window is {args.window}; expected at least 1")
    labels = args.labels or args.runs
    if len(labels) != len(args.runs):
        p.error(f"--labels: {len(args.runs)} runs but {len(labels)} labels")
    out = {}
    for label, run in zip(labels, args.runs, strict=True):
        out[label] = summarize(read_log(run), args.criterion, args.window)
        print(report_line(label, out[label]))
    if args.output:
        Path(args.output).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
