"""RubricGRPO step time with a slow judge: synchronous grading vs `judge_ahead=True`, as a ratio in one run.

Three runs of the same RubricGRPO training (tiny random model, same seed, data and settings) against the fake
OpenAI-compatible judge server (`trl_rubric.testing.judge_server`, in a child process so it does not share the
trainer's GIL), graded over real HTTP by `OpenAIJudge` in batched mode (one request per completion, all of a step's
requests in flight at once):

1. `base`: judge latency 0 (what a step costs without waiting for a judge);
2. `sync`: judge latency `--latency` (200 ms by default), today's synchronous loop;
3. `ahead`: the same latency with `judge_ahead=True`.

The judge's share of a step is measured two ways: the time a step waits for the judge (the reward computation, plus
`judge/ahead_wait_s` ahead), and the step time minus `base` (which machine load makes noisy). The target (issue 27)
is `ahead`'s share at most half of `sync`'s. Medians over the steps after `--warmup` (the first step of `ahead` is
synchronous by design).

    python benchmarks/judge_ahead.py                     # 200 ms judge, 12 steps
    python benchmarks/judge_ahead.py --latency 0.2 --steps 16 --batch 16 --completion-length 48

Prints a Markdown table and the ratios.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import tempfile
import time

import torch
from datasets import Dataset
from transformers import PrinterCallback, TrainerCallback

from trl_rubric.judges import OpenAIJudge
from trl_rubric.testing import make_rubric_rows, make_tiny_model, set_offline_env
from trl_rubric.testing.judge_server import FakeJudgeServer
from trl_rubric.trainers.judge_ahead import AHEAD_WAIT
from trl_rubric.trainers.rubric_grpo import RubricGRPOConfig, RubricGRPOTrainer


def _serve(latency: float, conn) -> None:
    with FakeJudgeServer(delay=latency) as server:
        conn.send(server.port)
        conn.recv()  # "stop"


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._start)


def time_rewards(trainer) -> list[float]:
    """Seconds spent in `_calculate_rewards` at each generation."""
    times, calculate = [], trainer._calculate_rewards

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return calculate(*args, **kwargs)
        finally:
            times.append(time.perf_counter() - start)

    trainer._calculate_rewards = timed
    return times


def run(model_path: str, latency: float, ahead: bool, opts) -> dict[str, float]:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    server = ctx.Process(target=_serve, args=(latency, child), daemon=True)
    server.start()
    port = parent.recv()
    try:
        judge = OpenAIJudge(
            "fake-judge", base_url=f"http://127.0.0.1:{port}/v1", api_key_env="NO_KEY", max_concurrency=64
        )
        rows = make_rubric_rows(opts.batch * opts.steps // opts.generations + 8, conversational=True, seed=1)
        with tempfile.TemporaryDirectory() as out:
            args = RubricGRPOConfig(
                output_dir=out,
                use_cpu=True,
                bf16=False,
                report_to="none",
                per_device_train_batch_size=opts.batch,
                num_generations=opts.generations,
                max_completion_length=opts.completion_length,
                max_steps=opts.steps,
                learning_rate=1e-3,
                logging_steps=1,
                save_strategy="no",
                judge_probe=False,
                seed=0,
                disable_tqdm=True,
                judge_ahead=ahead,
            )
            timer = StepTimer()
            trainer = RubricGRPOTrainer(
                model_path, args=args, train_dataset=Dataset.from_list(rows), judge=judge, callbacks=[timer]
            )
            trainer.remove_callback(PrinterCallback)
            reward_times = time_rewards(trainer)
            trainer.train()
        waits = [e.get(AHEAD_WAIT, 0.0) for e in trainer.state.log_history if "loss" in e]
        # Time a step spends waiting for the judge: the reward computation (the whole judge call when synchronous, a
        # lookup when graded ahead) plus, ahead, the wait for grades submitted one step earlier.
        judge_wait = [r + w for r, w in zip(reward_times, waits, strict=True)][opts.warmup :]
        return {
            "step_s": statistics.median(timer.times[opts.warmup :]),
            "wait_s": statistics.median(judge_wait),
            "calls": judge.stats.calls,
        }
    finally:
        parent.send("stop")
        server.join(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", type=float, default=0.2, help="judge latency in seconds")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2, help="steps left out of the medians")
    parser.add_argument("--batch", type=int, default=16, help="completions per step")
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--completion-length", type=int, default=48)
    parser.add_argument("--hidden-size", type=int, default=64)
    opts = parser.parse_args()
    set_offline_env()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        model_path = make_tiny_model(
            os.path.join(tmp, "tiny"), hidden_size=opts.hidden_size, intermediate_size=2 * opts.hidden_size
        )
        base = run(model_path, 0.0, False, opts)
        sync = run(model_path, opts.latency, False, opts)
        ahead = run(model_path, opts.latency, True, opts)
    print(
        "| run | judge latency | median step (s) | judge share of a step (s) | judge wait in step (s) | judge calls |"
    )
    print("|---|---|---|---|---|---|")

    def share(r):
        return r["step_s"] - base["step_s"]

    for name, latency, r in (("base", 0.0, base), ("sync", opts.latency, sync), ("ahead", opts.latency, ahead)):
        print(
            f"| {name} | {latency * 1000:.0f} ms | {r['step_s']:.3f} | {share(r):.3f} | {r['wait_s']:.3f} | {r['calls']} |"
        )
    print(f"\nstep time ahead / sync: {ahead['step_s'] / sync['step_s']:.3f}")
    print(f"judge wait per step ahead / sync: {ahead['wait_s'] / sync['wait_s']:.3f} (target <= 0.5)")
    print(f"judge share of the step time ahead / sync: {share(ahead) / share(sync):.3f} (noisy under load)")


if __name__ == "__main__":
    main()
