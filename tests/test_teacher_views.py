"""Choosing the teacher view by measurement: `compare_teacher_views`, `gap --compare_views`, and the rule."""

import json

import pytest

from trl_rubric.evaluation.views import (
    TeacherView,
    candidate_views,
    choose_view,
    compare_teacher_views,
)
from trl_rubric.judges.rule import RuleJudge

TEMPLATE = "{prompt}\nCRITERIA:\n{rubric}"


def crit(text, weight, tag):
    return {"text": text, "weight": weight, "category": None, "title": None, "tags": [tag]}


def rule_rows(n=6):
    words = ["fever", "heart", "cell", "pain", "sleep", "water"]
    return [
        {
            "prompt": f"question {i}: explain topic {i} briefly",
            "rubric": [
                crit(f"mentions {words[i % 6]}", 2.0, f"rule:contains:{words[i % 6]}"),
                crit("mentions safety", 1.0, "rule:contains:safety"),
                crit("mentions wrong", -1.0, "rule:contains:wrong"),
            ],
        }
        for i in range(n)
    ]


class Echo:
    """Answers with the last line(s) of its own prompt, so what a view shows is what it says; records its calls."""

    def __init__(self):
        self.calls = []

    def __call__(self, prompts):
        self.calls.append(list(prompts))
        return [p if isinstance(p, str) else p[-1]["content"] for p in prompts]


def test_views_are_paired_student_answers_generated_once_and_every_view_on_the_same_prompts():
    echo, rows = Echo(), rule_rows()
    views = candidate_views(TEMPLATE, penalties=("omit", "show"), render_styles=("weighted",))
    result = compare_teacher_views(
        None, rows, RuleJudge(), views, n_samples=4, seed=3, generate_fn=echo, n_bootstrap=50
    )
    questions = [c[-1]["content"] if not isinstance(c, str) else c for c in echo.calls[0]]
    assert len(echo.calls) == 1 + len(views)  # one student pass, shared; one teacher pass per view
    for call in echo.calls[1:]:
        assert [p if isinstance(p, str) else p[-1]["content"] for p in call] != questions
        assert all(q in t for q, t in zip(questions, [str(p) for p in call], strict=True))  # same prompts, same order
    assert result.n_examples == 4 and [v["name"] for v in result.views] == [v.name for v in views]
    # Same student answers under every view: one student score.
    assert {g.score_without_rubric for g in result.gaps.values()} == {result.score_without_rubric}
    for v in result.views:
        assert v["vs_recommended"]["n"] == 4


def test_recommends_the_view_with_the_higher_gap_and_reports_the_paired_difference():
    # Echoing a teacher view that shows the penalty writes the penalised word: shown scores (2+1-1)/3, omitted 3/3.
    result = compare_teacher_views(
        None, rule_rows(), RuleJudge(), candidate_views(TEMPLATE, penalties=("show", "omit")), n_samples=None,
        generate_fn=Echo(), n_bootstrap=200,
    )  # fmt: skip
    rows = {v["name"]: v for v in result.views}
    assert rows["penalties=omit"]["gap"] == pytest.approx(1.0)
    assert rows["penalties=show"]["gap"] == pytest.approx(2 / 3)
    assert result.recommended == "penalties=omit" and "highest gap" in result.reason
    diff = rows["penalties=show"]["vs_recommended"]
    assert diff["diff"] == pytest.approx(-1 / 3) and diff["ci"][1] < 0
    assert "**penalties=omit**" in result.report()
    assert json.loads(json.dumps(result.to_dict()))["recommended"] == "penalties=omit"


def test_met_rate_per_criterion_for_the_student_and_every_view():
    # The student echoes the question (meets nothing); each view's teacher echoes what it is shown, so the penalty
    # criterion is met only where the view shows it, and each row's key word where its line is shown.
    rows = rule_rows()
    result = compare_teacher_views(
        None, rows, RuleJudge(), candidate_views(TEMPLATE, penalties=("show", "omit")), n_samples=None,
        generate_fn=Echo(), n_bootstrap=50,
    )  # fmt: skip
    assert result.student_criteria == {
        "mentions fever": 0.0, "mentions heart": 0.0, "mentions cell": 0.0, "mentions pain": 0.0,
        "mentions sleep": 0.0, "mentions water": 0.0, "mentions safety": 0.0, "mentions wrong": 0.0,
    }  # fmt: skip
    views = {v["name"]: v["criteria"] for v in result.views}
    assert views["penalties=show"]["mentions wrong"] == 1.0 and views["penalties=omit"]["mentions wrong"] == 0.0
    assert views["penalties=omit"]["mentions safety"] == 1.0 and views["penalties=omit"]["mentions pain"] == 1.0
    report = result.report()
    assert "| criterion | student | penalties=show | penalties=omit |" in report
    assert "| mentions wrong | 0.000 | 1.000 | 0.000 |" in report
    assert json.loads(json.dumps(result.to_dict()))["student_criteria"]["mentions safety"] == 0.0


def words_writer(prompts):
    """Writes the word of every "mentions X" line it reads; after "Meet the requirements" it also talks about them."""
    out = []
    for p in prompts:
        text = p if isinstance(p, str) else p[-1]["content"]
        words = [line.split("mentions ", 1)[1] for line in text.splitlines() if "mentions " in line]
        talk = "As the requirements say, " if "Meet the requirements" in text else ""
        out.append(talk + " ".join(words))
    return out


def test_a_higher_gap_bought_with_degenerate_answers_is_passed_over():
    # The second view omits the penalty (higher gap) but its template makes every answer talk about "the
    # requirements", so the clean view with penalties shown wins unless the margin allows the leaky one.
    leaky = "{prompt}\nMeet the requirements below:\n{rubric}"
    views = [TeacherView("clean", TEMPLATE, "numbered", "show"), TeacherView("leaky", leaky, "numbered", "omit")]
    kwargs = dict(n_samples=None, generate_fn=words_writer, n_bootstrap=50)
    result = compare_teacher_views(None, rule_rows(), RuleJudge(), views, **kwargs)
    rows = {v["name"]: v for v in result.views}
    assert rows["leaky"]["gap"] > rows["clean"]["gap"]
    assert (
        rows["leaky"]["degenerate"] == 1.0 and rows["leaky"]["meta_talk"] == 1.0 and rows["clean"]["degenerate"] == 0.0
    )
    assert result.recommended == "clean" and "leaky has the highest gap" in result.reason
    # With degenerate answers earning nothing, the leaky view's edge is gone; the clean view keeps all of its gap.
    assert rows["leaky"]["clean_gap"] == pytest.approx(0.0)
    assert rows["clean"]["clean_gap"] == pytest.approx(rows["clean"]["gap"]) and rows["clean"]["gap"] > 0
    assert "| clean gap |" in result.report()
    loose = compare_teacher_views(None, rule_rows(), RuleJudge(), views, max_degeneration_margin=1.0, **kwargs)
    assert loose.recommended == "leaky"


def test_choose_view_rule_on_constructed_rows():
    rows = [
        {"name": "a", "gap": 0.30, "degenerate": 0.10},
        {"name": "b", "gap": 0.35, "degenerate": 0.14},
        {"name": "c", "gap": 0.40, "degenerate": 0.30},
    ]
    assert choose_view(rows, 0.05)[0] == "b"  # c is 0.20 above the cleanest; b is within 0.05
    assert choose_view(rows, 0.0)[0] == "a"
    assert choose_view(rows, 0.25)[0] == "c"
    assert (
        choose_view([{"name": "x", "gap": 0.2, "degenerate": 0.0}, {"name": "y", "gap": 0.2, "degenerate": 0.0}])[0]
        == "x"
    )
    assert choose_view([{"name": "x", "gap": None, "degenerate": None}])[0] is None


def test_candidate_views_drop_duplicates_and_bad_input_is_refused():
    views = candidate_views(TEMPLATE, penalties=("omit", "show"), render_styles=("numbered", "json"))
    assert [v.name for v in views] == ["penalties=omit", "penalties=show", "render_style=json"]
    with pytest.raises(ValueError, match="names repeat"):
        compare_teacher_views(None, rule_rows(), RuleJudge(), [TeacherView("a"), TeacherView("a")], generate_fn=Echo())
    with pytest.raises(ValueError, match="max_degeneration_margin is -1"):
        compare_teacher_views(None, rule_rows(), RuleJudge(), max_degeneration_margin=-1, generate_fn=Echo())


def test_gap_cli_compare_views_writes_the_comparison(tiny_model_path, tmp_path, capsys):
    from trl_rubric.cli import main

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rule_rows(3)))
    out = tmp_path / "views"
    args = ["gap", "--model_name_or_path", tiny_model_path, "--dataset_name", str(data), "--judge_backend", "rule",
            "--max_completion_length", "3", "--n_samples", "3", "--bootstrap_samples", "20", "--progress", "false",
            "--plots", "false", "--n_token_views", "0", "--output_dir", str(out), "--compare_views",
            "--compare_render_styles", "weighted"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    saved = json.loads((out / "views.json").read_text())
    assert [v["name"] for v in saved["views"]] == ["penalties=omit", "penalties=show", "render_style=weighted"]
    assert saved["recommended"] in {v["name"] for v in saved["views"]} and saved["n_examples"] == 3
    assert saved["settings"]["dataset_name"] == str(data)
    assert "Recommended:" in (out / "views.md").read_text() and "Recommended:" in capsys.readouterr().out
    assert main([*args[:-1], "bulleted"]) != 0  # an unknown render style is refused before any generation
    assert "--compare_render_styles has 'bulleted'" in capsys.readouterr().err


# --- teacher_penalties="auto" in RGSDTrainer ---------------------------------------------------------------------


def auto_rows(n=8):
    # Shown the penalty, the fake generator below writes "safety" (met); omitted, it writes nothing: "show" is better.
    return [
        {
            "prompt": [{"role": "user", "content": f"question {i}: explain topic {i} briefly"}],
            "rubric": [
                crit("mentions safety", 1.0, "rule:contains:safety"),
                crit("mentions wrong", -1.0, "rule:contains:wrong"),
            ],
        }
        for i in range(n)
    ]


def test_auto_refuses_to_construct_without_a_judge(tiny_model_path, tmp_path):
    from datasets import Dataset

    from trl_rubric import RGSDTrainer
    from trl_rubric.testing import rgsd_test_config

    with pytest.raises(ValueError, match="teacher_penalties='auto' .* needs a judge: pass teacher_view_judge"):
        RGSDTrainer(
            tiny_model_path,
            args=rgsd_test_config(tmp_path, teacher_penalties="auto"),
            train_dataset=Dataset.from_list(auto_rows()),
        )
    with pytest.raises(ValueError, match="teacher_view_samples is 1"):
        rgsd_test_config(tmp_path, teacher_penalties="auto", teacher_view_samples=1)


def test_auto_measures_both_views_picks_the_better_one_and_logs_it_before_step_0(
    tiny_model_path, tmp_path, monkeypatch, caplog
):
    from datasets import Dataset
    from transformers import TrainerCallback

    from trl_rubric import RGSDTrainer
    from trl_rubric.evaluation import views as views_module
    from trl_rubric.model_card import training_facts
    from trl_rubric.testing import rgsd_test_config

    seen = []

    def fake_generate(model, tokenizer, prompts, *args, **kwargs):
        seen.append(len(prompts))
        texts = [p if isinstance(p, str) else p[-1]["content"] for p in prompts]
        return ["Think of safety first." if "avoids" in t else "It depends." for t in texts]

    monkeypatch.setattr(views_module, "generate_responses", fake_generate)
    at_step_0 = []

    class Record(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 0:
                at_step_0.append(trainer.teacher_context.penalties)

    trainer = RGSDTrainer(
        tiny_model_path,
        args=rgsd_test_config(tmp_path, teacher_penalties="auto", teacher_view_samples=6, max_steps=1),
        train_dataset=Dataset.from_list(auto_rows()),
        teacher_view_judge=RuleJudge(),
        callbacks=[Record()],
    )
    assert trainer.teacher_context.penalties == "omit"  # the default until measured
    with caplog.at_level("WARNING", logger="trl_rubric.trainers.rgsd_view"):
        trainer.train()
    assert seen == [6, 6, 6]  # the student once, then each view, on the same 6 sampled prompts
    choice = trainer.teacher_view_choice
    assert choice["teacher_penalties"] == "show" and choice["recommended"] == "penalties=show"
    assert at_step_0 == ["show"]  # chosen before step 0, and used from it
    assert "teacher_penalties='auto' chose 'show' on 6 training prompts" in caplog.text
    saved = json.loads((tmp_path / "teacher_view_choice.json").read_text())
    assert saved["teacher_penalties"] == "show" and {v["name"] for v in saved["views"]} == {
        "penalties=omit",
        "penalties=show",
    }
    assert training_facts(trainer)["teacher_penalties"].startswith("auto: show (penalties=omit gap +0.000")
