"""How an answer meets a criterion: in its own words, or by speaking in the rubric's voice.

A teacher shown the rubric can meet a content criterion without knowing the answer: it reads the term off the rubric
and writes it as a list item in the criterion's own wording ("4. Mentioning resting your voice."), a line the student,
who never sees the rubric, cannot learn to write with the right term. The degeneration checks do not catch these
lines when the criterion is short (`copies_rubric` needs five words, or a criterion pasted whole). This script splits
each answer set's met rate of the named criteria into the two kinds, on the train answers saved by sweeps
(`benchmarks/rgsd_sweep.py`) scored on the same sets: the base model's, the world-view teacher's, each run's own-view
teacher's where saved, and each student's.

A criterion counts as met where one of its `rule:regex:` / `rule:contains:` tags matches (the spans
`span_criteria` uses, `trl_rubric.trainers.rgsd_spans.criterion_spans`); it is met **in the rubric's voice** when the
line holding its first match opens (after a list marker) with a criterion verb in the third person or as a gerund
("Mentions", "Suggesting", "Advises", ...; [`VOICE`]) or repeats at least [`ECHO_SHARE`] of another criterion's words
as one run of 3 or more (`trl_rubric.evaluation.degeneration.copied_rubric_fraction`; the named criterion's own text
is left out of that check, since "Mentions the Moon's gravity." is mostly its term, and naming the term is not an
echo).

    .venv/bin/python benchmarks/criterion_voice.py runs/tomit_health_ts0 runs/tspan_health_ts0 \\
        --criteria "key term" [--templates requirements] [--output voice.json]

`--templates` adds the teacher of each named sweep template (`rgsd_sweep.CANDIDATE_TEMPLATES`), its answers sampled on the
same prompts with the same seed as a sweep with `template=NAME` samples them (`rgsd_sweep.own_view_gap`).

A run is `DIR` (a sweep folder with one setting) or `DIR:SETTING`, as in `benchmarks/compare_runs.py`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trl_rubric.testing import OFFLINE_ENV

#: A line in the criteria's voice: after an optional list marker, a criterion verb ending in -s or -ing.
VOICE = re.compile(
    r"^\W*(?:\d+[.)]\s*)?(?:mention|suggest|advise|recommend|include|highlight|emphasize|name|give|explain|list|end|"
    r"start|stay)(?:s|ing)\b",
    re.IGNORECASE,
)
#: The share of one criterion's words a line repeats as one run (of 3+ words) to count as an echo of it.
ECHO_SHARE = 0.6


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def in_voice(line: str, rubric: Any, names: Sequence[str]) -> bool:
    """Whether `line` speaks in the rubric's voice: a criterion verb opens it, or it echoes the words of a criterion
    other than those named in `names` (whose text is mostly the term the line is read for)."""
    from trl_rubric.evaluation.degeneration import copied_rubric_fraction
    from trl_rubric.rubric import Rubric

    others = [c.text for c in Rubric.from_any(rubric) if not c.is_named(names)]
    return bool(VOICE.search(line)) or copied_rubric_fraction(line, others, min_words=3) >= ECHO_SHARE


def meeting_line(answer: str, rubric: Any, names: Sequence[str]) -> str | None:
    """The line of `answer` holding the first match of the named criteria's span rules, or `None` if none matches."""
    from trl_rubric.rubric import Rubric
    from trl_rubric.trainers.rgsd_spans import criterion_spans

    spans = criterion_spans(answer, Rubric.from_any(rubric), names)
    if not spans:
        return None
    start = min(s for s, _ in spans)
    end = answer.find("\n", start)
    return answer[answer.rfind("\n", 0, start) + 1 : len(answer) if end < 0 else end]


def split_met(answers: Sequence[str], rubrics: Sequence[Any], names: Sequence[str]) -> dict[str, Any]:
    """Over `answers` (the i-th graded against `rubrics[i]`): how many meet the named criteria, how many of those in
    the rubric's voice, and how many answers have any line in the criteria's voice (met or not)."""
    met = in_voice_met = voiced = 0
    for answer, rubric in zip(answers, rubrics, strict=True):
        line = meeting_line(answer, rubric, names)
        met += line is not None
        in_voice_met += line is not None and in_voice(line, rubric, names)
        voiced += any(VOICE.search(x) for x in answer.split("\n"))
    n = len(answers)
    return {"n": n, "met": met / n, "met_in_voice": in_voice_met / n, "met_own_words": (met - in_voice_met) / n,
            "answers_in_voice": voiced / n}  # fmt: skip


def template_view(settings: dict[str, Any], template: str) -> dict[str, Any]:
    """The teacher view a sweep with these `settings` trains a `template=` setting with."""
    from trl_rubric import RGSDConfig

    sweep = _load("rgsd_sweep")
    args = argparse.Namespace(**{**settings, "output_dir": "."})
    view = sweep.own_teacher_view(RGSDConfig(**sweep.setting_kwargs(args, template, {"template": template})))
    if view is None:
        raise ValueError(f"template {template!r} is the world's own view: its answers are the sweep's teacher_train")
    return view


def sample_template(results: dict[str, Any], sets, world, template: str) -> list[str]:
    """The train answers of `template`'s teacher (SmolLM2, one torch thread), as a sweep would sample them."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_rubric.real import smollm2_path

    sweep = _load("rgsd_sweep")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    path = smollm2_path()
    model, tokenizer = AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    view = template_view(results["settings"], template)
    gen = sweep.generation_settings(argparse.Namespace(**results["settings"]))
    own = sweep.own_view_gap(model, tokenizer, world, sets, view, gen)
    return [ex["response"] for ex in own.with_rubric.examples]


def main(argv=None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="DIR or DIR:SETTING, rgsd_sweep.py outputs scored on the same sets.")
    p.add_argument("--criteria", nargs="+", default=["key term"], help="Criterion titles (or tags) to read.")
    p.add_argument("--templates", nargs="*", default=[], help="Sweep template names whose teachers to sample too.")
    p.add_argument("--output", default=None, help="Write the table here as JSON.")
    args = p.parse_args(argv)
    os.environ.update(OFFLINE_ENV)
    from trl_rubric.real.worlds import make_named_world

    compare = _load("compare_runs")
    loaded = [compare.load_run(spec) for spec in args.runs]
    compare.check_same_scoring(args.runs, [r for r, _, _ in loaded])
    results = loaded[0][0]
    s = results["settings"]
    world = make_named_world(s["world"], seed=s["seed"])
    sets = _load("rgsd_sweep").scored_sets(
        world, s["seed"], s["eval_prompts"], s["heldout_prompts"], s["eval_samples"]
    )
    rubrics = list(sets["train"][0]["rubric"])
    sources = {"base model": results["responses"]["base_train"]}
    sources["teacher (world view)"] = results["responses"].get("teacher_train")
    for template in args.templates:
        sources[f"teacher, template {template}"] = sample_template(results, sets, world, template)
    for spec, (_, name, run) in zip(args.runs, loaded, strict=True):
        own = run.get("own_view_teacher_train")
        if own and not any(own == answers for answers in sources.values()):  # runs of one view share its answers
            sources[f"teacher of {name} (own view)"] = own
        sources[f"student {name} ({spec})"] = run["train"]["responses"]
    table = {}
    print("| answers | met | met in the rubric's voice | met in own words | answers with a line in its voice |")
    for label, answers in sources.items():
        if not answers:
            continue
        row = table[label] = split_met(answers, rubrics, args.criteria)
        print(f"| {label} | {row['met']:.2f} | {row['met_in_voice']:.2f} | {row['met_own_words']:.2f} | "
              f"{row['answers_in_voice']:.2f} |")  # fmt: skip
    out = {"runs": args.runs, "criteria": args.criteria, "n": len(rubrics), "table": table}
    if args.output:
        Path(args.output).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
