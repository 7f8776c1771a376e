"""Does the rubric-conditioned teacher prefer the better answer? RGSD's signal, measured without training.

RGSD moves the student towards what the same model predicts when it sees the rubric. That only helps if, among the
student's own answers, the teacher gives more probability to the ones the rubric rates higher. This script samples
`--samples` answers per prompt from SmolLM2-135M-Instruct (no rubric), grades them with the world's exact rule judge,
and computes each answer's teacher-student log-ratio `sum_t log p_teacher(y_t) - log p_student(y_t)` (end-of-answer
token included when the answer ended) under each teacher view (`--views`, `<template>:<penalties>[:criteria]`: the
world's direct template or `RGSDConfig`'s default one, with the rubric's penalty criteria shown or omitted; with
`:criteria`, the criterion-wise view of `teacher_context="criteria"`, one teacher per criterion shown, whose per-token
log-ratios are averaged with equal weights as the `"mean"` combination does) and each teacher shaping
(`--teacher_temperatures`, `--teacher_top_k`: the teacher's log-probs from its logits / T, or renormalised over its top
k with the loss's floor outside, as `RGSDConfig.teacher_temperature` / `teacher_top_k` shape them; one teacher pass
serves them all). It reports, per view and shaping:

- **pairwise agreement**: over pairs of answers to the same prompt with different scores, how often the higher-scored
  one has the higher log-ratio (0.5 = no signal), for the summed and the per-token mean log-ratio, with a bootstrap
  95% interval over prompts;
- the same agreement restricted to pairs that differ on one criterion, per criterion title, and pooled over the
  **content** criteria (key term, doctor, warning sign, everyday example) and the **format** ones (numbered list,
  length, "In short"): which kind of behaviour the teacher's preference carries.

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

#: Criterion titles of the real world (`trl_rubric.real.world`) by what they ask for: what the answer says, or how.
CONTENT_TITLES = ("key term", "professional help", "urgent warning sign", "everyday example")
FORMAT_TITLES = ("numbered steps", "short", "in short")


def parse_view(spec: str) -> tuple[str, str, bool]:
    """`<direct|default>:<show|omit>[:criteria]` as `(template, penalties, criterion-wise)`; a ValueError otherwise."""
    parts = spec.split(":")
    if (
        len(parts) not in (2, 3)
        or parts[0] not in ("direct", "default")
        or parts[1] not in ("show", "omit")
        or (len(parts) == 3 and parts[2] != "criteria")
    ):
        raise ValueError(f"--views {spec!r}: expected <direct|default>:<show|omit>[:criteria]")
    return parts[0], parts[1], len(parts) == 3


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=40, help="Train prompts.")
    p.add_argument("--samples", type=int, default=4, help="Answers per prompt.")
    p.add_argument("--max_completion_length", type=int, default=96)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--views", nargs="+", default=["direct:show", "direct:omit", "default:show"],
                   help="Teacher views, <direct|default>:<show|omit>[:criteria].")  # fmt: skip
    p.add_argument("--teacher_temperatures", nargs="+", type=float, default=[1.0],
                   help="Teacher temperatures to score each view at (one teacher pass for all).")  # fmt: skip
    p.add_argument("--teacher_top_k", nargs="*", type=int, default=[],
                   help="Also score each view with the teacher renormalised over its top k (at temperature 1).")  # fmt: skip
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--output_dir", default="teacher_signal_results")
    args = p.parse_args(argv)
    if args.smoke:
        args.prompts, args.samples, args.max_completion_length = 2, 2, 12
    for view in args.views:
        try:
            parse_view(view)
        except ValueError as e:
            p.error(str(e))
    if any(not t > 0 for t in args.teacher_temperatures) or any(k < 1 for k in args.teacher_top_k):
        p.error("--teacher_temperatures must be > 0 and --teacher_top_k at least 1")
    return args


def shapings(args) -> list[tuple[str, float, int | None]]:
    """`(name, temperature, top_k)` of each teacher shaping: `T1`, `T0.5`, ..., `k20`."""
    return [(f"T{t:g}", t, None) for t in args.teacher_temperatures] + [(f"k{k}", 1.0, k) for k in args.teacher_top_k]


def teacher_target_logps(logits, targets, temperature: float = 1.0, top_k: int | None = None) -> list[float]:
    """The teacher's log-probs of `targets` from `[n, V]` logits: `log_softmax(logits / T)`, or with `top_k` the
    loss's top-k renormalised distribution (`losses.teacher_top_k_logps`, its default floor outside)."""
    import torch

    from trl_rubric.losses import teacher_top_k_logps

    z = logits.float() / temperature
    logps = torch.log_softmax(z, dim=-1) if top_k is None else teacher_top_k_logps(z, top_k)[0]
    return logps.gather(-1, targets[:, None])[:, 0].tolist()


def mean_logratio(teacher_logps: list[list[float]], weights: list[float], student_logps: list[float]) -> list[float]:
    """Per-token `sum_k w_k (log p_teacher_k - log p_student) / sum_k w_k`: K teachers' log-ratios combined as the
    `"mean"` multi-teacher combination weighs them."""
    total = sum(weights)
    return [
        sum(w * lp[t] for w, lp in zip(weights, teacher_logps, strict=True)) / total - s
        for t, s in enumerate(student_logps)
    ]


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


def agreement_rows(examples, logratios, n: int, seed: int) -> dict[str, Any]:
    """Agreement of one view's per-answer log-ratios with the scores: overall (sum, mean), per criterion title, and
    pooled over the content and the format criteria. Answers `i, i + n, i + 2n, ...` are those to prompt `i`."""
    sums = [sum(r) for r in logratios]
    means = [s / max(len(r), 1) for s, r in zip(sums, logratios, strict=True)]
    scores = [ex["score"] for ex in examples]
    by_prompt = [list(range(i, len(examples), n)) for i in range(n)]
    row: dict[str, Any] = {
        "sum": pair_agreement([[(scores[j], sums[j]) for j in g] for g in by_prompt], seed=seed),
        "mean": pair_agreement([[(scores[j], means[j]) for j in g] for g in by_prompt], seed=seed),
        "mean_token_logratio": sum(sums) / max(sum(len(r) for r in logratios), 1),
        "criteria": {},
    }
    per_title: dict[str, dict[str, list]] = defaultdict(lambda: {"sum": [], "mean": []})
    for g in by_prompt:
        for c, crit in enumerate(examples[g[0]]["criteria"]):
            title = crit.get("title") or crit["text"][:40]
            # A pitfall met is bad: order by the criterion's contribution to the score, not by the verdict.
            sign = 1 if crit["weight"] > 0 else -1
            met = [sign * float(bool(examples[j]["criteria"][c]["verdict"])) for j in g]
            per_title[title]["sum"].append([(m, sums[j]) for m, j in zip(met, g, strict=True)])
            per_title[title]["mean"].append([(m, means[j]) for m, j in zip(met, g, strict=True)])
    for title, groups in sorted(per_title.items()):
        row["criteria"][title] = pair_agreement(groups["sum"], seed=seed)
    for kind, titles in (("content", CONTENT_TITLES), ("format", FORMAT_TITLES)):
        for measure in ("sum", "mean"):
            pooled = [grp for t in titles if t in per_title for grp in per_title[t][measure]]
            row[f"{kind}_{measure}"] = pair_agreement(pooled, seed=seed)
    return row


def main(argv=None) -> dict[str, Any]:
    args = parse_args(argv)
    os.environ.update(OFFLINE_ENV)
    import torch
    import transformers
    from datasets import concatenate_datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_rubric.criterion_views import criterion_views
    from trl_rubric.evaluation import evaluate, select_examples
    from trl_rubric.evaluation.generation import _prompt_ids
    from trl_rubric.real import smollm2_path
    from trl_rubric.real.world import REAL_RENDER_STYLE, REAL_TEACHER_PROMPT_TEMPLATE, make_real_world
    from trl_rubric.rubric import Rubric
    from trl_rubric.teacher import DEFAULT_TEACHER_PROMPT_TEMPLATE, build_teacher_prompt

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

    def completion_logits(prompt, completion: list[int]):
        # Logits that predict each completion token, given the prompt (a plain forward, one answer at a time)
        context = _prompt_ids(tokenizer, prompt)
        input_ids = torch.tensor([context + completion])
        with torch.inference_mode():
            return model(input_ids=input_ids, logits_to_keep=len(completion) + 1).logits[0, :-1].float()

    prompts, rubrics = list(data["prompt"]), list(data["rubric"])
    targets = [torch.tensor(c, dtype=torch.long) for c in completions]
    student = [teacher_target_logps(completion_logits(p, c), t) if c else []
               for p, c, t in zip(prompts, completions, targets, strict=True)]  # fmt: skip
    templates = {"direct": REAL_TEACHER_PROMPT_TEMPLATE, "default": DEFAULT_TEACHER_PROMPT_TEMPLATE}
    out: dict[str, Any] = {"settings": vars(args), "mean_score": result.metrics.weighted_score, "views": {}}
    n = len(rows)
    for name in args.views:
        template, penalties, criteria_wise = parse_view(name)
        logratios: dict[str, list[list[float]]] = {s: [] for s, _, _ in shapings(args)}
        teachers_per_answer = []
        for prompt, rubric, completion, target, s_lp in zip(prompts, rubrics, completions, targets, student,
                                                             strict=True):  # fmt: skip
            rubric = Rubric.from_any(rubric)
            if criteria_wise:  # one teacher per criterion shown, equal weights (no padding: K = criteria shown)
                k = sum(1 for c in rubric if penalties == "show" or c.weight >= 0)
                views = criterion_views(prompt, rubric, templates[template], REAL_RENDER_STYLE, penalties,
                                        num_contexts=k)  # fmt: skip
            else:
                views = [
                    (build_teacher_prompt(prompt, rubric, templates[template], REAL_RENDER_STYLE, penalties), 1.0)
                ]
            teachers_per_answer.append(len(views))
            logits = [completion_logits(p, completion) for p, _ in views] if completion else []
            for shaping, temperature, top_k in shapings(args):
                t_lps = [teacher_target_logps(z, target, temperature, top_k) for z in logits]
                logratios[shaping].append(mean_logratio(t_lps, [w for _, w in views], s_lp) if completion else [])
        for shaping, _, _ in shapings(args):
            row = agreement_rows(result.examples, logratios[shaping], n, args.seed)
            row["teachers_per_answer"] = sum(teachers_per_answer) / len(teachers_per_answer)
            out["views"][f"{name}@{shaping}"] = row
            print(f"{name}@{shaping}: agreement (sum) {row['sum']}, (mean) {row['mean']}", flush=True)
            for kind in ("content", "format"):
                print(f"   {kind:8s} sum {row[kind + '_sum']}  mean {row[kind + '_mean']}", flush=True)
            for key, agg in row["criteria"].items():
                print(f"   {key:42s} {agg}", flush=True)
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
