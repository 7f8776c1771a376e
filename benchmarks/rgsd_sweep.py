"""Tune RGSD on the real-model world: train one student per setting and score it against the base, paired.

Each setting is `name:key=value,key=value`, where a key is any `RGSDConfig` field (`learning_rate=2e-3`,
`token_clip=none`, `distillation_beta=0`) or one of this script's own:

- `finetune=lora|full` (default `lora`: r 16, alpha 32, every projection);
- `lora_r=<int>` (alpha = 2 r);
- `template=direct|default|<name>`: the world's teacher template (`REAL_TEACHER_PROMPT_TEMPLATE`, default here),
  `RGSDConfig`'s own, or one of [`CANDIDATE_TEMPLATES`] (teacher templates compared with `gap --compare_templates`;
  `requirements` is the world's template before 2026-12-05, for rerunning earlier rows of docs/benchmarks.md);
- `trainer=sft`: instead of RGSD, TRL's `SFTTrainer` on the self-written references (`--self_references` or
  `--reuse_references`): rejection-sampling fine-tuning on the best clean answer per prompt, the baseline a reference
  teacher is measured against (same steps, prompts per step, learning rate, LoRA and seed; RGSD fields are ignored);
- `max_list_items=<int>`: train only on the references whose list (if any) has at most this many items (lines
  opening with `1.`, `-`, `*`, ...): does a student taught short lists loop less?
- `teacher_omit=<title>|<title>`: train on rubrics without these criteria (a criterion's title, text, category or
  tag, as `Rubric.select` names them), so pure RGSD's teacher never sees them (`teacher_omit=short`: a teacher not
  asked for a word limit); the students and the teacher's own answers in that view are scored against the whole
  rubric (the teacher's answers are kept as `own_view_teacher_train` for `benchmarks/compare_runs.py`);
- `train_prompts=scored`: train only on the train prompts the sweep scores (`--eval_prompts` of them, 48 by default,
  instead of the whole train split): each is then rolled out about twice as often in the same steps, so the scored
  train answers measure what more exposure per prompt teaches (the held-out prompts stay unseen). Not with the
  settings that train on references (their rows are the references);
- `init_from=<folder>`: train from a saved student instead of SmolLM2 itself (a LoRA adapter folder as
  `--save_students` writes, merged into its base at `<output_dir>/<setting>/_start_model`, which the run's own saved
  adapter then names as its base; or a full model folder): a second phase after another sweep's run
  (reward first, then RGSD). The frozen teacher is the policy with the new adapter disabled, so it is that student
  shown the rubric; the base scored against, and the gap, stay SmolLM2's, the yardstick of every other row;
- `teacher=base` (with `init_from=`): the frozen teacher is SmolLM2 itself shown the rubric, a separate model
  (`teacher_model_name_or_path`), instead of the saved student: a second phase that starts from the first phase's
  student but distills the teacher the one-phase recipe has;
- `judge=rule`: the world's rule judge as a `RubricReward` among `reward_funcs`, for the settings that need one
  (`teacher_focus=unlearned`, where it only observes; `distillation_weight<1`, hybrid RGSD). Default: no judge.

`seed=<int>` (an `RGSDConfig` field) sets one setting's training seed (LoRA init, rollout sampling, data order) while
the prompts, sets and sampling seeds of the scoring follow `--seed`: `"a_s0:...,seed=0" "a_s1:...,seed=1"` are two
training runs of one setting scored on the same prompts with the same sampling seeds, paired. One hybrid run can
differ from the next by tens of points of the gap (docs/benchmarks.md, "Flagged rollouts paid −1 in the hybrid"), so
compare settings over several.

Every student trains on SmolLM2-135M-Instruct for the same steps, prompts per step and seed (unless the setting names
its own `seed`), and is then scored on the same train and held-out prompts, `--eval_samples` answers each, with the
same sampling seeds as the base, so each difference is paired (bootstrap over prompts). Reported per setting: train
and held-out score, the paired difference with its 95% interval, the fraction of the train conditioning gap closed,
answer length, each criterion's pass rate, and the training log (loss, clipped fraction, length per step).
`results.json` is rewritten after every setting.

`--decode name:key=value,...` also scores the base model and every student with extra `model.generate` arguments
(`--decode ngram4:no_repeat_ngram_size=4`; `degeneration_guard=3` decodes with
`trl_rubric.evaluation.DegenerationGuard`), paired to the base decoded the same way: does a decoding-time constraint
remove the students' repeated lines, and at what cost in score? Reported under `decoded` (base) and each run's
`decoded`; the gap closed is against the plain conditioning gap, the yardstick of every other row.

    .venv/bin/python benchmarks/rgsd_sweep.py --smoke --output_dir /tmp/sweep_smoke
    .venv/bin/python benchmarks/rgsd_sweep.py --steps 24 --output_dir runs/sweep \\
        --settings "default:" "noclip_lr2e-3:token_clip=none,learning_rate=2e-3"
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import time
from collections import defaultdict
from typing import Any

from trl_rubric.scripts._common import START_MODEL_DIR
from trl_rubric.teacher_context import EXAMPLE_REFERENCE_TEACHER_PROMPT_TEMPLATE
from trl_rubric.testing import OFFLINE_ENV

#: A list item: a line opening with a number and `.` or `)`, or a bullet.
LIST_ITEM = re.compile(r"^\s*(\d+[.)]|[-*\u2022])\s", re.M)

OWN_KEYS = (
    "finetune", "lora_r", "template", "judge", "trainer", "max_list_items", "teacher_omit", "train_prompts", "init_from",
    "teacher",
)  # fmt: skip

#: Teacher templates for `template=<name>`: three worded so the teacher does not talk about what it was shown (no
#: "requirements"; `notes_first` is now the world's own), and the world's template before them. `docs/benchmarks.md`
#: compares them with `trl-rubric gap --compare_templates`.
CANDIDATE_TEMPLATES = {
    "notes_after": (
        "{prompt}\n\nWhat a good answer does:\n{rubric}\n\n"
        "Now answer the question above directly, as a helpful assistant would."
    ),
    "notes_first": "Keep these points in mind, but never mention or repeat them:\n{rubric}\n\n{prompt}",
    "private": "{prompt}\n\n(Private notes on what a good answer does; the reader never sees them:\n{rubric})",
    "requirements": (
        "{prompt}\n\nWrite your answer so that it meets every requirement below (do not mention the requirements):\n"
        "{rubric}"
    ),
    # For teacher_context=reference: a worked example and the question again, with no instruction about the example
    # (an instruction not to mention it is itself something a small model talks about).
    "ref_example": EXAMPLE_REFERENCE_TEACHER_PROMPT_TEMPLATE,
}


def parse_setting(text: str) -> tuple[str, dict[str, str]]:
    """`name:key=value,...` -> (name, {key: value}); `name:` alone is the defaults."""
    name, _, body = text.partition(":")
    if not name:
        raise ValueError(f"setting {text!r}: expected name:key=value,...")
    pairs = {}
    for item in filter(None, body.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"setting {text!r}: {item!r} is not key=value")
        pairs[key.strip()] = value.strip()
    return name, pairs


def parse_decode(text: str) -> tuple[str, dict[str, Any]]:
    """`name:key=value,...` -> (name, generate kwargs), numbers typed (`4` -> int, `1.2` -> float)."""
    from trl_rubric.evaluation.generation import check_generation_kwargs

    name, pairs = parse_setting(text)
    if not pairs:
        raise ValueError(f"--decode {text!r}: expected name:key=value,... with at least one argument")
    typed: dict[str, Any] = {}
    for key, value in pairs.items():
        try:
            typed[key] = int(value) if value.lstrip("-").isdigit() else float(value)
        except ValueError:
            typed[key] = value.lower() == "true" if value.lower() in ("true", "false") else value
    guard = typed.pop("degeneration_guard", None)
    if guard is not None and (not isinstance(guard, int) or guard < 0):
        raise ValueError(f"--decode {text!r}: degeneration_guard is an n-gram size (0 or more)")
    options = {key: typed.pop(key) for key in GUARD_OPTIONS if key in typed}
    if options and guard is None:
        raise ValueError(f"--decode {text!r}: {sorted(options)} are guard options; add degeneration_guard=N")
    if options:
        guard = {"no_repeat_ngram_size": guard, **options}
    return name, {**check_generation_kwargs(typed), **({} if guard is None else {"degeneration_guard": guard})}


#: `--decode` keys that configure the degeneration guard rather than `model.generate`.
GUARD_OPTIONS = ("ban_empty_items", "ban_doubled_markers", "ban_repeated_lines", "ignore_case")


def decode_args(decoding: dict[str, Any]) -> dict[str, Any]:
    """`evaluate` keyword arguments for one `--decode` entry."""
    rest = dict(decoding)
    return {"degeneration_guard": rest.pop("degeneration_guard", None), "generation_kwargs": rest}


def config_overrides(pairs: dict[str, str]) -> dict[str, Any]:
    """Typed `RGSDConfig` overrides from strings, by each field's declared default type (`none` -> None)."""
    from trl_rubric import RGSDConfig

    fields = {f.name: f for f in dataclasses.fields(RGSDConfig)}
    out: dict[str, Any] = {}
    for key, value in pairs.items():
        if key in OWN_KEYS:
            continue
        if key not in fields:
            raise ValueError(f"{key!r} is not an RGSDConfig field")
        if value.lower() == "none":
            out[key] = None
            continue
        if key in ("reward_criteria", "span_criteria"):  # a list: names joined by "|" ("key term|numbered list")
            out[key] = [name.strip() for name in value.split("|")]
            continue
        default = fields[key].default
        if default not in (None, dataclasses.MISSING):
            kind = type(default)
        else:  # an optional field: whole numbers stay int (n-gram sizes), anything else is a float
            kind = int if value.lstrip("-").isdigit() else float
        out[key] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
    return out


def judge_reward(pairs: dict[str, str], world, config) -> list | None:
    """`reward_funcs` for a setting: the world's rule judge with `judge=rule`, else none (pure RGSD)."""
    from trl_rubric import RubricReward

    kind = pairs.get("judge", "none")
    if kind == "none":
        return None
    if kind != "rule":
        raise ValueError(f"judge={kind!r}: expected rule or none")
    return [RubricReward(world.judge(), rubric_column=config.rubric_column, num_generations=config.num_generations)]


def needs_references(pairs: dict[str, str]) -> bool:
    """Whether a setting trains on the self-written references: a reference teacher, SFT, or a filter of them."""
    reference_teacher = pairs.get("teacher_context", "rubric") in ("reference", "rubric+reference")
    return reference_teacher or pairs.get("trainer") == "sft" or "max_list_items" in pairs


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--settings", nargs="+", default=["default:"], help="name:key=value,... (see the module doc).")
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--prompts_per_step", type=int, default=8)
    p.add_argument("--max_completion_length", type=int, default=96)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--eval_prompts", type=int, default=48, help="Train prompts scored (the same for every setting).")
    p.add_argument("--heldout_prompts", type=int, default=30, help="Held-out prompts scored.")
    p.add_argument("--eval_samples", type=int, default=2, help="Answers per scored prompt.")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--world",
        default="health",
        choices=("health", "instructions"),
        help="Real-model rubric world (trl_rubric.real.worlds): health and science, or everyday instructions.",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--self_references",
        type=int,
        default=0,
        help="K > 0: before training, give every train prompt the best clean answer of K the model writes with the "
        "world's teacher view (trl_rubric.authoring.build_self_references, graded by the world's rule judge); settings "
        "with teacher_context=reference or rubric+reference, or trainer=sft, train on those rows.",
    )
    p.add_argument(
        "--reuse_references",
        default=None,
        help="A sweep's results.json made with --self_references on the same world and seed: train on its references "
        "instead of writing new ones.",
    )
    p.add_argument(
        "--decode",
        nargs="*",
        default=[],
        help="name:key=value,... extra model.generate arguments (no_repeat_ngram_size=4, repetition_penalty=1.2), "
        "or degeneration_guard=N (trl_rubric.evaluation.DegenerationGuard): the base and every student are also "
        "scored decoded this way, paired.",
    )
    p.add_argument(
        "--save_students",
        action="store_true",
        help="Save each trained student (its LoRA adapter, or the full model) to output_dir/<setting>/student, so "
        "it can be scored again later (trl-rubric eval --model_name_or_path ...) without retraining.",
    )
    p.add_argument("--smoke", action="store_true", help="Tiny sizes: checks that every setting runs.")
    p.add_argument("--output_dir", default="rgsd_sweep_results")
    args = p.parse_args(argv)
    if args.smoke:
        args.steps, args.prompts_per_step, args.max_completion_length = 1, 2, 12
        args.eval_prompts, args.heldout_prompts, args.eval_samples = 2, 2, 1
    try:
        args.decodings = dict(parse_decode(d) for d in args.decode)
        args.parsed = [parse_setting(s) for s in args.settings]
        for _, pairs in args.parsed:
            config_overrides(pairs)
            if needs_references(pairs) and not (args.self_references or args.reuse_references):
                raise ValueError(f"{pairs} trains on references: add --self_references K or --reuse_references")
            if "teacher_omit" in pairs and ("judge" in pairs or "trainer" in pairs):
                raise ValueError(f"{pairs}: teacher_omit drops criteria from the training rubrics, which a judge or "
                                 "SFT would read too; use it with pure RGSD")  # fmt: skip
            if pairs.get("train_prompts", "all") not in ("all", "scored"):
                raise ValueError(f"train_prompts={pairs['train_prompts']!r}: expected all or scored")
            if pairs.get("train_prompts") == "scored" and needs_references(pairs):
                raise ValueError(f"{pairs}: train_prompts=scored picks the world's prompts; this setting trains on "
                                 "the references")  # fmt: skip
            template = pairs.get("template", "direct")
            if template not in ("direct", "default", *CANDIDATE_TEMPLATES):
                raise ValueError(
                    f"template={template!r}: expected direct, default or one of {list(CANDIDATE_TEMPLATES)}"
                )
            if "teacher" in pairs and (pairs["teacher"] != "base" or "init_from" not in pairs):
                raise ValueError(f"teacher={pairs['teacher']!r}: only teacher=base, with init_from= (without "
                                 "init_from the teacher already is SmolLM2 shown the rubric)")  # fmt: skip
            if "init_from" in pairs and not os.path.isdir(pairs["init_from"]):  # before minutes of base scoring
                raise ValueError(
                    f"init_from={pairs['init_from']!r}: not a folder (a student saved with --save_students)"
                )
    except ValueError as e:
        p.error(str(e))
    return args


def training_prompts(train_all, pairs: dict[str, str], args):
    """The rows a setting trains on: the whole train split, or (`train_prompts=scored`) only the distinct train
    prompts the sweep scores, the same choice `scored_sets` makes."""
    from trl_rubric.evaluation import select_examples

    if pairs.get("train_prompts") == "scored":
        return select_examples(train_all, args.eval_prompts, args.seed)
    return train_all


def omit_criteria(dataset, names: list[str]):
    """`dataset` with the criteria named in `names` (title, text, category or tag) removed from every rubric."""
    from trl_rubric.rubric import Rubric

    def drop(row):
        rubric = Rubric.from_any(row["rubric"])
        kept = Rubric(tuple(c for c in rubric.criteria if not c.is_named(names)), guidelines=rubric.guidelines)
        if len(kept.criteria) == len(rubric.criteria):
            raise ValueError(f"teacher_omit={'|'.join(names)}: no such criterion in {[c.title for c in rubric]}")
        return {"rubric": [c.to_dict() for c in kept.criteria]}

    return dataset.map(drop)


def criterion_rates(examples) -> dict[str, float]:
    """Pass rate of each criterion title... keyed by the criterion's text without the prompt-specific part."""
    hits: dict[str, list[int]] = defaultdict(list)
    for ex in examples:
        for c in ex["criteria"]:
            key = "key term" if c["text"].startswith("Mentions ") else c["text"][:40]
            if c["verdict"] is not None:
                hits[key].append(int(c["verdict"]))
    return {k: sum(v) / len(v) for k, v in sorted(hits.items())}


def reference_answers(base_train, teacher_train, base_heldout) -> dict[str, dict[str, Any]]:
    """What the sweep records once of the answers every setting is compared with (the base model's on the scored train
    and held-out prompts, the teacher's on the train prompts; `evaluate` results): `responses`, `degeneration` (shares
    of answers that repeat a line, copy rubric text, talk about the requirements, as `trl_rubric.evaluation.degeneration`
    defines them: the teacher's own rate is what RGSD distils) and `criteria` (pass rate per criterion title), each
    keyed `base_train`, `teacher_train`, `base_heldout`."""
    answers = {"base_train": base_train, "teacher_train": teacher_train, "base_heldout": base_heldout}
    return {
        "responses": {name: [ex["response"] for ex in r.examples] for name, r in answers.items()},
        "degeneration": {name: r.metrics.degeneration for name, r in answers.items()},
        "criteria": {name: criterion_rates(r.examples) for name, r in answers.items()},
    }


def scored_sets(world, seed: int, eval_prompts: int, heldout_prompts: int, eval_samples: int) -> dict[str, tuple]:
    """`{"train" | "heldout": (dataset, sampling seed)}`: a seeded choice of prompts, each `eval_samples` times."""
    from datasets import concatenate_datasets

    from trl_rubric.evaluation import select_examples

    def repeated(ds, n):
        return concatenate_datasets([select_examples(ds, n, seed)] * eval_samples)

    return {"train": (repeated(world.train_dataset(), eval_prompts), seed + 1),
            "heldout": (repeated(world.heldout_dataset(), heldout_prompts), seed + 2)}  # fmt: skip


def generation_settings(args) -> dict[str, Any]:
    """The sampling every answer of a sweep is scored with (base, teacher, students)."""
    return dict(max_new_tokens=args.max_completion_length, batch_size=16, temperature=args.temperature, progress=False)


def starting_model(path: str, pairs: dict[str, str], start_dir: str | None = None) -> str:
    """The folder a setting trains from: the base model's `path`, or (`init_from=<folder>`) a saved student: a full
    model folder as it is, a LoRA adapter folder merged into the base it names at `start_dir`
    (`trl_rubric.evaluation.merge_adapter`, as `trl-rubric rgsd` merges into `<output_dir>/_start_model`). A folder,
    not a model in memory: the adapter the run saves then names the merged start as its base, so it loads as the
    model it is (an adapter trained on a start merged in memory names SmolLM2 and loads without the first phase)."""
    from trl_rubric.evaluation import merge_adapter

    source = pairs.get("init_from")
    if not source:
        return path
    if not os.path.isdir(source):
        raise SystemExit(f"init_from={source!r}: not a folder (a student saved with --save_students)")
    if not os.path.exists(os.path.join(source, "adapter_config.json")):
        return source
    if start_dir is None:
        raise ValueError("starting_model: init_from names an adapter; pass start_dir, where it is merged")
    return merge_adapter(source, start_dir, dtype="float32")


def setting_kwargs(args, name: str, pairs: dict[str, str], base_path: str | None = None) -> dict[str, Any]:
    """The `RGSDConfig` keyword arguments of one setting: the sweep's sizes, the world's teacher view, the setting's
    own fields, its `template=` choice, and (`teacher=base`) the base model at `base_path` as a separate teacher."""
    from trl_rubric.real.world import REAL_TEACHER_VIEW

    kwargs = dict(
        output_dir=os.path.join(args.output_dir, name), use_cpu=True, bf16=False, seed=args.seed,
        max_steps=args.steps, learning_rate=5e-4, lr_scheduler_type="constant",
        per_device_train_batch_size=args.prompts_per_step, max_completion_length=args.max_completion_length,
        temperature=args.temperature, logging_steps=1, **REAL_TEACHER_VIEW,
        save_strategy="no", report_to="none", disable_tqdm=True, gradient_checkpointing=False,
    )  # fmt: skip
    kwargs.update(config_overrides(pairs))
    template = pairs.get("template", "direct")
    if template == "default":
        kwargs.pop("teacher_prompt_template")
    elif template != "direct":
        kwargs["teacher_prompt_template"] = CANDIDATE_TEMPLATES[template]
    if pairs.get("teacher") == "base":
        if base_path is None:
            raise ValueError("teacher=base needs the base model's folder")
        kwargs["teacher_model_name_or_path"] = base_path
    return kwargs


def own_teacher_view(config) -> dict[str, Any] | None:
    """The teacher view (template, render style, penalties) a rubric-context setting trains with, or `None` where it
    is the world's own (whose gap and answers the sweep already has) or the teacher is not shown the rubric alone."""
    from trl_rubric.real.world import REAL_TEACHER_VIEW

    view = {k: getattr(config, k) for k in REAL_TEACHER_VIEW}
    return view if view != dict(REAL_TEACHER_VIEW) and config.teacher_context == "rubric" else None


def own_view_gap(base, tokenizer, world, sets, view: dict[str, Any], gen: dict[str, Any]):
    """The conditioning gap of `view`'s teacher on the scored train prompts, sampled with the sweep's train seed: the
    same answers for the same view, whichever run asks (`benchmarks/own_view_teacher.py` relies on it)."""
    from trl_rubric.evaluation import conditioning_gap

    return conditioning_gap(base, sets["train"][0], world.judge(), tokenizer=tokenizer, n_samples=None,
                            seed=sets["train"][1], **view, **gen)  # fmt: skip


def _share(value: float | None) -> str:
    # The share of the gap closed is None where the teacher left no gap (a --smoke run, or a teacher no better
    # than the base model): say so instead of failing to format it after the training is done.
    return "n/a (no gap)" if value is None else f"{value:.2f}"


def run_summary(name: str, row: dict, seconds: float) -> str:
    """The line printed for a finished setting: train and held-out change, the gap closed, length and degeneration."""
    d, h = row["train"], row["heldout"]
    return (f"{name}: train {d['before']:.3f} -> {d['after']:.3f} {d['delta']:+.3f} {d['delta_ci']} "
            f"(gap closed {_share(row['gap_closed_train'])}); held-out {h['before']:.3f} -> {h['after']:.3f} "
            f"{h['delta']:+.3f} {h['delta_ci']}; length {d['length']:.1f}; "
            f"degenerate {d['degeneration']['degenerate']:.2f}; {seconds:.0f} s")  # fmt: skip


def decoded_summary(name: str, decoding: str, decoded: dict) -> str:
    """The line printed for a setting's student scored under one of the `--decode` decodings."""
    t, h = decoded["train"], decoded["heldout"]
    return (f"{name} decoded {decoding}: train {t['delta']:+.3f} {t['delta_ci']} (gap closed "
            f"{_share(decoded['gap_closed_train'])}), held-out {h['delta']:+.3f} {h['delta_ci']}; "
            f"degenerate {t['degeneration']['degenerate']:.2f} / {h['degeneration']['degenerate']:.2f}")  # fmt: skip


def main(argv=None) -> dict[str, Any]:
    args = parse_args(argv)
    os.environ.update(OFFLINE_ENV)
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_rubric import RGSDConfig, RGSDTrainer
    from trl_rubric.evaluation import evaluate
    from trl_rubric.real import lora_config, smollm2_path
    from trl_rubric.real.demo import paired_delta
    from trl_rubric.real.world import REAL_TEACHER_VIEW
    from trl_rubric.real.worlds import make_named_world

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    world = make_named_world(args.world, seed=args.seed)
    train_all = world.train_dataset()
    sets = scored_sets(world, args.seed, args.eval_prompts, args.heldout_prompts, args.eval_samples)
    path = smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    gen = generation_settings(args)
    base = AutoModelForCausalLM.from_pretrained(path).eval()
    began = time.perf_counter()
    gap = own_view_gap(base, tokenizer, world, sets, dict(REAL_TEACHER_VIEW), gen)
    base_eval = {"train": gap.without_rubric}
    base_eval["heldout"] = evaluate(base, sets["heldout"][0], world.judge(), tokenizer=tokenizer,
                                    seed=sets["heldout"][1], **gen)  # fmt: skip
    results: dict[str, Any] = {
        "settings": {k: v for k, v in vars(args).items() if k != "parsed"},
        "base": {s: base_eval[s].metrics.weighted_score for s in sets},
        "teacher_train": gap.score_with_rubric,
        "gap_train": gap.gap,
        "gap_train_ci": gap.gap_ci,
        **reference_answers(gap.without_rubric, gap.with_rubric, base_eval["heldout"]),
        "reference_seconds": time.perf_counter() - began,
        "runs": {},
    }
    base_decoded: dict[str, dict[str, Any]] = {}
    for dname, dkwargs in args.decodings.items():
        base_decoded[dname] = {s: evaluate(base, ds, world.judge(), tokenizer=tokenizer, seed=seed, **decode_args(dkwargs), **gen)
                               for s, (ds, seed) in sets.items()}  # fmt: skip
        results.setdefault("decoded", {})[dname] = {
            "decoding": dkwargs,
            **{s: {"score": r.metrics.weighted_score, "degeneration": r.metrics.degeneration,
                   "length": r.metrics.mean_length, "criteria": criterion_rates(r.examples),
                   "responses": [ex["response"] for ex in r.examples]}
               for s, r in base_decoded[dname].items()},
        }  # fmt: skip
        print(f"base decoded {dname}: " + ", ".join(f"{s} {r.metrics.weighted_score:.3f} degenerate "
              f"{r.metrics.degeneration['degenerate']:.2f}" for s, r in base_decoded[dname].items()), flush=True)  # fmt: skip
    print(f"base {results['base']}, teacher {gap.score_with_rubric:.3f}, gap {gap.gap:+.3f} {gap.gap_ci}", flush=True)
    train_refs = None
    if args.reuse_references:
        saved = json.load(open(args.reuse_references))
        if saved["settings"]["world"] != args.world or saved["settings"]["seed"] != args.seed:
            raise SystemExit(f"{args.reuse_references}: references of another world or seed")
        kept = [r["index"] for r in saved["self_references"]["records"] if r["chosen"] is not None]
        train_refs = train_all.select(kept).add_column("reference", saved["self_references"]["references"])
        results["self_references"] = {**saved["self_references"], "reused_from": args.reuse_references}
    elif args.self_references:
        from trl_rubric.authoring import build_self_references

        t = time.perf_counter()
        refs = build_self_references(base, train_all, world.judge(), tokenizer=tokenizer, n_candidates=args.self_references,
                                     seed=args.seed + 3, **REAL_TEACHER_VIEW, **gen)  # fmt: skip
        train_refs = refs.dataset
        results["self_references"] = {"stats": refs.stats, "dropped": refs.dropped, "records": refs.records,
                                      "references": list(refs.dataset["reference"]),
                                      "seconds": time.perf_counter() - t}  # fmt: skip
        print(f"self-references: {refs.stats}", flush=True)
    _write(results, args.output_dir)
    teacher_views: dict[str, Any] = {}
    for name, pairs in args.parsed:
        full = pairs.get("finetune", "lora") == "full"
        r = int(pairs.get("lora_r", 16))
        kwargs = setting_kwargs(args, name, pairs, base_path=path)
        try:
            config = RGSDConfig(**kwargs)
        except ValueError as e:
            print(f"{name}: skipped: {e}", flush=True)
            results["runs"][name] = {"skipped": str(e)}
            continue
        lora = None if full else lora_config(r)
        torch.manual_seed(config.seed)  # --seed unless the setting names its own training seed
        print(f"{name}: {pairs or 'defaults'} ...", flush=True)
        reference_context = config.teacher_context in ("reference", "rubric+reference")
        refs = train_refs
        if "max_list_items" in pairs:
            limit = int(pairs["max_list_items"])
            refs = refs.filter(lambda r, limit=limit: len(LIST_ITEM.findall(r["reference"])) <= limit)
            print(f"{name}: {len(refs)} of {len(train_refs)} references have at most {limit} list items", flush=True)
        start = starting_model(path, pairs, os.path.join(args.output_dir, name, START_MODEL_DIR))
        if pairs.get("trainer") == "sft":
            trainer = sft_trainer(start, kwargs, refs, tokenizer, lora)
        else:
            omitted = pairs["teacher_omit"].split("|") if "teacher_omit" in pairs else None
            train_ds = refs if reference_context else training_prompts(train_all, pairs, args)
            trainer = RGSDTrainer(start, args=config, train_dataset=omit_criteria(train_ds, omitted) if omitted else train_ds,
                                  processing_class=tokenizer, peft_config=lora,
                                  reward_funcs=judge_reward(pairs, world, config))  # fmt: skip
        t = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t
        if args.save_students:
            trainer.save_model(os.path.join(args.output_dir, name, "student"))
        model = trainer.accelerator.unwrap_model(trainer.model)
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()
        model.eval()
        row: dict[str, Any] = {"pairs": pairs, "train_seconds": seconds, "criteria": {}}
        for split, (ds, seed) in sets.items():
            res = evaluate(model, ds, world.judge(), tokenizer=tokenizer, seed=seed, **gen)
            row[split] = paired_delta(res, base_eval[split], args.seed)
            row[split]["length"] = res.metrics.mean_length
            # Per answer, in the shared order: two settings can be compared with each other, paired, afterwards.
            row[split]["scores"] = [ex["score"] for ex in res.examples]
            # The answers themselves, so degeneration (repeated lines, echoed rubric text) can be read and scored later.
            row[split]["responses"] = [ex["response"] for ex in res.examples]
            row[split]["degeneration"] = res.metrics.degeneration
            row["criteria"][split] = criterion_rates(res.examples)
        row["gap_closed_train"] = row["train"]["delta"] / gap.gap if gap.gap else None
        for dname, dkwargs in args.decodings.items():
            decoded = row.setdefault("decoded", {}).setdefault(dname, {})
            for split, (ds, seed) in sets.items():
                res = evaluate(model, ds, world.judge(), tokenizer=tokenizer, seed=seed, **decode_args(dkwargs), **gen)
                decoded[split] = {**paired_delta(res, base_decoded[dname][split], args.seed),
                                  "length": res.metrics.mean_length, "scores": [ex["score"] for ex in res.examples],
                                  "responses": [ex["response"] for ex in res.examples],
                                  "degeneration": res.metrics.degeneration, "criteria": criterion_rates(res.examples)}  # fmt: skip
            decoded["gap_closed_train"] = decoded["train"]["delta"] / gap.gap if gap.gap else None
            print(decoded_summary(name, dname, decoded), flush=True)
        view = own_teacher_view(config)
        if "teacher_omit" in pairs:
            # The teacher's answers in the view it trained with (rubrics without the omitted criteria); the gap
            # closed stays against the world's teacher, the yardstick of every other row.
            key = json.dumps([view, pairs["teacher_omit"]], sort_keys=True)
            if key not in teacher_views:
                reduced = {
                    "train": (omit_criteria(sets["train"][0], pairs["teacher_omit"].split("|")), sets["train"][1])
                }
                teacher_views[key] = own_view_gap(
                    base, tokenizer, world, reduced, view or dict(REAL_TEACHER_VIEW), gen
                )
            row["own_view_teacher_train"] = [ex["response"] for ex in teacher_views[key].with_rubric.examples]
        elif view is not None:
            # The student learns from this view's teacher: also report the gap that teacher leaves, and keep its
            # answers (benchmarks/compare_runs.py grades them for the teacher's lead on each criterion).
            key = json.dumps(view, sort_keys=True)
            if key not in teacher_views:
                teacher_views[key] = own_view_gap(base, tokenizer, world, sets, view, gen)
            own = teacher_views[key]
            row["own_view_gap_train"] = own.gap
            row["own_view_gap_closed_train"] = row["train"]["delta"] / own.gap if own.gap else None
            row["own_view_teacher_train"] = [ex["response"] for ex in own.with_rubric.examples]
        keep = ("loss", "grad_norm", "rgsd/clipped_frac", "completions/mean_length", "rgsd/teacher_logratio",
                "rgsd/degenerate", "rgsd/teacher_focus_omitted", "rgsd/teacher_focus_rows")  # fmt: skip
        row["log"] = [{k: h[k] for k in keep if k in h} for h in trainer.state.log_history if "loss" in h]
        results["runs"][name] = row
        print(run_summary(name, row, seconds), flush=True)
        _write(results, args.output_dir)
        del trainer, model
    return results


def sft_trainer(model, kwargs: dict[str, Any], references, tokenizer, lora):
    """TRL's SFTTrainer on `(prompt, reference)` rows, with the run's shared training settings."""
    from trl import SFTConfig, SFTTrainer

    shared = ("output_dir", "use_cpu", "bf16", "seed", "max_steps", "learning_rate", "lr_scheduler_type",
              "per_device_train_batch_size", "logging_steps", "save_strategy", "report_to", "disable_tqdm",
              "gradient_checkpointing")  # fmt: skip
    config = SFTConfig(**{k: kwargs[k] for k in shared}, completion_only_loss=True)
    rows = references.map(
        lambda r: {"prompt": r["prompt"], "completion": [{"role": "assistant", "content": r["reference"]}]},
        remove_columns=[c for c in references.column_names if c != "prompt"],
    )
    return SFTTrainer(model, args=config, train_dataset=rows, processing_class=tokenizer, peft_config=lora)


def _write(results: dict[str, Any], output_dir: str) -> None:
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2, default=str)


if __name__ == "__main__":
    main()
