"""`trl-rubric rubrics` end to end against the fake author server (real HTTP on 127.0.0.1)."""

import json

import pytest

from trl_rubric.cli import main
from trl_rubric.data import load_rubric_dataset
from trl_rubric.testing.author_server import FakeAuthorServer

ROWS = [
    {"question": "How do I treat a mild sunburn?", "reference": "Cool compress, aloe vera and water.", "id": 0},
    {"question": "Why do I get headaches when I skip meals?", "reference": "Low blood sugar; eat regularly.", "id": 1},
    {"question": "Why does iron rust?", "reference": "Iron reacts with oxygen and water.", "id": 2},
]
SECRET = "sk-test-SECRET-0123456789"


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


@pytest.fixture
def server():
    with FakeAuthorServer(hang_s=5.0) as s:
        yield s


def _run(data, server, out, *extra):
    return main(
        [
            "rubrics",
            "--dataset_name",
            str(data),
            "--reference_column",
            "reference",
            "--author_model",
            "fake-author",
            "--author_base_url",
            server.url,
            "--author_max_concurrency",
            "1",
            "--min_criteria",
            "2",
            "--output_dir",
            str(out),
            *extra,
        ]
    )


def _outputs(out):
    rows = [json.loads(line) for line in (out / "rubrics.jsonl").read_text().splitlines()]
    return rows, json.loads((out / "summary.json").read_text())


def test_rubrics_command_writes_valid_rubrics_with_the_users_columns(data, server, tmp_path):
    out = tmp_path / "out"
    assert _run(data, server, out) == 0
    rows, summary = _outputs(out)
    assert [r["id"] for r in rows] == [0, 1, 2]
    assert rows[0]["prompt"] == ROWS[0]["question"] and rows[0]["reference"] == ROWS[0]["reference"]
    assert "question" not in rows[0]
    # The fake author writes one criterion per long word of the reference, plus one pitfall.
    assert [c["text"] for c in rows[2]["rubric"]][:3] == [
        "The answer mentions reacts",
        "The answer mentions oxygen",
        "The answer mentions water",
    ]
    assert rows[2]["rubric"][-1]["weight"] == -2.0 and rows[2]["rubric"][-1]["category"] == "pitfall"
    dataset = load_rubric_dataset(str(out / "rubrics.jsonl"))
    assert len(dataset) == 3
    assert summary["rows_in"] == 3 and summary["written"] == 3 and summary["failed"] == []
    assert summary["usage"]["calls"] == 3 and summary["usage"]["attempts"] == 3
    assert summary["usage"]["prompt_tokens"] > 0 and summary["usage"]["completion_tokens"] > 0
    assert summary["criteria_per_row"]["min"] == 3  # "compress", "water" and the pitfall
    assert "| 3 | 3 | 0 | 3 |" in (out / "report.md").read_text()
    # The author saw the reference inside its block, and the question.
    assert "[REFERENCE ANSWER]\nIron reacts with oxygen and water.\n[/REFERENCE ANSWER]" in server.seen[2]


def test_500s_timeouts_and_garbage_are_retried_and_the_row_still_authored(data, server, tmp_path):
    server.inject("500")
    server.inject("hang")
    server.queue("Sorry, I cannot help with that.")
    out = tmp_path / "out"
    assert _run(data, server, out, "--author_timeout", "1", "--author_max_retries", "3") == 0
    rows, summary = _outputs(out)
    assert summary["written"] == 3 and summary["failed"] == []
    assert summary["usage"]["attempts"] == 6  # row 0: 500, hang, garbage, then a valid reply


def test_a_row_whose_replies_stay_invalid_is_skipped_and_reported_never_written(data, server, tmp_path):
    server.queue(
        "not json", '{"criteria": []}', '[{"title": "x", "description": "Pitfall Criteria: Lies", "weight": -1}]'
    )
    out = tmp_path / "out"
    assert _run(data, server, out, "--author_max_retries", "2") == 0
    rows, summary = _outputs(out)
    assert [r["id"] for r in rows] == [1, 2]
    assert summary["written"] == 2 and len(summary["failed"]) == 1
    failed = summary["failed"][0]
    assert failed["row"] == 0 and "positive weight" in failed["reason"] and "3 attempts" in failed["reason"]
    assert "Pitfall Criteria: Lies" in failed["last_reply"]  # what the author wrote instead, for the user to read
    assert "row 0:" in (out / "report.md").read_text()


def test_malformed_bodies_on_every_attempt_leave_nothing_written_and_exit_1(data, server, tmp_path):
    server.fault = "malformed"
    out = tmp_path / "out"
    assert _run(data, server, out, "--author_max_retries", "1") == 1
    rows, summary = _outputs(out)
    assert rows == [] and summary["written"] == 0 and len(summary["failed"]) == 3
    assert summary["usage"]["attempts"] == 6


def test_the_api_key_reaches_the_server_and_no_output(data, server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MY_AUTHOR_KEY", SECRET)
    server.inject("401")
    out = tmp_path / "out"
    assert _run(data, server, out, "--author_api_key_env", "MY_AUTHOR_KEY", "--author_max_retries", "0") == 0
    assert f"Bearer {SECRET}" in server.auth_headers
    captured = capsys.readouterr()
    for path in out.iterdir():
        assert SECRET not in path.read_text(), path.name
    assert SECRET not in captured.out + captured.err
    _, summary = _outputs(out)
    assert "401" in summary["failed"][0]["reason"] and "MY_AUTHOR_KEY" not in json.dumps(summary["author"])


def test_a_pasted_key_in_place_of_the_variable_name_is_refused_without_echoing_it(data, server, tmp_path, capsys):
    assert _run(data, server, tmp_path / "out", "--author_api_key_env", SECRET) == 2
    err = capsys.readouterr().err
    assert "author_api_key_env must be the NAME" in err and SECRET not in err


def test_copying_the_reference_is_asked_again(tmp_path, server):
    reference = "Rinse the cut under clean running water, wash around it with soap and pat it dry before covering it."
    data = tmp_path / "q.jsonl"
    data.write_text(json.dumps({"prompt": "How do I clean a cut?", "reference": reference}) + "\n")
    pasted = [{"title": "All", "description": "Essential Criteria: " + reference, "weight": 5}] * 2
    server.queue(json.dumps(pasted))
    out = tmp_path / "out"
    assert _run(data, server, out) == 0
    rows, summary = _outputs(out)
    assert summary["usage"]["attempts"] == 2
    assert all(reference not in c["text"] for c in rows[0]["rubric"])


def test_keypoints_mode_needs_no_reference_and_process_mode_orders_checkpoints(data, server, tmp_path):
    out = tmp_path / "kp"
    args = ["rubrics", "--dataset_name", str(data), "--mode", "keypoints", "--author_model", "m"]
    args += ["--author_base_url", server.url, "--min_criteria", "2", "--output_dir", str(out)]
    assert main(args) == 0
    rows, summary = _outputs(out)
    assert summary["written"] == 3 and summary["usage"]["calls"] == 6  # answer, then rubric, per row
    out = tmp_path / "proc"
    assert _run(data, server, out, "--mode", "process", "--max_criteria", "6", "--max_copy_words", "0") == 0
    rows, _ = _outputs(out)
    tags = [c["tags"][0] for c in rows[0]["rubric"]]
    assert tags == [f"checkpoint:{i}" for i in range(1, len(tags) + 1)]


def test_filters_run_alone_on_an_existing_rubric_dataset(tmp_path):
    data = tmp_path / "rubrics.jsonl"
    rows = [
        {"prompt": "q0", "rubric": [{"text": "Mentions rest.", "weight": 2}, {"text": "mentions rest", "weight": 1}]},
        {"prompt": "q1", "rubric": [{"text": "Mentions water", "weight": "high"}]},
        {"prompt": "q2", "rubric": [{"text": "Mentions water", "weight": 1}]},
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    rc = main(["rubrics", "--skip_authoring", "true", "--dataset_name", str(data), "--output_dir", str(out)])
    assert rc == 0
    kept, summary = _outputs(out)
    assert [r["prompt"] for r in kept] == ["q0", "q2"] and len(kept[0]["rubric"]) == 1
    assert summary["filters"]["validate"]["dropped"][0]["row"] == 1
    assert summary["filters"]["dedup"]["criteria_dropped"] == 1
    assert summary["filters"]["dedup"]["merged"][0]["row"] == 0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--mode", "reference"], "needs --reference_column"),
        (["--reference_column", "reference", "--mode", "poetry"], "--mode is 'poetry'"),
        (["--reference_column", "reference", "--filters", "grpo"], "set --policy_model"),
        (["--reference_column", "nope"], "no reference column 'nope'"),
    ],
)
def test_bad_options_fail_in_one_line_before_any_request(data, server, tmp_path, capsys, extra, message):
    args = ["rubrics", "--dataset_name", str(data), "--author_model", "m", "--author_base_url", server.url]
    rc = main([*args, "--author_probe", "false", "--output_dir", str(tmp_path / "o"), *extra])
    assert rc == 2 or message.startswith("no reference")
    assert message in capsys.readouterr().err
    if rc == 2:
        assert server.requests == 0


def test_contrastive_mode_generates_the_policy_answers_with_our_generation_code(
    data, server, tmp_path, tiny_model_path
):
    out = tmp_path / "out"
    rc = _run(data, server, out, "--mode", "contrastive", "--policy_model", tiny_model_path, "--max_new_tokens", "8")
    assert rc == 0
    rows, summary = _outputs(out)
    assert summary["written"] == 3
    for seen, row in zip(server.seen, ROWS, strict=True):
        # The stronger answer is the reference; the policy's generated answer is answer B.
        assert f"[ANSWER A]\n{row['reference']}\n[/ANSWER A]" in seen
        answer_b = seen.split("[ANSWER B]\n", 1)[1].split("\n[/ANSWER B]", 1)[0]
        assert answer_b.strip() and answer_b != row["reference"]


def test_grpo_filter_drops_prompts_the_policy_always_or_never_passes(tmp_path, tiny_model_path):
    data = tmp_path / "rubrics.jsonl"
    always = [{"text": "Any length", "weight": 1, "tags": ["rule:max_words:100000"]}]
    never = [{"text": "Says zzqqxx", "weight": 1, "tags": ["rule:contains:zzqqxx"]}]
    data.write_text(
        json.dumps({"prompt": "a", "rubric": always}) + "\n" + json.dumps({"prompt": "b", "rubric": never})
    )
    out = tmp_path / "out"
    args = ["rubrics", "--skip_authoring", "true", "--dataset_name", str(data), "--filters", "grpo"]
    args += ["--policy_model", tiny_model_path, "--judge_backend", "rule", "--learnability_k", "3"]
    assert main([*args, "--max_new_tokens", "8", "--output_dir", str(out)]) == 1  # nothing learnable is left
    _, summary = _outputs(out)
    report = summary["filters"]["grpo"]
    assert report["pass_rates"] == [1.0, 0.0] and report["kept"] == 0
    assert [d["row"] for d in report["dropped"]] == [0, 1]


def test_rgsd_filter_runs_the_real_conditioning_gap_and_drops_prompts_the_rubric_does_not_change(
    tmp_path, tiny_model_path
):
    # Both criteria give the same verdict whatever the model writes, with or without the rubric in view, so every
    # per-prompt gap measured by the real conditioning_gap (tiny model, rule judge) is exactly 0 and nothing is kept.
    data = tmp_path / "rubrics.jsonl"
    always = [{"text": "Any length", "weight": 1, "tags": ["rule:max_words:100000"]}]
    never = [{"text": "Says zzqqxx", "weight": 1, "tags": ["rule:contains:zzqqxx"]}]
    data.write_text(
        json.dumps({"prompt": "a", "rubric": always}) + "\n" + json.dumps({"prompt": "b", "rubric": never})
    )
    out = tmp_path / "out"
    args = ["rubrics", "--skip_authoring", "true", "--dataset_name", str(data), "--filters", "rgsd"]
    args += ["--policy_model", tiny_model_path, "--judge_backend", "rule", "--rgsd_k", "2"]
    assert main([*args, "--max_new_tokens", "8", "--output_dir", str(out)]) == 1  # nothing the rubric changes
    _, summary = _outputs(out)
    report = summary["filters"]["rgsd"]
    assert report["k"] == 2 and report["gaps"] == [0.0, 0.0] and report["kept"] == 0
    assert [d["row"] for d in report["dropped"]] == [0, 1]
