"""Does RGSD's per-token clip let it learn? An ablation on the real-model world (SmolLM2-135M-Instruct).

RGSD clips each token's divergence at tau = 0.05 (arXiv 2606.12507, after the OPSD line). How it clips matters: a
clamp of the per-token sum gives no gradient at all above tau, while OPSD's public code clips each vocabulary entry's
contribution before summing. This script trains the same LoRA RGSD student at equal steps, prompts and seeds with
each setting in `--settings` (`none`, or `<mode>:<tau>` for any `token_clip_mode` this install accepts, e.g.
`clamp:0.05`, `scale:0.05`, `per_entry:0.05`), and reports the fraction of the train conditioning gap each closes.
A mode this install's `RGSDConfig` rejects is reported as skipped.

    .venv/bin/python benchmarks/clip_ablation.py --smoke --output_dir /tmp/clip_smoke
    .venv/bin/python benchmarks/clip_ablation.py --steps 20 --output_dir /tmp/clip_ablation
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

from trl_rubric.testing import OFFLINE_ENV

SETTINGS = ("none", "clamp:0.05", "scale:0.05", "per_entry:0.05")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), help="`none` or `<token_clip_mode>:<tau>`.")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--prompts_per_step", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-4, help="LoRA learning rate.")
    p.add_argument("--max_completion_length", type=int, default=96)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--eval_prompts", type=int, default=32, help="Train prompts scored after training.")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="Tiny sizes: checks that every setting runs.")
    p.add_argument("--output_dir", default="clip_ablation_results")
    args = p.parse_args(argv)
    if args.smoke:
        args.steps, args.prompts_per_step, args.max_completion_length, args.eval_prompts = 1, 2, 12, 2
    for s in args.settings:
        if s != "none" and (":" not in s or not s.split(":", 1)[1].replace(".", "", 1).isdigit()):
            p.error(f"--settings {s!r}: expected none or <mode>:<tau>, e.g. clamp:0.05")
    return args


def main(argv=None) -> dict[str, Any]:
    args = parse_args(argv)
    os.environ.update(OFFLINE_ENV)
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_rubric import RGSDConfig, RGSDTrainer
    from trl_rubric.evaluation import conditioning_gap, evaluate, select_examples
    from trl_rubric.real import lora_config, smollm2_path
    from trl_rubric.real.world import REAL_TEACHER_VIEW, make_real_world

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    world = make_real_world(seed=args.seed)
    train_all = world.train_dataset()
    train = select_examples(train_all, args.eval_prompts, args.seed)
    path = smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    gen = dict(max_new_tokens=args.max_completion_length, batch_size=16, temperature=args.temperature, progress=False)
    base = AutoModelForCausalLM.from_pretrained(path).eval()
    gap = conditioning_gap(base, train, world.judge(), tokenizer=tokenizer, n_samples=None, seed=args.seed + 1,
                           **REAL_TEACHER_VIEW,
                           **gen)  # fmt: skip
    base_score, teacher_score = gap.score_without_rubric, gap.score_with_rubric
    print(f"base {base_score:.3f}, teacher {teacher_score:.3f}, gap {gap.gap:+.3f} {gap.gap_ci}", flush=True)
    results: dict[str, Any] = {"settings": vars(args), "base": base_score, "teacher": teacher_score, "runs": {}}
    for setting in args.settings:
        mode, tau = ("clamp", None) if setting == "none" else (setting.split(":")[0], float(setting.split(":")[1]))
        try:
            config = RGSDConfig(
                output_dir=os.path.join(args.output_dir, setting.replace(":", "_")), use_cpu=True, bf16=False,
                seed=args.seed, max_steps=args.steps, learning_rate=args.lr, lr_scheduler_type="constant",
                per_device_train_batch_size=args.prompts_per_step, max_completion_length=args.max_completion_length,
                temperature=args.temperature, token_clip=tau, token_clip_mode=mode,
                **REAL_TEACHER_VIEW,
                logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, gradient_checkpointing=False,
            )  # fmt: skip
        except ValueError as e:
            print(f"{setting}: skipped: {e}", flush=True)
            results["runs"][setting] = {"skipped": str(e)}
            continue
        torch.manual_seed(args.seed)
        trainer = RGSDTrainer(
            path, args=config, train_dataset=train_all, processing_class=tokenizer, peft_config=lora_config()
        )
        began = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - began
        clipped = [h.get("rgsd/clipped_frac") for h in trainer.state.log_history]
        model = trainer.accelerator.unwrap_model(trainer.model).eval()
        m = evaluate(model, train, world.judge(), tokenizer=tokenizer, seed=args.seed + 1, **gen).metrics
        closed = (m.weighted_score - base_score) / gap.gap if gap.gap else None
        results["runs"][setting] = {"score": m.weighted_score, "score_ci": m.weighted_score_ci, "gap_closed": closed,
                                    "train_seconds": seconds, "clipped_fraction": [c for c in clipped if c is not None]}  # fmt: skip
        print(f"{setting}: score {m.weighted_score:.3f}, gap closed {closed}", flush=True)
        _write(results, args.output_dir)  # after every setting: a long run stopped early keeps what it measured
    _write(results, args.output_dir)
    return results


def _write(results: dict[str, Any], output_dir: str) -> None:
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2, default=str)


if __name__ == "__main__":
    main()
