"""The helpers of the RGSD tuning benchmarks (`benchmarks/rgsd_sweep.py`, `benchmarks/teacher_signal.py`)."""

import argparse
import json
import os
from itertools import combinations

import pytest
from benchmark_modules import ROOT, load_benchmark  # this folder is on sys.path

sweep = load_benchmark("rgsd_sweep")
signal = load_benchmark("teacher_signal")
ceiling = load_benchmark("teacher_clean_ceiling")


def test_setting_parses_name_and_typed_config_overrides():
    name, pairs = sweep.parse_setting("fast:learning_rate=2e-3,token_clip=none,max_steps=7,finetune=full")
    assert name == "fast"
    assert pairs["finetune"] == "full"
    overrides = sweep.config_overrides(pairs)
    assert overrides == {"learning_rate": 2e-3, "token_clip": None, "max_steps": 7}
    assert isinstance(overrides["max_steps"], int)
    assert sweep.parse_setting("defaults:") == ("defaults", {})
    # a field whose default is None is read as a number
    assert sweep.config_overrides({"token_clip": "0.1"}) == {"token_clip": 0.1}


def test_a_settings_own_training_seed_reaches_the_config_as_int():
    # replicates of one setting: `seed=` is the training seed, the scoring sets follow --seed
    from trl_rubric import RGSDConfig

    overrides = sweep.config_overrides({"seed": "3", "learning_rate": "2e-3"})
    assert overrides == {"seed": 3, "learning_rate": 2e-3} and isinstance(overrides["seed"], int)
    assert RGSDConfig(output_dir="unused", use_cpu=True, **overrides).seed == 3


def test_optional_whole_number_fields_reach_the_config_as_int():
    # teacher_no_repeat_ngram_size defaults to None and RGSDConfig refuses 5.0: the sweep must pass 5
    from trl_rubric import RGSDConfig

    overrides = sweep.config_overrides({"teacher_no_repeat_ngram_size": "5", "teacher_copy_ngram_size": "4"})
    assert overrides == {"teacher_no_repeat_ngram_size": 5, "teacher_copy_ngram_size": 4}
    assert all(type(v) is int for v in overrides.values())
    config = RGSDConfig(output_dir="unused", use_cpu=True, bf16=False, report_to="none", **overrides)
    assert config.teacher_no_repeat_ngram_size == 5
    # a list field: names joined by "|", spaces inside a name kept
    overrides = sweep.config_overrides({"reward_criteria": "key term| numbered steps", "distillation_weight": "0.5"})
    assert overrides == {"reward_criteria": ["key term", "numbered steps"], "distillation_weight": 0.5}
    overrides = sweep.config_overrides({"span_criteria": "key term", "span_weight": "8", "span_nll_weight": "1"})
    assert overrides == {"span_criteria": ["key term"], "span_weight": 8.0, "span_nll_weight": 1.0}
    assert RGSDConfig(output_dir="unused", use_cpu=True, bf16=False, **overrides).span_criteria == ["key term"]


@pytest.mark.parametrize("bad", [":learning_rate=1", "x:learning_rate"])
def test_malformed_setting_is_refused(bad):
    with pytest.raises(ValueError, match="setting"):
        sweep.parse_setting(bad)


def test_unknown_config_field_is_named():
    with pytest.raises(ValueError, match="'lr' is not an RGSDConfig field"):
        sweep.config_overrides({"lr": "1e-3"})
    with pytest.raises(SystemExit):
        sweep.parse_args(["--settings", "a:lr=1e-3"])


def test_teacher_omit_drops_the_named_criteria_from_every_training_rubric_only():
    from trl_rubric.real.worlds import make_named_world
    from trl_rubric.rubric import Rubric

    rows = make_named_world("health", seed=0).train_dataset().select(range(4))
    reduced = sweep.omit_criteria(rows, ["short"])
    for before, after in zip(rows["rubric"], reduced["rubric"], strict=True):
        titles = [c.title for c in Rubric.from_any(before)]
        assert "short" in titles
        assert [c.title for c in Rubric.from_any(after)] == [t for t in titles if t != "short"]
    assert reduced["prompt"] == rows["prompt"]
    with pytest.raises(ValueError, match="no such criterion"):
        sweep.omit_criteria(rows, ["no such title"])
    # a judge or SFT would read the reduced rubrics too: refused before any model loads
    for setting in ("a:teacher_omit=short,judge=rule", "a:teacher_omit=short,trainer=sft"):
        with pytest.raises(SystemExit):
            sweep.parse_args(["--settings", setting, "--reuse_references", "unused.json"])


def test_train_prompts_scored_trains_on_exactly_the_distinct_scored_train_prompts():
    from trl_rubric.real.worlds import make_named_world

    world = make_named_world("health", seed=0)
    args = sweep.parse_args(["--settings", "a:train_prompts=scored", "--eval_prompts", "6", "--seed", "3"])
    scored, _ = sweep.scored_sets(world, 3, 6, 2, 2)["train"]
    rows = sweep.training_prompts(world.train_dataset(), args.parsed[0][1], args)
    key = lambda prompts: sorted(json.dumps(p, sort_keys=True) for p in prompts)  # noqa: E731
    assert len(rows) == 6 and key(rows["prompt"]) == sorted(set(key(scored["prompt"])))
    # the default trains on the whole split
    assert len(sweep.training_prompts(world.train_dataset(), {}, args)) == len(world.train_dataset())
    for bad in ("a:train_prompts=some", "a:train_prompts=scored,trainer=sft"):
        with pytest.raises(SystemExit):
            sweep.parse_args(["--settings", bad, "--reuse_references", "unused.json"])


def _naive_agreement(groups):
    agree = total = 0.0
    for g in groups:
        for (a, x), (b, y) in combinations(g, 2):
            if a != b:
                total += 1
                agree += 0.5 if x == y else float((a > b) == (x > y))
    return agree / total


def test_pair_agreement_matches_a_plain_count_and_its_extremes():
    perfect = [[(0.1, -3.0), (0.5, -1.0), (0.9, 2.0)], [(0.0, 1.0), (1.0, 4.0)]]
    assert signal.pair_agreement(perfect)["agreement"] == 1.0
    reversed_ = [[(s, -x) for s, x in g] for g in perfect]
    assert signal.pair_agreement(reversed_)["agreement"] == 0.0
    mixed = [[(0.2, 1.0), (0.4, 0.0), (0.4, 3.0), (0.2, 1.0)], [(0.0, 5.0), (1.0, 5.0), (0.5, 1.0)], [(0.3, 0.0)]]
    got = signal.pair_agreement(mixed, n_bootstrap=200)
    assert got["agreement"] == pytest.approx(_naive_agreement(mixed))
    assert got["pairs"] == 4 + 3
    low, high = got["ci"]
    assert 0.0 <= low <= got["agreement"] <= high <= 1.0
    # pairs with equal scores carry no preference and groups without any are ignored
    assert signal.pair_agreement([[(0.5, 1.0), (0.5, 2.0)]]) == {"agreement": None, "ci": None, "pairs": 0}


def test_teacher_signal_views_and_shapings_parse():
    assert signal.parse_view("direct:omit:criteria") == ("direct", "omit", True)
    assert signal.parse_view("default:show") == ("default", "show", False)
    for bad in ("direct", "direct:omit:skills", "other:omit"):
        with pytest.raises(ValueError, match="--views"):
            signal.parse_view(bad)
    args = signal.parse_args(["--teacher_temperatures", "1", "0.5", "--teacher_top_k", "20"])
    assert signal.shapings(args) == [("T1", 1.0, None), ("T0.5", 0.5, None), ("k20", 1.0, 20)]


def test_teacher_signal_shaped_logps_are_the_losses_teacher():
    import torch

    from trl_rubric.losses import teacher_top_k_logps

    logits, targets = torch.randn(6, 30), torch.randint(0, 30, (6,))
    tempered = signal.teacher_target_logps(logits, targets, temperature=0.5)
    assert tempered == pytest.approx(torch.log_softmax(logits / 0.5, -1)[range(6), targets].tolist(), abs=1e-6)
    top = signal.teacher_target_logps(logits, targets, top_k=3)
    assert top == pytest.approx(teacher_top_k_logps(logits, 3)[0][range(6), targets].tolist(), abs=1e-6)


def test_teacher_signal_criterion_teachers_average_their_log_ratios():
    got = signal.mean_logratio([[-1.0, -2.0], [-3.0, 0.0]], [1.0, 3.0], [-0.5, -1.0])
    assert got == pytest.approx([(-1.0 + 3 * -3.0) / 4 + 0.5, (-2.0 + 0.0) / 4 + 1.0])


def test_teacher_signal_pools_content_and_format_criteria():
    def example(score, key_term, steps):
        return {"score": score, "criteria": [
            {"title": "key term", "text": "Mentions x.", "weight": 2.0, "verdict": key_term},
            {"title": "numbered steps", "text": "Numbered.", "weight": 2.0, "verdict": steps},
        ]}  # fmt: skip

    # One prompt, two answers: the one with the key term has the higher log-ratio, the one with steps the lower
    examples = [example(0.5, True, False), example(0.5, False, True)]
    row = signal.agreement_rows(examples, [[1.0, 1.0], [-1.0, -1.0]], n=1, seed=0)
    assert row["content_sum"]["agreement"] == 1.0 and row["format_sum"]["agreement"] == 0.0
    assert row["sum"]["pairs"] == 0  # equal scores: no overall pair


def test_step_benchmark_gives_sdft_the_teacher_input_rgsd_uses(tmp_path):
    # bench_rgsd_step compares RGSD with TRL's SDFT on the same teacher tokens and refuses to run when they differ
    # (it did, silently broken, once RGSD stopped showing penalties by default): run it small, end to end.
    import subprocess
    import sys

    md = tmp_path / "step.md"
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "bench_rgsd_step.py"), "--device", "cpu"]
    cmd += "--vocab-size 1024 --completion-length 16 --hidden-size 32 --reps 1 --threads 1".split()
    cmd += ["--modes", "rgsd", "sdft", "--markdown", str(md), "--workdir", str(tmp_path / "work")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": ROOT})
    assert done.returncode == 0, done.stderr[-2000:]
    line = next(x for x in md.read_text().splitlines() if x.startswith("Same-objective check"))
    gap = float(line.rsplit("relative gap ", 1)[1].rstrip(").").strip())
    assert gap < 1e-3, line


def test_judge_key_gives_the_worlds_rule_judge_as_a_reward():
    from trl_rubric import RGSDConfig, RubricReward
    from trl_rubric.judges import RuleJudge
    from trl_rubric.real.worlds import make_named_world

    config = RGSDConfig(output_dir="unused", use_cpu=True, bf16=False, report_to="none")
    world = make_named_world("instructions", seed=0)
    assert sweep.config_overrides({"judge": "rule", "teacher_focus": "unlearned"}) == {"teacher_focus": "unlearned"}
    assert sweep.judge_reward({}, world, config) is None
    (reward,) = sweep.judge_reward({"judge": "rule"}, world, config)
    assert isinstance(reward, RubricReward) and isinstance(reward.judge, RuleJudge)
    with pytest.raises(ValueError, match="judge='llm': expected rule or none"):
        sweep.judge_reward({"judge": "llm"}, world, config)


def test_real_world_process_arm_is_grpo4_with_line_process_rewards(tiny_model_path, tmp_path):

    from datasets import Dataset

    from trl_rubric.judges import RuleJudge
    from trl_rubric.testing import make_rubric_rows

    real_world = load_benchmark("real_world")
    assert set(real_world.GROUP) | {"base", "rgsd"} == set(real_world.ARMS) == set(real_world.LABELS)
    args = argparse.Namespace(prompts_per_step=2, seed=0, budget_s=0, steps=1, lr=1e-3, max_completion_length=8,
                              temperature=1.0)  # fmt: skip
    train = Dataset.from_list(make_rubric_rows(4))
    built = {
        arm: real_world.build_trainer(arm, tiny_model_path, None, train, args, str(tmp_path / arm), RuleJudge())
        for arm in ("grpo4", "grpo_process", "grpo8_clean", "hybrid_clean")
    }
    assert built["grpo4"].rubric_reward.degenerate_reward is None
    assert built["grpo8_clean"].rubric_reward.degenerate_reward == 0.0
    assert built["grpo8_clean"].args.num_generations == 8
    hybrid = built["hybrid_clean"]
    assert hybrid.args.distillation_weight == 0.5 and hybrid.reward_funcs[0].degenerate_reward == 0.0
    assert built["grpo4"].process_rewards is None
    process = built["grpo_process"]
    assert process.process_rewards is not None and process.args.process_step_splitter == "lines"
    assert process.args.num_generations == built["grpo4"].args.num_generations == 4


def _budget_run(path, lr, arms, seed=0):
    import json

    os.makedirs(path)
    arm = lambda scores: {  # noqa: E731
        split: {
            "score": sum(scores) / len(scores),
            "scores": scores,
            "degenerate": 0.0,
            "length": 10.0,
            "degenerate_flags": [i == 0 for i in range(len(scores))],
        }
        for split in ("train", "heldout")
    }
    result = {
        "settings": {"world": "health", "seed": seed, "lr": lr, "budget_s": 240.0},
        "references": {"base_train": 0.1, "teacher_train": 0.4},
        "arms": {name: arm(scores) for name, scores in arms.items()},
    }
    with open(os.path.join(path, "results.json"), "w") as f:
        json.dump(result, f)


def test_budget_summary_keeps_one_arm_at_two_rates_apart_with_tag_lr(tmp_path):
    summary = load_benchmark("real_world_summary")
    _budget_run(tmp_path / "a", 2e-3, {"rgsd": [0.5, 0.5, 0.5], "grpo8": [0.1, 0.2, 0.3]})
    _budget_run(tmp_path / "b", 5e-4, {"grpo8": [0.3, 0.4, 0.5]})
    dirs = [str(tmp_path / "a"), str(tmp_path / "b")]
    # Without the tag the later run's grpo8 replaces the first's (the merge is by arm name).
    assert set(summary.load(dirs)["health"][0]["arms"]) == {"rgsd", "grpo8"}
    arms = summary.load(dirs, tag_lr=True)["health"][0]["arms"]
    assert set(arms) == {"rgsd@lr0.002", "grpo8@lr0.002", "grpo8@lr0.0005"}
    text = summary.main([*dirs, "--tag_lr", "--reference", "grpo8@lr0.0005"])
    assert "RubricGRPO, rule judge (G=8), lr 0.0005" in text
    rgsd_row = next(line for line in text.splitlines() if line.startswith("| RGSD"))
    assert "+10.0" in rgsd_row  # 0.5 - mean(0.3, 0.4, 0.5), paired per prompt
    low_row = next(line for line in text.splitlines() if "lr 0.002" in line and "G=8" in line)
    assert "-20.0" in low_row


def test_budget_summary_merges_runs_of_one_seed_unless_their_base_references_differ(tmp_path, capsys):
    import json

    summary = load_benchmark("real_world_summary")
    _budget_run(tmp_path / "a", 2e-3, {"grpo8": [0.1, 0.2, 0.3]})
    _budget_run(tmp_path / "b", 2e-3, {"rgsd": [0.5, 0.5, 0.5]})
    _budget_run(tmp_path / "c", 2e-3, {"hybrid": [0.5, 0.5, 0.5]})
    for name, key, value in (("b", "teacher_train", 0.35), ("c", "base_train", 0.2)):
        path = tmp_path / name / "results.json"
        result = json.loads(path.read_text())
        result["references"][key] = value
        path.write_text(json.dumps(result))
    runs = summary.load([str(tmp_path / "a"), str(tmp_path / "b")])
    assert set(runs["health"][0]["arms"]) == {"grpo8", "rgsd"}
    assert "teacher references differ (['teacher_train'])" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="references differ"):
        summary.load([str(tmp_path / "a"), str(tmp_path / "c")])


def test_budget_summary_clean_scores_pay_nothing_for_flagged_answers(tmp_path):
    summary = load_benchmark("real_world_summary")
    _budget_run(tmp_path / "a", 2e-3, {"rgsd": [0.5, 0.5, 0.5], "grpo8": [0.9, 0.2, 0.3]})
    raw = summary.main([str(tmp_path / "a")])
    clean = summary.main([str(tmp_path / "a"), "--clean"])
    row = lambda text: next(line for line in text.splitlines() if line.startswith("| RGSD"))  # noqa: E731
    assert "+3.3" in row(raw)  # 0.5 - mean(0.9, 0.2, 0.3), paired per prompt
    # The first answer of every arm is flagged: 0.5 and 0.9 become 0, so RGSD - GRPO = mean(0, 0.3, 0.2).
    assert "+16.7" in row(clean) and "| 0.333 |" in row(clean)


def test_sweep_candidate_templates_are_valid_teacher_templates_and_unknown_names_are_refused():
    from trl_rubric import RGSDConfig
    from trl_rubric.teacher_context import build_teacher_context

    for name, template in sweep.CANDIDATE_TEMPLATES.items():
        # a rubric template, or (for teacher_context=reference) a reference one
        context = "reference" if "{reference}" in template else "rubric"
        assert "{prompt}" in template and ("{rubric}" in template) == (context == "rubric"), name
        # the word the meta-talk checks look for; only the world's earlier template, kept for reruns, has it
        assert ("requirement" in template.lower()) == (name == "requirements"), name
        config = RGSDConfig(output_dir="/tmp/x", teacher_prompt_template=template, teacher_context=context,
                            use_cpu=True, report_to="none")  # fmt: skip
        row = {"prompt": "Q?", "rubric": [{"text": "Says yes.", "weight": 1.0}], "reference": "Yes."}
        (view,) = build_teacher_context(config).contexts(row)
        assert "Q?" in view.prompt and ("Yes." in view.prompt) == (context == "reference"), name
    args = sweep.parse_args(["--settings", "a:template=notes_first"])
    assert args.parsed == [("a", {"template": "notes_first"})]
    with pytest.raises(SystemExit):
        sweep.parse_args(["--settings", "a:template=nonsense"])
    with pytest.raises(SystemExit):  # a reference teacher with no references to show it
        sweep.parse_args(["--settings", "a:template=ref_example,teacher_context=reference"])
    args = sweep.parse_args(
        ["--self_references", "4", "--settings", "a:template=ref_example,teacher_context=reference"]
    )
    assert args.self_references == 4


def test_sweep_passes_teacher_rollout_settings_typed_to_the_config():
    from trl_rubric import RGSDConfig

    overrides = sweep.config_overrides(
        {"teacher_rollouts": "1", "teacher_rollout_loss": "divergence", "teacher_rollout_filter": "false"}
    )
    assert overrides == {
        "teacher_rollouts": 1.0,
        "teacher_rollout_loss": "divergence",
        "teacher_rollout_filter": False,
    }
    assert type(overrides["teacher_rollouts"]) is float
    config = RGSDConfig(output_dir="unused", use_cpu=True, bf16=False, report_to="none", **overrides)
    assert config.teacher_rollouts == 1.0 and not config.teacher_rollout_filter


def _graded(score, degenerate, met):
    return {"score": score, "degenerate": degenerate, "criteria": [{"title": "list", "verdict": met}]}


def test_clean_ceiling_is_the_clean_answers_share_of_the_gap():
    rows = [_graded(0.6, True, True), _graded(0.6, True, True), _graded(0.3, False, False), _graded(0.5, False, True)]
    s = ceiling.ceiling_summary(rows, base=0.1, gap=0.5, resamples=2000)
    assert s["flagged_share"] == 0.5
    assert s["mean_all"] == pytest.approx(0.5) and s["mean_clean"] == pytest.approx(0.4)
    assert s["mean_flagged"] == pytest.approx(0.6)
    assert s["share_all"] == pytest.approx(0.8) and s["share_clean"] == pytest.approx(0.6)
    lo, hi = s["share_clean_ci"]
    assert lo <= 0.6 <= hi and lo >= (0.3 - 0.1) / 0.5 - 1e-9 and hi <= (0.5 - 0.1) / 0.5 + 1e-9
    assert s["criteria"]["list"] == {"clean": 0.5, "flagged": 1.0}


@pytest.mark.parametrize(
    ("rows", "gap", "match"),
    [([], 0.5, "graded answers"), ([_graded(0.2, False, True)], 0.0, "positive gap"),
     ([_graded(0.2, True, True)], 0.5, "every teacher answer is flagged")],
)  # fmt: skip
def test_clean_ceiling_refuses_what_it_cannot_measure(rows, gap, match):
    with pytest.raises(ValueError, match=match):
        ceiling.ceiling_summary(rows, base=0.1, gap=gap)


def test_clean_rescore_pays_flagged_answers_nothing_and_pairs_against_base_and_teachers():
    rescore = load_benchmark("clean_rescore")
    assert rescore.clean([0.6, -0.2, 0.4, -0.5], [True, True, False, False]).tolist() == [0.0, -0.2, 0.4, -0.5]
    loop = "1. Drink water and rest today.\n2. Drink water and rest today.\n3. Drink water and rest today."
    results = {
        "settings": {"world": "health", "seed": 0, "eval_prompts": 2, "heldout_prompts": 2, "eval_samples": 1},
        "responses": {"base_train": ["Rest.", "Drink water."], "teacher_train": [loop, "Rest and drink water."],
                      "base_heldout": ["Rest.", "Sleep."]},
        "runs": {"s": {"gap_closed_train": 0.5,
                       "train": {"scores": [0.6, 0.3], "responses": [loop, "Rest well."]},
                       "heldout": {"scores": [0.2, 0.1], "responses": ["Rest.", "Sleep well."]}}},
    }  # fmt: skip
    out = rescore.rescore(
        results, teacher_rows=[{"score": 0.5, "degenerate": False}, {"score": 0.9, "degenerate": True}]
    )
    row = out["runs"]["s"]
    assert row["train"]["clean"] == pytest.approx(0.15) and row["train"]["degenerate"] == 0.5
    assert row["heldout"]["clean"] == pytest.approx(0.15) and row["heldout"]["degenerate"] == 0.0
    assert row["train"]["minus_base"][0] == pytest.approx(0.15 - out["base_clean"]["train"])
    # The teacher's looping answer earns nothing either, whatever the rule judge gave it.
    world, sets = rescore._eval_sets(results["settings"])
    raw_teacher = rescore._grade(world, sets["train"], results["responses"]["teacher_train"])
    assert out["teacher_clean"] == pytest.approx(min(raw_teacher[0], 0) / 2 + raw_teacher[1] / 2)
    assert row["minus_teacher_view"][0] == pytest.approx(0.15 - 0.25)
    assert "| health 0 | s | 50% | 0.150" in rescore.markdown([out])
    with pytest.raises(ValueError, match="--teacher has 1 answers; the sweep scored 2"):
        rescore.rescore(results, teacher_rows=[{"score": 0.5, "degenerate": False}])


def test_clean_rescore_regrades_every_answer_with_the_named_criterions_rule_replaced():
    rescore = load_benchmark("clean_rescore")
    settings = {"world": "health", "seed": 0, "eval_prompts": 2, "heldout_prompts": 2, "eval_samples": 1}
    world, sets = rescore._eval_sets(settings)
    loose = "1. Identify the burn.\n2. Call emergency services immediately."  # the world's rule: met
    named = "1. Cool the burn.\n2. Call 911 if the skin turns white or the pain spreads."
    texts = {"train": [loose, named], "heldout": [named, loose]}
    saved = {split: rescore._grade(world, sets[split], t).tolist() for split, t in texts.items()}
    results = {
        "settings": settings,
        "responses": {"base_train": texts["train"], "teacher_train": texts["train"], "base_heldout": texts["heldout"]},
        "runs": {"s": {"gap_closed_train": 0.5, **{split: {"scores": [9.0, 9.0], "responses": texts[split]}
                                                   for split in ("train", "heldout")}}},
    }  # fmt: skip
    assert rescore.rescore(results)["runs"]["s"]["train"]["clean"] == 9.0  # without --regrade, the sweep's scores
    # A warning sign met only where the emergency line names a condition ("if", "when", "signs of").
    rule = r"rule:regex:(?im)^(?=.*\b(if|when|signs? of)\b).*\b(emergency|911|immediately)\b"
    rules = rescore.parse_regrade([f"urgent warning sign={rule}"])
    out = rescore.rescore(results, rules=rules)
    row = out["runs"]["s"]
    assert out["regraded"] == {"urgent warning sign": rule}
    redone = {split: rescore._grade(world, rescore.regraded(sets[split], rules), texts[split]) for split in texts}
    assert row["train"]["clean_scores"] == pytest.approx(redone["train"].tolist())
    # Both held-out rubrics have the criterion: "Call emergency services immediately." alone no longer pays for it, a
    # named sign still does.
    assert redone["heldout"][1] < saved["heldout"][1] and redone["heldout"][0] == pytest.approx(saved["heldout"][0])
    assert row["heldout"]["clean_scores"] == pytest.approx(redone["heldout"].tolist())
    assert out["base_clean"]["train"] == pytest.approx(redone["train"].mean())  # the base graded alike
    assert row["train"]["minus_base"][0] == pytest.approx(0.0)
    for bad in ("urgent warning sign", "x=regex:a", "=rule:regex:a"):
        with pytest.raises(ValueError, match="--regrade"):
            rescore.parse_regrade([bad])
    with pytest.raises(ValueError, match="no criterion titled"):
        rescore.rescore(results, rules={"nothing like it": "rule:regex:a"})


@pytest.mark.parametrize(
    "setting",
    ["a:trainer=sft", "a:teacher_context=reference,template=ref_example", "a:max_list_items=3"],
)
def test_sweep_settings_that_train_on_references_need_them(setting):
    with pytest.raises(SystemExit):  # an argparse error naming the setting, not a KeyError
        sweep.parse_args(["--settings", setting])
    assert sweep.parse_args(["--reuse_references", "r.json", "--settings", setting]).reuse_references == "r.json"
    assert not sweep.needs_references({"learning_rate": "2e-3"})


def test_sweep_sft_baseline_trains_on_prompt_and_reference_only(tiny_model_path, tmp_path):
    from datasets import Dataset
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    refs = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": f"question {i}"}],
                "rubric": [{"text": "x", "weight": 1.0}],
                "topic": "t",
                "reference": f"1. answer {i}\n2. more",
            }
            for i in range(4)
        ]  # fmt: skip
    )
    kwargs = dict(output_dir=str(tmp_path), use_cpu=True, bf16=False, seed=0, max_steps=1, learning_rate=5e-4,
                  lr_scheduler_type="constant", per_device_train_batch_size=2, logging_steps=1, save_strategy="no",
                  report_to="none", disable_tqdm=True, gradient_checkpointing=False, max_completion_length=8)  # fmt: skip
    trainer = sweep.sft_trainer(tiny_model_path, kwargs, refs, tokenizer, None)
    assert trainer.args.completion_only_loss is True and trainer.args.max_steps == 1
    row = trainer.train_dataset[0]
    # the loss covers the reference only: the prompt's tokens are masked out
    learned = [t for t in row["labels"] if t != -100]
    assert 0 < len(learned) < len(row["input_ids"])
    completion = tokenizer.decode(learned)
    assert "answer 0" in completion and "question 0" not in completion
    trainer.train()
    assert trainer.state.global_step == 1
    assert sweep.LIST_ITEM.findall(refs[0]["reference"]) and len(sweep.LIST_ITEM.findall("plain prose")) == 0


def test_sweep_decodings_parse_typed_and_refuse_what_evaluation_sets_itself():
    args = sweep.parse_args(["--decode", "ngram3:no_repeat_ngram_size=3", "rep:repetition_penalty=1.2,top_k=20"])
    assert args.decodings == {"ngram3": {"no_repeat_ngram_size": 3}, "rep": {"repetition_penalty": 1.2, "top_k": 20}}
    assert isinstance(args.decodings["ngram3"]["no_repeat_ngram_size"], int)
    for bad, message in (("x:temperature=0.5", "'temperature'"), ("empty:", "at least one argument")):
        with pytest.raises(SystemExit):
            sweep.parse_args(["--decode", bad])
        with pytest.raises(ValueError, match=message):
            sweep.parse_decode(bad)


def test_decode_rescore_reads_decodings_and_refuses_a_folder_without_a_demo(tmp_path, capsys):
    rescore = load_benchmark("decode_rescore")
    with pytest.raises(SystemExit):
        rescore.parse_args(["--demo_dir", str(tmp_path)])
    assert "results.json" in capsys.readouterr().err
    (tmp_path / "results.json").write_text("{}")
    (tmp_path / "student").mkdir()
    args = rescore.parse_args(["--demo_dir", str(tmp_path), "--decode", "plain:", "g3:degeneration_guard=3"])
    assert args.decodings == {"plain": {}, "g3": {"degeneration_guard": 3}}
    assert sweep.decode_args(args.decodings["g3"]) == {"degeneration_guard": 3, "generation_kwargs": {}}
    with pytest.raises(SystemExit):
        rescore.parse_args(["--demo_dir", str(tmp_path), "--decode", "g:degeneration_guard=-2"])


def test_sweep_decodings_fold_guard_options_into_the_guard():
    name, decoding = sweep.parse_decode("g3l:degeneration_guard=3,ban_repeated_lines=true,ignore_case=true")
    assert name == "g3l"
    assert decoding == {"degeneration_guard": {"no_repeat_ngram_size": 3, "ban_repeated_lines": True,
                                               "ignore_case": True}}  # fmt: skip
    assert sweep.decode_args(decoding)["degeneration_guard"]["ban_repeated_lines"] is True
    with pytest.raises(ValueError, match="guard options; add degeneration_guard"):
        sweep.parse_decode("x:ban_repeated_lines=true")


def test_decode_rescore_scores_a_sweep_student_on_the_sweeps_own_sets(tmp_path, capsys):
    from trl_rubric.real.worlds import make_named_world

    rescore = load_benchmark("decode_rescore")
    with pytest.raises(SystemExit):
        rescore.parse_args(["--sweep_dir", str(tmp_path)])
    assert "--run" in capsys.readouterr().err
    settings = {"world": "health", "seed": 1, "eval_prompts": 3, "heldout_prompts": 2, "eval_samples": 2,
                "max_completion_length": 64, "temperature": 0.7}  # fmt: skip
    (tmp_path / "results.json").write_text(json.dumps({"settings": settings, "gap_train": 0.2}))
    with pytest.raises(SystemExit):
        rescore.parse_args(["--sweep_dir", str(tmp_path), "--run", "a"])
    assert "student" in capsys.readouterr().err
    (tmp_path / "a" / "student").mkdir(parents=True)
    assert rescore.parse_args(["--sweep_dir", str(tmp_path), "--run", "a"]).run == "a"
    setup = rescore.sweep_setup(str(tmp_path), "a")
    expected = sweep.scored_sets(make_named_world("health", seed=1), 1, 3, 2, 2)
    for split, (ds, seed) in expected.items():
        got, got_seed = setup["sets"][split]
        assert got["prompt"] == ds["prompt"] and got_seed == seed and len(got) == 2 * {"train": 3, "heldout": 2}[split]
    assert setup["generation"] == {"max_new_tokens": 64, "temperature": 0.7} and setup["gap"] == 0.2


def test_onset_signal_cuts_at_the_first_naming_and_summarises_both_groups():
    from trl_rubric.rubric import Rubric

    onset = load_benchmark("onset_signal")
    rubric = Rubric.from_any(
        [{"text": "Mentions rest.", "weight": 2.0, "title": "key term", "tags": [r"rule:regex:\brest\b|fluids?"]}]
    )
    assert onset.first_match("Drink fluids and rest.", rubric, ["key term"]) == len("Drink ")
    assert onset.first_match("Sleep well.", rubric, ["key term"]) is None
    rows = [{"met": True, "student": 0.2, "teacher": 0.4, "teacher_above": 1.0},
            {"met": False, "student": 0.1, "teacher": 0.1, "teacher_above": 0.0}]  # fmt: skip
    summary = onset.summarise(rows)
    assert summary == {"n": 2, "student_sum": pytest.approx(0.15), "teacher_sum": pytest.approx(0.25),
                       "teacher_above_positions": 0.5, "teacher_1_5x": 1}  # fmt: skip
    assert onset.summarise([]) == {"n": 0}


def test_criterion_voice_splits_a_met_criterion_by_the_line_that_meets_it():
    voice = load_benchmark("criterion_voice")
    rubric = [
        {"text": "Mentions resting your voice.", "weight": 2.0, "title": "key term", "tags": [r"rule:regex:\brest"]},
        {"text": "Advises seeing a doctor if symptoms persist.", "weight": 1.0, "title": "doctor"},
    ]
    in_words = "Sip warm tea.\n1. Rest your voice for a day."
    echoed = "1. Drink water.\n2. Mentioning resting your voice."
    pasted = "Resting helps; see a doctor if symptoms persist."  # 5 of the doctor criterion's 7 words in a row
    named = ["key term"]
    assert voice.meeting_line(in_words, rubric, named) == "1. Rest your voice for a day."
    assert voice.meeting_line("Sip warm tea.", rubric, named) is None
    assert not voice.in_voice("1. Rest your voice for a day.", rubric, named)
    assert voice.in_voice("2. Mentioning resting your voice.", rubric, named)
    assert voice.in_voice("- Suggests a humidifier.", rubric, named)
    assert not voice.in_voice("Use a humidifier.", rubric, named)
    assert voice.in_voice(pasted, rubric, named)  # no criterion verb, but another criterion's words in a row
    # The named criterion's own words are its term: naming it in a sentence is no echo.
    assert not voice.in_voice("Resting your voice for a day helps.", rubric, named)
    split = voice.split_met([in_words, echoed, "Sip warm tea.", "Suggests tea."], [rubric] * 4, named)
    assert split == {"n": 4, "met": 0.5, "met_in_voice": 0.25, "met_own_words": 0.25, "answers_in_voice": 0.5}


def test_criterion_voice_samples_a_template_with_the_view_a_sweep_trains_it_with():
    voice = load_benchmark("criterion_voice")
    settings = {"steps": 4, "prompts_per_step": 2, "max_completion_length": 8, "temperature": 0.7, "seed": 0}
    view = voice.template_view(settings, "requirements")
    assert view["teacher_prompt_template"] == sweep.CANDIDATE_TEMPLATES["requirements"]
    with pytest.raises(KeyError):
        voice.template_view(settings, "no such template")


def test_sweep_records_each_reference_answer_sets_answers_degeneration_and_criterion_rates():
    from types import SimpleNamespace

    def result(verdicts, degeneration):
        examples = [{"response": f"answer {i}", "criteria": [{"text": "Mentions rest.", "verdict": v},
                                                             {"text": "Uses a numbered list.", "verdict": True}]}
                    for i, v in enumerate(verdicts)]  # fmt: skip
        return SimpleNamespace(examples=examples, metrics=SimpleNamespace(degeneration=degeneration))

    record = sweep.reference_answers(result([True, False], {"degenerate": 0.0}), result([True, True], {"degenerate": 0.5}),
                                     result([False, False, None], {"degenerate": 0.25}))  # fmt: skip
    for part in ("responses", "degeneration", "criteria"):
        assert set(record[part]) == {"base_train", "teacher_train", "base_heldout"}
    assert record["responses"]["base_heldout"] == ["answer 0", "answer 1", "answer 2"]
    assert record["degeneration"]["teacher_train"] == {"degenerate": 0.5}
    # the held-out rates come from the held-out answers (an unjudged verdict is left out), not from the train ones
    assert record["criteria"]["base_heldout"]["key term"] == 0.0
    assert record["criteria"]["base_train"]["key term"] == 0.5
    assert record["criteria"]["teacher_train"]["key term"] == 1.0
    assert record["criteria"]["base_heldout"]["Uses a numbered list."] == 1.0


def _split(before, after, degenerate):
    return {"before": before, "after": after, "delta": after - before, "delta_ci": [0.0, 0.1], "length": 12.0,
            "degeneration": {"degenerate": degenerate}}  # fmt: skip


@pytest.mark.parametrize("closed, shown", [(None, "gap closed n/a (no gap)"), (0.714, "gap closed 0.71")])
def test_sweep_summary_lines_print_a_missing_gap_share_instead_of_failing(closed, shown):
    # A teacher that leaves no gap (every --smoke run on the instructions world) made the share None, and formatting
    # it with :.2f raised TypeError after the training, before results.json was written.
    row = {"train": _split(0.1, 0.3, 0.25), "heldout": _split(0.2, 0.25, 0.0), "gap_closed_train": closed}
    line = sweep.run_summary("s", row, 12.4)
    assert (
        shown in line and line.startswith("s: train 0.100 -> 0.300 +0.200") and line.endswith("degenerate 0.25; 12 s")
    )
    decoded = sweep.decoded_summary("s", "guard", row)
    assert shown in decoded and decoded.startswith("s decoded guard: train +0.200") and "0.25 / 0.00" in decoded


def test_guard_replay_counts_the_answers_the_piece_loop_ban_would_have_stopped():
    from trl_rubric.evaluation import DegenerationGuard

    replay_mod = load_benchmark("guard_replay")
    texts = ["Hug", "ging", " Face", "Face", "face", " rest", ".", " the", " sun"]

    class Tok:
        def __len__(self):
            return len(texts)

        def decode(self, ids, **_):
            return "".join(texts[i] for i in ids)

        def __call__(self, text, add_special_tokens=False):
            ids, rest = [], text
            while rest:  # greedy longest match over the small vocabulary
                i = max((i for i, t in enumerate(texts) if rest.startswith(t)), key=lambda i: len(texts[i]))
                ids.append(i)
                rest = rest[len(texts[i]) :]
            return {"input_ids": ids}

    options, flagged = replay_mod.BANS["piece_loops"]
    guard = DegenerationGuard(Tok(), **options)
    results = {
        "responses": {"base_train": ["Hugging Face rest.", " the sun."]},
        "decoded": {"g": {"train": {"responses": [" the rest."]}, "heldout": {"responses": []}}},
        "runs": {"x": {"train": {"responses": ["Hugging FaceFacefaceFace."]}, "heldout": {"responses": [" sun."]},
                       "decoded": {"g": {"train": {"responses": ["Face rest."]}}}}},
    }  # fmt: skip
    answers = list(replay_mod.saved_answers(results))
    assert answers == ["Hugging Face rest.", " the sun.", " the rest.", "Hugging FaceFacefaceFace.", " sun.",
                       "Face rest."]  # fmt: skip
    counts = replay_mod.replay(guard, Tok(), answers, flagged)
    assert counts == {"answers": 6, "flagged": 1, "flagged_stopped": 1, "unflagged_stopped": 0,
                      "unflagged_stopped_examples": []}  # fmt: skip
    # the fourth piece is where the ban falls
    assert replay_mod.first_banned(guard, Tok()("Hugging FaceFacefaceFace.")["input_ids"]) == 5


def test_clean_rescore_pairs_every_run_against_one_run_on_the_clean_score(tmp_path, capsys):
    rescore = load_benchmark("clean_rescore")
    loop = "1. Drink water and rest today.\n2. Drink water and rest today.\n3. Drink water and rest today."
    settings = {"world": "health", "seed": 0, "eval_prompts": 2, "heldout_prompts": 2, "eval_samples": 1}
    base = {"base_train": ["Rest.", "Drink water."], "teacher_train": ["Rest.", "Rest and drink water."],
            "base_heldout": ["Rest.", "Sleep."]}  # fmt: skip

    def sweep(name, train_scores, train_answers, heldout_scores):
        return {"settings": dict(settings), "responses": base,
                "runs": {name: {"gap_closed_train": 1.0,
                                "train": {"scores": train_scores, "responses": train_answers},
                                "heldout": {"scores": heldout_scores, "responses": ["Rest.", "Sleep well."]}}}}  # fmt: skip

    paths = []
    for name, run in (("grpo", sweep("grpo", [0.9, 0.5], [loop, "Rest well."], [0.4, 0.2])),
                      ("route", sweep("route", [0.3, 0.4], ["Rest well.", "Drink water."], [0.1, 0.3]))):  # fmt: skip
        (tmp_path / name).mkdir()
        paths.append(str(tmp_path / name / "results.json"))
        (tmp_path / name / "results.json").write_text(json.dumps(run))
    out = rescore.main([*paths, "--versus", paths[0]])
    pairs = out[0]["versus"]
    # The looping GRPO answer earns nothing: route − GRPO = mean([0.3 - 0, 0.4 - 0.5]) on train.
    assert pairs["setting"] == "grpo" and list(pairs["runs"]) == ["route"]
    assert pairs["runs"]["route"]["train"][0] == pytest.approx((0.3 + (0.4 - 0.5)) / 2)
    assert pairs["runs"]["route"]["heldout"][0] == pytest.approx(((0.1 - 0.4) + (0.3 - 0.2)) / 2)
    assert "| route | +10.0 [" in capsys.readouterr().out
    with pytest.raises(ValueError, match="name one of the results files"):
        rescore.main([paths[1], "--versus", paths[0]])
    other = json.loads((tmp_path / "route" / "results.json").read_text())
    other["settings"]["seed"] = 1
    (tmp_path / "route" / "results.json").write_text(json.dumps(other))
    with pytest.raises(ValueError, match="seed=1 .* only runs scored on the same sets pair up"):
        rescore.main([*paths, "--versus", paths[0]])
