"""Add the own-view teacher's answers to sweep runs that were trained before the sweep saved them.

`benchmarks/rgsd_sweep.py` scores, for a setting whose teacher sees another view than the world's (`template=`,
`rubric_render_style=`, `teacher_penalties=`), the gap that view's teacher leaves on the scored train prompts
(`own_view_gap_train`), and now also keeps that teacher's answers (`own_view_teacher_train`), which
`benchmarks/compare_runs.py` grades for the teacher's lead on each criterion. Runs from before that change have the
gap but not the answers. This script samples them again (the same model, view, prompts, sampling seed and sizes, so
the same answers), checks that the regenerated gap equals the saved one (it refuses to write answers it cannot show
are the run's), and writes them into the run's `results.json`.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/own_view_teacher.py runs/treq_health_ts0 runs/sweep:setting ...

A run is `DIR` (a sweep folder with one setting) or `DIR:SETTING`. Runs of one view share one sampling.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

from trl_rubric.testing import OFFLINE_ENV

#: How far the regenerated gap may sit from the saved one (both are means of the same judge scores).
GAP_TOLERANCE = 1e-9


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sweep = _load("rgsd_sweep")
compare = _load("compare_runs")


def run_view(results: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The teacher view setting `name` of a sweep trained with, or `None` where it is the world's own."""
    from trl_rubric import RGSDConfig

    settings = dict(sweep.parse_setting(text) for text in results["settings"]["settings"])
    if name not in settings:
        raise ValueError(f"setting {name!r} is not among the sweep's settings {sorted(settings)}")
    args = argparse.Namespace(**results["settings"])
    return sweep.own_teacher_view(RGSDConfig(**sweep.setting_kwargs(args, name, settings[name])))


def backfill(specs: list[str], model, tokenizer) -> dict[str, str]:
    """Write `own_view_teacher_train` into each run of `specs` that lacks it; `{spec: what was done}`."""
    from trl_rubric.real.worlds import make_named_world

    done: dict[str, str] = {}
    sampled: dict[tuple, Any] = {}
    for spec in specs:
        results, name, run = compare.load_run(spec)
        if "own_view_teacher_train" in run:
            done[spec] = "has its teacher's answers"
            continue
        view = run_view(results, name)
        if view is None:
            done[spec] = "trained with the world's view: its teacher's answers are the sweep's teacher_train"
            continue
        s = results["settings"]
        if "own_view_gap_train" not in run:
            raise ValueError(f"{spec}: no own_view_gap_train to check regenerated answers against")
        key = (s["world"], s["seed"], s["eval_prompts"], s["heldout_prompts"], s["eval_samples"],
               s["max_completion_length"], s["temperature"], json.dumps(view, sort_keys=True))  # fmt: skip
        if key not in sampled:
            world = make_named_world(s["world"], seed=s["seed"])
            sets = sweep.scored_sets(world, s["seed"], s["eval_prompts"], s["heldout_prompts"], s["eval_samples"])
            gen = sweep.generation_settings(argparse.Namespace(**s))
            sampled[key] = sweep.own_view_gap(model, tokenizer, world, sets, view, gen)
        own = sampled[key]
        if abs(own.gap - run["own_view_gap_train"]) > GAP_TOLERANCE:
            raise ValueError(
                f"{spec}: the regenerated teacher leaves a gap of {own.gap:.6f}, the run saved "
                f"{run['own_view_gap_train']:.6f}: not the run's teacher answers (another model, code or library "
                "version); nothing written"
            )
        folder = Path(spec.partition(":")[0])
        fresh = json.loads((folder / "results.json").read_text())  # another run of the same folder may have written
        fresh["runs"][name]["own_view_teacher_train"] = [ex["response"] for ex in own.with_rubric.examples]
        tmp = folder / "results.json.tmp"
        tmp.write_text(json.dumps(fresh, indent=1))
        os.replace(tmp, folder / "results.json")
        done[spec] = f"wrote {len(own.with_rubric.examples)} teacher answers (gap {own.gap:+.4f}, as saved)"
    return done


def main(argv=None) -> dict[str, str]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="DIR or DIR:SETTING, benchmarks/rgsd_sweep.py outputs.")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    os.environ.update(OFFLINE_ENV)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_rubric.real import smollm2_path

    torch.set_num_threads(args.threads)
    path = smollm2_path()
    done = backfill(args.runs, AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path))
    for spec, what in done.items():
        print(f"{spec}: {what}")
    return done


if __name__ == "__main__":
    main()
