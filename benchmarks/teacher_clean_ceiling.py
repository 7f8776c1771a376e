"""How far could a student get by learning only the teacher's clean answers? (`docs/benchmarks.md`, teacher-sampled
answers on SmolLM2.)

The teacher (SmolLM2-135M-Instruct shown the rubric through the world's teacher view) answers the train prompts the
RGSD sweeps score on; each answer is graded by the world's rule judge and run through the degeneration checks. The
script reports the mean score of all, clean and flagged answers, and the share of a gap yardstick (the base model's
score and the gap of a sweep's reference run) that the clean answers alone would close, with a bootstrap interval:
the ceiling of `teacher_rollouts` with its filter, whose student learns only the answers that pass the checks.

    python benchmarks/teacher_clean_ceiling.py --world health --eval_prompts 48 \
        --reference /work/runs/w1_default/results.json --output_dir teacher_clean
"""

from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np


def ceiling_summary(
    rows: Sequence[dict[str, Any]], base: float, gap: float, seed: int = 0, resamples: int = 5000
) -> dict[str, Any]:
    """Summary of graded, checked teacher answers (`{"score", "degenerate", "criteria": [{"title", "verdict"}]}`):
    mean scores of all / clean / flagged answers, the shares `(mean - base) / gap` of all and of the clean answers with
    95% bootstrap intervals over answers, and each criterion's pass rate among clean and flagged answers."""
    if not rows or gap <= 0:
        raise ValueError(f"need graded answers and a positive gap yardstick; got {len(rows)} answers, gap {gap}")
    scores = np.array([r["score"] for r in rows], dtype=float)
    flagged = np.array([bool(r["degenerate"]) for r in rows])
    if flagged.all():
        raise ValueError("every teacher answer is flagged: no clean answer to learn from")
    rng = np.random.default_rng(seed)
    clean_shares, all_shares = [], []
    for _ in range(resamples):
        i = rng.integers(0, len(scores), len(scores))
        s, f = scores[i], flagged[i]
        all_shares.append((s.mean() - base) / gap)
        if (~f).any():
            clean_shares.append((s[~f].mean() - base) / gap)
    criteria: dict[str, dict[str, list[int]]] = defaultdict(lambda: {"clean": [0, 0], "flagged": [0, 0]})
    for r, f in zip(rows, flagged, strict=True):
        for c in r.get("criteria") or []:
            counts = criteria[c["title"]]["flagged" if f else "clean"]
            counts[0] += bool(c["verdict"])
            counts[1] += 1
    return {
        "answers": len(rows),
        "flagged_share": float(flagged.mean()),
        "mean_all": float(scores.mean()),
        "mean_clean": float(scores[~flagged].mean()),
        "mean_flagged": float(scores[flagged].mean()) if flagged.any() else None,
        "share_all": float((scores.mean() - base) / gap),
        "share_all_ci": [float(q) for q in np.quantile(all_shares, [0.025, 0.975])],
        "share_clean": float((scores[~flagged].mean() - base) / gap),
        "share_clean_ci": [float(q) for q in np.quantile(clean_shares, [0.025, 0.975])],
        "criteria": {
            title: {side: (n_met / n if n else None) for side, (n_met, n) in sides.items()}
            for title, sides in criteria.items()
        },
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", default="health", help="health or instructions (trl_rubric.real.worlds)")
    p.add_argument("--eval_prompts", type=int, default=48, help="train prompts, as the sweep's --eval_prompts")
    p.add_argument("--eval_samples", type=int, default=2, help="answers per prompt, as the sweep's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--reference", required=True, help="a sweep's results.json: its base score and gap are the yardstick"
    )
    p.add_argument("--max_completion_length", type=int, default=96)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--output_dir", default="teacher_clean")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import torch
    import transformers
    from datasets import concatenate_datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_rubric.evaluation import conditioning_gap, select_examples
    from trl_rubric.evaluation.degeneration import degeneration_flags
    from trl_rubric.real import smollm2_path
    from trl_rubric.real.world import REAL_TEACHER_VIEW
    from trl_rubric.real.worlds import make_named_world

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    reference = json.load(open(args.reference))
    world = make_named_world(args.world, seed=args.seed)
    # The sweeps' train set and sampling seed (rgsd_sweep.py: the prompts repeated eval_samples times, seed + 1).
    prompts = select_examples(world.train_dataset(), args.eval_prompts, args.seed)
    dataset = concatenate_datasets([prompts] * args.eval_samples)
    path = smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    gap = conditioning_gap(model, dataset, world.judge(), tokenizer=tokenizer, n_samples=None, seed=args.seed + 1,
                           max_new_tokens=args.max_completion_length, batch_size=16, temperature=args.temperature,
                           progress=True, **REAL_TEACHER_VIEW)  # fmt: skip
    rows = [
        {"score": ex["score"], "degenerate": degeneration_flags(ex["response"], row["rubric"]).degenerate,
         "criteria": [{"title": c["title"], "verdict": c["verdict"]} for c in ex["criteria"]], "response": ex["response"]}
        for ex, row in zip(gap.with_rubric.examples, dataset, strict=True)
    ]  # fmt: skip
    summary = ceiling_summary(rows, reference["base"]["train"], reference["gap_train"], seed=args.seed)
    os.makedirs(args.output_dir, exist_ok=True)
    out = os.path.join(args.output_dir, f"{args.world}.json")
    with open(out, "w") as f:
        json.dump({"settings": vars(args), "summary": summary, "rows": rows}, f, indent=1)
    print(json.dumps({k: v for k, v in summary.items() if k != "criteria"}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
