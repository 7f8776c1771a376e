"""`trl-rubric judge-check` end to end: rule labels, the fake HTTP judge, eval's responses.jsonl, bad label files."""

from __future__ import annotations

import json

import pytest

from trl_rubric.cli import main
from trl_rubric.evaluation.judge_labels import read_labels, responses_to_labels, write_labels
from trl_rubric.judges import RuleJudge
from trl_rubric.real.world import make_real_world
from trl_rubric.testing.judge_server import FakeJudgeServer, criterion_met

ANSWERS = [
    "1. Rest a lot.\n2. Drink water.\nSee a doctor if it gets worse; call emergency services if you cannot breathe.",
    "Rest and fluids help. It is guaranteed to pass in a day.",
    "Honestly, there is a great deal one could say about this, " + "and so on " * 40,
    "1. Sleep.\n2. Eat well.",
    "A pharmacist can advise you. Rest.",
    "Call 911 right away if it is an emergency.",
]


def _rows(n: int = 12):
    dataset = make_real_world().train_dataset()
    rows = []
    for i in range(n):
        rows.append(
            {"prompt": dataset[i]["prompt"], "response": ANSWERS[i % len(ANSWERS)], "rubric": dataset[i]["rubric"]}
        )
    return rows


def _rule_labelled(tmp_path, n: int = 12):
    rows = _rows(n)
    grades = RuleJudge().grade_many_sync([r["prompt"] for r in rows], [r["response"] for r in rows],
                                         [r["rubric"] for r in rows])  # fmt: skip
    for row, grade in zip(rows, grades, strict=True):
        row["labels"] = list(grade.verdicts)
    path = tmp_path / "labels.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, rows


def _run(labels, out, *extra):
    return main(["judge-check", "--labels_file", str(labels), "--output_dir", str(out), "--bootstrap_samples", "50",
                 "--progress", "false", *extra])  # fmt: skip


def test_rule_judge_against_its_own_labels_has_kappa_one(tmp_path, capsys):
    labels, rows = _rule_labelled(tmp_path)
    code = _run(labels, tmp_path / "out", "--judge_backend", "rule")
    assert code == 0, capsys.readouterr().err
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    o = results["overall"]
    assert o["accuracy"] == 1.0 and o["kappa"] == pytest.approx(1.0)
    assert o["kappa_ci"] == [pytest.approx(1.0), pytest.approx(1.0)]
    assert o["false_met_rate"] == 0.0 and o["false_unmet_rate"] == 0.0
    assert o["n"] == sum(len(r["rubric"]) for r in rows) and o["n_responses"] == 12
    assert {"key term", "short", "absolute promise"} <= set(results["by_criterion"])
    assert {"essential", "pitfall"} <= set(results["by_category"])
    assert "## Length bias" in (tmp_path / "out" / "report.md").read_text()
    assert len((tmp_path / "out" / "verdicts.jsonl").read_text().splitlines()) == 12
    assert (tmp_path / "out" / "judge_check.png").read_bytes()[:4] == b"\x89PNG"
    assert results["least_reliable"] == []  # nothing disagrees, so nothing is ranked
    assert "kappa 1.000" in capsys.readouterr().out


def test_fake_http_judge_against_rule_labels_matches_a_hand_count(tmp_path, capsys):
    labels, rows = _rule_labelled(tmp_path)
    with FakeJudgeServer() as server:
        code = _run(labels, tmp_path / "out", "--judge_backend", "openai", "--judge_base_url", server.url,
                    "--judge_model", "fake-judge")  # fmt: skip
    assert code == 0, capsys.readouterr().err
    # The fake server's verdicts follow its documented rule, so the confusion table can be recounted here.
    expected = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
    for row in rows:
        for criterion, label in zip(row["rubric"], row["labels"], strict=True):
            met = criterion_met(criterion["text"], row["response"])
            expected[
                {(True, True): "tp", (True, False): "fp", (False, True): "fn", (False, False): "tn"}[met, label]
            ] += 1
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["overall"]["confusion"] == expected
    assert results["config"]["judge"]["judge_model"] == "fake-judge"
    assert results["least_reliable"], "the keyword judge disagrees with the rules somewhere"


def test_second_judge_replaces_the_labels(tmp_path, capsys):
    rows = _rows(6)
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))  # no labels: the reference judge gives them
    saved = tmp_path / "saved.jsonl"
    code = _run(path, tmp_path / "out", "--judge_backend", "rule", "--reference_judge_backend", "rule",
                "--save_labels", str(saved))  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "out" / "results.json").read_text())["overall"]["accuracy"] == 1.0
    assert [r.labels is not None for r in read_labels(saved)] == [True] * 6


def test_eval_responses_jsonl_works_as_labels(tmp_path, capsys):
    _, rows = _rule_labelled(tmp_path)
    # The shape `trl-rubric eval` writes: the verdicts sit inside the criteria.
    eval_rows = [
        {"index": i, "prompt": r["prompt"][0]["content"], "response": r["response"], "failed": False,
         "criteria": [{**c, "verdict": v} for c, v in zip(r["rubric"], r["labels"], strict=True)]}
        for i, r in enumerate(rows)
    ]  # fmt: skip
    eval_rows[0]["criteria"][0]["verdict"] = None  # a failed verdict stays unlabelled
    responses = tmp_path / "responses.jsonl"
    responses.write_text("".join(json.dumps(r) + "\n" for r in eval_rows))
    code = _run(responses, tmp_path / "out", "--judge_backend", "rule")
    assert code == 0, capsys.readouterr().err
    o = json.loads((tmp_path / "out" / "results.json").read_text())["overall"]
    assert o["kappa"] == pytest.approx(1.0) and o["label_unknown"] == 1
    assert o["n"] == sum(len(r["rubric"]) for r in rows) - 1
    converted = responses_to_labels(responses, tmp_path / "labels.jsonl")
    again = read_labels(converted)
    assert again[1].labels == rows[1]["labels"] and again[0].labels[0] is None
    assert again[0].rubric[0].tags  # rule tags survive, so the rule judge can regrade the file


def test_labels_file_round_trips(tmp_path):
    labels, _ = _rule_labelled(tmp_path, 3)
    first = read_labels(labels)
    second = read_labels(write_labels(first, tmp_path / "copy.jsonl"))
    assert [r.to_dict() for r in first] == [r.to_dict() for r in second]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r.pop("response"), "labels.jsonl row 2: field 'response' is 'None'"),
        (lambda r: r["labels"].pop(), "labels.jsonl row 2: field 'labels' has 5 labels for a rubric of 6 criteria"),
        (lambda r: r["labels"].__setitem__(3, "maybe"), "labels.jsonl row 2: field 'labels' item 4 is 'maybe'"),
        (lambda r: r.pop("labels"), "labels.jsonl row 2: no field 'labels'"),
        (lambda r: r["rubric"][1].__setitem__("weight", "high"), "labels.jsonl row 2: field 'rubric': criterion 2"),
    ],
)
def test_bad_label_files_name_the_row_field_and_value(tmp_path, capsys, mutate, message):
    labels, rows = _rule_labelled(tmp_path, 4)
    mutate(rows[2])
    labels.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert _run(labels, tmp_path / "out", "--judge_backend", "rule") == 2
    assert message in capsys.readouterr().err


def test_missing_and_empty_label_files_and_implicit_judges_are_refused(tmp_path, capsys):
    assert _run(tmp_path / "nope.jsonl", tmp_path / "out", "--judge_backend", "rule") == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty.jsonl").write_text("\n")
    assert _run(tmp_path / "empty.jsonl", tmp_path / "out", "--judge_backend", "rule") == 2
    assert "is empty" in capsys.readouterr().err
    labels, _ = _rule_labelled(tmp_path, 2)
    code = _run(
        labels, tmp_path / "out", "--judge_backend", "openai", "--judge_model", "m", "--judge_mode", "implicit"
    )
    assert code == 2 and "verdict per criterion" in capsys.readouterr().err


def test_eval_rows_tell_cannot_assess_from_unknown(tmp_path):
    from trl_rubric.evaluation.judge_labels import read_labels

    row = {
        "prompt": "q",
        "response": "r",
        "criteria": [
            {"text": "a", "weight": 1, "verdict": None, "cannot_assess": True, "explanation": "no context"},
            {"text": "b", "weight": 1, "verdict": None, "outcome": "unknown"},
            {"text": "c", "weight": 1, "verdict": True},
        ],
    }
    path = tmp_path / "responses.jsonl"
    path.write_text(json.dumps(row) + "\n")
    (labelled,) = read_labels(path)
    assert labelled.labels == ["cannot_assess", None, True]
    assert [c.text for c in labelled.rubric] == ["a", "b", "c"]
