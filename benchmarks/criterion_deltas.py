"""Which criteria moved, with paired intervals: a sweep's students (and its frozen teacher) against the base model.

`benchmarks/rgsd_sweep.py` stores every scored answer (base, teacher, each student, plain and under each `--decode`
setting) but only pass rates per criterion. This script regrades those answers with the world's rule judge, one
verdict per criterion, groups criteria by their `title` ("key term": the question's own term; "numbered steps";
"short"; ...), and reports for each comparison the pass rate before and after with the paired bootstrap interval of
the difference. Pairs are answers to the same prompt with the same sampling seed, as the sweep drew them. The
comparisons: each student against the base model decoded the same way, and the frozen teacher (the base model
shown the rubric) against the base model, which says what the teacher itself knows that the student could learn.

    .venv/bin/python benchmarks/criterion_deltas.py --sweep_dir runs/guard_health_s0 \\
        [--rescore runs/guard_health_s0/v2.json] [--criteria "key term" "numbered steps"] [--output deltas.json]

`--rescore` adds the rows of a `benchmarks/decode_rescore.py --sweep_dir` output (a saved student decoded again).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trl_rubric.testing import OFFLINE_ENV


def _sweep():
    spec = importlib.util.spec_from_file_location("rgsd_sweep", Path(__file__).with_name("rgsd_sweep.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def verdicts_by_title(grades: Sequence[Any], rubrics: Sequence[Any]) -> list[dict[str, bool | None]]:
    """Per answer, `{criterion title: verdict}` (a title that occurs twice in one rubric keeps its first verdict;
    criteria without a title are keyed by their first 40 characters)."""
    from trl_rubric.rubric import Rubric

    out = []
    for grade, rubric in zip(grades, rubrics, strict=True):
        rubric = Rubric.from_any(rubric)
        verdicts = grade.verdicts if grade.verdicts is not None and len(grade.verdicts) == len(rubric) else None
        row: dict[str, bool | None] = {}
        for i, criterion in enumerate(rubric):
            key = criterion.title or criterion.text[:40]
            row.setdefault(key, None if verdicts is None else verdicts[i])
        out.append(row)
    return out


def paired_changes(
    before: Sequence[dict[str, bool | None]],
    after: Sequence[dict[str, bool | None]],
    criteria: Sequence[str] | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Per criterion title: pass rates before and after, their difference and its paired 95% bootstrap interval,
    over the answer pairs where both verdicts are known. Titles in `criteria` only, when given."""
    from trl_rubric.evaluation import bootstrap_ci

    if len(before) != len(after):
        raise ValueError(f"{len(before)} answers before and {len(after)} after: they must pair up")
    pairs: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for b, a in zip(before, after, strict=True):
        for title in b.keys() & a.keys():
            if criteria is not None and title not in criteria:
                continue
            if b[title] is not None and a[title] is not None:
                pairs[title].append((float(b[title]), float(a[title])))
    out = {}
    for title in sorted(pairs):
        bs, as_ = [p[0] for p in pairs[title]], [p[1] for p in pairs[title]]
        low_high = bootstrap_ci(as_, bs, n_resamples, 0.95, seed)
        out[title] = {
            "before": sum(bs) / len(bs),
            "after": sum(as_) / len(as_),
            "delta": (sum(as_) - sum(bs)) / len(bs),
            "delta_ci": list(low_high) if low_high else None,
            "n": len(bs),
        }
    return out


def comparisons(results: dict[str, Any], rescore: dict[str, Any] | None = None) -> list[tuple[str, str, list, list]]:
    """`(label, split, base answers, other answers)` for every pairing a sweep's `results.json` (and a rescore
    file) holds: teacher vs base on train, each student vs base plain and under each decoding."""
    r = results["responses"]
    out = [("frozen teacher (base model shown the rubric)", "train", r["base_train"], r["teacher_train"])]
    for name, run in results["runs"].items():
        for split in ("train", "heldout"):
            out.append((f"{name}, plain", split, r[f"base_{split}"], run[split]["responses"]))
        for decoding, row in run.get("decoded", {}).items():
            for split in ("train", "heldout"):
                base = results["decoded"][decoding][split]["responses"]
                out.append((f"{name}, {decoding}", split, base, row[split]["responses"]))
    if rescore is not None:
        for decoding, row in rescore["decodings"].items():
            for split in ("train", "heldout"):
                label = f"{rescore.get('run')}, {decoding} (rescore)"
                out.append((label, split, row[split]["base_responses"], row[split]["student_responses"]))
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sweep_dir", required=True, help="A rgsd_sweep.py output folder (its results.json).")
    p.add_argument("--rescore", default=None, help="A decode_rescore.py --sweep_dir output to add.")
    p.add_argument("--criteria", nargs="+", default=None, help="Criterion titles to report (default: all).")
    p.add_argument("--output", default=None, help="JSON file to write the rows to.")
    return p.parse_args(argv)


def main(argv=None) -> list[dict[str, Any]]:
    os.environ.update(OFFLINE_ENV)
    from trl_rubric.real.worlds import make_named_world

    args = parse_args(argv)
    results = json.loads(Path(args.sweep_dir, "results.json").read_text())
    rescore = json.loads(Path(args.rescore).read_text()) if args.rescore else None
    s = results["settings"]
    world = make_named_world(s["world"], seed=s["seed"])
    sets = _sweep().scored_sets(world, s["seed"], s["eval_prompts"], s["heldout_prompts"], s["eval_samples"])
    judge = world.judge()
    # Keyed by the answer list's identity: `comparisons` hands the same base list to every student it is paired with,
    # so each list is graded once.
    cache: dict[tuple[str, int], list] = {}

    def graded(split: str, answers: list) -> list[dict[str, bool | None]]:
        key = (split, id(answers))
        if key not in cache:
            ds = sets[split][0]
            grades = judge.grade_many_sync(list(ds["prompt"]), answers, list(ds["rubric"]))
            cache[key] = verdicts_by_title(grades, list(ds["rubric"]))
        return cache[key]

    rows = []
    for label, split, base, other in comparisons(results, rescore):
        changes = paired_changes(graded(split, base), graded(split, other), args.criteria)
        rows.append({"comparison": label, "split": split, "criteria": changes})
        print(f"\n{label} ({split}), base → other, paired difference [95%]:")
        for title, c in changes.items():
            ci = c["delta_ci"] or [float("nan")] * 2
            print(
                f"  {title:28s} {c['before']:.2f} → {c['after']:.2f}  "
                f"{c['delta'] * 100:+.1f} [{ci[0] * 100:+.1f}, {ci[1] * 100:+.1f}]  (n={c['n']})"
            )
    if args.output:
        Path(args.output).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
