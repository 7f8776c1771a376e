"""Finished RGSD sweeps read again under the clean score: what a user would pay (`docs/benchmarks.md`).

A rule judge pays for every numbered item of a list that repeats itself and for criterion text pasted into an answer.
The clean score (`EvalMetrics.clean_score`) pays a flagged answer nothing: its score becomes `min(score, 0)`. This
script takes `benchmarks/rgsd_sweep.py` result files, rebuilds each one's scored train and held-out sets (same world,
seed and sizes), grades the saved base and teacher answers with the world's rule judge, runs every saved answer through
the degeneration checks, and reports per trained setting:

- the raw share of the train gap closed (as the sweep reported it);
- the clean score on train prompts, and the paired clean difference from the base model on train and held-out;
- the paired clean difference from the frozen teacher's own answers on the same train prompts: the sweep's reference
  teacher (the world's earlier view), and, with `--teacher`, the answers `benchmarks/teacher_clean_ceiling.py` saved
  for another view (the world's template 2), matched by world and seed;
- the share of degenerate answers;
- with `--versus RESULTS[:SETTING]`, every other run's paired clean difference from that one run, on train and
  held-out (runs scored on the same sets only): one method against another answer by answer, e.g. RGSD against GRPO
  + judge, where the raw rule score pays GRPO for what the clean score does not;
- with `--regrade "TITLE=RULE"`, every saved answer (base, teacher and runs) graded again with the rule of the
  criteria titled TITLE replaced by RULE (`rule:regex:...`, as the world's rubrics write them): a check read again
  after reading answers that pass it without meeting it (a "warning sign" met by "Call emergency services
  immediately." alone). The report then says which criteria were regraded; the sweep's own scores are not used.

    .venv/bin/python benchmarks/clean_rescore.py /work/runs/w1_notes_first/results.json \\
        --teacher /work/runs/teacher_clean/health.json --output clean.json
    .venv/bin/python benchmarks/clean_rescore.py /work/runs/route/results.json /work/runs/grpo/results.json \\
        --versus /work/runs/grpo/results.json
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import numpy as np


def clean(scores, flagged) -> np.ndarray:
    """Per-answer clean scores: a flagged answer's score becomes `min(score, 0)` (clip the mean, not the answers)."""
    scores, flagged = np.asarray(scores, dtype=float), np.asarray(flagged, dtype=bool)
    return np.where(flagged, np.minimum(scores, 0.0), scores)


def paired(a: np.ndarray, b: np.ndarray, seed: int = 0, resamples: int = 4000) -> list[float]:
    """`[mean(a - b), low, high]`: the paired difference with a 95% percentile bootstrap interval over answers."""
    if len(a) != len(b):
        raise ValueError(f"paired difference of {len(a)} and {len(b)} answers")
    d = a - b
    idx = np.random.default_rng(seed).integers(0, len(d), size=(resamples, len(d)))
    low, high = np.quantile(d[idx].mean(axis=1), [0.025, 0.975])
    return [float(d.mean()), float(low), float(high)]


def parse_regrade(texts: list[str]) -> dict[str, str]:
    """`["TITLE=rule:...", ...]` -> `{title: rule}`; refuses an entry without `=` or whose rule is not a `rule:` check."""
    out = {}
    for text in texts:
        title, eq, rule = text.partition("=")
        if not eq or not title.strip() or not rule.startswith("rule:"):
            raise ValueError(f'--regrade {text!r}: expected TITLE=rule:KIND:ARG (e.g. "short=rule:max_words:40")')
        out[title.strip()] = rule
    return out


def regraded(dataset, rules: dict[str, str]):
    """`dataset` with the `rule:` tag of every criterion titled as a key of `rules` replaced by that rule; refuses a
    title no row's rubric has."""
    seen = set()

    def swap(row):
        rubric = []
        for c in row["rubric"]:
            if c.get("title") in rules:
                seen.add(c["title"])
                c = {**c, "tags": [rules[c["title"]] if t.startswith("rule:") else t for t in c["tags"]]}
            rubric.append(c)
        return {"rubric": rubric}

    out = dataset.map(swap, load_from_cache_file=False)
    if rules and not seen:
        raise ValueError(f"--regrade: no criterion titled {sorted(rules)} in these rubrics")
    return out


def _eval_sets(settings: dict[str, Any]):
    """The world and the sweep's scored train / held-out sets (rgsd_sweep.py: prompts repeated eval_samples times)."""
    from datasets import concatenate_datasets

    from trl_rubric.evaluation import select_examples
    from trl_rubric.real.worlds import make_named_world

    world_name, seed = settings.get("world", "health"), settings.get("seed", 0)
    samples = settings.get("eval_samples", 2)
    world = make_named_world(world_name, seed=seed)

    def repeated(ds, n):
        return concatenate_datasets([select_examples(ds, n, seed)] * samples)

    return world, {
        "train": repeated(world.train_dataset(), settings["eval_prompts"]),
        "heldout": repeated(world.heldout_dataset(), settings["heldout_prompts"]),
    }


def _grade(world, dataset, texts: list[str]) -> np.ndarray:
    from trl_rubric.evaluation import evaluate

    res = evaluate(
        None, dataset, world.judge(), generate_fn=lambda prompts: list(texts), progress=False, n_bootstrap=0
    )
    return np.array([ex["score"] for ex in res.examples], dtype=float)


def _flags(dataset, texts: list[str]) -> np.ndarray:
    from trl_rubric.evaluation.degeneration import degeneration_flags

    return np.array([degeneration_flags(t, r).degenerate for t, r in zip(texts, dataset["rubric"], strict=True)])


def rescore(
    results: dict[str, Any], teacher_rows: list[dict[str, Any]] | None = None, rules: dict[str, str] | None = None
) -> dict[str, Any]:
    """One sweep's `results.json` under the clean score (see the module docstring); `teacher_rows` are another teacher
    view's graded, checked answers on the same train set (`teacher_clean_ceiling.py`'s `rows`); `rules`
    ([`parse_regrade`]) grades every answer again with those criteria's checks replaced."""
    world, sets = _eval_sets(results["settings"])
    if rules:
        if teacher_rows is not None:
            raise ValueError("--regrade with --teacher: the other view's saved scores cannot be graded again")
        sets = {split: regraded(ds, rules) for split, ds in sets.items()}
    ref = {}
    for name, split in (("base_train", "train"), ("teacher_train", "train"), ("base_heldout", "heldout")):
        texts = results["responses"][name]
        ref[name] = clean(_grade(world, sets[split], texts), _flags(sets[split], texts))
    teacher_view = None
    if teacher_rows is not None:
        teacher_view = clean([r["score"] for r in teacher_rows], [r["degenerate"] for r in teacher_rows])
        if len(teacher_view) != len(ref["teacher_train"]):
            raise ValueError(
                f"--teacher has {len(teacher_view)} answers; the sweep scored {len(ref['teacher_train'])}"
            )
    out = {
        "settings": results["settings"],
        "base_clean": {"train": float(ref["base_train"].mean()), "heldout": float(ref["base_heldout"].mean())},
        "teacher_clean": float(ref["teacher_train"].mean()),
        "teacher_view_clean": None if teacher_view is None else float(teacher_view.mean()),
        "regraded": dict(rules or {}),
        "runs": {},
    }
    for name, run in results["runs"].items():
        row: dict[str, Any] = {"gap_closed_raw": run.get("gap_closed_train")}
        for split, base in (("train", "base_train"), ("heldout", "base_heldout")):
            texts = run[split]["responses"]
            flagged = _flags(sets[split], texts)
            scores = clean(_grade(world, sets[split], texts) if rules else run[split]["scores"], flagged)
            row[split] = {"clean": float(scores.mean()), "minus_base": paired(scores, ref[base]),
                          "degenerate": float(flagged.mean()), "clean_scores": scores.tolist()}  # fmt: skip
            if split == "train":
                row["minus_teacher"] = paired(scores, ref["teacher_train"])
                row["minus_teacher_view"] = None if teacher_view is None else paired(scores, teacher_view)
        out["runs"][name] = row
    return out


#: Settings that decide which answers a sweep scored (as `compare_runs.py` checks): runs paired answer by answer
#: must agree on all of them.
SCORING_SETTINGS = ("world", "seed", "eval_prompts", "heldout_prompts", "eval_samples", "max_completion_length",
                    "temperature")  # fmt: skip


def versus(rescored: list[dict[str, Any]], ref: dict[str, Any], setting: str | None = None) -> dict[str, Any]:
    """Every run of `rescored` (but the reference itself) against one run of `ref` (a [`rescore`] output; `setting`
    names the run where it holds several): `{setting: {split: [mean, low, high]}}`, the paired clean difference.
    Refuses runs scored on other sets than the reference."""
    runs = ref["runs"]
    if setting is None:
        if len(runs) != 1:
            raise ValueError(f"--versus: the file holds {len(runs)} runs {sorted(runs)}; name one as PATH:SETTING")
        setting = next(iter(runs))
    if setting not in runs:
        raise ValueError(f"--versus: no run {setting!r}; the file has {sorted(runs)}")
    against = runs[setting]
    out = {}
    for r in rescored:
        for key in SCORING_SETTINGS:
            if r["settings"].get(key) != ref["settings"].get(key):
                raise ValueError(
                    f"--versus: {key}={r['settings'].get(key)!r} in {sorted(r['runs'])}, but the reference has "
                    f"{key}={ref['settings'].get(key)!r}; only runs scored on the same sets pair up"
                )
        for name, row in r["runs"].items():
            if row is against:
                continue
            out[name] = {
                split: paired(np.array(row[split]["clean_scores"]), np.array(against[split]["clean_scores"]))
                for split in ("train", "heldout")
            }
    return {"setting": setting, "runs": out}


def _pp(x: list[float] | None) -> str:
    return "-" if x is None else f"{100 * x[0]:+.1f} [{100 * x[1]:+.1f}, {100 * x[2]:+.1f}]"


def markdown(rescored: list[dict[str, Any]]) -> str:
    lines = [
        "| world, seed | setting | raw gap closed | clean train (base) | clean − base, train | clean − base, held-out "
        "| − sweep's teacher, train | − other teacher view, train | degenerate train / held-out |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rescored:
        s = r["settings"]
        for name, row in r["runs"].items():
            gap = "-" if row["gap_closed_raw"] is None else f"{100 * row['gap_closed_raw']:.0f}%"
            tr, ho = row["train"], row["heldout"]
            lines.append(
                f"| {s.get('world', 'health')} {s.get('seed', 0)} | {name} | {gap} | {tr['clean']:.3f} "
                f"({r['base_clean']['train']:.3f}) | {_pp(tr['minus_base'])} | {_pp(ho['minus_base'])} "
                f"| {_pp(row['minus_teacher'])} | {_pp(row['minus_teacher_view'])} "
                f"| {100 * tr['degenerate']:.1f}% / {100 * ho['degenerate']:.1f}% |"
            )
    return "\n".join(lines)


def versus_markdown(pairs: dict[str, Any]) -> str:
    lines = [
        f"| setting | clean − {pairs['setting']}, train | clean − {pairs['setting']}, held-out |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {_pp(d['train'])} | {_pp(d['heldout'])} |" for name, d in pairs["runs"].items()]
    return "\n".join(lines)


def main(argv=None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", help="rgsd_sweep.py results.json files")
    p.add_argument("--teacher", nargs="*", default=[],
                   help="teacher_clean_ceiling.py outputs (another teacher view's answers), matched by world and seed")  # fmt: skip
    p.add_argument("--versus", default=None,
                   help="PATH[:SETTING]: one of the results files, whose run every other run is paired against")  # fmt: skip
    p.add_argument("--regrade", nargs="*", default=[],
                   help="TITLE=RULE: grade every saved answer again with the criteria titled TITLE checked by RULE")  # fmt: skip
    p.add_argument("--output", default=None, help="write the rescored numbers here (JSON)")
    args = p.parse_args(argv)
    rules = parse_regrade(args.regrade)
    teachers = {}
    for path in args.teacher:
        saved = json.load(open(path))
        teachers[(saved["settings"]["world"], saved["settings"]["seed"])] = saved["rows"]
    ref_path, _, ref_setting = (args.versus or "").partition(":")
    if ref_path and os.path.abspath(ref_path) not in {os.path.abspath(p) for p in args.results}:
        raise ValueError(f"--versus {args.versus!r}: name one of the results files given")
    rescored, ref = [], None
    for path in args.results:
        results = json.load(open(path))
        s = results["settings"]
        rescored.append(rescore(results, teachers.get((s.get("world", "health"), s.get("seed", 0))), rules))
        if ref_path and os.path.abspath(path) == os.path.abspath(ref_path):
            ref = rescored[-1]
    if rules:
        print("regraded: " + "; ".join(f"{t} = {r}" for t, r in rules.items()))
    print(markdown(rescored))
    if ref is not None:
        pairs = versus(rescored, ref, ref_setting or None)
        print("\n" + versus_markdown(pairs))
        ref["versus"] = pairs  # saved with the reference's entry
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            json.dump(rescored, f, indent=1)
    return rescored


if __name__ == "__main__":
    main()
