"""Self-written reference answers (`trl_rubric.authoring.build_self_references`): the best clean candidate per row."""

from __future__ import annotations

import pytest
from datasets import Dataset

from tests._judges import CountingJudge
from trl_rubric.authoring import build_self_references
from trl_rubric.evaluation.generation import Generations

LOOP = "Drink water.\nDrink water.\nDrink water."  # repeats a line: flagged
META = "This answer meets all the requirements listed above."  # talks about the requirements: flagged


def crit(text, weight, tag):
    return {"text": text, "weight": weight, "category": "essential" if weight > 0 else "pitfall", "tags": [tag]}


def rows(n=3):
    return Dataset.from_list(
        [
            {
                "prompt": f"question {i}: how do I treat a cold?",
                "rubric": [
                    crit("mentions rest", 2.0, "rule:contains:rest"),
                    crit("mentions fluids", 1.0, "rule:contains:fluids"),
                    crit("mentions wrong", -1.0, "rule:contains:wrong"),
                ],
                "topic": f"t{i}",
            }
            for i in range(n)
        ]
    )


def scripted(answers):
    """A generate_fn answering the rubric-conditioned prompts with `answers` (one list per row), in order."""
    seen = []

    def generate(prompts):
        seen.extend(prompts)
        return [a for row in answers for a in row]

    return generate, seen


def test_picks_the_best_clean_candidate_and_never_a_flagged_one():
    answers = [
        ["Get rest.", LOOP + "\nrest fluids", "Get rest and drink fluids."],  # flagged one scores highest
        [META + " rest fluids", "Fluids help.", "Nothing to say."],
        [LOOP, META, LOOP + "\nrest"],  # every candidate flagged: no reference
    ]
    generate, seen = scripted(answers)
    judge = CountingJudge()
    out = build_self_references(None, rows(), judge, n_candidates=3, generate_fn=generate, progress=False)
    assert list(out.dataset["reference"]) == ["Get rest and drink fluids.", "Fluids help."]
    assert list(out.dataset["topic"]) == ["t0", "t1"]  # other columns kept, rows in order
    assert out.dropped == {2: "all flagged"}
    assert [r["chosen"] for r in out.records] == [2, 1, None]
    assert out.records[0]["flagged"] == [False, True, False]
    assert out.records[0]["scores"][1] == pytest.approx(1.0)  # the loop met both criteria, and was not chosen
    assert out.records[1]["score"] == pytest.approx(1 / 3)
    stats = out.stats
    assert (stats["rows"], stats["kept"], stats["dropped"], stats["candidates"]) == (3, 2, 1, 9)
    assert stats["flagged"] == 5 and stats["flagged_share"] == pytest.approx(5 / 9)
    assert stats["mean_reference_score"] == pytest.approx((1.0 + 1 / 3) / 2)
    # The candidates are written from the teacher's view (the rubric in the prompt), each row n_candidates times,
    # and graded against the original question.
    assert len(seen) == 9 and all("mentions rest" in p for p in seen)
    assert seen[0] == seen[2] and seen[0] != seen[3]
    assert judge.seen_prompts[:3] == ["question 0: how do I treat a cold?"] * 3


def test_ties_prefer_an_answer_that_ended_then_the_first():
    def generate(prompts):
        texts = ["Rest.", "Rest now.", "Rest a lot."]
        return Generations(texts=texts, token_ids=[[1], [1, 2], [1, 2, 3]], truncated=[True, False, False])

    out = build_self_references(None, rows(1), CountingJudge(), n_candidates=3, generate_fn=generate, progress=False)
    assert out.records[0]["chosen"] == 1 and out.records[0]["truncated"] is False


def test_min_score_drops_weak_rows():
    generate, _ = scripted([["Get rest and drink fluids."], ["Fluids help."]])
    out = build_self_references(
        None, rows(2), CountingJudge(), n_candidates=1, min_score=0.5, generate_fn=generate, progress=False
    )
    assert list(out.dataset["reference"]) == ["Get rest and drink fluids."]
    assert out.dropped == {1: "below min_score"}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_candidates": 0}, "n_candidates is 0"),
        ({"min_score": 1.5}, "min_score is 1.5"),
        ({"reference_column": "topic"}, "already has a 'topic' column"),
    ],
)
def test_bad_settings_are_refused_before_generation(kwargs, message):
    def generate(prompts):
        raise AssertionError("generated before the settings were checked")

    with pytest.raises(ValueError, match=message):
        build_self_references(None, rows(), CountingJudge(), generate_fn=generate, progress=False, **kwargs)


def test_no_clean_candidate_anywhere_is_an_error_that_says_why():
    generate, _ = scripted([[LOOP, META]])
    with pytest.raises(ValueError, match="no row got a reference: of 2 candidates, 2 were flagged"):
        build_self_references(None, rows(1), CountingJudge(), n_candidates=2, generate_fn=generate, progress=False)


def test_references_from_a_tiny_model_train_the_reference_teacher(tiny_model_path, tmp_path):
    """The whole path: the model writes candidates itself, and RGSD trains on the rows with teacher_context=reference."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_rubric import RGSDTrainer
    from trl_rubric.testing import rgsd_test_config

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    # Every criterion is met by any answer, so no clean candidate is turned away for its score.
    data = Dataset.from_list(
        [{"prompt": f"question {i}", "rubric": [crit("says anything", 1.0, "rule:regex:.*")]} for i in range(4)]
    )
    out = build_self_references(
        model, data, CountingJudge(), tokenizer=tokenizer, n_candidates=2, max_new_tokens=6, progress=False
    )
    assert out.stats["candidates"] == 8 and len(out.dataset) + len(out.dropped) == 4
    assert all(isinstance(r, str) for r in out.dataset["reference"])
    config = rgsd_test_config(tmp_path, teacher_context="reference", max_steps=1)
    trainer = RGSDTrainer(tiny_model_path, args=config, train_dataset=out.dataset, processing_class=tokenizer)
    trainer.train()
    assert trainer.state.global_step == 1


def test_references_cli_writes_rows_that_trl_rubric_rgsd_trains_on(tiny_model_path, tmp_path, capsys):
    import json

    from trl_rubric.cli import main

    # Every answer meets "says anything"; answers that loop or talk about requirements are still set aside.
    rubric = [crit("says anything", 1.0, "rule:regex:.*")]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"question {i}", "rubric": rubric, "topic": i}) + "\n"
                            for i in range(4)))  # fmt: skip
    out = tmp_path / "refs"
    code = main(["references", "--model_name_or_path", tiny_model_path, "--dataset_name", str(data),
                 "--judge_backend", "rule", "--n_candidates", "2", "--max_completion_length", "6",
                 "--progress", "false", "--output_dir", str(out)])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stats"]["candidates"] == 8 and summary["settings"]["n_candidates"] == 2
    rows = [json.loads(line) for line in (out / "references.jsonl").read_text().splitlines()]
    assert len(rows) == summary["stats"]["kept"] == 4 - len(summary["dropped"])
    assert all(isinstance(r["reference"], str) and "topic" in r for r in rows)
    assert "got a reference" in captured.out and "--teacher_context reference" in captured.out
    run = tmp_path / "run"
    code = main(["rgsd", "--dataset_name", str(out / "references.jsonl"), "--model_name_or_path", tiny_model_path,
                 "--teacher_context", "reference", "--output_dir", str(run), "--use_cpu", "true", "--bf16", "false",
                 "--report_to", "none", "--save_strategy", "no", "--max_steps", "1", "--per_device_train_batch_size",
                 "2", "--max_completion_length", "4", "--disable_tqdm", "true"])  # fmt: skip
    assert code == 0, capsys.readouterr().err[-2000:]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--n_candidates", "0"], "--n_candidates is 0"),
        (["--n_candidates", "2", "--temperature", "0"], "temperature 0 writes the same answer"),
        (["--min_score", "2"], "--min_score is 2.0"),
        (["--reference_column", "topic"], "already has a 'topic' column"),
        (["--compare_views", "true"], "references takes --n_candidates"),
    ],
)
def test_references_cli_refuses_bad_options_in_one_line(extra, message, tiny_model_path, tmp_path, capsys):
    import json

    from trl_rubric.cli import main

    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"prompt": "q", "rubric": [crit("x", 1.0, "rule:contains:x")], "topic": 1}) + "\n")
    code = main(["references", "--model_name_or_path", tiny_model_path, "--dataset_name", str(data),
                 "--judge_backend", "rule", "--output_dir", str(tmp_path / "o"), *extra])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "o" / "references.jsonl").exists()


def test_the_example_reference_template_shows_the_answer_as_an_example_with_no_instruction():
    from trl_rubric import RGSDConfig
    from trl_rubric.teacher_context import EXAMPLE_REFERENCE_TEACHER_PROMPT_TEMPLATE, build_teacher_context

    config = RGSDConfig(output_dir="/tmp/x", use_cpu=True, report_to="none", teacher_context="reference",
                        teacher_prompt_template=EXAMPLE_REFERENCE_TEACHER_PROMPT_TEMPLATE)  # fmt: skip
    row = {"prompt": [{"role": "user", "content": "How do I treat a cold?"}], "rubric": [crit("x", 1.0, "t")],
           "reference": "Rest and drink fluids."}  # fmt: skip
    (view,) = build_teacher_context(config).contexts(row)
    text = view.prompt[-1]["content"]
    assert text.count("How do I treat a cold?") == 2 and text.endswith("Question: How do I treat a cold?")
    assert text.index("Rest and drink fluids.") < text.rindex("How do I treat a cold?")
    # nothing for a small model to talk about: no instruction, no word for what it was shown
    for word in ("mention", "reference", "requirement", "rubric", "criteria"):
        assert word not in text.lower()


def test_references_reads_the_training_split_even_when_a_test_split_is_set():
    from trl_rubric.scripts import references
    from trl_rubric.scripts.eval import parse_command_args, split_to_read

    args, _ = parse_command_args("references", references.make_parser, [
        "--dataset_name", "data", "--dataset_train_split", "train", "--dataset_test_split", "test"])  # fmt: skip
    assert split_to_read(args, "references") == "train"
    assert split_to_read(args, "eval") == "test"
