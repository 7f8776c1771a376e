"""Learning on the offline toy world: RGSD against judge-based GRPO, on the same model, prompts, seeds and budget.

A small-scale replication of the comparison in the RGSD paper's main table (arXiv 2606.12507): does Rubric-Guided
Self-Distillation, with one rollout per prompt and no judge, improve a policy as much as GRPO whose reward comes from
a rubric judge? Here the judge is the world's exact `RuleJudge`, standing in for an LLM judge (and better than one:
it never errs). Methods (`--methods`):

- `base`: the pretrained toy model, untrained.
- `rgsd`: `RGSDTrainer`, one rollout per prompt, frozen base teacher shown the rubric, no judge.
- `grpo`: `RubricGRPOTrainer(judge=RuleJudge)`, G = 8 rollouts per prompt.
- `grpo_reweight`: the same with policy-aware criterion reweighting, our variant (`criterion_reweighting="ours"`).
- `grpo_pow3r`: the same with our reading of POW3R (`criterion_reweighting="pow3r"`, `trl_rubric.reweighting`).
- `hybrid`: `RGSDTrainer` with the judge as a reward function, G = 8 rollouts, `distillation_weight=0.5`.

**Budget.** Every trained method gets the same number of optimizer steps (`--steps`) and the same number of prompts
per step (`--prompts_per_step`, P), drawn by the same seed, one generation and one optimizer step per batch, no
gradient accumulation: RGSD samples P completions per step, the G = 8 methods P * 8. Everything else they spend
(wall time, completion tokens, judge calls) is measured and reported, not equalised.

Per method it reports the weighted rubric score and strict completion on train and held-out prompts (the call
`toy.experiment.score_model` makes, `--eval_samples` answers per prompt at temperature 1), the mean answer length,
the training wall time (learning-curve scoring excluded), the completion tokens sampled during training (summed from
each generation's completion mask), the judge calls during training (`RuleJudge.stats.calls` delta) and the learning
curve against optimizer steps and wall time; references are the base model with and without the rubric in its
prompt (`evaluation.conditioning_gap`).

Default learning rates come from a 30-step sweep over {1e-3, 2e-3, 5e-3} for RGSD, RubricGRPO and the hybrid alike,
keeping each method's best weighted score on *train* prompts (held-out prompts are never used to choose); the
reweighted GRPO variant reuses RubricGRPO's. The sweep, for one learning rate:

    .venv/bin/python benchmarks/toy_world.py --steps 30 --methods rgsd grpo hybrid \
        --rgsd_lr 1e-3 --grpo_lr 1e-3 --hybrid_lr 1e-3 --curve_every 10 --output_dir /tmp/sweep_1e-3

Run from the repository root (about 9 minutes on a shared 2-core CPU):

    .venv/bin/python benchmarks/toy_world.py --output_dir /tmp/toy_world
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from typing import Any

from trl_rubric.testing import OFFLINE_ENV  # noqa: E402

ENV = OFFLINE_ENV
METHODS = ("base", "rgsd", "grpo", "grpo_reweight", "grpo_pow3r", "hybrid")
LABELS = {
    "base": "base (no training)",
    "rgsd": "RGSD (1 rollout, no judge)",
    "grpo": "RubricGRPO, rule judge (G=8)",
    "grpo_reweight": "RubricGRPO + criterion reweighting (G=8)",
    "grpo_pow3r": "RubricGRPO + POW3R-style reweighting (G=8)",
    "hybrid": "hybrid RGSD + judge (G=8, w=0.5)",
}
#: Answer length cap during training, as in `trl-rubric demo` (toy answers are at most about 16 words).
MAX_COMPLETION_LENGTH = 24


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=150, help="Optimizer steps, the same for every trained method.")
    p.add_argument("--prompts_per_step", type=int, default=32, help="P: distinct prompts per optimizer step.")
    p.add_argument("--num_generations", type=int, default=8, help="G: rollouts per prompt for GRPO and hybrid.")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, help="Subset of methods to run.")
    p.add_argument(
        "--rgsd_lr", type=float, default=2e-3, help="Learning rate of RGSD (the demo's; best of the sweep)."
    )
    p.add_argument(
        "--grpo_lr", type=float, default=2e-3, help="Learning rate of both RubricGRPO variants (best of the sweep)."
    )
    p.add_argument("--hybrid_lr", type=float, default=5e-3, help="Learning rate of the hybrid (best of the sweep).")
    p.add_argument("--eval_samples", type=int, default=4, help="Answers sampled per prompt in the final scores.")
    p.add_argument("--curve_every", type=int, default=None, help="Steps between learning-curve points (steps/15).")
    p.add_argument("--curve_samples", type=int, default=2, help="Answers per train prompt per curve point.")
    p.add_argument(
        "--num_threads",
        "--threads",
        dest="threads",
        type=int,
        default=1,
        help="torch.set_num_threads for every step (1 is fastest for the toy models).",
    )
    p.add_argument("--seed", type=int, default=0, help="Seed of the world, the toy model, training and scoring.")
    p.add_argument("--output_dir", default="toy_world_results", help="Where results.json, the PNG and table go.")
    args = p.parse_args(argv)
    if args.steps < 1 or args.prompts_per_step < 1 or args.num_generations < 2:
        p.error("--steps and --prompts_per_step must be at least 1, --num_generations at least 2")
    return args


class TrainingMeter:
    """Counts what a trainer spends per generation: completion tokens sampled and judge calls.

    Wraps the trainer's `_generate_and_score_completions` (one call per optimizer step here), so the counts are
    exact and exclude the learning-curve scoring, which samples outside the trainer.
    """

    def __init__(self, trainer, judge=None):
        self.judge = judge
        self.tokens: list[int] = []  # completion tokens per generation, in order
        self.judge_calls: list[int] = []
        self._judge_start = judge.stats.calls if judge is not None else 0
        generate = trainer._generate_and_score_completions

        def counted(inputs):
            before = judge.stats.calls if judge is not None else 0
            output = generate(inputs)
            self.tokens.append(int(output["completion_mask"].sum().item()))
            self.judge_calls.append((judge.stats.calls if judge is not None else 0) - before)
            return output

        trainer._generate_and_score_completions = counted

    def total_judge_calls(self) -> int:
        return (self.judge.stats.calls - self._judge_start) if self.judge is not None else 0


def build_trainer(method: str, path: str, tokenizer, train, args, output_dir: str):
    """The trainer for `method` and the judge it calls during training (`None` for RGSD)."""
    from trl_rubric import RGSDConfig, RGSDTrainer, RubricGRPOConfig, RubricGRPOTrainer, RubricReward
    from trl_rubric.toy import TEACHER_PROMPT_TEMPLATE, TEACHER_RENDER_STYLE, make_world

    world = make_world(seed=args.seed)
    P, G = args.prompts_per_step, args.num_generations
    common = dict(
        output_dir=output_dir,
        use_cpu=True,
        bf16=False,
        seed=args.seed,
        max_steps=args.steps,
        lr_scheduler_type="constant",
        max_completion_length=MAX_COMPLETION_LENGTH,
        temperature=1.0,
        logging_steps=max(1, args.steps // 10),
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )
    rgsd_fields = dict(
        token_clip=None, teacher_prompt_template=TEACHER_PROMPT_TEMPLATE, rubric_render_style=TEACHER_RENDER_STYLE
    )
    if method == "rgsd":
        config = RGSDConfig(
            learning_rate=args.rgsd_lr, per_device_train_batch_size=P, num_generations=1, **rgsd_fields, **common
        )
        return RGSDTrainer(path, args=config, train_dataset=train, processing_class=tokenizer), None
    judge = world.judge()
    if method == "hybrid":
        config = RGSDConfig(
            learning_rate=args.hybrid_lr,
            per_device_train_batch_size=P * G,
            num_generations=G,
            distillation_weight=0.5,
            **rgsd_fields,
            **common,
        )
        reward = RubricReward(judge, num_generations=G)
        trainer = RGSDTrainer(
            path, reward_funcs=[reward], args=config, train_dataset=train, processing_class=tokenizer
        )
        return trainer, judge
    config = RubricGRPOConfig(
        learning_rate=args.grpo_lr,
        per_device_train_batch_size=P * G,
        num_generations=G,
        criterion_reweighting={"grpo_reweight": "ours", "grpo_pow3r": "pow3r"}.get(method, "none"),
        **common,
    )
    trainer = RubricGRPOTrainer(path, args=config, train_dataset=train, processing_class=tokenizer, judge=judge)
    return trainer, judge


def first_reaching(points: list[dict[str, float]], target: float) -> dict[str, float] | None:
    """The first learning-curve point whose score reaches `target`, or `None`."""
    return next((p for p in points if p["score"] >= target), None)


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def with_ci(scores: dict[str, Any]) -> str:
    ci = scores.get("score_ci")
    return fmt(scores["score"]) + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def markdown_table(results: dict[str, Any]) -> str:
    ref = results["references"]
    lines = [
        "| method | lr | completions / step | train score [95% CI] | train unclipped | train strict "
        "| held-out score [95% CI] | held-out strict | gap closed (train) | mean length (tokens) | train wall s "
        "| completion tokens sampled | judge calls | curve: step / s / tokens to half the gap |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for method, r in results["methods"].items():
        half = r.get("half_gap_point")
        reach = "-" if method == "base" else "not reached"
        if half is not None:
            reach = f"{half['step']} / {half['seconds']:.0f} / {half['tokens']:,}"
        lines.append(
            f"| {LABELS[method]} | {fmt(r.get('learning_rate'), 4) if r.get('learning_rate') else '-'} "
            f"| {fmt(r.get('completions_per_step'))} | {with_ci(r['train'])} | {fmt(r['train']['score_unclipped'])} "
            f"| {fmt(r['train']['strict'])} | {with_ci(r['heldout'])} | {fmt(r['heldout']['strict'])} "
            f"| {fmt(r['gap_closed_train'], 2)} "
            f"| {fmt(r['train']['length'], 1)} | {fmt(r.get('train_seconds'), 0)} | {fmt(r.get('generated_tokens'))} "
            f"| {fmt(r.get('judge_calls'))} | {reach} |"
        )
    lines.append(
        f"| *base shown the rubric (teacher)* | - | - | {fmt(ref['teacher_train'])} | {fmt(ref['teacher_train_unclipped'])} "
        f"| {fmt(ref['teacher_train_strict'])} | {fmt(ref['teacher_heldout'])} | {fmt(ref['teacher_heldout_strict'])} "
        f"| 1.00 | {fmt(ref['teacher_train_length'], 1)} | - | - | - | - |"
    )
    return "\n".join(lines)


def main(argv=None) -> dict[str, Any]:
    args = parse_args(argv)
    os.environ.update(ENV)
    import torch
    import transformers
    import trl
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback

    from trl_rubric.evaluation import evaluate
    from trl_rubric.toy import make_world, prepare_toy_model
    from trl_rubric.toy.experiment import (
        MAX_NEW_TOKENS,
        LearningCurve,
        plot_learning_curves,
        repeat_dataset,
        toy_gap,
    )

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    started = time.perf_counter()
    world = make_world(seed=args.seed)
    train, heldout = world.train_dataset(), world.heldout_dataset()
    path = prepare_toy_model(seed=args.seed)
    tokenizer = AutoTokenizer.from_pretrained(path)
    base = AutoModelForCausalLM.from_pretrained(path).eval()
    every = args.curve_every or max(1, args.steps // 15)
    P, G = args.prompts_per_step, args.num_generations

    print("references: the base model without and with the rubric in its prompt ...", flush=True)
    references: dict[str, float] = {}
    for split, dataset, offset in (("train", train, 1), ("heldout", heldout, 2)):
        gap = toy_gap(base, tokenizer, dataset, world.judge(), n=args.eval_samples, seed=args.seed + offset)
        references[f"base_{split}"] = gap.score_without_rubric
        references[f"teacher_{split}"] = gap.score_with_rubric
        teacher_metrics = gap.with_rubric.metrics
        references[f"teacher_{split}_strict"] = teacher_metrics.strict_completion
        references[f"teacher_{split}_unclipped"] = teacher_metrics.weighted_score_unclipped
        references[f"teacher_{split}_length"] = teacher_metrics.mean_length
    print(
        f"  train: {references['base_train']:.3f} -> {references['teacher_train']:.3f} with the rubric; held-out: "
        f"{references['base_heldout']:.3f} -> {references['teacher_heldout']:.3f}",
        flush=True,
    )
    gap_size = references["teacher_train"] - references["base_train"]
    half_gap = references["base_train"] + gap_size / 2

    def final_scores(model) -> dict[str, dict[str, Any]]:
        # The call `toy.experiment.score_model` makes, keeping the unclipped mean and the bootstrap interval too (a
        # rubric-blind model's mean is below 0, where the clipped score hides how far below). Same seeds for every
        # method, so that differences are the models', not the sampler's.
        model.eval()
        out = {}
        for split, dataset, offset in (("train", train, 1), ("heldout", heldout, 2)):
            m = evaluate(
                model,
                repeat_dataset(dataset, args.eval_samples),
                world.judge(),
                tokenizer=tokenizer,
                max_new_tokens=MAX_NEW_TOKENS,
                batch_size=64,
                temperature=1.0,
                seed=args.seed + offset,
                n_bootstrap=1000,
                progress=False,
            ).metrics
            out[split] = {
                "score": m.weighted_score,
                "score_ci": list(m.weighted_score_ci) if m.weighted_score_ci else None,
                "score_unclipped": m.weighted_score_unclipped,
                "strict": m.strict_completion,
                "length": m.mean_length,
            }
        return out

    results: dict[str, Any] = {"methods": {}, "references": references}
    curves: dict[str, list[dict[str, float]]] = {}
    for method in args.methods:
        if method == "base":
            scores = final_scores(base)
            results["methods"]["base"] = {
                **scores,
                "gap_closed_train": (scores["train"]["score"] - references["base_train"]) / gap_size,
                "generated_tokens": 0,
                "judge_calls": 0,
                "train_seconds": 0.0,
            }
            continue
        print(f"{LABELS[method]}: {args.steps} steps of {P} prompts ...", flush=True)
        torch.manual_seed(args.seed)
        trainer, judge = build_trainer(
            method, path, tokenizer, train, args, os.path.join(args.output_dir, "runs", method)
        )
        trainer.remove_callback(PrinterCallback)  # per-step log dicts; the metrics we report are printed below
        meter = TrainingMeter(trainer, judge)
        curve = LearningCurve(tokenizer, train, world.judge(), every=every, seed=args.seed, n=args.curve_samples)
        curve.record(trainer.model, 0)
        trainer.add_callback(curve.callback)
        scoring_before = curve._scoring_seconds
        began = time.perf_counter()
        trainer.train()
        # Learning-curve scoring runs inside train(); it is not training.
        train_seconds = time.perf_counter() - began - (curve._scoring_seconds - scoring_before)
        for point in curve.points:
            point["tokens"] = sum(meter.tokens[: int(point["step"])])
            point["judge_calls"] = sum(meter.judge_calls[: int(point["step"])])
        curves[method] = curve.points
        model = trainer.accelerator.unwrap_model(trainer.model)
        scores = final_scores(model)
        lr = {"rgsd": args.rgsd_lr, "hybrid": args.hybrid_lr}.get(method, args.grpo_lr)
        results["methods"][method] = {
            **scores,
            "gap_closed_train": (scores["train"]["score"] - references["base_train"]) / gap_size,
            "learning_rate": lr,
            "completions_per_step": P if method == "rgsd" else P * G,
            "train_seconds": train_seconds,
            "generated_tokens": sum(meter.tokens),
            "judge_calls": meter.total_judge_calls(),
            "half_gap_point": first_reaching(curve.points, half_gap),
            "learning_curve": curve.points,
            # The judge's verdicts on the training rollouts (trl_rubric.criterion_diagnostics), per logged step.
            "criteria_log": [
                {"step": e["step"], **{k: v for k, v in e.items() if k.startswith("criteria/") and k.count("/") == 1}}
                for e in trainer.state.log_history
                if "criteria/pass_rate" in e
            ],
        }
        r = results["methods"][method]
        print(
            f"  train {r['train']['score']:.3f}, held-out {r['heldout']['score']:.3f}, {train_seconds:.0f} s, "
            f"{r['generated_tokens']:,} completion tokens, {r['judge_calls']:,} judge calls",
            flush=True,
        )
        del trainer, model

    if "grpo" in curves:  # steps each method needs to reach static GRPO's final learning-curve score
        target = curves["grpo"][-1]["score"]
        for method, points in curves.items():
            results["methods"][method]["reach_grpo_final"] = {
                "target": target,
                **(first_reaching(points, target) or {}),
            }
    os.makedirs(args.output_dir, exist_ok=True)
    png = os.path.join(args.output_dir, "toy_world_learning_curves.png")
    plot_learning_curves(
        {LABELS[m]: points for m, points in curves.items()},
        png,
        references={
            "base, prompt only": references["base_train"],
            "base shown the rubric (teacher)": references["teacher_train"],
        },
        title=f"toy world: {args.steps} steps x {P} prompts, seed {args.seed}",
    )
    cpu = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
        platform.processor(),
    )
    results["settings"] = {
        **vars(args),
        "max_completion_length": MAX_COMPLETION_LENGTH,
        "model_path": path,
        "num_train_prompts": len(train),
        "num_heldout_prompts": len(heldout),
    }
    results["machine"] = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "trl": trl.__version__,
        "transformers": transformers.__version__,
    }
    results["total_seconds"] = time.perf_counter() - started
    table = markdown_table(results)
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(args.output_dir, "table.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    print(
        f"total {results['total_seconds']:.0f} s; wrote results.json, table.md and {os.path.basename(png)} "
        f"to {args.output_dir}"
    )
    return results


if __name__ == "__main__":
    main()
