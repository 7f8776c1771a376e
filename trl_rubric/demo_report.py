"""What the toy and the SmolLM2 demo share: their `RGSDConfig`, their results table and their report.

A library module below the CLI: `trl-rubric demo` (`scripts/demo.py`) and the worlds' demos (`real/demo.py`) both
import it, so neither reaches into the other.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from .toy.experiment import plot_learning_curves


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def demo_table(rows: list[tuple[str, Any, Any]]) -> str:
    """A markdown table of `(name, base, RGSD)` rows, floats to three decimals."""
    lines = ["| | base | RGSD |", "|---|---|---|"]
    for name, base, rgsd in rows:
        lines.append(f"| {name} | {_fmt(base)} | {_fmt(rgsd)} |")
    return "\n".join(lines)


def demo_rgsd_config(args, **fields):
    """The `RGSDConfig` of both demos: the student under `output_dir/student` on CPU, seed, token clip and divergence
    from the demo's options, a constant learning rate, no checkpoints, vLLM colocate with `use_vllm`; `fields` set the
    rest."""
    from .trainers.rgsd import RGSDConfig

    common = dict(
        output_dir=os.path.join(args.output_dir, "student"),
        use_cpu=True,
        bf16=False,
        seed=args.seed,
        lr_scheduler_type="constant",
        token_clip=args.token_clip,
        distillation_beta=args.distillation_beta,
        save_strategy="no",
        report_to="none",
        disable_tqdm=False,
    )
    if getattr(args, "use_vllm", False):
        common.update(use_vllm=True, vllm_mode="colocate")
    return RGSDConfig(**{**common, **fields})


def report_demo(results: dict[str, Any], table: str, output_dir: str, title: str) -> None:
    """Print a demo's table and how much of the gap it closed; write `learning_curve.png`, `results.json`, `report.md`.

    Shared by the toy and the SmolLM2 demo; `results` needs the scores, `gap_closed_fraction`, the timings and
    `learning_curve`.
    """
    print("[5/5] results", flush=True)
    print(table)
    print(
        f"teacher (base shown the rubric): {results['teacher_score']:.3f}. RGSD closed "
        f"{results['gap_closed_fraction']:.0%} of the conditioning gap on train prompts in "
        f"{results['train_seconds']:.0f} s of training ({results['total_seconds']:.0f} s in all)."
    )
    os.makedirs(output_dir, exist_ok=True)
    try:
        plot_learning_curves(
            {"RGSD student (prompt only)": results["learning_curve"]},
            os.path.join(output_dir, "learning_curve.png"),
            references={
                "base, prompt only": results["base_score"],
                "base shown the rubric (teacher)": results["teacher_score"],
            },
            title=title,
        )
    except ImportError:
        # The numbers matter more than the picture: without the `plot` extra, say so and go on.
        print("note: no learning_curve.png (needs matplotlib: pip install 'trl-rubric[plot]')", file=sys.stderr)
    with open(os.path.join(output_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2, default=str)
    with open(os.path.join(output_dir, "report.md"), "w") as f:
        f.write(table + "\n")
    print(f"wrote results.json and report.md to {output_dir}")
