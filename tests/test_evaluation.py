"""Evaluation harness, conditioning-gap preflight and per-token view: numbers, outputs and CLI behaviour."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trl_rubric.evaluation import (
    bootstrap_ci,
    conditioning_gap,
    evaluate,
    generate_responses,
    load_model_and_tokenizer,
    strict_outcome,
    summarize,
    token_logratio_view,
    write_gap_outputs,
    write_token_view_html,
)
from trl_rubric.evaluation.report import metrics_markdown
from trl_rubric.judges import Grade, RuleJudge
from trl_rubric.rubric import Rubric
from trl_rubric.teacher import build_teacher_prompt

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def crit(text, weight=1.0, category=None, tags=()):
    return {"text": text, "weight": weight, "category": category, "title": None, "tags": list(tags)}


def rule_rows():
    """Rows whose criteria carry `rule:` checks, so RuleJudge (and the CLI's `--judge_backend rule`) can grade them."""
    words = [("fever", "dose"), ("heart", "risk"), ("cell", "gene"), ("pain", "safety")]
    return [
        {
            "prompt": f"question {i}: explain the topic briefly",
            "rubric": [
                crit(f"mentions {a}", 2.0, "essential", [f"rule:contains:{a}", "axis:accuracy"]),
                crit(f"mentions {b}", 1.0, "important", [f"rule:contains:{b}", "axis:completeness"]),
                crit("mentions wrong", -1.0, "pitfall", ["rule:contains:wrong"]),
            ],
        }
        for i, (a, b) in enumerate(words)
    ]


# ---------------------------------------------------------------------------------------------------------------------
# Metrics on hand-made grades
# ---------------------------------------------------------------------------------------------------------------------


def hand_made_set():
    rubrics = [
        [crit("a1", 2, "essential"), crit("a2", 1, "important"), crit("a3", -1, "pitfall")],
        [crit("b1", 3, "essential"), crit("b2", 1, "important")],
        [crit("c1", 1, "essential"), crit("c2", 1, "essential")],
        [crit("d1", 1, "essential")],
    ]
    verdicts = [[True, False, True], [True, None], [True, True], [None]]
    grades = [Grade.from_verdicts(Rubric.from_any(r), v) for r, v in zip(rubrics, verdicts, strict=True)]
    return grades, rubrics, [10, 20, 30, 41]


def test_metrics_match_hand_computed_values():
    grades, rubrics, lengths = hand_made_set()
    m = summarize(grades, rubrics, lengths, n_bootstrap=200, seed=3)
    # A: (2 - 1) / 3; B: the unknown b2 is left out, 3 / 3; C: 2 / 2; D: nothing known -> judge failure.
    assert m.weighted_score == pytest.approx((1 / 3 + 1 + 1) / 3)
    # Unweighted: A (1 - 1) / 2 = 0, B 1 / 1, C 2 / 2.
    assert m.unweighted_score == pytest.approx(2 / 3)
    # Strict: A fails (a2 unmet, pitfall hit), B unknown (b2 unknown), C passes.
    assert m.strict_completion == pytest.approx(0.5)
    assert m.n_strict_known == 2
    assert m.n_examples == 4 and m.n_scored == 3
    assert m.judge_failure_rate == pytest.approx(0.25)
    assert m.unknown_verdict_rate == pytest.approx(2 / 8)
    assert m.mean_length == pytest.approx(25.25)
    assert m.median_length == pytest.approx(25.0)
    assert m.by_category["essential"] == {"n": 4, "met_rate": 1.0, "weight": 7.0, "polarity": "reward"}
    assert m.by_category["important"]["n"] == 1 and m.by_category["important"]["met_rate"] == 0.0
    assert m.by_category["pitfall"]["polarity"] == "penalty" and m.by_category["pitfall"]["met_rate"] == 1.0
    low, high = m.weighted_score_ci
    assert 0.0 <= low <= m.weighted_score <= high <= 1.0 and high > low


def test_clean_score_pays_nothing_for_degenerate_answers_but_keeps_their_penalties():
    rubric = [crit("a", 2), crit("b", 1), crit("bad", -2)]
    grades = [Grade.from_verdicts(Rubric.from_any(rubric), v) for v in
              ([True, True, False], [True, True, False], [False, False, True], [True, False, False])]  # fmt: skip
    answers = [
        "Drink water and rest.",
        "1. Drink water and rest.\n2. Drink water and rest.",  # repeats a line: flagged, scored 1.0 by the rubric
        "This answer meets the criteria.",  # meta-talk: flagged, and it met the penalty (-2/3)
        "Rest.",
    ]
    m = summarize(grades, [rubric] * 4, [5] * 4, n_bootstrap=0, responses=answers)
    assert m.weighted_score_unclipped == pytest.approx((1 + 1 - 2 / 3 + 2 / 3) / 4)
    assert m.degeneration["degenerate"] == pytest.approx(0.5)
    assert m.clean_score == pytest.approx((1 + 0 - 2 / 3 + 2 / 3) / 4)
    assert summarize(grades, [rubric] * 4, [5] * 4, n_bootstrap=0).clean_score is None, "needs the answers"
    assert "| clean score (degenerate answers earn nothing) | 0.25 |" in "\n".join(metrics_markdown(m))


def test_unknown_verdicts_are_excluded_not_scored_as_zero():
    rubric = [crit("x", 3), crit("y", 1)]
    known = summarize([Grade.from_verdicts(Rubric.from_any(rubric), [True, None])], [rubric], [5], n_bootstrap=0)
    as_false = summarize([Grade.from_verdicts(Rubric.from_any(rubric), [True, False])], [rubric], [5], n_bootstrap=0)
    assert known.weighted_score == 1.0
    assert as_false.weighted_score == pytest.approx(0.75)
    assert known.judge_failure_rate == 0.0 and known.unknown_verdict_rate == 0.5


def test_dataset_mean_is_clipped_but_per_example_scores_are_not():
    rubrics = [[crit("ok", 1), crit("harm", -5, "pitfall")], [crit("ok", 1)]]
    grades = [
        Grade.from_verdicts(Rubric.from_any(r), v) for r, v in zip(rubrics, [[False, True], [True]], strict=True)
    ]
    m = summarize(grades, rubrics, [1, 1], n_bootstrap=100)
    assert m.weighted_score_unclipped == pytest.approx((-5 + 1) / 2)
    assert m.weighted_score == 0.0
    assert all(0.0 <= x <= 1.0 for x in m.weighted_score_ci)


def test_strict_completion_counts_penalties_and_ignores_unknown_only_when_decisive():
    rubric = Rubric.from_any([crit("p", 1), crit("q", 1), crit("pit", -1)])
    assert strict_outcome(rubric, [True, True, False]) is True
    assert strict_outcome(rubric, [True, True, True]) is False  # a penalty was triggered
    assert strict_outcome(rubric, [False, None, None]) is False  # already decided by a known verdict
    assert strict_outcome(rubric, [True, None, False]) is None


def test_holistic_ratings_count_as_scores_not_failures():
    if "rating" not in Grade.__dataclass_fields__:
        pytest.skip("this Grade has no implicit-mode rating")
    rubric = [crit("x", 1), crit("y", 1)]
    grade = Grade(verdicts=[None, None], score=0.7, unweighted_score=0.7, rating=0.7)
    m = summarize([grade], [rubric], [3], n_bootstrap=0)
    assert m.weighted_score == pytest.approx(0.7)
    assert m.judge_failure_rate == 0.0 and m.unknown_verdict_rate == 0.0
    assert m.strict_completion is None and m.by_category == {}


def test_bootstrap_is_seeded_and_paired_resampling_keeps_shared_difficulty():
    values = [0.1, 0.9, 0.4, 0.6, 0.2, 0.8]
    assert bootstrap_ci(values, seed=1) == bootstrap_ci(values, seed=1)
    assert bootstrap_ci(values, seed=1) != bootstrap_ci(values, seed=2)
    # The teacher view is the student view plus 0.1 on every prompt: paired, the gap is exactly 0.1 in every resample.
    shifted = [v + 0.1 for v in values]
    low, high = bootstrap_ci(shifted, values, seed=0)
    assert low == pytest.approx(0.1) and high == pytest.approx(0.1)


# ---------------------------------------------------------------------------------------------------------------------
# Generation and the Python API on the tiny model
# ---------------------------------------------------------------------------------------------------------------------


def test_batched_left_padded_generation_matches_one_by_one(tiny):
    model, tokenizer = tiny
    prompts = ["hi", "explain the fever dose risk for the patient in detail", [{"role": "user", "content": "why?"}]]
    batched = generate_responses(
        model, tokenizer, prompts, max_new_tokens=6, batch_size=3, temperature=0, progress=False
    )
    single = generate_responses(
        model, tokenizer, prompts, max_new_tokens=6, batch_size=1, temperature=0, progress=False
    )
    assert batched.token_ids == single.token_ids
    assert all(0 < n <= 6 for n in batched.lengths)
    assert batched.truncated == [n == 6 for n in batched.lengths]
    sampled = [generate_responses(model, tokenizer, prompts, 6, 2, 1.0, seed=5, progress=False) for _ in range(2)]
    assert sampled[0].texts == sampled[1].texts


def test_evaluate_with_rule_judge_reports_per_example_rows(tiny):
    model, tokenizer = tiny
    result = evaluate(model, rule_rows(), RuleJudge(), tokenizer=tokenizer, max_new_tokens=5, progress=False)
    rows = result.table()
    assert len(rows) == 4 and result.metrics.n_examples == 4
    assert result.metrics.judge_failure_rate == 0.0
    for row in rows:
        assert row["num_tokens"] <= 5 and len(row["criteria"]) == 3
        expected = Rubric.from_any(rule_rows()[0]["rubric"])  # same weights in every row
        assert row["score"] == pytest.approx(expected.score([c["verdict"] for c in row["criteria"]]))
    assert result.to_pandas().shape[0] == 4
    assert {"axis:accuracy", "axis:completeness"} <= set(result.metrics.by_tag)


def test_adapter_folder_is_loaded_on_its_base(tiny_model_path, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    # Random (non-zero) LoRA weights, so that the adapter visibly changes the outputs.
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    model, tokenizer = load_model_and_tokenizer(str(tmp_path / "adapter"), device="cpu")
    ids = torch.tensor([tokenizer("the patient has a fever")["input_ids"]])
    with torch.no_grad():
        expected = peft_model(ids).logits
        plain = AutoModelForCausalLM.from_pretrained(tiny_model_path)(ids).logits
        got = model(ids).logits
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, plain, atol=1e-3)


# ---------------------------------------------------------------------------------------------------------------------
# Conditioning gap
# ---------------------------------------------------------------------------------------------------------------------


class EchoModel:
    """A stand-in generator that answers with its own prompt text, so that what each view *sees* is what it *says*.

    The tiny random model cannot follow a rubric, so to test the sign and the plumbing of the gap we need a generator
    whose output depends on its context in a known way: the teacher's view contains the rubric (and so the words the
    criteria check for), the student's view does not.
    """

    def __init__(self):
        self.calls = []

    def __call__(self, prompts):
        self.calls.append(list(prompts))
        return [p if isinstance(p, str) else p[-1]["content"] for p in prompts]


class RecordingJudge(RuleJudge):
    def __init__(self):
        super().__init__()
        self.prompts = []

    async def _grade(self, prompt, response, rubric):
        self.prompts.append(prompt)
        return await super()._grade(prompt, response, rubric)


def test_gap_is_positive_when_the_rubric_in_context_helps(tiny):
    model, tokenizer = tiny
    template = "{prompt}\nCRITERIA:\n{rubric}"
    echo, judge = EchoModel(), RecordingJudge()
    rows = rule_rows()
    result = conditioning_gap(
        None,
        rows,
        judge,
        tokenizer=tokenizer,
        teacher_prompt_template=template,
        rubric_render_style="weighted",
        teacher_penalties="show",
        n_samples=None,
        generate_fn=echo,
        n_bootstrap=200,
    )
    # The student's view is the prompt; the teacher's is the RGSD teacher prompt with our template and style.
    student_prompts, teacher_prompts = echo.calls
    assert [p[-1]["content"] for p in student_prompts] == [r["prompt"] for r in rows]
    expected = [
        build_teacher_prompt(p, r["rubric"], template, "weighted", "show")
        for p, r in zip(student_prompts, rows, strict=True)
    ]
    assert teacher_prompts == expected
    # The judge grades both views against the original question, never the rubric-conditioned one.
    assert all("CRITERIA" not in str(p) for p in judge.prompts) and len(judge.prompts) == 8
    # Without the rubric nothing is mentioned: 0. With it, every criterion text is echoed, pitfall included:
    # (2 + 1 - 1) / 3 per prompt.
    assert result.score_without_rubric == 0.0
    assert result.score_with_rubric == pytest.approx(2 / 3)
    assert result.gap == pytest.approx(2 / 3) and result.gap_ci[0] > 0
    assert result.recommend_rgsd and "RGSD has a signal" in result.verdict[0]
    # The echoed teacher prompt is much longer than the question: the length warning must fire.
    assert result.length_ratio > 1.3 and result.length_warning
    assert any("mere length" in line for line in result.verdict)
    assert result.to_dict()["gap_ci"][0] > 0


def test_gap_with_penalties_omitted_hides_them_from_the_teacher_and_still_grades_them(tiny):
    _, tokenizer = tiny
    template = "{prompt}\nCRITERIA:\n{rubric}"
    echo, rows = EchoModel(), rule_rows()
    result = conditioning_gap(
        None,
        rows,
        RuleJudge(),
        tokenizer=tokenizer,
        teacher_prompt_template=template,
        teacher_penalties="omit",
        n_samples=None,
        generate_fn=echo,
        n_bootstrap=50,
    )
    student_prompts, teacher_prompts = echo.calls
    assert teacher_prompts == [
        build_teacher_prompt(p, r["rubric"], template, "numbered", penalties="omit")
        for p, r in zip(student_prompts, rows, strict=True)
    ]
    assert all("mentions wrong" not in p[-1]["content"] and "mentions" in p[-1]["content"] for p in teacher_prompts)
    # The echo now meets both gains and not the pitfall: (2 + 1) / 3, where showing it gave (2 + 1 - 1) / 3.
    assert result.score_with_rubric == pytest.approx(1.0)
    assert result.settings["teacher_penalties"] == "omit"
    with pytest.raises(ValueError, match="teacher_penalties is 'hide'"):
        conditioning_gap(None, rows, RuleJudge(), teacher_penalties="hide", generate_fn=echo, n_samples=None)


def test_no_gap_recommends_grpo_instead():
    judge = RuleJudge()
    result = conditioning_gap(
        None, rule_rows(), judge, generate_fn=lambda ps: ["the fever"] * len(ps), n_samples=None, n_bootstrap=100
    )
    assert result.gap == 0.0 and not result.recommend_rgsd and not result.length_warning
    assert "trl-rubric grpo" in result.verdict[0] and "little to distill" in result.verdict[0]


# ---------------------------------------------------------------------------------------------------------------------
# Per-token view
# ---------------------------------------------------------------------------------------------------------------------


def test_token_view_student_logprobs_match_the_generation_scores(tiny):
    import torch

    from trl_rubric.evaluation import _prompt_ids

    model, tokenizer = tiny
    prompt, rubric = rule_rows()[0]["prompt"], rule_rows()[0]["rubric"]
    ids = torch.tensor([_prompt_ids(tokenizer, prompt)])
    out = model.generate(
        ids, max_new_tokens=6, do_sample=False, output_logits=True, return_dict_in_generate=True, eos_token_id=None
    )
    completion = out.sequences[0, ids.shape[1] :].tolist()
    # Raw logits of each generation step, from the KV-cached decoding loop: an independent path to the same numbers.
    expected = [
        torch.log_softmax(step[0].float(), -1)[t].item() for step, t in zip(out.logits, completion, strict=True)
    ]
    (view,) = token_logratio_view(model, tokenizer, [prompt], [rubric], [completion])
    assert view.token_ids == completion
    assert view.student_logprobs == pytest.approx(expected, abs=1e-4)
    assert "".join(view.tokens) == tokenizer.decode(completion)
    # The rubric changes the context, so the teacher's numbers differ.
    assert max(abs(x) for x in view.logratios) > 1e-4


def test_token_view_teacher_reads_the_rubric_without_penalties_when_told(tiny):
    from trl_rubric.evaluation import _prompt_ids
    from trl_rubric.evaluation.token_view import _completion_logprobs

    model, tokenizer = tiny
    prompt, rubric = rule_rows()[0]["prompt"], rule_rows()[0]["rubric"]
    completion = tokenizer("the fever dose is wrong", add_special_tokens=False)["input_ids"]
    (omitted,) = token_logratio_view(model, tokenizer, [prompt], [rubric], [completion], teacher_penalties="omit")
    (shown,) = token_logratio_view(model, tokenizer, [prompt], [rubric], [completion], teacher_penalties="show")
    teacher_prompt = build_teacher_prompt(prompt, rubric, penalties="omit")
    expected = _completion_logprobs(model, _prompt_ids(tokenizer, teacher_prompt), completion)
    assert omitted.teacher_logprobs == pytest.approx(expected, abs=1e-5)
    assert max(abs(a - b) for a, b in zip(omitted.teacher_logprobs, shown.teacher_logprobs, strict=True)) > 1e-4
    assert omitted.student_logprobs == pytest.approx(shown.student_logprobs, abs=1e-6)


def test_token_view_html_escapes_model_text(tiny, tmp_path):
    model, tokenizer = tiny
    views = token_logratio_view(
        model, tokenizer, ["say <b>hi</b> & go"], [rule_rows()[0]["rubric"]], ["<script>alert(1)</script> & x"]
    )
    text = Path(write_token_view_html(views, tmp_path / "v.html")).read_text()
    assert "<script" not in text and "<b>hi" not in text and "</script" not in text
    assert "say &lt;b&gt;hi&lt;/b&gt; &amp; go" in text
    # The completion is split into token spans, so its escaped pieces appear separately.
    assert "&lt;" in text and "&amp;" in text
    assert "".join(views[0].tokens) == "<script>alert(1)</script> & x"


# ---------------------------------------------------------------------------------------------------------------------
# Output files and the CLI
# ---------------------------------------------------------------------------------------------------------------------


def assert_png(path):
    data = Path(path).read_bytes()
    assert data.startswith(PNG_MAGIC), path
    from PIL import Image

    with Image.open(path) as image:
        assert image.width > 50 and image.height > 50


def write_rows(path, rows):
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return str(path)


def test_gap_outputs_with_token_views(tiny, tmp_path):
    model, tokenizer = tiny
    result = conditioning_gap(
        model, rule_rows(), RuleJudge(), tokenizer=tokenizer, max_new_tokens=4, n_samples=3, progress=False,
        n_token_views=2,
    )  # fmt: skip
    assert len(result.token_views) == 2 and result.n_examples == 3
    files = write_gap_outputs(result, tmp_path)
    for name in ("results.json", "report.md", "responses.jsonl", "token_view.html", "token_view.png"):
        assert (tmp_path / name).is_file(), name
    assert_png(files["token_view_png"])
    assert_png(files["length_histogram"])
    assert len((tmp_path / "responses.jsonl").read_text().splitlines()) == 3
    clean = (result.without_rubric.metrics.clean_score, result.with_rubric.metrics.clean_score)
    assert None not in clean
    report = (tmp_path / "report.md").read_text()
    assert (
        f"| clean score without / with rubric (degenerate answers earn nothing) | {clean[0]:.4g} / {clean[1]:.4g} |"
        in report
    )


RESULT_KEYS = {
    "weighted_score",
    "unweighted_score",
    "strict_completion",
    "mean_length",
    "median_length",
    "judge_failure_rate",
    "n_examples",
    "weighted_score_ci",
}
GAP_KEYS = {"score_without_rubric", "score_with_rubric", "gap", "gap_ci", "length_ratio"}


def http_rows():
    # FakeJudgeServer marks a criterion met when its last word appears in the response.
    return [
        {
            "prompt": f"question {i}: explain {w}",
            "rubric": [crit(f"mentions {w}", 2, "essential"), crit("says the", 1)],
        }
        for i, w in enumerate(["fever", "heart", "dose", "cell"])
    ]


def test_eval_cli_with_http_judge_writes_every_output(tiny_model_path, tmp_path, capsys):
    from trl_rubric.cli import main
    from trl_rubric.testing.judge_server import FakeJudgeServer

    data = write_rows(tmp_path / "data.jsonl", http_rows())
    out = tmp_path / "eval"
    with FakeJudgeServer() as server:
        code = main(
            ["eval", "--model_name_or_path", tiny_model_path, "--dataset_name", data, "--n_samples", "3",
             "--max_completion_length", "4", "--batch_size", "2", "--output_dir", str(out),
             "--bootstrap_samples", "50",
             "--judge_backend", "openai", "--judge_base_url", server.url, "--judge_model", "fake-judge",
             "--progress", "false"]
        )  # fmt: skip
        requests = server.requests
    assert code == 0, capsys.readouterr().err
    assert requests >= 3  # one batched judge call per response
    results = json.loads((out / "results.json").read_text())
    assert RESULT_KEYS <= set(results) and results["n_examples"] == 3
    assert results["judge_failure_rate"] == 0.0
    lines = [json.loads(line) for line in (out / "responses.jsonl").read_text().splitlines()]
    assert len(lines) == 3
    for line in lines:
        # The fake judge's verdicts follow its documented rule, so they can be recomputed here.
        from trl_rubric.testing.judge_server import criterion_met

        assert [c["verdict"] for c in line["criteria"]] == [criterion_met(c["text"], line["response"]) for c in
                                                            line["criteria"]]  # fmt: skip
    report = (out / "report.md").read_text()
    assert "weighted score" in report and "| essential |" in report
    for png in ("score_by_category.png", "length_histogram.png"):
        assert_png(out / png)
    assert "weighted score" in capsys.readouterr().out


def test_gap_cli_reads_a_recipe_and_writes_token_views(tiny_model_path, tmp_path, capsys):
    from trl_rubric.cli import main

    data = write_rows(tmp_path / "data.jsonl", rule_rows())
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"model_name_or_path: {tiny_model_path}\ndataset_name: {data}\njudge_backend: rule\nmax_completion_length: 4\n"
        "n_samples: 3\nn_token_views: 9\nbootstrap_samples: 50\nprogress: false\n"
    )
    out = tmp_path / "gap"
    code = main(["gap", "--config", str(recipe), "--n_token_views", "2", "--output_dir", str(out)])
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert GAP_KEYS <= set(results) and results["n_examples"] == 3
    assert len(results["token_views"]) == 2  # the command line overrides the recipe
    assert results["gap"] == pytest.approx(results["score_with_rubric"] - results["score_without_rubric"])
    html_text = (out / "token_view.html").read_text()
    assert html_text.count("<h2>Sample") == 2
    for png in ("token_view.png", "length_histogram.png"):
        assert_png(out / png)
    printed = capsys.readouterr().out
    assert "Conditioning gap" in printed and "gap" in printed


def test_gap_cli_passes_a_training_recipes_teacher_penalties_through(tiny_model_path, tmp_path, capsys):
    from trl_rubric.cli import main

    data = write_rows(tmp_path / "data.jsonl", rule_rows())
    recipe = tmp_path / "recipe.yaml"
    # An RGSD training recipe: learning_rate is a training field, teacher_penalties is shared with gap.
    recipe.write_text(
        f"model_name_or_path: {tiny_model_path}\ndataset_name: {data}\njudge_backend: rule\nmax_completion_length: 3\n"
        "n_samples: 2\nn_token_views: 0\nbootstrap_samples: 20\nprogress: false\nplots: false\n"
        "learning_rate: 1.0e-5\nteacher_penalties: omit\n"
    )
    out = tmp_path / "gap"
    assert main(["gap", "--config", str(recipe), "--output_dir", str(out)]) == 0, capsys.readouterr().err
    assert json.loads((out / "results.json").read_text())["settings"]["teacher_penalties"] == "omit"
    # the command line overrides the recipe, as for every option
    assert main(["gap", "--config", str(recipe), "--output_dir", str(out), "--teacher_penalties", "show"]) == 0
    assert json.loads((out / "results.json").read_text())["settings"]["teacher_penalties"] == "show"


def test_console_script_runs_eval_in_a_subprocess(tiny_model_path, tmp_path):
    data = write_rows(tmp_path / "data.jsonl", rule_rows())
    out = tmp_path / "eval"
    script = Path(sys.executable).parent / "trl-rubric"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [str(script), "eval", "--model_name_or_path", tiny_model_path, "--dataset_name", data, "--judge_backend",
         "rule", "--max_completion_length", "3", "--n_samples", "2", "--output_dir", str(out),
         "--bootstrap_samples", "20",
         "--progress", "false"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert RESULT_KEYS <= set(json.loads((out / "results.json").read_text()))
    for name in ("report.md", "responses.jsonl"):
        assert (out / name).is_file()
    for png in ("score_by_category.png", "length_histogram.png"):
        assert_png(out / png)


@pytest.mark.parametrize(
    "case",
    [
        "missing_model",
        "unknown_judge",
        "empty_dataset",
        "empty_list",
        "malformed_row",
        "unknown_flag",
        "no_dataset",
        "vllm_not_installed",
    ],
)
def test_bad_input_gives_one_line_error_and_exit_code_2(case, tiny_model_path, tmp_path, capsys):
    from trl_rubric.cli import main

    data = write_rows(tmp_path / "data.jsonl", rule_rows())
    args = {"--model_name_or_path": tiny_model_path, "--dataset_name": data, "--judge_backend": "rule"}
    expected = {
        "missing_model": "does not exist",
        "unknown_judge": "invalid choice: 'nope'",
        "empty_dataset": "is empty",
        "empty_list": "is empty",
        "malformed_row": "rubric row 1",
        "unknown_flag": "--frobnicate",
        "no_dataset": "--dataset_name",
        "vllm_not_installed": "needs vLLM",
    }[case]
    extra = []
    if case == "missing_model":
        args["--model_name_or_path"] = str(tmp_path / "no-such-model")
    elif case == "unknown_judge":
        args["--judge_backend"] = "nope"
    elif case == "empty_dataset":
        (tmp_path / "empty.jsonl").write_text("")
        args["--dataset_name"] = str(tmp_path / "empty.jsonl")
    elif case == "empty_list":
        (tmp_path / "empty.json").write_text("[]")
        args["--dataset_name"] = str(tmp_path / "empty.json")
    elif case == "malformed_row":
        rows = rule_rows()
        rows[1]["rubric"][0]["weight"] = "high"
        args["--dataset_name"] = write_rows(tmp_path / "bad.jsonl", rows)
    elif case == "unknown_flag":
        extra = ["--frobnicate", "1"]
    elif case == "no_dataset":
        del args["--dataset_name"]
    elif case == "vllm_not_installed":
        if importlib.util.find_spec("vllm") is not None:
            pytest.skip("vLLM is installed here")
        extra = ["--use_vllm", "true"]
    argv = [x for kv in args.items() for x in kv] + extra + ["--output_dir", str(tmp_path / "out")]
    for command in ("eval", "gap"):
        assert main([command, *argv]) == 2
        err = capsys.readouterr().err
        # Only `datasets`' own progress bar may come before the one-line error.
        last = err.strip().splitlines()[-1]
        assert last.startswith(f"trl-rubric {command}: error: "), err
        assert expected in last and "Traceback" not in err
    if case == "malformed_row":
        assert "weight" in last and "'high'" in last
    assert not (tmp_path / "out" / "results.json").exists()


def test_missing_model_in_a_subprocess_prints_no_traceback(tmp_path):
    data = write_rows(tmp_path / "data.jsonl", rule_rows())
    script = Path(sys.executable).parent / "trl-rubric"
    proc = subprocess.run(
        [str(script), "gap", "--model_name_or_path", str(tmp_path / "nope"), "--dataset_name", data,
         "--judge_backend", "rule"],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "trl-rubric gap: error: model path" in proc.stderr


def test_judge_that_scores_nothing_is_reported_and_exits_1(tiny_model_path, tmp_path, capsys):
    from trl_rubric.cli import main

    rows = rule_rows()
    for row in rows:
        for criterion in row["rubric"]:
            criterion["tags"] = []  # no rule: the rule judge cannot grade anything
    data = write_rows(tmp_path / "data.jsonl", rows)
    out = tmp_path / "eval"
    argv = ["--model_name_or_path", tiny_model_path, "--dataset_name", data, "--judge_backend", "rule",
            "--max_completion_length", "2", "--n_samples", "2", "--output_dir", str(out),
            "--progress", "false"]  # fmt: skip
    assert main(["eval", *argv]) == 1
    assert "100.0% of grades have no score" in capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert results["judge_failure_rate"] == 1.0 and results["weighted_score"] is None


TOY_RECIPE = str(Path(__file__).resolve().parents[1] / "recipes" / "toy.yaml")


def main_cli(argv):
    from trl_rubric.cli import main

    return main(argv)


FAST = ["--judge_backend", "rule", "--n_samples", "3", "--bootstrap_samples", "20", "--plots", "false",
        "--progress", "false"]  # fmt: skip


def test_gap_runs_on_a_training_recipe_as_is(tmp_path, monkeypatch, capsys):
    # recipes/toy.yaml is an RGSD training recipe: num_generations, learning_rate, use_cpu, ... are not gap options.
    monkeypatch.chdir(tmp_path)
    code = main_cli(["gap", "--config", TOY_RECIPE, *FAST, "--n_token_views", "0"])
    assert code == 0, capsys.readouterr().err
    # The recipe's output_dir is the training run's folder: the report goes into its gap/ subfolder.
    results = json.loads((tmp_path / "outputs" / "toy-rgsd" / "gap" / "results.json").read_text())
    assert results["n_examples"] == 3
    assert results["settings"]["max_new_tokens"] == 24  # the recipe's max_completion_length
    assert results["settings"]["split"] == "train"


def test_eval_runs_on_a_training_recipe_as_is(tmp_path, capsys):
    out = tmp_path / "eval"
    code = main_cli(["eval", "--config", TOY_RECIPE, *FAST, "--max_completion_length", "6", "--output_dir", str(out)])
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert results["n_examples"] == 3 and results["config"]["max_new_tokens"] == 6


def test_a_recipe_field_no_command_knows_is_an_error(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(Path(TOY_RECIPE).read_text() + "num_generation: 4\n")  # typo of num_generations
    assert main_cli(["gap", "--config", str(recipe), *FAST]) == 2
    err = capsys.readouterr().err
    assert "num_generation" in err and "unknown field" in err and "Traceback" not in err


def test_eval_reads_the_old_option_names_with_a_warning(tiny_model_path, tmp_path, caplog):
    # Column names no detector knows, so the run only works if the old options reach the loader.
    rows = [{"ask": r["prompt"], "checks": r["rubric"]} for r in rule_rows()]
    data = write_rows(tmp_path / "data.jsonl", rows)
    out = tmp_path / "eval"
    argv = ["eval", "--model_name_or_path", tiny_model_path, "--dataset_name", data, "--prompt_column", "ask",
            "--rubric_column", "checks", "--dataset_split", "train", "--max_new_tokens", "3",
            "--output_dir", str(out), *FAST]  # fmt: skip
    with caplog.at_level("WARNING"):
        assert main_cli(argv) == 0
    assert json.loads((out / "results.json").read_text())["config"]["max_new_tokens"] == 3
    for old in ("prompt_column", "rubric_column", "dataset_split", "max_new_tokens"):
        assert f"{old!r} is deprecated" in caplog.text
