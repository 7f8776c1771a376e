"""How much more likely the teacher is than the student to start a criterion's term: the signal `span_onset_weight` uses.

For each answer saved by a sweep (`benchmarks/rgsd_sweep.py`: the base model's train answers, or a run's), the same
SmolLM2 model reads it twice, as the student (the prompt only) and as the teacher (the world's teacher view, the rubric
shown), and at every position before the answer first names the term it sums the probability of the next token being
one of the term's first tokens (`trl_rubric.trainers.rgsd_spans.onset_token_ids`, the tokens the onset term pulls on).
Reported over the answers that name the term and those that do not: the summed probabilities, how often the teacher's
sum is above 1.5x the student's, and the positions where the teacher's probability is the higher one.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/onset_signal.py runs/sweep_dir --answers base --limit 48
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/onset_signal.py runs/sweep_dir --answers SETTING
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
from pathlib import Path
from typing import Any

from trl_rubric.testing import OFFLINE_ENV


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def first_match(text: str, rubric, names) -> int | None:
    """Where `text` first names one of the criteria (its earliest span), or `None`."""
    from trl_rubric.trainers.rgsd_spans import criterion_spans

    spans = criterion_spans(text, rubric, names)
    return min(start for start, _ in spans) if spans else None


def onset_sums(model, tokenizer, prompt, teacher_prompt, answer: str, ids: list[int], cut_chars: int | None):
    """Summed student and teacher probability of starting the term, over the answer's tokens before `cut_chars`."""
    import torch

    completion = tokenizer.encode(answer, add_special_tokens=False)
    cut = len(tokenizer.encode(answer[:cut_chars], add_special_tokens=False)) if cut_chars is not None else None
    sums = []
    for messages in (prompt, teacher_prompt):
        p = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        p = list(p) if isinstance(p, list) else list(p["input_ids"])
        with torch.no_grad():
            logits = model(torch.tensor([p + completion])).logits[0, len(p) - 1 : -1].float()
        q = logits.log_softmax(-1)[:, ids].exp().sum(-1)
        sums.append(q[: max(cut, 1)] if cut is not None else q)
    return sums


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over `rows` (each with `student`, `teacher`, `teacher_above`), and how often the teacher is 1.5x ahead."""
    if not rows:
        return {"n": 0}
    return {
        "n": len(rows),
        "student_sum": statistics.fmean(r["student"] for r in rows),
        "teacher_sum": statistics.fmean(r["teacher"] for r in rows),
        "teacher_above_positions": statistics.fmean(r["teacher_above"] for r in rows),
        "teacher_1_5x": sum(r["teacher"] > 1.5 * r["student"] for r in rows),
    }


def main(argv=None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="A sweep's output folder (its results.json).")
    p.add_argument("--answers", default="base", help="'base' (the base model's train answers) or a setting name.")
    p.add_argument("--criteria", nargs="+", default=["key term"], help="The criteria whose terms are read.")
    p.add_argument("--limit", type=int, default=None, help="Read only the first N answers.")
    p.add_argument("--output", default=None, help="Write the summary here as JSON.")
    args = p.parse_args(argv)
    os.environ.update(OFFLINE_ENV)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_rubric.real import smollm2_path
    from trl_rubric.real.world import REAL_TEACHER_VIEW
    from trl_rubric.real.worlds import make_named_world
    from trl_rubric.rubric import Rubric
    from trl_rubric.teacher import build_teacher_prompt
    from trl_rubric.trainers.rgsd_spans import onset_token_ids

    sweep = _load("rgsd_sweep")
    results = json.load(open(os.path.join(args.run, "results.json")))
    s = results["settings"]
    world = make_named_world(s["world"], seed=s["seed"])
    ds = sweep.scored_sets(world, s["seed"], s["eval_prompts"], s["heldout_prompts"], s["eval_samples"])["train"][0]
    if args.answers == "base":
        answers = results["responses"]["base_train"]
    else:
        answers = results["runs"][args.answers]["train"]["responses"]
    tokenizer = AutoTokenizer.from_pretrained(smollm2_path())
    model = AutoModelForCausalLM.from_pretrained(smollm2_path()).eval()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    view = dict(REAL_TEACHER_VIEW)
    per_answer = []
    for i, answer in enumerate(answers[: args.limit]):
        row = ds[i]
        rubric = Rubric.from_any(row["rubric"])
        ids = onset_token_ids(tokenizer, rubric, args.criteria)
        if not ids:
            continue
        teacher_prompt = build_teacher_prompt(
            row["prompt"], row["rubric"], template=view["teacher_prompt_template"],
            render_style=view["rubric_render_style"], penalties=view["teacher_penalties"],
        )  # fmt: skip
        cut = first_match(answer, rubric, args.criteria)
        q_s, q_t = onset_sums(model, tokenizer, row["prompt"], teacher_prompt, answer, ids, cut)
        per_answer.append({"met": cut is not None, "student": q_s.sum().item(), "teacher": q_t.sum().item(),
                           "teacher_above": (q_t > q_s).float().mean().item()})  # fmt: skip
    out = {
        "run": args.run,
        "answers": args.answers,
        "criteria": args.criteria,
        "all": summarise(per_answer),
        "names the term": summarise([r for r in per_answer if r["met"]]),
        "does not": summarise([r for r in per_answer if not r["met"]]),
    }
    for key in ("all", "names the term", "does not"):
        print(key, json.dumps(out[key]))
    if args.output:
        Path(args.output).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
