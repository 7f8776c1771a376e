"""Score a saved SmolLM2 student (a demo's, or a sweep run's) and its base model again under decoding constraints,
paired.

`trl-rubric demo --model smollm2` saves its student (`<output_dir>/student`, a LoRA adapter) and scores it with plain
sampling. This script rebuilds the demo's scored train and held-out sets (same world, seed and budget:
`trl_rubric.real.demo.demo_eval_sets`), and scores the base model and the student on them with each `--decode`
setting (extra `model.generate` arguments, or `degeneration_guard=N` for `trl_rubric.evaluation.DegenerationGuard`),
with the demo's sampling seeds, so base and student answers pair up. Reported per decoding: both scores, the paired
difference with its 95% interval, the share of the demo's train gap closed (its `results.json`), the degenerate
shares, each criterion's pass rate, and the answers themselves.

    .venv/bin/python benchmarks/decode_rescore.py --demo_dir runs/demo_health --decode plain: \\
        guard3:degeneration_guard=3 ngram3:no_repeat_ngram_size=3 --output runs/demo_health/decoded.json

`--sweep_dir DIR --run NAME` does the same for a student that `benchmarks/rgsd_sweep.py --save_students` saved
(`DIR/NAME/student`), on that sweep's own train and held-out sets, sampling settings and seeds.
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
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--demo_dir", help="A demo output folder: results.json and student/.")
    where.add_argument("--sweep_dir", help="A rgsd_sweep.py output folder (results.json; students saved).")
    p.add_argument("--run", default=None, help="With --sweep_dir: the setting whose student to score.")
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
    if args.sweep_dir is not None:
        if args.run is None:
            p.error("--sweep_dir needs --run (a setting name of that sweep)")
        for need in ("results.json", os.path.join(args.run, "student")):
            if not os.path.exists(os.path.join(args.sweep_dir, need)):
                p.error(f"{args.sweep_dir} has no {need}: pass a finished rgsd_sweep.py --save_students output folder")
        return args
    if args.run is not None:
        p.error("--run goes with --sweep_dir")
    for need in ("results.json", "student"):
        if not os.path.exists(os.path.join(args.demo_dir, need)):
            p.error(
                f"{args.demo_dir} has no {need}: pass the output folder of a finished `trl-rubric demo --model smollm2`"
            )
    return args


def demo_setup(demo_dir: str) -> dict[str, Any]:
    """The scored sets, judge, gap, student folder and sampling settings of a finished SmolLM2 demo."""
    from trl_rubric.real.demo import MAX_NEW_TOKENS, TEMPERATURE, RealDemoBudget, demo_eval_sets

    demo = json.load(open(os.path.join(demo_dir, "results.json")))
    settings = demo["settings"]
    _, judge, _, train, heldout = demo_eval_sets(demo["world"], settings["seed"], RealDemoBudget(**settings["budget"]))
    return {
        "world": demo["world"], "seed": settings["seed"], "judge": judge,
        "sets": {"train": (train, settings["seed"] + 1), "heldout": (heldout, settings["seed"] + 2)},
        "gap": demo["teacher_score"] - demo["base_score"], "student": os.path.join(demo_dir, "student"),
        "generation": {"max_new_tokens": MAX_NEW_TOKENS, "temperature": TEMPERATURE},
    }  # fmt: skip


def sweep_setup(sweep_dir: str, run: str) -> dict[str, Any]:
    """The same for one saved student of a `rgsd_sweep.py` run: its world, sets, seeds and sampling settings."""
    from trl_rubric.real.worlds import make_named_world

    sweep = json.load(open(os.path.join(sweep_dir, "results.json")))
    settings = sweep["settings"]
    seed = settings["seed"]
    pairs = next((p for name, p in map(_sweep().parse_setting, settings.get("settings", [])) if name == run), {})
    world = make_named_world(settings["world"], seed=seed)
    sets = _sweep().scored_sets(world, seed, settings["eval_prompts"], settings["heldout_prompts"],
                                settings["eval_samples"])  # fmt: skip
    return {
        "world": settings["world"], "seed": seed, "judge": world.judge(), "sets": sets,
        "gap": sweep["gap_train"], "student": os.path.join(sweep_dir, run, "student"),
        "init_from": pairs.get("init_from"),
        "generation": {"max_new_tokens": settings["max_completion_length"], "temperature": settings["temperature"]},
    }  # fmt: skip


def load_student(student: str, init_from: str | None = None):
    """The saved student as it was trained: an adapter on the base its `adapter_config.json` names; or, for a sweep
    setting with `init_from=`, an adapter saved before the sweep merged its start into a folder (it names SmolLM2,
    though it was trained on `init_from`'s model, merged in memory) put on `init_from`'s model."""
    from trl_rubric.evaluation import adapter_base, load_model_and_tokenizer
    from trl_rubric.evaluation.loading import MERGED_FROM_FILE

    named = adapter_base(student)
    if init_from and named is not None and not os.path.isfile(os.path.join(named, MERGED_FROM_FILE)):
        from peft import PeftModel

        start, _ = load_model_and_tokenizer(init_from, dtype="float32", device="cpu")
        model = PeftModel.from_pretrained(start, student).merge_and_unload()
        return model.eval()
    return load_model_and_tokenizer(student, dtype="float32", device="cpu")[0]


def main(argv=None) -> dict[str, Any]:
    args = parse_args(argv)
    os.environ.update(OFFLINE_ENV)
    import torch

    from trl_rubric.evaluation import evaluate, load_model_and_tokenizer
    from trl_rubric.real.demo import criterion_rates, paired_delta
    from trl_rubric.real.model import smollm2_path

    torch.set_num_threads(args.threads)
    setup = demo_setup(args.demo_dir) if args.demo_dir else sweep_setup(args.sweep_dir, args.run)
    judge, sets, gap, seed = setup["judge"], setup["sets"], setup["gap"], setup["seed"]
    base, tokenizer = load_model_and_tokenizer(smollm2_path(), dtype="float32", device="cpu")
    student = load_student(setup["student"], setup.get("init_from"))
    sweep = _sweep()
    decode_args = sweep.decode_args
    # Criterion pass rates as the source run computed them (a sweep groups every "Mentions ..." as "key term").
    rates = criterion_rates if args.demo_dir else (lambda r: sweep.criterion_rates(r.examples))
    out: dict[str, Any] = {"demo_dir": args.demo_dir, "sweep_dir": args.sweep_dir, "run": args.run,
                           "world": setup["world"], "seed": seed, "gap": gap, "decodings": {}}  # fmt: skip
    default_output = (os.path.join(args.demo_dir, "decoded.json") if args.demo_dir
                      else os.path.join(args.sweep_dir, args.run, "decoded.json"))  # fmt: skip
    for name, decoding in args.decodings.items():
        row: dict[str, Any] = {"decoding": decoding}
        for split, (ds, split_seed) in sets.items():
            res = {}
            for who, model in (("base", base), ("student", student)):
                res[who] = evaluate(model, ds, judge, tokenizer=tokenizer, batch_size=16, seed=split_seed, progress=False,
                                    **setup["generation"], **decode_args(decoding))  # fmt: skip
            row[split] = {
                **paired_delta(res["student"], res["base"], seed),
                **{f"{who}_{key}": value for who, r in res.items() for key, value in (
                    ("degeneration", r.metrics.degeneration), ("criteria", rates(r)),
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
        with open(args.output or default_output, "w") as f:
            json.dump(out, f, indent=2, default=str)
    return out


if __name__ == "__main__":
    main()
