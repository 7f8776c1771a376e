"""Teacher focus on the offline toy world: does showing the RGSD teacher only the criteria the student has not learned
yet (`teacher_focus="unlearned"`) change what the student learns?

Both arms are the same RGSD run (`benchmarks/toy_world.py`'s RGSD settings: cached toy model, 64 train / 32 held-out
prompts, P = 32 prompts per step, one rollout each, lr 2e-3, `token_clip=None`, the toy model's teacher template,
equal optimizer steps), both with the world's rule judge as an observe-only `RubricReward` (`distillation_weight=1.0`,
so the loss is pure distillation in both): `teacher_focus="all"` shows the whole rubric, `"unlearned"` drops the
criteria the judge saw the student meet (pass rate >= threshold over the last `teacher_focus_window` verdicts, at
least `teacher_focus_min_observations` of them).

Scores are the evaluation harness's with the rule judge (4 answers per prompt at temperature 1, the same seeds for
both arms): weighted score, strict completion (all criteria met), mean length, and per criterion kind (the toy
rubric's titles) the pass rate (a penalty passes when avoided), base vs trained.

Run from the repository root (about 2 minutes per arm and seed on one core):

    nice -n 5 .venv/bin/python benchmarks/teacher_focus.py --seeds 0 1 --output_dir /tmp/teacher_focus
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import defaultdict

from trl_rubric.testing import OFFLINE_ENV

MAX_COMPLETION_LENGTH = 24  # as benchmarks/toy_world.py and the demo
MODES = ("all", "unlearned")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=150, help="Optimizer steps, the same for both arms.")
    p.add_argument("--prompts_per_step", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3, help="benchmarks/toy_world.py's RGSD learning rate.")
    p.add_argument("--threshold", type=float, default=0.8, help="teacher_focus_threshold.")
    p.add_argument("--min_observations", type=int, default=2, help="teacher_focus_min_observations.")
    p.add_argument("--window", type=int, default=8, help="teacher_focus_window.")
    p.add_argument("--eval_samples", type=int, default=4, help="Answers sampled per prompt in the scores.")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--output_dir", default="teacher_focus_results")
    return p.parse_args(argv)


def scores(model, tokenizer, dataset, judge, n: int, seed: int) -> dict:
    """`toy.experiment.score_model`'s numbers, plus the pass rate per criterion title and three answers."""
    from trl_rubric.toy.experiment import evaluate_toy

    result = evaluate_toy(model, tokenizer, dataset, judge, n, seed)
    passes: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for example in result.examples:
        for c in example["criteria"]:
            if c["verdict"] is not None:
                counts = passes[c["title"] or c["text"]]
                counts[0] += int(bool(c["verdict"]) == (c["weight"] > 0))
                counts[1] += 1
    m = result.metrics
    return {
        "score": m.weighted_score,
        "score_ci": m.weighted_score_ci,
        "strict": m.strict_completion,
        "length": m.mean_length,
        "criteria": {k: p / t for k, (p, t) in sorted(passes.items())},
        "answers": [e["response"] for e in result.examples[:3]],
    }


def run(args, seed: int, mode: str, path: str, tokenizer, world) -> dict:
    import torch
    from transformers import PrinterCallback

    from trl_rubric import RGSDConfig, RGSDTrainer, RubricReward
    from trl_rubric.toy import TEACHER_PROMPT_TEMPLATE, TEACHER_RENDER_STYLE

    torch.manual_seed(seed)
    config = RGSDConfig(
        output_dir=os.path.join(args.output_dir, "runs", f"{mode}-seed{seed}"),
        use_cpu=True,
        bf16=False,
        seed=seed,
        max_steps=args.steps,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        per_device_train_batch_size=args.prompts_per_step,
        num_generations=1,
        max_completion_length=MAX_COMPLETION_LENGTH,
        temperature=1.0,
        logging_steps=max(1, args.steps // 10),
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        token_clip=None,
        teacher_prompt_template=TEACHER_PROMPT_TEMPLATE,
        rubric_render_style=TEACHER_RENDER_STYLE,
        teacher_focus=mode,
        teacher_focus_threshold=args.threshold,
        teacher_focus_min_observations=args.min_observations,
        teacher_focus_window=args.window,
    )
    reward = RubricReward(world.judge(), num_generations=1)  # observes only: distillation_weight stays 1.0
    trainer = RGSDTrainer(
        path, reward_funcs=[reward], args=config, train_dataset=world.train_dataset(), processing_class=tokenizer
    )
    trainer.remove_callback(PrinterCallback)
    began = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - began
    model = trainer.accelerator.unwrap_model(trainer.model).eval()
    history = trainer.state.log_history
    out = {
        "train_seconds": seconds,
        "seconds_per_step": seconds / args.steps,
        "train_reward_curve": [round(h["reward"], 3) for h in history if "reward" in h],
        "teacher_focus_omitted": [
            round(h["rgsd/teacher_focus_omitted"], 2) for h in history if "rgsd/teacher_focus_omitted" in h
        ],
        "teacher_focus_rows": [h["rgsd/teacher_focus_rows"] for h in history if "rgsd/teacher_focus_rows" in h],
        "teacher_prompt_length": [
            round(h["rgsd/teacher_prompt_length"], 1) for h in history if "rgsd/teacher_prompt_length" in h
        ],
    }
    for split, dataset, offset in (("train", world.train_dataset(), 1), ("heldout", world.heldout_dataset(), 2)):
        out[split] = scores(model, tokenizer, dataset, world.judge(), args.eval_samples, seed + offset)
    return out


def main(argv=None):
    args = parse_args(argv)
    os.environ.update(OFFLINE_ENV)
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_rubric.toy import make_world, prepare_toy_model

    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    results = {"args": vars(args), "seeds": {}}
    os.makedirs(args.output_dir, exist_ok=True)
    for seed in args.seeds:
        world = make_world(seed=seed)
        path = prepare_toy_model(seed=seed)
        tokenizer = AutoTokenizer.from_pretrained(path)
        base = AutoModelForCausalLM.from_pretrained(path).eval()
        entry = {"base": {s: scores(base, tokenizer, d, world.judge(), args.eval_samples, seed + o)
                          for s, d, o in (("train", world.train_dataset(), 1), ("heldout", world.heldout_dataset(), 2))}}  # fmt: skip
        print(f"seed {seed} base: {json.dumps(entry['base']['train'])}", flush=True)
        for mode in args.modes:
            entry[mode] = run(args, seed, mode, path, tokenizer, world)
            print(f"seed {seed} {mode}: {json.dumps(entry[mode])}", flush=True)
        results["seeds"][seed] = entry
        with open(os.path.join(args.output_dir, "results.json"), "w") as f:
            json.dump(results, f, indent=2)

    print(
        "\n| seed | teacher_focus | train score (95% CI) | strict (train) | held-out score | strict (held-out) | length | s/step |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for seed, entry in results["seeds"].items():
        for arm in ("base", *args.modes):
            r = entry[arm]
            step = f"{r['seconds_per_step']:.2f}" if arm != "base" else "-"
            ci = r["train"]["score_ci"] or (float("nan"), float("nan"))
            print(
                f"| {seed} | {arm} | {r['train']['score']:.3f} ({ci[0]:.3f}-{ci[1]:.3f}) | {r['train']['strict']:.3f} | {r['heldout']['score']:.3f} "
                f"| {r['heldout']['strict']:.3f} | {r['train']['length']:.1f} | {step} |"
            )
    print("\nPass rate per criterion kind (train prompts), base -> arm:")
    for seed, entry in results["seeds"].items():
        for arm in args.modes:
            moved = ", ".join(
                f"{k} {entry['base']['train']['criteria'][k]:.2f}->{v:.2f}"
                for k, v in entry[arm]["train"]["criteria"].items()
            )
            print(f"  seed {seed} {arm}: {moved}")
    return results


if __name__ == "__main__":
    main()
