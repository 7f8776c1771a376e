"""Does the rubric-conditioned teacher prefer the better answer? RGSD's signal, measured without training.

RGSD moves the student towards what the same model predicts when it sees the rubric. That only helps if, among the
student's own answers, the teacher gives more probability to the ones the rubric rates higher. This script samples
`--samples` answers per prompt from SmolLM2-135M-Instruct (no rubric), grades them with the world's exact rule judge,
and computes each answer's teacher-student log-ratio `sum_t log p_teacher(y_t) - log p_student(y_t)` (end-of-answer
token included when the answer ended) under each teacher view (`--views`, `<template>:<penalties>`: the world's
direct template or `RGSDConfig`'s default one, with the rubric's penalty criteria shown or omitted). It reports, per
view:

- **pairwise agreement**: over pairs of answers to the same prompt with different scores, how often the higher-scored
  one has the higher log-ratio (0.5 = no signal), for the summed and the per-token mean log-ratio, with a bootstrap
  95% interval over prompts;
- the same agreement restricted to pairs that differ on one criterion, per general criterion: which behaviours the
  teacher's preference actually carries.

    .venv/bin/python benchmarks/teacher_signal.py --smoke --output_dir /tmp/signal_smoke
    .venv/bin/python benchmarks/teacher_signal.py --prompts 40 --samples 4 --output_dir runs/teacher_signal
"""

from __future__ import annotations

import argparse
import json
import os
import random
from collections import defaultdict
from itertools import combinations
from typing import Any

from trl_rubric.testing import OFFLINE_ENV


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=40, help="Train prompts.")
    p.add_argument("--samples", type=int, default=4, help="Answers per prompt.")
    p.add_argument("--max_completion_length", type=int, default=96)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--views", nargs="+", default=["direct:show", "direct:omit", "default:show"],
                   help="Teacher views, <direct|default>:<show|omit>.")  # fmt: skip
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--output_dir", default="teacher_signal_results")
    args = p.parse_args(argv)
    if args.smoke:
        args.prompts, args.samples, args.max_completion_length = 2, 2, 12
    for view in args.views:
        template, _, penalties = view.partition(":")
        if template not in ("direct", "default") or penalties not in ("show", "omit"):
            p.error(f"--views {view!r}: expected <direct|default>:<show|omit>")
    return args


def pair_agreement(groups: list[list[tuple[float, float]]], n_bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Over pairs within each group with different first values, the fraction whose second values order the same
    way (ties in the second value count half), with a percentile bootstrap interval over groups."""

    def per_group(group):
        agree = total = 0.0
        for (a, x), (b, y) in combinations(group, 2):
            if a == b:
                continue
            total += 1
            agree += 0.5 if x == y else float((a > b) == (x > y))
        return agree, total

    counts = [per_group(g) for g in groups]
    counts = [c for c in counts if c[1]]
    if not counts:
        return {"agreement": None, "ci": None, "pairs": 0}

    def rate(cs):
        return sum(a for a, _ in cs) / sum(t for _, t in cs)

    rng = random.Random(seed)
    boots = sorted(rate([rng.choice(counts) for _ in counts]) for _ in range(n_bootstrap))
    ci = [boots[int(0.025 * n_bootstrap)], boots[int(0.975 * n_bootstrap) - 1]]
    return {"agreement": rate(counts), "ci": ci, "pairs": int(sum(t for _, t in counts))}


def main(argv=None) -> dict[str, Any]:
    args = parse_args(argv)
    os.environ.update(OFFLINE_ENV)
    import torch
    import transformers
    from datasets import concatenate_datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_rubric.evaluation import evaluate, select_examples
    from trl_rubric.evaluation.token_view import token_logratio_view
    from trl_rubric.real import smollm2_path
    from trl_rubric.real.world import REAL_RENDER_STYLE, REAL_TEACHER_PROMPT_TEMPLATE, make_real_world
    from trl_rubric.teacher import DEFAULT_TEACHER_PROMPT_TEMPLATE

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    world = make_real_world(seed=args.seed)
    rows = select_examples(world.train_dataset(), args.prompts, args.seed)
    data = concatenate_datasets([rows] * args.samples)
    path = smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    result = evaluate(model, data, world.judge(), tokenizer=tokenizer, max_new_tokens=args.max_completion_length,
                      batch_size=16, temperature=args.temperature, seed=args.seed + 1, progress=True)  # fmt: skip
    ends = tokenizer.eos_token_id
    completions = []
    for ex in result.examples:
        ids = tokenizer(ex["response"], add_special_tokens=False)["input_ids"]
        completions.append(ids if ex["truncated"] else [*ids, ends])
    templates = {"direct": REAL_TEACHER_PROMPT_TEMPLATE, "default": DEFAULT_TEACHER_PROMPT_TEMPLATE}
    out: dict[str, Any] = {"settings": vars(args), "mean_score": result.metrics.weighted_score, "views": {}}
    n = len(rows)
    for name in args.views:
        template, _, penalties = name.partition(":")
        views = token_logratio_view(model, tokenizer, list(data["prompt"]), list(data["rubric"]), completions,
                                    teacher_prompt_template=templates[template], rubric_render_style=REAL_RENDER_STYLE,
                                    teacher_penalties=penalties)  # fmt: skip
        sums = [sum(v.logratios) for v in views]
        means = [s / max(len(v.logratios), 1) for s, v in zip(sums, views, strict=True)]
        scores = [ex["score"] for ex in result.examples]
        # Rows i, i + n, i + 2n, ... are the answers to prompt i.
        by_prompt = [list(range(i, len(views), n)) for i in range(n)]
        row: dict[str, Any] = {
            "sum": pair_agreement([[(scores[j], sums[j]) for j in g] for g in by_prompt], seed=args.seed),
            "mean": pair_agreement([[(scores[j], means[j]) for j in g] for g in by_prompt], seed=args.seed),
            "mean_token_logratio": sum(sum(v.logratios) for v in views) / sum(len(v.logratios) for v in views),
            "criteria": {},
        }
        per_criterion: dict[str, list[list[tuple[float, float]]]] = defaultdict(list)
        for g in by_prompt:
            for c, crit in enumerate(result.examples[g[0]]["criteria"]):
                key = "key term" if crit["text"].startswith("Mentions ") else crit["text"][:40]
                # A pitfall met is bad: order by the criterion's contribution to the score, not by the verdict.
                sign = 1 if crit["weight"] > 0 else -1
                per_criterion[key].append(
                    [(sign * float(bool(result.examples[j]["criteria"][c]["verdict"])), sums[j]) for j in g]
                )
        for key, groups in sorted(per_criterion.items()):
            row["criteria"][key] = pair_agreement(groups, seed=args.seed)
        out["views"][name] = row
        print(f"{name}: agreement (sum) {row['sum']}, (mean) {row['mean']}", flush=True)
        for key, agg in row["criteria"].items():
            print(f"   {key:42s} {agg}", flush=True)
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
