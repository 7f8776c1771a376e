"""Score a saved SmolLM2 demo student and its base model again under decoding constraints, paired.

`trl-rubric demo --model smollm2` saves its student (`<output_dir>/student`, a LoRA adapter) and scores it with plain
sampling. This script rebuilds the demo's scored train and held-out sets (same world, seed and budget:
`trl_rubric.real.demo.demo_eval_sets`), and scores the base model and the student on them with each `--decode`
setting (extra `model.generate` arguments, or `degeneration_guard=N` for `trl_rubric.evaluation.DegenerationGuard`),
with the demo's sampling seeds, so base and student answers pair up. Reported per decoding: both scores, the paired
difference with its 95% interval, the share of the demo's train gap closed (its `results.json`), the degenerate
shares, each criterion's pass rate, and the answers themselves.

    .venv/bin/python benchmarks/decode_rescore.py --demo_dir runs/demo_health --decode plain: \\
        guard3:degeneration_guard=3 ngram3:no_repeat_ngram_size=3 --output runs/demo_health/decoded.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

from trl_rubric.testing import OFFLINE_ENV


def _sweep():
    spec = importlib.util.spec_from_file_location("rgsd_sweep", Path(__file__).with_name("rgsd_sweep.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--demo_dir", required=True, help="A demo output folder: results.json and student/.")
    p.add_argument("--decode", nargs="+", default=["plain:", "guard3:degeneration_guard=3"],
                   help="name:key=value,... per decoding; `name:` alone is plain sampling.")  # fmt: skip
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--output", default=None, help="JSON file to write (default: <demo_dir>/decoded.json).")
    args = p.parse_args(argv)
    sweep = _sweep()
    try:
        args.decodings = {}
        for text in args.decode:
            name, pairs = sweep.parse_setting(text)
            args.decodings[name] = sweep.parse_decode(text)[1] if pairs else {}
    except ValueError as e:
        p.error(str(e))
    for need in ("results.json", "student"):
        if not os.path.exists(os.path.join(args.demo_dir, need)):
            p.error(
                f"{args.demo_dir} has no {need}: pass the output folder of a finished `trl-rubric demo --model smollm2`"
            )
    return args


def main(argv=None) -> dict[str, Any]:
    args = parse_args(argv)
    os.environ.update(OFFLINE_ENV)
    import torch

    from trl_rubric.evaluation import evaluate, load_model_and_tokenizer
    from trl_rubric.real.demo import (
        MAX_NEW_TOKENS,
        TEMPERATURE,
        RealDemoBudget,
        criterion_rates,
        demo_eval_sets,
        paired_delta,
    )
    from trl_rubric.real.model import smollm2_path

    torch.set_num_threads(args.threads)
    demo = json.load(open(os.path.join(args.demo_dir, "results.json")))
    settings = demo["settings"]
    budget = RealDemoBudget(**settings["budget"])
    _, judge, _, train, heldout = demo_eval_sets(demo["world"], settings["seed"], budget)
    sets = {"train": (train, settings["seed"] + 1), "heldout": (heldout, settings["seed"] + 2)}
    base, tokenizer = load_model_and_tokenizer(smollm2_path(), dtype="float32", device="cpu")
    # The LoRA adapter the demo saved, merged into its base (the path adapter_config.json names).
    student, _ = load_model_and_tokenizer(os.path.join(args.demo_dir, "student"), dtype="float32", device="cpu")
    decode_args = _sweep().decode_args
    gap = demo["teacher_score"] - demo["base_score"]
    out: dict[str, Any] = {"demo_dir": args.demo_dir, "world": demo["world"], "seed": settings["seed"],
                           "gap": gap, "decodings": {}}  # fmt: skip
    for name, decoding in args.decodings.items():
        row: dict[str, Any] = {"decoding": decoding}
        for split, (ds, seed) in sets.items():
            res = {}
            for who, model in (("base", base), ("student", student)):
                res[who] = evaluate(model, ds, judge, tokenizer=tokenizer, max_new_tokens=MAX_NEW_TOKENS, batch_size=16,
                                    temperature=TEMPERATURE, seed=seed, progress=False, **decode_args(decoding))  # fmt: skip
            row[split] = {
                **paired_delta(res["student"], res["base"], settings["seed"]),
                **{f"{who}_{key}": value for who, r in res.items() for key, value in (
                    ("degeneration", r.metrics.degeneration), ("criteria", criterion_rates(r)),
                    ("length", r.metrics.mean_length), ("responses", [ex["response"] for ex in r.examples]),
                    ("scores", [ex["score"] for ex in r.examples]))},
            }  # fmt: skip
        row["gap_closed_train"] = row["train"]["delta"] / gap if gap > 0 else None
        out["decodings"][name] = row
        t, h = row["train"], row["heldout"]
        print(f"{name}: train {t['before']:.3f} -> {t['after']:.3f} {t['delta']:+.3f} {t['delta_ci']} (gap closed "
              f"{row['gap_closed_train']:.2f}); held-out {h['delta']:+.3f} {h['delta_ci']}; degenerate base "
              f"{t['base_degeneration']['degenerate']:.3f} / {h['base_degeneration']['degenerate']:.3f}, student "
              f"{t['student_degeneration']['degenerate']:.3f} / {h['student_degeneration']['degenerate']:.3f}",
              flush=True)  # fmt: skip
        with open(args.output or os.path.join(args.demo_dir, "decoded.json"), "w") as f:
            json.dump(out, f, indent=2, default=str)
    return out


if __name__ == "__main__":
    main()
