"""The run-analysis benchmarks: paired per-criterion changes (`benchmarks/criterion_deltas.py`), runs compared
against the base and each other (`benchmarks/compare_runs.py`), and the rollouts' per-criterion log
(`benchmarks/rollout_log.py`)."""

import argparse
import json

import pytest
from benchmark_modules import load_benchmark  # this folder is on sys.path

sweep = load_benchmark("rgsd_sweep")
deltas = load_benchmark("criterion_deltas")


def test_criterion_deltas_pair_answers_per_title_and_match_a_plain_reference():
    import random

    rng = random.Random(3)
    before = [{"key term": rng.random() < 0.4, "short": rng.random() < 0.2} for _ in range(60)]
    after = [{"key term": rng.random() < 0.3, "short": rng.random() < 0.7} for _ in range(60)]
    before[5]["key term"] = None  # an unknown verdict drops that pair, on that criterion only
    after[7]["short"] = None
    out = deltas.paired_changes(before, after)
    for title in ("key term", "short"):
        pairs = [
            (b[title], a[title])
            for b, a in zip(before, after, strict=True)
            if b[title] is not None and a[title] is not None
        ]
        assert out[title]["n"] == len(pairs) == 59
        assert out[title]["before"] == pytest.approx(sum(b for b, _ in pairs) / 59)
        assert out[title]["after"] == pytest.approx(sum(a for _, a in pairs) / 59)
        assert out[title]["delta"] == pytest.approx(out[title]["after"] - out[title]["before"])
        low, high = out[title]["delta_ci"]
        assert low <= out[title]["delta"] <= high
    assert out["short"]["delta_ci"][0] > 0  # a +50-point change on 59 pairs excludes 0
    assert set(deltas.paired_changes(before, after, criteria=["short"])) == {"short"}
    with pytest.raises(ValueError, match="pair up"):
        deltas.paired_changes(before, after[:-1])


def test_criterion_deltas_read_verdicts_by_title_and_list_every_comparison():
    from types import SimpleNamespace

    rubric = [{"text": "Mentions rest.", "title": "key term"}, {"text": "Is short: under 60 words in all."}]
    grades = [SimpleNamespace(verdicts=[True, False]), SimpleNamespace(verdicts=None)]
    rows = deltas.verdicts_by_title(grades, [rubric, rubric])
    assert rows[0] == {"key term": True, "Is short: under 60 words in all.": False}
    assert rows[1] == {"key term": None, "Is short: under 60 words in all.": None}  # an ungraded answer
    results = {
        "responses": {"base_train": ["b"], "teacher_train": ["t"], "base_heldout": ["bh"]},
        "runs": {"s": {"train": {"responses": ["s"]}, "heldout": {"responses": ["sh"]},
                       "decoded": {"g": {"train": {"responses": ["sg"]}, "heldout": {"responses": ["shg"]}}}}},
        "decoded": {"g": {"train": {"responses": ["bg"]}, "heldout": {"responses": ["bhg"]}}},
    }  # fmt: skip
    rescore = {"run": "s", "decodings": {"v2": {"train": {"base_responses": ["b2"], "student_responses": ["s2"]},
                                                "heldout": {"base_responses": ["bh2"], "student_responses": ["sh2"]}}}}  # fmt: skip
    got = [(label, split, base[0], other[0]) for label, split, base, other in deltas.comparisons(results, rescore)]
    assert got == [
        ("frozen teacher (base model shown the rubric)", "train", "b", "t"),
        ("s, plain", "train", "b", "s"),
        ("s, plain", "heldout", "bh", "sh"),
        ("s, g", "train", "bg", "sg"),
        ("s, g", "heldout", "bhg", "shg"),
        ("s, v2 (rescore)", "train", "b2", "s2"),
        ("s, v2 (rescore)", "heldout", "bh2", "sh2"),
    ]


compare = load_benchmark("compare_runs")
SCORING = {"world": "health", "seed": 1, "eval_prompts": 3, "heldout_prompts": 2, "eval_samples": 2,
           "max_completion_length": 64, "temperature": 0.7}  # fmt: skip


def _sweep_folder(path, runs, base, decoded_base=None, seed=1, teacher=None):
    """A `results.json` as rgsd_sweep.py writes it: `runs` maps a setting name to `{split: (scores, answers)}`;
    `teacher`: the teacher's train answers."""

    def block(scores, answers):
        known = [x for x in scores if x is not None]
        after = sum(known) / len(known)
        return {"before": 0.1, "after": after, "delta": after - 0.1, "delta_ci": [after - 0.15, after - 0.05],
                "scores": scores, "responses": answers, "length": 40.0}  # fmt: skip

    out = {"settings": {**SCORING, "seed": seed}, "gap_train": 0.25, "runs": {},
           "responses": {f"base_{split}": answers for split, answers in base.items()}}  # fmt: skip
    if teacher is not None:
        out["responses"]["teacher_train"] = teacher
    for name, splits in runs.items():
        out["runs"][name] = {split: block(*splits[split]) for split in ("train", "heldout")}
        if decoded_base is not None:
            out["runs"][name]["decoded"] = {"g": {split: block(*splits[split]) for split in ("train", "heldout")}}
    if decoded_base is not None:
        out["decoded"] = {"g": {split: {"responses": answers} for split, answers in decoded_base.items()}}
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps(out))
    return str(path)


def test_compare_runs_rows_spread_and_pairs_match_a_plain_reference(tmp_path, capsys):
    import re

    from trl_rubric.evaluation.degeneration import degeneration_rates
    from trl_rubric.real.worlds import make_named_world

    sets = sweep.scored_sets(make_named_world("health", seed=1), 1, 3, 2, 2)
    key = {s: [[c for c in r if c["title"] == "key term"][0] for r in sets[s][0]["rubric"]] for s in sets}
    names = {s: [c["text"] for c in key[s]] for s in sets}  # "Mentions antacids.": meets its own key term
    n = {s: len(names[s]) for s in sets}
    base = {s: ["I am not sure."] * n[s] for s in sets}
    loop = "1. Rest.\n1. Rest.\n1. Rest.\n1. Rest."
    a = {s: ([0.5] * n[s], names[s]) for s in sets}
    b = {s: ([0.2, None] + [0.3] * (n[s] - 2), [loop] + base[s][1:]) for s in sets}
    c = {s: ([0.4] * n[s], names[s][:1] + base[s][1:]) for s in sets}
    one = _sweep_folder(tmp_path / "one", {"sa": a, "sb": b}, base, decoded_base=base)
    two = _sweep_folder(tmp_path / "two", {"sc": c}, base)
    out = compare.main([f"{one}:sa", f"{one}:sb", two, "--labels", "A", "B", "C",
                        "--groups", "x=A,B", "y=C,A", "--output", str(tmp_path / "o.json")])  # fmt: skip
    assert list(out["decodings"]) == ["plain"]  # "g" is missing from run C
    report = out["decodings"]["plain"]
    rows = {r["label"]: r for r in report["runs"]}
    assert rows["A"]["gap_closed"] == pytest.approx(0.4 / 0.25)
    assert rows["A"]["criteria"]["key term"] == 1.0 and rows["B"]["criteria"]["key term"] == 0.0
    assert rows["C"]["criteria"]["key term"] == pytest.approx(1 / 6)
    # held-out rates per run: A names every held-out key term, B and the base none, C the first
    assert rows["A"]["criteria_heldout"]["key term"] == 1.0 and rows["B"]["criteria_heldout"]["key term"] == 0.0
    assert rows["C"]["criteria_heldout"]["key term"] == pytest.approx(1 / n["heldout"])
    assert report["base_heldout"]["key term"] == 0.0
    rubrics = list(sets["train"][0]["rubric"])
    assert rows["B"]["degenerate"]["train"] == degeneration_rates(b["train"][1], rubrics)["degenerate"] > 0
    # pairs: mean of per-answer differences over the answers both runs scored
    ab = report["pairs"]["A - B"]
    ref = [x - y for x, y in zip(a["train"][0], b["train"][0], strict=True) if y is not None]
    assert ab["train"]["delta"] == pytest.approx(sum(ref) / len(ref)) and ab["train"]["n"] == len(ref) == 5
    low, high = ab["train"]["delta_ci"]
    assert low <= ab["train"]["delta"] <= high
    pattern = re.compile(key["train"][0]["tags"][0].removeprefix("rule:regex:"), re.I)
    assert pattern.search(names["train"][0])
    assert report["pairs"]["A - C"]["key term"]["delta"] == pytest.approx(5 / 6)
    # groups: spread of the gap closed; the i-th run of one group paired with the i-th of the other
    x = report["groups"]["x"]["gap_closed"]
    assert x["mean"] == pytest.approx((0.4 + rows["B"]["train"]["delta"]) / 2 / 0.25)
    assert x["min"] == pytest.approx(rows["B"]["gap_closed"]) and x["sd"] > 0
    assert report["groups"]["x"]["criteria_change"]["key term"]["delta"] == pytest.approx(0.5)  # A 1.0, B 0.0, base 0
    # held-out: A names every held-out key term, B none, base none
    assert report["groups"]["x"]["criteria_change_heldout"]["key term"]["delta"] == pytest.approx(0.5)
    assert report["groups"]["y"]["criteria_change_heldout"]["key term"]["delta"] == pytest.approx(
        (1 / n["heldout"] + 1) / 2
    )
    xy = report["group_pairs"]["x - y"]["train"]
    pooled = [p - q for p, q in zip(a["train"][0] + b["train"][0], c["train"][0] + a["train"][0], strict=True)
              if q is not None and p is not None]  # fmt: skip
    assert xy["delta"] == pytest.approx(sum(pooled) / len(pooled)) and xy["n"] == len(pooled)
    assert json.loads((tmp_path / "o.json").read_text())["labels"] == ["A", "B", "C"]
    assert "gap closed mean" in capsys.readouterr().out
    assert report["teacher"] == {} and "teacher_lead_learned" not in report["groups"]["x"]  # no teacher answers saved


def test_compare_runs_reports_the_teachers_rate_and_the_share_of_its_lead_learned(tmp_path, capsys):
    from trl_rubric.real.worlds import make_named_world

    sets = sweep.scored_sets(make_named_world("health", seed=1), 1, 3, 2, 2)
    names = {s: [[c["text"] for c in r if c["title"] == "key term"][0] for r in sets[s][0]["rubric"]] for s in sets}
    n = len(names["train"])
    base = {s: ["I am not sure."] * len(names[s]) for s in sets}
    teacher = names["train"][:4] + base["train"][4:]  # the teacher names the key term on 4 of 6
    student = {s: ([0.3] * len(names[s]), names[s][:1] + base[s][1:]) for s in sets}  # on 1 of 6
    folder = _sweep_folder(tmp_path / "t", {"s": student}, base, teacher=teacher)
    out = compare.main([folder, "--groups", "g=s", "--criteria", "key term", "short"])
    report = out["decodings"]["plain"]
    assert report["teacher"]["key term"] == pytest.approx(4 / n)
    learned = report["groups"]["g"]["teacher_lead_learned"]
    assert learned["key term"] == pytest.approx((1 / n) / (4 / n))  # +1/6 of a +4/6 lead: a quarter
    assert learned["short"] is None  # base and teacher answers are all short: no lead to learn
    printed = capsys.readouterr().out
    assert "key term 25%" in printed and "short n/a (teacher < 5 points ahead)" in printed
    assert compare.lead_learned(0.1, 0.3, 0.2) is None and compare.lead_learned(None, 0.1, 0.5) is None
    assert compare.lead_learned(0.02, 0.03, 0.05) is None  # a 2-point lead: too small to share out
    assert compare.lead_learned(0.03, 0.1, 0.16) == pytest.approx(0.5)
    assert compare.lead_learned(0.05, 0.30, 0.35) == pytest.approx(1.0)  # exactly 5 points, in floating point


def test_compare_runs_measures_each_group_against_the_teacher_its_runs_learned_from(tmp_path, capsys):
    # A setting with its own teacher view (template=...) learns from that view's answers, not the world's: its share
    # of the lead is against them; a run whose own-view answers were not saved gets no share at all.
    from trl_rubric.real.worlds import make_named_world

    sets = sweep.scored_sets(make_named_world("health", seed=1), 1, 3, 2, 2)
    names = {s: [[c["text"] for c in r if c["title"] == "key term"][0] for r in sets[s][0]["rubric"]] for s in sets}
    n = len(names["train"])
    base = {s: ["I am not sure."] * len(names[s]) for s in sets}
    student = {s: ([0.3] * len(names[s]), names[s][:2] + base[s][2:]) for s in sets}  # key term on 2 of 6
    world_teacher = names["train"][:4] + base["train"][4:]  # 4 of 6
    folder = _sweep_folder(tmp_path / "t", {"w": student, "o": student, "old": student}, base, teacher=world_teacher)
    results = json.loads((tmp_path / "t" / "results.json").read_text())
    results["runs"]["o"].update(own_view_gap_train=0.3, own_view_teacher_train=list(names["train"]))  # 6 of 6
    results["runs"]["old"]["own_view_gap_train"] = 0.3  # another view, trained before its answers were kept
    (tmp_path / "t" / "results.json").write_text(json.dumps(results))
    out = compare.main([f"{folder}:w", f"{folder}:o", f"{folder}:old", "--labels", "w", "o", "old",
                        "--groups", "world=w", "own=o", "old=old", "--criteria", "key term"])  # fmt: skip
    report = out["decodings"]["plain"]
    assert report["teacher"]["key term"] == pytest.approx(4 / n)  # the world's view, printed first
    assert report["groups"]["world"]["teacher"]["key term"] == pytest.approx(4 / n)
    assert report["groups"]["world"]["teacher_lead_learned"]["key term"] == pytest.approx(0.5)  # +2/6 of +4/6
    assert report["groups"]["own"]["teacher"]["key term"] == pytest.approx(1.0)
    assert report["groups"]["own"]["teacher_lead_learned"]["key term"] == pytest.approx(2 / 6)  # +2/6 of +6/6
    assert "teacher" not in report["groups"]["old"] and "teacher_lead_learned" not in report["groups"]["old"]
    printed = capsys.readouterr().out
    assert "own: its teacher (rubric shown, its own view), train: key term 1.00" in printed
    assert "old: no teacher's lead: the teacher answers of old were not saved" in printed
    assert compare.teacher_answers(results, results["runs"]["old"]) is None
    assert compare.teacher_answers(results, results["runs"]["w"]) == world_teacher


def test_own_view_teacher_adds_the_answers_the_run_learned_from_and_refuses_ones_it_cannot_match(tmp_path):
    from trl_rubric.real.world import REAL_TEACHER_VIEW
    from trl_rubric.real.worlds import make_named_world
    from trl_rubric.testing import make_tiny_model, make_tokenizer

    backfill = load_benchmark("own_view_teacher")
    from transformers import AutoModelForCausalLM

    tokenizer = make_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(make_tiny_model(tmp_path / "model", tokenizer=tokenizer)).eval()
    settings = {"world": "health", "seed": 1, "eval_prompts": 2, "heldout_prompts": 1, "eval_samples": 1,
                "max_completion_length": 6, "temperature": 0.7, "steps": 1, "prompts_per_step": 2,
                "output_dir": str(tmp_path), "settings": ["req:template=requirements,learning_rate=2e-3",
                                                         "plain:learning_rate=2e-3"]}  # fmt: skip
    view = backfill.run_view({"settings": settings}, "req")
    assert view["teacher_prompt_template"] == sweep.CANDIDATE_TEMPLATES["requirements"]
    assert backfill.run_view({"settings": settings}, "plain") is None  # the world's own view
    world = make_named_world("health", seed=1)
    sets = sweep.scored_sets(world, 1, 2, 1, 1)
    gen = sweep.generation_settings(argparse.Namespace(**settings))
    own = sweep.own_view_gap(model, tokenizer, world, sets, view, gen)
    world_gap = sweep.own_view_gap(model, tokenizer, world, sets, dict(REAL_TEACHER_VIEW), gen)
    results = {"settings": settings, "runs": {"req": {"own_view_gap_train": own.gap}, "plain": {}}}
    (tmp_path / "results.json").write_text(json.dumps(results))
    done = backfill.backfill([f"{tmp_path}:req", f"{tmp_path}:plain"], model, tokenizer)
    saved = json.loads((tmp_path / "results.json").read_text())["runs"]
    answers = [ex["response"] for ex in own.with_rubric.examples]
    assert saved["req"]["own_view_teacher_train"] == answers
    assert answers != [ex["response"] for ex in world_gap.with_rubric.examples]  # another view, other answers
    assert "wrote 2 teacher answers" in done[f"{tmp_path}:req"] and "world's view" in done[f"{tmp_path}:plain"]
    assert "has its teacher's answers" in backfill.backfill([f"{tmp_path}:req"], model, tokenizer)[f"{tmp_path}:req"]
    results["runs"]["req"]["own_view_gap_train"] = own.gap + 0.01  # another model's run: refuse, write nothing
    (tmp_path / "results.json").write_text(json.dumps(results))
    with pytest.raises(ValueError, match="not the run's teacher answers"):
        backfill.backfill([f"{tmp_path}:req"], model, tokenizer)
    assert "own_view_teacher_train" not in json.loads((tmp_path / "results.json").read_text())["runs"]["req"]


def test_compare_runs_refuses_runs_it_cannot_pair(tmp_path):
    base = {"train": ["x"] * 6, "heldout": ["x"] * 4}
    runs = {
        "sa": {s: ([0.1] * len(v), v) for s, v in base.items()},
        "sb": {s: ([0.1] * len(v), v) for s, v in base.items()},
    }
    one = _sweep_folder(tmp_path / "one", runs, base)
    other_seed = _sweep_folder(tmp_path / "two", {"sa": runs["sa"]}, base, seed=2)
    with pytest.raises(ValueError, match="holds 2 trained settings"):
        compare.load_run(one)
    with pytest.raises(ValueError, match="no trained setting 'sc'.*'sa', 'sb'"):
        compare.load_run(f"{one}:sc")
    with pytest.raises(FileNotFoundError, match="no results.json"):
        compare.load_run(str(tmp_path / "none"))
    with pytest.raises(ValueError, match=r"seed=2, but .* has seed=1"):
        compare.main([f"{one}:sa", other_seed])
    with pytest.raises(ValueError, match="no run labelled 'C'"):
        compare.main([f"{one}:sa", f"{one}:sb", "--labels", "A", "B", "--groups", "g=A,C"])
    with pytest.raises(ValueError, match="distinct labels"):
        compare.main([f"{one}:sa", f"{one}:sb", "--labels", "A", "A"])
    same_name = _sweep_folder(tmp_path / "three", {"sa": runs["sa"]}, base)
    labels = compare.main([f"{one}:sa", same_name, "--criteria"])["labels"]
    assert labels == [f"{one}:sa", same_name]  # one setting name in two folders: the runs as given
    with pytest.raises(ValueError, match="must pair up"):
        compare.paired_difference([1.0], [1.0, 0.0])
    assert compare.paired_difference([None], [1.0]) == {"delta": None, "delta_ci": None, "n": 0}


def test_rollout_log_windows_change_slope_and_group_shares_match_a_plain_reference(tmp_path, capsys):
    import statistics

    log_mod = load_benchmark("rollout_log")
    rates = [0.25, 0.5, 0.0, 0.5, 0.75, 0.5, 1.0, 0.75, 0.5, 1.0]
    sat = [0, 0, 0, 0, 1, 0, 2, 1, 0, 2]
    unr = [1, 0, 2, 1, 0, 0, 0, 0, 0, 0]
    lines = [{"step": 10 - i, "reward": str(rates[9 - i]), "criteria/key_term/pass_rate": str(rates[9 - i]),
              "criteria/key_term/saturated": sat[9 - i], "criteria/key_term/unreachable": unr[9 - i],
              "criteria/key_term/contrasting": 2 - sat[9 - i] - unr[9 - i],
              "frac_reward_zero_std": 1.0 if i == 7 else 0.5, "completions/mean_length": 90,
              "completions/clipped_ratio": 0.5} for i in range(10)]  # written out of order  # fmt: skip
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\n" + json.dumps({"step": 10, "train_loss": 0.1}))
    out = log_mod.main([str(tmp_path), "--criterion", "key term", "--window", "4", "--labels", "r"])["r"]
    assert out["steps"] == 10
    assert out["windows"] == pytest.approx([statistics.mean(rates[:4]), statistics.mean(rates[4:8]),
                                            statistics.mean(rates[8:])])  # fmt: skip
    assert out["first_to_last"]["delta"] == pytest.approx(statistics.mean(rates[-4:]) - statistics.mean(rates[:4]))
    low, high = out["first_to_last"]["delta_ci"]
    assert low <= out["first_to_last"]["delta"] <= high
    assert out["slope_per_10_steps"] == pytest.approx(10 * statistics.linear_regression(range(1, 11), rates).slope)
    total = 2 * 10
    assert out["groups"] == pytest.approx({"saturated": sum(sat) / total, "unreachable": sum(unr) / total,
                                           "contrasting": (total - sum(sat) - sum(unr)) / total})  # fmt: skip
    assert out["groups_first"]["unreachable"] == pytest.approx(sum(unr[:4]) / 8)
    assert out["groups_last"]["saturated"] == pytest.approx(sum(sat[-4:]) / 8)
    assert out["steps_with_contrast"] == pytest.approx(0.9)
    assert "pass rate 0.57" in capsys.readouterr().out
    # a run shorter than two windows compares its halves
    short = log_mod.summarize(log_mod.read_log(str(path))[:6], "key_term", 8)
    assert short["first_to_last"]["delta"] == pytest.approx(statistics.mean(rates[3:6]) - statistics.mean(rates[:3]))
    with pytest.raises(ValueError, match="criteria logged are \\['key_term'\\]"):
        log_mod.summarize(log_mod.read_log(str(path)), "short", 4)
    with pytest.raises(FileNotFoundError, match="no metrics.jsonl"):
        log_mod.read_log(str(tmp_path / "nowhere"))
