"""False-positive rate of each judge we ship under each attack of `trl_rubric.judges.attacks`.

Clean responses are plain, unhelpful answers to questions of the real-model health and science world (they meet few
criteria); each attack is applied to each clean response. A **false positive** is a criterion the judge says is met
where the world's exact rule labels say it is not: labels of the clean response for attacks that append text (the
appended text adds nothing a criterion asks for), labels of the attacked text itself for attacks that replace the
answer (master keys, empty, truncated). Rate = false positives / criteria labelled unmet that the judge gave a verdict
on, with a 95% Wilson interval (criteria of one response are not independent, so read the intervals as optimistic).
The `clean` row is the same judge on the unattacked responses: an attack matters where it rises above that row.

Judges: `fake` (the fake OpenAI-compatible server, keyword rule, through `OpenAIJudge`), `fake_echo` (the same
server quoting the response before its verdicts, as chatty judges do), `smollm2` (SmolLM2-135M-Instruct as
`TransformersJudge`, batched mode, greedy). The llama.cpp server judge needs `llama-cpp-python`, a long source build not
done on the benchmark machine; where it is installed, serve the GGUF and pass `--openai_base_url`.

    nice -n 5 python benchmarks/judge_attacks.py --judges fake,fake_echo,smollm2 --n_responses 10 \\
        --out runs/judge_attacks/after.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from trl_rubric import Rubric
from trl_rubric.judges import RuleJudge
from trl_rubric.judges.attacks import ATTACKS
from trl_rubric.judges.prompts import PROMPT_VERSION
from trl_rubric.real.world import make_real_world

CLEAN_TEMPLATES = {
    "health": (
        "That is a common question. Many people wonder about it, and it depends a lot on the person and the situation.",
        "It usually sorts itself out. Some people feel better sooner than others, so wait and see how things go.",
    ),
    "science": (
        "Scientists have asked this for a long time. There are several ideas about it and the details are complicated.",
        "It has to do with how nature works. Different things happen in different places, and it can vary a lot.",
    ),
}


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k/n ((0, 1) when n is 0)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def examples(n: int) -> list[dict]:
    world = make_real_world(seed=0)
    rows = world.train_rows + world.heldout_rows
    # Alternate domains so both rubric families appear.
    health = [r for r in rows if r["domain"] == "health"]
    science = [r for r in rows if r["domain"] == "science"]
    picked = [r for pair in zip(health, science, strict=False) for r in pair][:n]
    out = []
    for i, row in enumerate(picked):
        rubric = Rubric.from_any(row["rubric"])
        out.append({"prompt": row["prompt"], "rubric": rubric, "clean": CLEAN_TEMPLATES[row["domain"]][i % 2]})
    return out


def build_cases(exs: list[dict], seed: int) -> list[dict]:
    import random

    rule = RuleJudge()
    cases = []
    for j, ex in enumerate(exs):
        rng = random.Random(seed * 1000 + j)
        clean_labels = rule.verdicts(ex["clean"], ex["rubric"])
        cases.append({**ex, "attack": "clean", "response": ex["clean"], "labels": clean_labels})
        for a in ATTACKS:
            text = a.build(ex["clean"], ex["rubric"], rng)
            labels = clean_labels if a.kind == "append" else rule.verdicts(text, ex["rubric"])
            cases.append({**ex, "attack": a.name, "response": text, "labels": labels})
    return cases


def make_judge(name: str, args, stack):
    from trl_rubric.judges import OpenAIJudge

    if name in ("fake", "fake_echo"):
        from trl_rubric.testing.judge_server import FakeJudgeServer

        server = stack.enter_context(FakeJudgeServer())
        if name == "fake_echo":
            server.fault = "echo"
        return OpenAIJudge("fake-judge", base_url=server.url, max_retries=0, timeout=30)
    if name == "smollm2":
        from trl_rubric.judges import TransformersJudge
        from trl_rubric.real.model import smollm2_path

        return TransformersJudge(
            smollm2_path(), max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, max_retries=0
        )
    if name == "openai":
        return OpenAIJudge(args.openai_model, base_url=args.openai_base_url, max_retries=1)
    raise ValueError(f"unknown judge {name!r}")


def measure(judge, cases) -> dict:
    start = time.perf_counter()
    grades = judge.grade_many_sync(
        [c["prompt"] for c in cases], [c["response"] for c in cases], [c["rubric"] for c in cases]
    )
    wall = time.perf_counter() - start
    per: dict[str, dict] = {}
    for case, grade in zip(cases, grades, strict=True):
        row = per.setdefault(case["attack"], {"fp": 0, "opportunities": 0, "unknown": 0, "cannot_assess": 0, "n": 0})
        flags = getattr(grade, "cannot_assess", None) or [False] * len(grade.verdicts)
        for verdict, label, ca in zip(grade.verdicts, case["labels"], flags, strict=True):
            row["n"] += 1
            if ca:
                row["cannot_assess"] += 1
            elif verdict is None:
                row["unknown"] += 1
            elif label is False:
                row["opportunities"] += 1
                row["fp"] += int(verdict is True)
    for row in per.values():
        row["rate"] = row["fp"] / row["opportunities"] if row["opportunities"] else None
        row["ci"] = wilson(row["fp"], row["opportunities"])
    return {"attacks": per, "wall_s": wall, "grades": len(grades)}


def table(results: dict) -> str:
    judges = list(results["judges"])
    lines = [
        "| attack | " + " | ".join(f"{j}: FP rate [95% CI] (FP/n, unknown)" for j in judges) + " |",
        "|---|" + "---|" * len(judges),
    ]
    for name in ["clean", *(a.name for a in ATTACKS)]:
        cells = []
        for j in judges:
            r = results["judges"][j]["attacks"].get(name)
            if r is None or r["rate"] is None:
                cells.append("n/a" if r is None else f"no verdicts (unknown {r['unknown']})")
                continue
            lo, hi = r["ci"]
            extra = f", cannot-assess {r['cannot_assess']}" if r["cannot_assess"] else ""
            cells.append(
                f"{r['rate']:.0%} [{lo:.0%}, {hi:.0%}] ({r['fp']}/{r['opportunities']}, unknown {r['unknown']}{extra})"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(r: dict | None) -> str:
    if r is None:
        return "-"
    if r["rate"] is None:
        return f"no verdicts ({r['unknown']} unknown)"
    lo, hi = r["ci"]
    return f"{r['rate']:.0%} [{lo:.0%}, {hi:.0%}] {r['fp']}/{r['opportunities']}"


def compare_table(runs: list[tuple[str, dict]]) -> str:
    """One table of several result files (`label`, results): a column per (judge, label)."""
    cols = [(j, label, res) for label, res in runs for j in res["judges"]]
    order = list(dict.fromkeys(j for j, _, _ in cols))
    cols.sort(key=lambda c: order.index(c[0]))
    lines = [
        "| attack | " + " | ".join(f"{j} {label}" for j, label, _ in cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for name in ["clean", *(a.name for a in ATTACKS)]:
        lines.append(
            f"| {name} | " + " | ".join(_cell(res["judges"][j]["attacks"].get(name)) for j, _, res in cols) + " |"
        )
    unknown = []
    for j, label, res in cols:
        rows = res["judges"][j]["attacks"].values()
        n = sum(r["n"] for r in rows)
        unk = sum(r["unknown"] for r in rows)
        ca = sum(r["cannot_assess"] for r in rows)
        unknown.append(f"{j} {label}: {unk}/{n} unknown, {ca} cannot-assess, {res['judges'][j]['wall_s']:.0f} s")
    return "\n".join(lines) + "\n\nVerdicts: " + "; ".join(unknown) + "."


def main() -> None:
    import contextlib

    import torch

    torch.set_num_threads(1)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--judges", default="fake,fake_echo,smollm2")
    p.add_argument("--n_responses", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max_new_tokens", type=int, default=160)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--openai_base_url", default=None)
    p.add_argument("--openai_model", default="judge")
    p.add_argument("--out", default="runs/judge_attacks/results.json")
    p.add_argument(
        "--compare",
        nargs="+",
        metavar="LABEL=FILE",
        help="Print one table of earlier result files (e.g. before=runs/a.json after=runs/b.json) and exit.",
    )
    args = p.parse_args()
    if args.compare:
        runs = [(item.split("=", 1)[0], json.loads(Path(item.split("=", 1)[1]).read_text())) for item in args.compare]
        print(compare_table(runs))
        return
    cases = build_cases(examples(args.n_responses), args.seed)
    results = {"prompt_version": PROMPT_VERSION, "n_responses": args.n_responses, "judges": {}}
    for name in args.judges.split(","):
        with contextlib.ExitStack() as stack:
            judge = make_judge(name, args, stack)
            results["judges"][name] = measure(judge, cases)
        print(f"{name}: {results['judges'][name]['grades']} grades in {results['judges'][name]['wall_s']:.0f}s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(table(results))


if __name__ == "__main__":
    main()
