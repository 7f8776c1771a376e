"""Summarise `benchmarks/real_world.py --budget_s` runs: several seeds and worlds, one table and one plot.

Each run directory holds one world and one seed (`results.json`); two directories of the same world and seed (arms
run in two invocations) are merged when their base and teacher references agree. Per world and arm this reports the mean over seeds
of the final train and held-out scores, the share of the conditioning gap closed, steps, completion tokens sampled,
judge calls and degenerate answers, and each arm's difference from a reference arm (default `grpo8`), paired per
prompt within each seed and pooled over seeds, with a 95% bootstrap interval. The plot puts every arm's learning
curve (train prompts) against training CPU seconds, one panel per world.

`--clean` reads every final score as the clean score (`trl_rubric.evaluation.metrics.EvalMetrics.clean_score`): an
answer the degeneration checks flagged earns nothing (`min(score, 0)`), as a user would pay for a list that repeats
itself. The gap column is then left out (the references hold raw scores only).

    .venv/bin/python benchmarks/real_world_summary.py /work/runs/budget_* --output docs/images/real_world_budget
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from collections import defaultdict
from statistics import mean
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from real_world import LABELS  # noqa: E402


def label(arm: str) -> str:
    """An arm's table label; `grpo8@lr0.0005` (from `--tag_lr`) reads "RubricGRPO, ... (G=8), lr 0.0005"."""
    name, _, lr = arm.partition("@lr")
    return f"{LABELS[name]}, lr {lr}" if lr else LABELS[name]


def load(dirs: list[str], tag_lr: bool = False) -> dict[str, list[dict[str, Any]]]:
    """World name -> the results of every finished run of that world. With `tag_lr`, every arm is named with its
    run's learning rate (`rgsd@lr0.002`), so one arm run at two rates stays two arms."""
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for d in dirs:
        path = os.path.join(d, "results.json")
        if not os.path.exists(path):
            print(f"skipped {d}: no results.json", file=sys.stderr)
            continue
        with open(path) as f:
            r = json.load(f)
        r["dir"] = d
        if tag_lr:
            r["arms"] = {f"{arm}@lr{r['settings']['lr']:g}": v for arm, v in r["arms"].items()}
        world, seed = r["settings"]["world"], r["settings"]["seed"]
        same = next((x for x in runs[world] if x["settings"]["seed"] == seed), None)
        if same is None:
            runs[world].append(r)
            continue
        # The same world and seed run in two invocations (arms split): one run, if the base model's references agree
        # (same prompts and sampling). The teacher's may differ (another teacher view); each arm then keeps the gap
        # share it was computed with, and the summary says so.
        differ = [
            k for k, v in r["references"].items() if isinstance(v, float) and abs(v - same["references"][k]) > 1e-9
        ]
        if [k for k in differ if k.startswith("base")]:
            raise SystemExit(f"{d} and {same['dir']}: same world and seed but references differ ({differ})")
        if differ:
            print(f"note: {d} and {same['dir']}: teacher references differ ({differ}); each arm's gap share is "
                  "against its own run's teacher", file=sys.stderr)  # fmt: skip
        same["arms"].update(r["arms"])
        same["dir"] += f" + {d}"
    return runs


def paired_ci(diffs: list[float], n_boot: int = 2000, seed: int = 0) -> tuple[float, float] | None:
    if len(diffs) < 2:
        return None
    rng = random.Random(seed)
    means = sorted(mean(rng.choices(diffs, k=len(diffs))) for _ in range(n_boot))
    return means[int(0.025 * n_boot)], means[int(0.975 * n_boot) - 1]


def pp(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.1f}"


def clean_scores(runs: list[dict[str, Any]]) -> None:
    """Rewrite every arm's final scores in place as clean scores: a flagged answer's score becomes `min(score, 0)`,
    and the split's `score` the clipped mean of those (the learning curves keep their raw scores)."""
    for r in runs:
        for arm in r["arms"].values():
            arm.pop("gap_closed_train", None)
            for split in ("train", "heldout"):
                if split not in arm:
                    continue
                s = arm[split]
                s["scores"] = [
                    None if x is None else min(x, 0.0) if flag else x
                    for x, flag in zip(s["scores"], s["degenerate_flags"], strict=True)
                ]
                known = [x for x in s["scores"] if x is not None]
                s["score"] = min(1.0, max(0.0, mean(known))) if known else None


def summarise(world: str, runs: list[dict[str, Any]], reference: str) -> list[str]:
    arms = [a for a in runs[0]["arms"] if all(a in r["arms"] and "skipped" not in r["arms"][a] for r in runs)]
    seeds = sorted(r["settings"]["seed"] for r in runs)
    budget = runs[0]["settings"].get("budget_s")
    base = mean(r["references"]["base_train"] for r in runs)
    teacher = mean(r["references"]["teacher_train"] for r in runs)
    lines = [
        f"**{world}** world, seeds {', '.join(map(str, seeds))}, {budget:.0f} training CPU seconds per arm; base "
        f"{base:.3f}, rubric-conditioned teacher {teacher:.3f} (train, mean over seeds).",
        "",
        f"| arm | train score | held-out score | gap closed (train) | train − {reference} [95%] "
        f"| held-out − {reference} [95%] | steps | completion tokens | judge calls | degenerate (train) | length (tokens) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm in arms:
        rows = [r["arms"][arm] for r in runs]
        cells = []
        for split in ("train", "heldout"):
            if arm == reference or reference not in arms:
                cells.append("")
                continue
            diffs = [
                a - b
                for r in runs
                for a, b in zip(r["arms"][arm][split]["scores"], r["arms"][reference][split]["scores"], strict=True)
                if a is not None and b is not None
            ]
            ci = paired_ci(diffs)
            cells.append(f"{pp(mean(diffs))} [{pp(ci[0])}, {pp(ci[1])}]" if ci else pp(mean(diffs) if diffs else None))
        gap = [x["gap_closed_train"] for x in rows if x.get("gap_closed_train") is not None]
        lines.append(
            f"| {label(arm)} | {mean(x['train']['score'] for x in rows):.3f} "
            f"| {mean(x['heldout']['score'] for x in rows):.3f} | {f'{100 * mean(gap):.0f}%' if gap else '-'} "
            f"| {cells[0]} | {cells[1]} | {mean(x.get('steps', 0) for x in rows):.1f} "
            f"| {mean(x.get('generated_tokens', 0) for x in rows):,.0f} | {mean(x.get('judge_calls', 0) for x in rows):,.0f} "
            f"| {100 * mean(x['train']['degenerate'] for x in rows):.1f}% | {mean(x['train']['length'] for x in rows):.1f} |"
        )
    criteria = sorted({c for r in runs for a in arms for c in r["arms"][a]["train"].get("by_criterion", {})})
    if criteria:
        lines += ["", f"Criteria met on train prompts ({world}, mean over seeds):", ""]
        lines.append("| criterion | " + " | ".join(label(a) for a in arms) + " |")
        lines.append("|---|" + "---|" * len(arms))
        for c in criteria:
            cells = []
            for a in arms:
                vals = [r["arms"][a]["train"]["by_criterion"].get(c) for r in runs]
                vals = [v for v in vals if v is not None]
                cells.append(f"{mean(vals):.2f}" if vals else "-")
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
    return lines


def plot(runs_by_world: dict[str, list[dict[str, Any]]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    worlds = sorted(runs_by_world)
    fig, axes = plt.subplots(1, len(worlds), figsize=(5.2 * len(worlds), 3.8), squeeze=False)
    for ax, world in zip(axes[0], worlds, strict=True):
        runs = runs_by_world[world]
        for i, arm in enumerate(a for a in runs[0]["arms"] if a != "base"):
            color = f"C{i}"
            for j, r in enumerate(runs):
                curve = r["arms"].get(arm, {}).get("curve") or []
                xs = [p["cpu_seconds"] for p in curve if p.get("score") is not None]
                ys = [p["score"] for p in curve if p.get("score") is not None]
                ax.plot(xs, ys, color=color, marker="o", markersize=3, alpha=0.8,
                        label=label(arm) if j == 0 else None)  # fmt: skip
        base = mean(r["references"]["base_train"] for r in runs)
        teacher = mean(r["references"]["teacher_train"] for r in runs)
        ax.axhline(base, color="grey", linestyle=":", linewidth=1, label="base")
        ax.axhline(teacher, color="grey", linestyle="--", linewidth=1, label="teacher (rubric shown)")
        ax.set_title(f"{world} world ({len(runs)} seeds)")
        ax.set_xlabel("training CPU seconds (one thread)")
        ax.set_ylabel("weighted rubric score (train prompts)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dirs", nargs="+", help="Output directories of real_world.py --budget_s runs.")
    p.add_argument("--reference", default="grpo8", help="Arm the paired differences are taken against.")
    p.add_argument("--output", default=None, help="Write <output>.md and <output>.png.")
    p.add_argument("--tag_lr", action="store_true",
                   help="Name every arm with its run's learning rate (grpo8@lr0.0005), to compare one arm at two "
                   "rates; --reference then takes such a name.")  # fmt: skip
    p.add_argument("--clean", action="store_true",
                   help="Score answers the degeneration checks flagged as earning nothing (min(score, 0)).")  # fmt: skip
    args = p.parse_args(argv)
    runs = load(args.dirs, tag_lr=args.tag_lr)
    if args.clean:
        for world_runs in runs.values():
            clean_scores(world_runs)
    lines: list[str] = []
    for world in sorted(runs):
        lines += summarise(world, runs[world], args.reference) + [""]
    text = "\n".join(lines)
    print(text)
    if args.output:
        with open(args.output + ".md", "w") as f:
            f.write(text)
        plot(runs, args.output + ".png")
    return text


if __name__ == "__main__":
    main()
