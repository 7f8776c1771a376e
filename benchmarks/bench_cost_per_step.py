"""Cost of one optimizer step: RGSD against GRPO with a rubric judge, on the same tiny model and the same prompts.

Every configuration trains on P prompts per optimizer step (no gradient accumulation, one generation per step):

- `RGSD`: `RGSDTrainer`, one rollout per prompt (P completions), frozen base teacher shown the rubric, no judge.
- `GRPO G=8 / G=16, local judge`: `RubricGRPOTrainer` with G rollouts per prompt (P*G completions), graded by a
  `TransformersJudge` that loads the *same* tiny model, so judging costs real generation compute (batched mode: one
  judge generation per completion, greedy, up to `--judge-max-tokens` tokens, no retries).
- `GRPO G=8 / G=16, HTTP judge`: the same with `OpenAIJudge` against `FakeJudgeServer` (in a child process, so it
  does not share the trainer's GIL) that holds each answer for `--judge-latency` seconds; at most
  `--judge-concurrency` requests in flight.

Per optimizer step it reports the median wall time and its split into generation (policy sampling, plus the teacher
prompt preparation for RGSD), judging (`_calculate_rewards`) and the rest (teacher and student forward, backward,
optimizer), the policy tokens generated, the judge calls and the judge tokens (prompt + answer, as the judge reports
them: real tokens for the local judge; for the fake HTTP server, whitespace-separated words), and the RGSD /
configuration ratios. The first `--warmup` steps are not counted.

The random tiny model writes no valid judge JSON, so the local judge's grades are unknown and those GRPO steps make
no update (their gradients are dropped before the optimizer); the compute of the step, which is what is measured, is
unchanged. The HTTP judge grades for real.

Run from the repository root (about 3-5 minutes on a shared 2-core CPU):

    .venv/bin/python benchmarks/bench_cost_per_step.py --markdown /tmp/cost.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_judge import ServerProcess  # noqa: E402  (a FakeJudgeServer in a child process)

from trl_rubric.testing import OFFLINE_ENV  # noqa: E402

ENV = OFFLINE_ENV


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts-per-step", type=int, default=4, help="P: prompts per optimizer step, for every config.")
    p.add_argument("--groups", type=int, nargs="+", default=[8, 16], help="GRPO group sizes G.")
    p.add_argument("--steps", type=int, default=3, help="Measured optimizer steps per configuration.")
    p.add_argument("--warmup", type=int, default=1, help="Unmeasured first steps per configuration.")
    p.add_argument("--max-completion-length", type=int, default=64, help="Policy completion cap (tokens).")
    p.add_argument("--judge-max-tokens", type=int, default=64, help="Local judge answer cap (tokens).")
    p.add_argument("--judge-batch-size", type=int, default=32, help="Local judge generation batch size.")
    p.add_argument("--judge-latency", type=float, default=0.2, help="HTTP judge latency per request (s).")
    p.add_argument("--judge-concurrency", type=int, default=32, help="HTTP judge requests in flight at most.")
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--markdown", default=None, help="Also write the Markdown table to this file.")
    return p.parse_args(argv)


class Meter:
    """Wraps a trainer's generation and reward calls and its steps, and keeps per-step totals."""

    def __init__(self, trainer, judge=None):
        from transformers import TrainerCallback

        self.trainer, self.judge = trainer, judge
        self.steps: list[dict] = []
        self._current: dict = {}
        meter = self
        generate, rewards = trainer._generate_and_score_completions, trainer._calculate_rewards

        def timed_generate(inputs):
            t0 = time.perf_counter()
            out = generate(inputs)
            meter._current["generate_s"] += time.perf_counter() - t0
            meter._current["completions"] += out["completion_ids"].shape[0]
            meter._current["gen_tokens"] += int(out["completion_mask"].sum())
            return out

        def timed_rewards(*a, **kw):
            t0 = time.perf_counter()
            out = rewards(*a, **kw)
            meter._current["judge_s"] += time.perf_counter() - t0
            return out

        trainer._generate_and_score_completions = timed_generate
        trainer._calculate_rewards = timed_rewards

        class Clock(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                meter._current = dict(generate_s=0.0, judge_s=0.0, completions=0, gen_tokens=0)
                meter._stats = judge.stats.snapshot() if judge is not None else None
                meter._t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                step = dict(meter._current, wall_s=time.perf_counter() - meter._t0)
                if judge is not None:
                    d = judge.stats.since(meter._stats)
                    step.update(judge_calls=d.calls, judge_tokens=d.prompt_tokens + d.completion_tokens)
                else:
                    step.update(judge_calls=0, judge_tokens=0)
                meter.steps.append(step)

        trainer.add_callback(Clock())


def run_config(name, make_trainer, judge_of, warmup):
    trainer = make_trainer()
    meter = Meter(trainer, judge_of(trainer))
    trainer.train()
    measured = meter.steps[warmup:]
    med = {k: statistics.median(s[k] for s in measured) for k in measured[0]}
    med["generate_only_s"] = med["generate_s"] - med["judge_s"]  # judging runs inside _generate_and_score
    med["rest_s"] = med["wall_s"] - med["generate_s"]
    med["name"] = name
    print(f"{name}: {med['wall_s']:.2f} s/step", flush=True)
    return med


def main(argv=None):
    args = parse_args(argv)
    os.environ.update(ENV)
    server = ServerProcess(args.judge_latency)  # forked before torch starts any thread
    try:
        return _main(args, server)
    finally:
        server.stop()


def _main(args, server):
    import torch
    from datasets import Dataset

    from trl_rubric.judges import TransformersJudge
    from trl_rubric.testing import make_rubric_rows, make_tiny_model
    from trl_rubric.trainers.rgsd import RGSDConfig, RGSDTrainer
    from trl_rubric.trainers.rubric_grpo import RubricGRPOConfig, RubricGRPOTrainer

    torch.set_num_threads(args.threads)
    P, total_steps = args.prompts_per_step, args.warmup + args.steps
    work = Path(tempfile.mkdtemp(prefix="bench-cost-"))
    model = make_tiny_model(
        work / "model",
        hidden_size=args.hidden_size,
        num_hidden_layers=args.layers,
        intermediate_size=4 * args.hidden_size,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        seed=args.seed,
    )
    dataset = Dataset.from_list(make_rubric_rows(P * total_steps, seed=args.seed, conversational=True))
    common = dict(
        use_cpu=True,
        bf16=False,
        report_to="none",
        max_completion_length=args.max_completion_length,
        max_steps=total_steps,
        learning_rate=1e-3,
        logging_strategy="no",  # the numbers come from the Meter; keeps the output readable
        save_strategy="no",
        seed=args.seed,
        disable_tqdm=True,
        shuffle_dataset=False,  # every configuration sees the same prompts at the same step
    )

    results = []
    rgsd = run_config(
        "RGSD (1 rollout/prompt, no judge)",
        lambda: RGSDTrainer(
            model,
            args=RGSDConfig(output_dir=str(work / "rgsd"), per_device_train_batch_size=P, **common),
            train_dataset=dataset,
        ),
        lambda trainer: None,
        args.warmup,
    )
    results.append(rgsd)

    local_judge = TransformersJudge(
        model, max_new_tokens=args.judge_max_tokens, batch_size=args.judge_batch_size, max_retries=0
    )
    for G in args.groups:
        grpo_common = dict(common, per_device_train_batch_size=P * G, num_generations=G, judge_probe=False)
        results.append(
            run_config(
                f"GRPO G={G}, local judge (same model)",
                lambda G=G, grpo_common=grpo_common: RubricGRPOTrainer(
                    model,
                    args=RubricGRPOConfig(output_dir=str(work / f"grpo-local-{G}"), **grpo_common),
                    train_dataset=dataset,
                    judge=local_judge,
                ),
                lambda trainer: trainer.judge,
                args.warmup,
            )
        )
        results.append(
            run_config(
                f"GRPO G={G}, HTTP judge ({args.judge_latency * 1000:.0f} ms)",
                lambda G=G, grpo_common=grpo_common: RubricGRPOTrainer(
                    model,
                    args=RubricGRPOConfig(
                        output_dir=str(work / f"grpo-http-{G}"),
                        judge_backend="openai",
                        judge_model="fake-judge",
                        judge_base_url=server.url,
                        judge_max_concurrency=args.judge_concurrency,
                        judge_max_retries=0,
                        **grpo_common,
                    ),
                    train_dataset=dataset,
                ),
                lambda trainer: trainer.judge,
                args.warmup,
            )
        )

    from transformers import AutoModelForCausalLM

    n_params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(model).parameters())
    header = (
        f"P = {P} prompts per optimizer step; tiny Qwen2 ({n_params / 1e6:.2f}M parameters, hidden {args.hidden_size}, "
        f"{args.layers} layers, vocab 512); completions up to {args.max_completion_length} tokens; local judge answers "
        f"up to {args.judge_max_tokens} tokens, batch {args.judge_batch_size}; HTTP judge {args.judge_latency * 1000:.0f} "
        f"ms per request, {args.judge_concurrency} in flight; median of {args.steps} steps after {args.warmup} warm-up; "
        f"torch threads {args.threads}; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, torch {torch.__version__}."
    )
    lines = [
        "| configuration | completions / step | wall s / step | generation s | judge s | forward+backward+optim s "
        "| policy tokens generated | judge calls | judge tokens | RGSD wall / this | RGSD tokens / this |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['name']} | {r['completions']:.0f} | {r['wall_s']:.2f} | {r['generate_only_s']:.2f} | "
            f"{r['judge_s']:.2f} | {r['rest_s']:.2f} | {r['gen_tokens']:.0f} | {r['judge_calls']:.0f} | "
            f"{r['judge_tokens']:.0f} | {rgsd['wall_s'] / r['wall_s']:.2f} | "
            f"{rgsd['gen_tokens'] / max(r['gen_tokens'], 1):.3f} |"
        )
    table = "\n".join([header, "", *lines])
    print("\n" + table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
