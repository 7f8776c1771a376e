"""One check of `benchmarks/gpu_check.sh`: train one trainer for a few steps and print one result line.

    python benchmarks/gpu_check.py prepare WORKDIR
    accelerate launch --config_file recipes/accelerate/zero3.yaml --num_processes 1 \
        benchmarks/gpu_check.py train WORKDIR --trainer rgsd --steps 20 --label zero3

`prepare` builds the offline tiny model once. `train` runs RGSD (EMA teacher: a separate engine-prepared copy, synced,
saved at the middle step and restored by a resumed run) or RubricGRPO (rule judge plus a length reward), checks that
every logged loss is finite and that the weights moved, and prints
`PASS|FAIL <label> <trainer> steps=<n> peak_gpu_mib=<m> time_s=<t> [reason]`. Runs on CPU too (no engine).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import traceback


def prepare(workdir: str) -> None:
    from trl_rubric.testing import make_tiny_model

    # A vocabulary and width a GPU kernel tiles like a real one, still built offline in seconds
    make_tiny_model(os.path.join(workdir, "model"), vocab_size=4096, hidden_size=128, intermediate_size=256)


def length_reward(completions, **kwargs):
    return [len(c if isinstance(c, str) else c[0]["content"]) / 10 for c in completions]


def _common(args, out_dir: str, max_steps: int) -> dict:
    import torch

    kw = dict(
        output_dir=out_dir,
        report_to="none",
        max_completion_length=32,
        per_device_train_batch_size=4,
        max_steps=max_steps,
        logging_steps=1,
        learning_rate=1e-3,
        seed=0,
        disable_tqdm=True,
    )
    if not torch.cuda.is_available():
        kw.update(use_cpu=True, bf16=False)
    if args.vllm:
        kw.update(use_vllm=True, vllm_mode="colocate", vllm_gpu_memory_utilization=0.3)
    return kw


def _full_state(trainer) -> dict:
    if trainer.is_deepspeed_enabled:
        # Before `train()` the engine does not exist yet (accelerate's get_state_dict needs it), but ZeRO-3 has already
        # partitioned the weights at load: gather them, the same way before and after training
        import deepspeed

        params = dict(trainer.model.named_parameters())
        with deepspeed.zero.GatheredParameters(list(params.values()), modifier_rank=None):
            return {k: v.detach().float().cpu().clone() for k, v in params.items()}
    state = trainer.accelerator.get_state_dict(trainer.model)  # collective under FSDP
    return {k: v.detach().float().cpu().clone() for k, v in state.items()}


def train(args) -> tuple[bool, str]:
    from datasets import Dataset

    from trl_rubric.testing import make_rubric_rows

    model = os.path.join(args.workdir, "model")
    out = os.path.join(args.workdir, f"out-{args.label}-{args.trainer}")
    rows = make_rubric_rows(64)
    if args.trainer == "rgsd":
        from trl_rubric.trainers.rgsd import RGSDConfig, RGSDTrainer

        extra = dict(teacher_model_kind="ema", save_strategy="steps", save_steps=max(args.steps // 2, 1))
        trainer = RGSDTrainer(
            model, args=RGSDConfig(**_common(args, out, args.steps), **extra), train_dataset=Dataset.from_list(rows)
        )
    else:
        from trl_rubric.trainers.rubric_grpo import RubricGRPOConfig, RubricGRPOTrainer

        for row in rows:
            # The toy criteria read "mentions <word>": give each its rule, so no verdict is unknown
            for criterion in row["rubric"]:
                criterion["tags"] = [f"rule:contains:{criterion['text'].split()[-1]}"]
            row["rubric"].append({"text": "has an e", "weight": 1.0, "category": None, "title": None, "tags": ["rule:contains:e"]})  # fmt: skip
        cfg = RubricGRPOConfig(
            **_common(args, out, args.steps), save_strategy="no", num_generations=2, judge_backend="rule"
        )  # fmt: skip
        trainer = RubricGRPOTrainer(
            model, reward_funcs=[length_reward], args=cfg, train_dataset=Dataset.from_list(rows)
        )  # fmt: skip
    before = _full_state(trainer)
    trainer.train()
    after = _full_state(trainer)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    if trainer.state.global_step != args.steps:
        return False, f"stopped at step {trainer.state.global_step}"
    if not losses or not all(math.isfinite(x) for x in losses):
        return False, f"non-finite loss in {losses}"
    if trainer.accelerator.is_main_process and all(
        k not in before or before[k].equal(v) for k, v in after.items()
    ):  # fmt: skip
        return False, "no weight moved"
    if args.trainer == "rgsd":
        # Resume from the middle checkpoint: the EMA teacher and the generation buffer come back on every rank
        checkpoint = os.path.join(out, f"checkpoint-{max(args.steps // 2, 1)}")
        resumed = RGSDTrainer(
            model,
            args=RGSDConfig(**_common(args, out + "-resumed", args.steps), **extra),
            train_dataset=Dataset.from_list(rows),
        )
        resumed.train(resume_from_checkpoint=checkpoint)
        if resumed.state.global_step != args.steps:
            return False, f"resumed run stopped at step {resumed.state.global_step}"
    return True, f"losses {losses[0]:.4g}->{losses[-1]:.4g}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=["prepare", "train"])
    p.add_argument("workdir")
    p.add_argument("--trainer", choices=["rgsd", "grpo"], default="rgsd")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--label", default="plain", help="Name of the check (the engine), printed on the result line.")
    p.add_argument("--vllm", action="store_true", help="Generate with vLLM in colocate mode.")
    args = p.parse_args(argv)
    from trl_rubric.testing import set_offline_env

    set_offline_env()
    if args.command == "prepare":
        prepare(args.workdir)
        return 0
    import torch

    t0 = time.perf_counter()
    try:
        ok, why = train(args)
    except Exception as e:  # a check reports its failure on its line rather than stopping the others
        traceback.print_exc()
        ok, why = False, f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else float("nan")
    if int(os.environ.get("RANK", "0")) == 0:
        print(
            f"{'PASS' if ok else 'FAIL'} {args.label} {args.trainer} steps={args.steps} peak_gpu_mib={peak:.0f} "
            f"time_s={time.perf_counter() - t0:.0f} {why}",
            flush=True,
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
