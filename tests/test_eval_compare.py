"""`trl-rubric eval --n_samples_per_prompt N` and `--compare DIR_A DIR_B`: two runs paired by prompt."""

import json

import numpy as np
import pytest

from trl_rubric.evaluation import EvaluationError, compare_eval_runs


def _write_run(folder, rows, config=None):
    folder.mkdir(parents=True)
    (folder / "responses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "results.json").write_text(json.dumps({"config": config or {"seed": 0, "dataset_name": "d"}}))
    return folder


def _rows(scores):
    """`{prompt: [score or None (failed)]}` -> response rows."""
    return [
        {"prompt": p, "score": s, "failed": s is None, "response": "x"}
        for p, answers in scores.items()
        for s in answers
    ]


def _reference_paired_ci(b, a, n_resamples, level, seed):
    # Plain percentile bootstrap over prompts: resample prompt indices, difference of clipped means.
    a, b = np.asarray(a), np.asarray(b)
    idx = np.random.default_rng(seed).integers(0, len(a), size=(n_resamples, len(a)))
    stats = np.clip(b[idx].mean(1), 0, 1) - np.clip(a[idx].mean(1), 0, 1)
    return tuple(np.quantile(stats, [(1 - level) / 2, 1 - (1 - level) / 2]))


def test_comparison_pairs_by_prompt_averaging_answers_with_a_bootstrap_over_prompts(tmp_path):
    a = {"p1": [0.0, 1.0], "p2": [0.5, 0.5], "p3": [0.2, None], "p4": [1.0, 1.0], "p5": [None, None]}
    b = {"p1": [1.0, 1.0], "p2": [0.5, 1.0], "p3": [0.2, 0.4], "p4": [1.0, 1.0], "p5": [0.3, 0.3]}
    run_a = _write_run(tmp_path / "a", _rows(a))
    run_b = _write_run(tmp_path / "b", _rows(dict(reversed(b.items()))))  # row order does not matter
    result = compare_eval_runs(run_a, run_b, n_bootstrap=500, confidence_level=0.9, seed=3)
    mean_a, mean_b = [0.5, 0.5, 0.2, 1.0], [1.0, 0.75, 0.3, 1.0]  # p5 has no graded answer in A: unpaired
    assert result.n_prompts == 4 and result.n_unpaired == 1 and result.answers_per_prompt == (2, 2)
    assert result.score_a == pytest.approx(np.mean(mean_a)) and result.score_b == pytest.approx(np.mean(mean_b))
    assert result.difference == pytest.approx(np.mean(mean_b) - np.mean(mean_a))
    assert result.difference_ci == pytest.approx(_reference_paired_ci(mean_b, mean_a, 500, 0.9, 3))
    assert (result.b_better, result.a_better, result.ties) == (3, 0, 1)
    assert result.settings_differ == {}
    assert json.loads(json.dumps(result.to_dict()))["difference_ci"] == pytest.approx(list(result.difference_ci))


def test_comparison_also_pairs_clean_scores_when_rows_carry_degeneration_flags(tmp_path):
    def rows(answers):  # (score, degenerate) per answer
        return [{"prompt": p, "score": s, "failed": False, "response": "x", "degeneration": {"degenerate": d}}
                for p, pairs in answers.items() for s, d in pairs]  # fmt: skip

    a = {"p1": [(0.2, False), (0.4, False)], "p2": [(0.5, False)], "p3": [(0.1, False)]}
    b = {"p1": [(0.9, True), (0.6, False)], "p2": [(-0.2, True)], "p3": [(0.3, False)]}  # B loops on two answers
    result = compare_eval_runs(_write_run(tmp_path / "a", rows(a)), _write_run(tmp_path / "b", rows(b)),
                               n_bootstrap=400, seed=1)  # fmt: skip
    assert result.difference == pytest.approx(np.mean([0.75, -0.2, 0.3]) - np.mean([0.3, 0.5, 0.1]))
    clean_b = [0.3, -0.2, 0.3]  # a flagged answer earns min(score, 0): 0.9 -> 0, -0.2 stays
    assert result.clean_b == pytest.approx(np.clip(np.mean(clean_b), 0, 1))
    assert result.clean_difference == pytest.approx(np.mean(clean_b) - np.mean([0.3, 0.5, 0.1]))
    assert result.clean_difference_ci == pytest.approx(_reference_paired_ci(clean_b, [0.3, 0.5, 0.1], 400, 0.95, 1))
    assert "clean score (degenerate answers earn nothing): B - A = " in result.summary()
    plain = compare_eval_runs(
        _write_run(tmp_path / "c", _rows({"p1": [0.1]})), _write_run(tmp_path / "d", _rows({"p1": [0.2]}))
    )
    assert plain.clean_difference is None and "clean score" not in plain.summary(), "rows without flags: no clean row"


def test_comparison_refuses_runs_on_different_prompts_and_flags_different_settings(tmp_path):
    run_a = _write_run(tmp_path / "a", _rows({"p1": [1.0], "p2": [0.0]}))
    run_b = _write_run(tmp_path / "b", _rows({"p1": [1.0], "p3": [0.0]}))
    with pytest.raises(EvaluationError, match="not made on the same prompts: 1 only in A, 1 only in B"):
        compare_eval_runs(run_a, run_b)
    run_c = _write_run(tmp_path / "c", _rows({"p1": [0.0], "p2": [0.0]}), {"seed": 1, "dataset_name": "d"})
    assert compare_eval_runs(run_a, run_c).settings_differ == {"seed": (0, 1)}
    with pytest.raises(EvaluationError, match="has no responses.jsonl"):
        compare_eval_runs(tmp_path / "a", tmp_path / "nowhere")


def test_eval_cli_samples_n_answers_per_prompt_and_compares_two_runs(tiny_model_path, tmp_path, capsys):
    from trl_rubric.cli import main

    rows = [{"prompt": f"Say something {i}.", "rubric": [
        {"text": "Mentions the word the.", "weight": 1.0, "tags": ["rule:contains:the"]},
        {"text": "Stays under three words.", "weight": 1.0, "tags": ["rule:max_words:3"]}]} for i in range(3)]  # fmt: skip
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = ["--model_name_or_path", tiny_model_path, "--dataset_name", str(data), "--judge_backend", "rule",
              "--bootstrap_samples", "0", "--progress", "false", "--plots", "false", "--n_samples_per_prompt", "2"]  # fmt: skip
    for name, length in (("a", "2"), ("b", "6")):
        argv = ["eval", *common, "--max_completion_length", length, "--output_dir", str(tmp_path / name)]
        assert main(argv) == 0, capsys.readouterr().err
    answers = [json.loads(line) for line in (tmp_path / "a" / "responses.jsonl").read_text().splitlines()]
    assert len(answers) == 6
    assert [(x["prompt_index"], x["sample"]) for x in answers] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    assert [x["prompt"] for x in answers[::2]] == [x["prompt"] for x in answers[1::2]]
    capsys.readouterr()

    argv = ["eval", "--compare", str(tmp_path / "a"), str(tmp_path / "b"), "--output_dir", str(tmp_path / "cmp")]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "the runs differ in max_new_tokens: A 2, B 6" in err and "3 paired prompts, 2/2 answers each" in out
    saved = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert saved == compare_eval_runs(tmp_path / "a", tmp_path / "b", n_bootstrap=1000).to_dict()


@pytest.mark.parametrize(
    ("command", "extra", "message"),
    [
        ("eval", ["--n_samples_per_prompt", "2", "--temperature", "0"], "samples the same greedy answer"),
        ("eval", ["--n_samples_per_prompt", "0"], "--n_samples_per_prompt is 0"),
        ("eval", ["--compare", "only_one"], "--compare takes two eval output folders"),
        ("gap", ["--n_samples_per_prompt", "2"], "are options of `trl-rubric eval`, not of gap"),
    ],
)
def test_bad_sampling_and_compare_options_are_one_line_errors(
    command, extra, message, tiny_model_path, tmp_path, capsys
):
    from trl_rubric.cli import main

    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"prompt": "Hi.", "rubric": [{"text": "Greets", "weight": 1.0}]}) + "\n")
    argv = [command, "--model_name_or_path", tiny_model_path, "--dataset_name", str(data), "--judge_backend", "rule"]
    assert main([*argv, *extra]) == 2
    assert message in capsys.readouterr().err
