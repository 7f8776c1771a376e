"""Several runs of one sweep setup side by side: each run's gain, the spread over runs, run-vs-run differences.

One 40-step run of an RGSD setting on SmolLM2 is one draw: runs that differ only in their training seed (a sweep
setting's `seed=`) or in a handful of rollouts have ended tens of points of the gap apart (docs/benchmarks.md, "Flagged
rollouts paid −1 in the hybrid, and how much one run says"). `benchmarks/rgsd_sweep.py` runs that share `--world`,
`--seed` and the scoring sizes are scored on the same prompts with the same sampling seeds, so their answers pair up.
This script takes such runs and reports, plain and under every `--decode` setting they all have:

- per run: train score base → student, the share of the train gap closed, the held-out gain with its interval, the
  share of degenerate answers (rechecked with the current checks, base and student), the pass rate of the criteria
  named in `--criteria` (graded again with the world's rule judge, by criterion title) on train and on held-out
  (one "held-out rates" line, the base model's first), the mean answer length in tokens;
- the teacher's pass rate of each named criterion on the same train prompts (its sampled answers, which the sweep
  saves, graded alike; plain sampling only): what distillation can carry at most. Each group is measured against the
  teacher its runs learned from: a setting with its own teacher view (`template=`, ...) against that view's answers
  (`own_view_teacher_train`; `benchmarks/own_view_teacher.py` adds them to runs trained before the sweep saved them);
- per group (`--groups`): the mean, range and standard deviation of the gap closed over the group's runs, the base →
  student change of each named criterion pooled over them (on the train answers, and on the held-out answers, where
  no teacher is sampled), and the train change as a share of the teacher's lead over the base model on the criterion
  (none where the teacher is less than `MIN_LEAD` ahead); and between two groups of equal size, the i-th run of one
  paired with the i-th of the other (same training seed), per-answer differences pooled over the pairs;
- every pair of runs: the paired per-answer difference of scores (train, held-out) and of each named criterion.

Intervals are 95% paired bootstraps over answers. They say how sure one run's (or one pool's) answers are, not how
far another run of the same setting would land: read that from the spread over runs.

    .venv/bin/python benchmarks/compare_runs.py runs/rgt40_health_s0 runs/tseed_pure_health:rgt_ts1 \\
        runs/tseed_pure_health:rgt_ts2 runs/hykneg_health_s0 runs/tseed_hyb_health:hyk_ts1 \\
        runs/tseed_hyb_health:hyk_ts2 --labels pure0 pure1 pure2 hyb0 hyb1 hyb2 \\
        --groups pure=pure0,pure1,pure2 hybrid=hyb0,hyb1,hyb2 --criteria "key term" [--output compare.json]

A run is `DIR` (a sweep folder with one setting) or `DIR:SETTING`.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trl_rubric.testing import OFFLINE_ENV

#: Settings that decide which answers a sweep scored: runs compared here must agree on all of them.
SCORING_SETTINGS = ("world", "seed", "eval_prompts", "heldout_prompts", "eval_samples", "max_completion_length",
                    "temperature")  # fmt: skip
SPLITS = ("train", "heldout")
#: The smallest teacher lead over the base model (in pass rate) that a share learned is reported against: below it
#: the share is mostly noise (a 2-point lead makes a 1-point change 50%).
MIN_LEAD = 0.05


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_run(spec: str) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """`(results, setting name, run)` for `DIR` or `DIR:SETTING`; a folder holding several settings needs the name."""
    folder, _, name = spec.partition(":")
    path = Path(folder, "results.json")
    if not path.is_file():
        raise FileNotFoundError(f"{spec}: no results.json in {folder!r} (a benchmarks/rgsd_sweep.py output folder)")
    results = json.loads(path.read_text())
    runs = {k: v for k, v in results["runs"].items() if "skipped" not in v}
    if not name:
        if len(runs) != 1:
            raise ValueError(
                f"{spec}: {folder!r} holds {len(runs)} trained settings {sorted(runs)}; name one as DIR:SETTING"
            )
        name = next(iter(runs))
    if name not in runs:
        raise ValueError(f"{spec}: no trained setting {name!r} in {folder!r}; it has {sorted(runs)}")
    return results, name, runs[name]


def check_same_scoring(specs: Sequence[str], results: Sequence[dict[str, Any]]) -> None:
    """Refuse runs scored on different prompts or sampling settings, naming the first run that differs and how."""
    first = results[0]["settings"]
    for spec, r in zip(specs[1:], results[1:], strict=True):
        for key in SCORING_SETTINGS:
            if r["settings"].get(key) != first.get(key):
                raise ValueError(
                    f"{spec}: {key}={r['settings'].get(key)!r}, but {specs[0]} has {key}={first.get(key)!r}; "
                    "only runs scored on the same sets pair up"
                )


def shared_decodings(runs: Sequence[dict[str, Any]]) -> list[str]:
    """`plain` and every `--decode` setting that all `runs` were scored under, in the first run's order."""
    names = [d for d in runs[0].get("decoded", {}) if all(d in r.get("decoded", {}) for r in runs)]
    return ["plain", *names]


def view(results: dict[str, Any], run: dict[str, Any], decoding: str) -> dict[str, dict[str, Any]]:
    """Per split: the base model's answers and the student's scores, answers and before/after/delta, under
    `decoding` (`plain`: as trained, sampled)."""
    out = {}
    for split in SPLITS:
        if decoding == "plain":
            base, student = results["responses"][f"base_{split}"], run[split]
        else:
            base, student = results["decoded"][decoding][split]["responses"], run["decoded"][decoding][split]
        out[split] = {"base": base, **student}
    return out


def teacher_answers(results: dict[str, Any], run: dict[str, Any]) -> list[str] | None:
    """The train answers of the teacher `run` learned from: its own view's where the setting changed the view (saved
    by the sweep, or added by `benchmarks/own_view_teacher.py`), else the sweep's world-view teacher's; `None` where
    the run's view differs from the world's and its teacher's answers were not saved."""
    if "own_view_teacher_train" in run:
        return run["own_view_teacher_train"]
    if "own_view_gap_train" in run:  # another view than the world's, trained before the sweep kept its answers
        return None
    return results.get("responses", {}).get("teacher_train")


def paired_difference(a: Sequence[float | None], b: Sequence[float | None], seed: int = 0) -> dict[str, Any]:
    """Mean of `a - b` over the pairs where both are known, with its 95% paired bootstrap interval."""
    from trl_rubric.evaluation import bootstrap_ci

    if len(a) != len(b):
        raise ValueError(f"{len(a)} values against {len(b)}: they must pair up")
    pairs = [(float(x), float(y)) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    if not pairs:
        return {"delta": None, "delta_ci": None, "n": 0}
    xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
    low_high = bootstrap_ci(xs, ys, 1000, 0.95, seed)
    return {
        "delta": (sum(xs) - sum(ys)) / len(pairs),
        "delta_ci": list(low_high) if low_high else None,
        "n": len(pairs),
    }


def spread(values: Sequence[float]) -> dict[str, float | None]:
    """Mean, lowest, highest and (from two values on) sample standard deviation."""
    return {
        "mean": statistics.fmean(values),
        "min": min(values),
        "max": max(values),
        "sd": statistics.stdev(values) if len(values) > 1 else None,
    }


def parse_groups(items: Sequence[str], labels: Sequence[str]) -> dict[str, list[int]]:
    """`NAME=label,label,...` into `{NAME: [run indices]}`, refusing labels that name no run."""
    groups = {}
    for item in items:
        name, sep, members = item.partition("=")
        if not sep or not name or not members:
            raise ValueError(f"--groups {item!r}: expected NAME=label,label,...")
        index = []
        for label in members.split(","):
            if label not in labels:
                raise ValueError(f"--groups {item!r}: no run labelled {label!r}; labels are {list(labels)}")
            index.append(labels.index(label))
        groups[name] = index
    return groups


def lead_learned(change: float | None, base: float | None, teacher: float | None) -> float | None:
    """`change` (student − base pass rate) as a share of the teacher's lead `teacher − base`; `None` where the teacher
    is less than [`MIN_LEAD`] ahead of the base model (little or nothing for distillation to carry) or a rate is
    unknown."""
    if change is None or base is None or teacher is None or teacher - base < MIN_LEAD - 1e-9:  # 0.35 - 0.30 counts
        return None
    return change / (teacher - base)


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _share(value: float | None) -> str:
    return f"n/a (teacher < {MIN_LEAD * 100:.0f} points ahead)" if value is None else f"{value * 100:.0f}%"


def _fmt(d: dict[str, Any]) -> str:
    if d["delta"] is None:
        return "n/a"
    low, high = d["delta_ci"] or (float("nan"), float("nan"))
    return f"{d['delta'] * 100:+.1f} [{low * 100:+.1f}, {high * 100:+.1f}]"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="DIR or DIR:SETTING, rgsd_sweep.py outputs scored on the same sets.")
    p.add_argument(
        "--labels",
        nargs="+",
        default=None,
        help="One short name per run (default: the setting names, or the runs as given where those repeat).",
    )
    p.add_argument("--groups", nargs="*", default=[], help="NAME=label,label,...: runs of one setting.")
    p.add_argument("--criteria", nargs="*", default=["key term"], help="Criterion titles to grade and report.")
    p.add_argument("--output", default=None, help="JSON file to write everything printed to.")
    return p.parse_args(argv)


def group_teacher(index, own, teacher_verdicts, decoding: str, labels, name: str):
    """The verdicts on the teacher answers a group's runs learned from, pooled over its distinct teachers (runs of
    one view share them); `None` under a decoding other than plain, or, with a note, where a run's are not saved."""
    if decoding != "plain":
        return None
    missing = [labels[i] for i in index if not own[i]]
    if missing:
        print(f"{name}: no teacher's lead: the teacher answers of {', '.join(missing)} were not saved (for a "
              "setting with its own view, trained before the sweep kept them, benchmarks/own_view_teacher.py adds "
              "them)")  # fmt: skip
        return None
    distinct = dict.fromkeys(tuple(own[i]) for i in index)
    return [row for answers in distinct for row in teacher_verdicts[answers]]


def main(argv=None) -> dict[str, Any]:
    os.environ.update(OFFLINE_ENV)
    from trl_rubric.evaluation.degeneration import degeneration_rates
    from trl_rubric.real.worlds import make_named_world

    args = parse_args(argv)
    loaded = [load_run(spec) for spec in args.runs]
    results = [r for r, _, _ in loaded]
    runs = [run for _, _, run in loaded]
    check_same_scoring(args.runs, results)
    labels = args.labels or [name for _, name, _ in loaded]
    if not args.labels and len(set(labels)) != len(labels):
        labels = list(args.runs)  # the same setting name in several folders
    if len(labels) != len(runs) or len(set(labels)) != len(labels):
        raise ValueError(f"--labels: need {len(runs)} distinct labels, got {labels}")
    groups = parse_groups(args.groups, labels)
    deltas = _load("criterion_deltas")
    s = results[0]["settings"]
    world = make_named_world(s["world"], seed=s["seed"])
    sets = _load("rgsd_sweep").scored_sets(
        world, s["seed"], s["eval_prompts"], s["heldout_prompts"], s["eval_samples"]
    )
    rubrics = {split: list(sets[split][0]["rubric"]) for split in SPLITS}
    judge = world.judge()
    gap = results[0]["gap_train"]

    def graded(split: str, answers: list) -> list[dict[str, bool | None]]:
        ds = sets[split][0]
        grades = judge.grade_many_sync(list(ds["prompt"]), answers, rubrics[split])
        rows = deltas.verdicts_by_title(grades, rubrics[split])
        return [{t: row.get(t) for t in args.criteria} for row in rows]

    def rate(rows: list[dict[str, bool | None]], title: str) -> float | None:
        known = [r[title] for r in rows if r[title] is not None]
        return sum(known) / len(known) if known else None

    out: dict[str, Any] = {"labels": labels, "runs": args.runs, "gap_train": gap, "decodings": {}}
    for decoding in shared_decodings(runs):
        views = [view(r, run, decoding) for r, run in zip(results, runs, strict=True)]
        base = views[0]
        base_verdicts = {split: graded(split, base[split]["base"]) for split in SPLITS}
        verdicts = [{split: graded(split, v[split]["responses"]) for split in SPLITS} for v in views]
        base_degenerate = {sp: degeneration_rates(base[sp]["base"], rubrics[sp])["degenerate"] for sp in SPLITS}
        base_rates = {c: rate(base_verdicts["train"], c) for c in args.criteria}
        print(f"\n## {decoding}: train gap {gap * 100:+.1f}pp; base model degenerate "
              f"{base_degenerate['train'] * 100:.1f}% / {base_degenerate['heldout'] * 100:.1f}% (train / held-out); "
              + ", ".join(f"{c} {_rate(v)}" for c, v in base_rates.items()))  # fmt: skip
        # The teacher's answers are sampled plainly; each run's is its own view's, graded once per distinct set.
        own = [teacher_answers(r, run) if decoding == "plain" else None for r, run in zip(results, runs, strict=True)]
        teacher_verdicts = {tuple(a): graded("train", a) for a in own if a}
        world_answers = results[0].get("responses", {}).get("teacher_train") if decoding == "plain" else None
        teacher = {}
        if world_answers:
            world_verdicts = teacher_verdicts.get(tuple(world_answers)) or graded("train", world_answers)
            teacher = {c: rate(world_verdicts, c) for c in args.criteria}
            print("teacher (rubric shown, the world's view), train: "
                  + ", ".join(f"{c} {_rate(v)}" for c, v in teacher.items()))  # fmt: skip
        print("| run | train score | gap closed | held-out Δ, pp [95%] | degenerate | "
              + " | ".join(args.criteria) + " | tokens |")  # fmt: skip
        rows = []
        for label, v, ver in zip(labels, views, verdicts, strict=True):
            t, h = v["train"], v["heldout"]
            row = {
                "label": label,
                "train": {k: t[k] for k in ("before", "after", "delta", "delta_ci")},
                "heldout": {k: h[k] for k in ("before", "after", "delta", "delta_ci")},
                "gap_closed": t["delta"] / gap,
                "degenerate": {sp: degeneration_rates(v[sp]["responses"], rubrics[sp])["degenerate"] for sp in SPLITS},
                "criteria": {c: rate(ver["train"], c) for c in args.criteria},
                "criteria_heldout": {c: rate(ver["heldout"], c) for c in args.criteria},
                "length": t.get("length"),
            }
            rows.append(row)
            print(f"| {label} | {t['before']:.3f} → {t['after']:.3f} | {row['gap_closed'] * 100:.0f}% | "
                  f"{_fmt(h)} | "
                  f"{row['degenerate']['train'] * 100:.1f}% / {row['degenerate']['heldout'] * 100:.1f}% | "
                  + " | ".join(f"{row['criteria'][c]:.2f}" for c in args.criteria)
                  + f" | {row['length'] or float('nan'):.0f} |")  # fmt: skip
        base_heldout = {c: rate(base_verdicts["heldout"], c) for c in args.criteria}
        print("held-out rates: base " + ", ".join(f"{c} {_rate(v)}" for c, v in base_heldout.items()) + "; "
              + "; ".join(f"{r['label']} " + ", ".join(f"{c} {_rate(v)}" for c, v in r["criteria_heldout"].items())
                          for r in rows))  # fmt: skip
        report: dict[str, Any] = {"runs": rows, "teacher": teacher, "base_heldout": base_heldout, "groups": {},
                                  "group_pairs": {}, "pairs": {}}  # fmt: skip
        for name, index in groups.items():
            pooled, pooled_heldout = {}, {}
            for c in args.criteria:
                for split, into in (("train", pooled), ("heldout", pooled_heldout)):
                    before = [row[c] for row in base_verdicts[split]] * len(index)  # each run against the same base
                    after = [row[c] for i in index for row in verdicts[i][split]]
                    into[c] = paired_difference(after, before)
            g = {"gap_closed": spread([rows[i]["gap_closed"] for i in index]), "criteria_change": pooled,
                 "criteria_change_heldout": pooled_heldout}  # fmt: skip
            mine = group_teacher(index, own, teacher_verdicts, decoding, labels, name)
            if mine is not None:
                g["teacher"] = {c: rate(mine, c) for c in args.criteria}
                g["teacher_lead_learned"] = {c: lead_learned(pooled[c]["delta"], base_rates[c], g["teacher"][c])
                                             for c in args.criteria}  # fmt: skip
            report["groups"][name] = g
            gc = g["gap_closed"]
            print(f"{name} ({len(index)} run{'s' if len(index) > 1 else ''}): gap closed mean {gc['mean'] * 100:.0f}%, range "
                  f"{gc['min'] * 100:.0f}–{gc['max'] * 100:.0f}%"
                  + (f", sd {gc['sd'] * 100:.0f}" if gc["sd"] is not None else "")
                  + "; base → student, pooled: " + ", ".join(f"{c} {_fmt(d)}" for c, d in pooled.items())
                  + "; held-out: " + ", ".join(f"{c} {_fmt(d)}" for c, d in pooled_heldout.items()))  # fmt: skip
            if mine is not None:
                if g["teacher"] != teacher:
                    print(f"{name}: its teacher (rubric shown, its own view), train: "
                          + ", ".join(f"{c} {_rate(v)}" for c, v in g["teacher"].items()))  # fmt: skip
                print(f"{name}: share of the teacher's lead learned: "
                      + ", ".join(f"{c} {_share(v)}" for c, v in g["teacher_lead_learned"].items()))  # fmt: skip
        for (na, ia), (nb, ib) in itertools.combinations(groups.items(), 2):
            if len(ia) != len(ib):
                continue
            d = {}
            for split in SPLITS:
                a = [x for i in ia for x in views[i][split]["scores"]]
                b = [x for i in ib for x in views[i][split]["scores"]]
                d[split] = paired_difference(a, b)
            for c in args.criteria:
                a = [row[c] for i in ia for row in verdicts[i]["train"]]
                b = [row[c] for i in ib for row in verdicts[i]["train"]]
                d[c] = paired_difference(a, b)
            report["group_pairs"][f"{na} - {nb}"] = d
            print(f"{na} − {nb}, i-th run with i-th, pooled: " + ", ".join(f"{k} {_fmt(v)}" for k, v in d.items()))
        for (i, la), (j, lb) in itertools.combinations(enumerate(labels), 2):
            d = {split: paired_difference(views[i][split]["scores"], views[j][split]["scores"]) for split in SPLITS}
            for c in args.criteria:
                d[c] = paired_difference([r[c] for r in verdicts[i]["train"]], [r[c] for r in verdicts[j]["train"]])
            report["pairs"][f"{la} - {lb}"] = d
            print(f"  {la} − {lb}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in d.items()))
        out["decodings"][decoding] = report
    if args.output:
        Path(args.output).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
