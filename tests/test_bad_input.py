"""Bad input, end to end: through the `trl-rubric` CLI and the Python API, each mistake stops the run before training
with a clear message naming the row or the field. The CLI answers with exit code 2 and one line,
`trl-rubric <command>: error: ...`, and no traceback.

Already covered elsewhere, not repeated: `load_rubric_dataset` row errors and skip counts (`tests/test_data.py`),
trainer-level bad rubrics, a rubric over `max_teacher_prompt_length` and a separate teacher with another tokenizer
passed as a model path (`tests/test_rgsd.py`), a dead judge through the Python API (`tests/test_rubric_grpo.py`).

Prompt length. TRL 1.16's `GRPOConfig` has no `max_prompt_length` and never truncates prompts, and neither do we.
RGSD's `max_teacher_prompt_length` bounds the student's prompt too, since the teacher's prompt contains it: a row
whose *prompt* is too long is rejected by it, naming the row (tested below). RubricGRPO has no prompt-length limit.
"""

import json
import logging

import pytest
from datasets import Dataset

from trl_rubric.cli import main as cli
from trl_rubric.testing import make_rubric_rows, make_tiny_model, make_tokenizer
from trl_rubric.testing.judge_server import FakeJudgeServer
from trl_rubric.trainers.rgsd import RGSDConfig, RGSDTrainer

LONG_PROMPT = "explain " * 400  # about 400 tokens on its own


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-input")

    def write(name, rows):
        path = root / name
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return str(path)

    malformed = make_rubric_rows(6)
    malformed[4]["rubric"][0]["weight"] = "high"
    long_prompt = make_rubric_rows(4)
    long_prompt[2]["prompt"] = LONG_PROMPT
    other_tokenizer = make_tiny_model(root / "other-model", tokenizer=make_tokenizer(vocab_size=400, seed=3))
    return {
        "good": write("good.jsonl", make_rubric_rows(4)),
        "malformed": write("malformed.jsonl", malformed),
        "long_prompt": write("long.jsonl", long_prompt),
        "empty": write("empty.jsonl", []),
        "other_model": other_tokenizer,
        "root": root,
    }


def run(command, dataset, model, output_dir, capfd, *extra):
    argv = [
        command,
        "--dataset_name", dataset,
        "--model_name_or_path", model,
        "--output_dir", str(output_dir),
        "--use_cpu", "true", "--bf16", "false", "--report_to", "none", "--save_strategy", "no",
        "--max_steps", "1", "--per_device_train_batch_size", "2", "--max_completion_length", "4",
        *extra,
    ]  # fmt: skip
    if command == "grpo":
        argv += ["--num_generations", "2"]
    code = cli(argv)
    err = capfd.readouterr().err
    return code, err


def the_error_line(command, code, err, output_dir):
    """The one error line, after checking the CLI's contract: exit 2, one line, no traceback, nothing trained."""
    assert code == 2, err[-2000:]
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith(f"trl-rubric {command}: error: ")]
    assert len(lines) == 1, err[-2000:]
    assert not (output_dir / "model.safetensors").exists(), "nothing may be trained or saved"
    return lines[0]


@pytest.mark.parametrize("command", ["rgsd", "grpo"])
def test_malformed_rubric_row_stops_the_cli_naming_row_field_and_value(
    command, files, tiny_model_path, tmp_path, capfd
):
    extra = ("--judge_backend", "rule") if command == "grpo" else ()
    code, err = run(command, files["malformed"], tiny_model_path, tmp_path, capfd, *extra)
    line = the_error_line(command, code, err, tmp_path)
    assert "rubric row 4: field 'rubric': criterion 1 has weight 'high'; expected a number" in line


def test_on_bad_rows_skip_drops_the_row_with_a_count_and_trains(files, tiny_model_path, tmp_path, capfd, caplog):
    with caplog.at_level(logging.WARNING, logger="trl_rubric"):
        code, err = run("rgsd", files["malformed"], tiny_model_path, tmp_path, capfd, "--on_bad_rows", "skip")
    assert code == 0, err[-2000:]
    assert "skipped 1 malformed rubric rows of 6; first: rubric row 4" in caplog.text
    assert (tmp_path / "model.safetensors").exists(), "the run went on with the five good rows"


@pytest.mark.parametrize("command", ["rgsd", "grpo"])
def test_empty_dataset_file_stops_the_cli(command, files, tiny_model_path, tmp_path, capfd):
    extra = ("--judge_backend", "rule") if command == "grpo" else ()
    code, err = run(command, files["empty"], tiny_model_path, tmp_path, capfd, *extra)
    line = the_error_line(command, code, err, tmp_path)
    assert "empty.jsonl" in line and "is empty" in line


def test_empty_dataset_is_refused_by_both_trainers(tiny_model_path, tmp_path):
    from trl_rubric.trainers.rubric_grpo import RubricGRPOConfig, RubricGRPOTrainer

    empty = Dataset.from_dict({"prompt": [], "rubric": []})
    settings = dict(use_cpu=True, bf16=False, report_to="none", max_steps=1)
    # Without the check, Trainer "trains" for 0 steps and returns as if all went well.
    with pytest.raises(ValueError, match="train_dataset is empty; expected at least one row"):
        RGSDTrainer(tiny_model_path, args=RGSDConfig(str(tmp_path), **settings), train_dataset=empty)
    args = RubricGRPOConfig(
        str(tmp_path), num_generations=2, per_device_train_batch_size=2, judge_backend="rule", **settings
    )
    with pytest.raises(ValueError, match="train_dataset is empty; expected at least one row"):
        RubricGRPOTrainer(tiny_model_path, args=args, train_dataset=empty)


def test_long_student_prompt_is_caught_by_the_teacher_limit_naming_the_row(files, tiny_model_path, tmp_path, capfd):
    code, err = run(
        "rgsd", files["long_prompt"], tiny_model_path, tmp_path, capfd, "--max_teacher_prompt_length", "256"
    )
    line = the_error_line("rgsd", code, err, tmp_path)
    assert "train_dataset row 2: the teacher prompt (prompt + rubric) is" in line
    assert "over max_teacher_prompt_length=256" in line
    # Same through the Python API, and the limit is not tripped by the normal rows.
    rows = make_rubric_rows(4, conversational=True)
    rows[2]["prompt"] = [{"role": "user", "content": LONG_PROMPT}]
    args = RGSDConfig(str(tmp_path), use_cpu=True, bf16=False, report_to="none", max_teacher_prompt_length=256)
    with pytest.raises(ValueError, match="train_dataset row 2: the teacher prompt"):
        RGSDTrainer(tiny_model_path, args=args, train_dataset=Dataset.from_list(rows))
    del rows[2]
    RGSDTrainer(tiny_model_path, args=args, train_dataset=Dataset.from_list(rows))


def test_teacher_with_another_tokenizer_stops_the_cli_and_the_config_route(files, tiny_model_path, tmp_path, capfd):
    code, err = run(
        "rgsd", files["good"], tiny_model_path, tmp_path, capfd, "--teacher_model_name_or_path", files["other_model"]
    )
    line = the_error_line("rgsd", code, err, tmp_path)
    assert f"teacher_model {files['other_model']!r}: the teacher's tokenizer differs from the student's" in line
    args = RGSDConfig(
        str(tmp_path), use_cpu=True, bf16=False, report_to="none", teacher_model_name_or_path=files["other_model"]
    )
    with pytest.raises(ValueError, match="the teacher's tokenizer differs"):
        RGSDTrainer(tiny_model_path, args=args, train_dataset=Dataset.from_list(make_rubric_rows(4)))


def test_separate_teacher_from_the_config_is_used(tiny_model_path, tmp_path):
    from transformers import AutoTokenizer

    teacher = make_tiny_model(
        tmp_path / "teacher", seed=7, hidden_size=48, tokenizer=AutoTokenizer.from_pretrained(tiny_model_path)
    )
    args = RGSDConfig(
        str(tmp_path / "out"), use_cpu=True, bf16=False, report_to="none", teacher_model_name_or_path=teacher
    )
    trainer = RGSDTrainer(tiny_model_path, args=args, train_dataset=Dataset.from_list(make_rubric_rows(4)))
    assert trainer.teacher_model.config.hidden_size == 48
    assert trainer.teacher_description == f"separate model {teacher}"


def test_judge_that_does_not_answer_at_start_up_stops_the_cli(files, tiny_model_path, tmp_path, capfd):
    with FakeJudgeServer() as server:
        dead = server.url  # the port is closed once the server stops
    code, err = run(
        "grpo", files["good"], tiny_model_path, tmp_path, capfd, "--judge_model", "m", "--judge_base_url", dead
    )
    line = the_error_line("grpo", code, err, tmp_path)
    assert f"judge endpoint {dead} did not answer the start-up probe" in line and "judge_probe=False" in line


def test_cli_teacher_alias_is_resolved_to_its_local_folder(files, tiny_model_path, tmp_path, capfd):
    # `--teacher_model_name_or_path smollm2://` names the packaged model as the student's does; unresolved, loading
    # "smollm2://" fails as a Hub id. Here its tokenizer differs from the tiny student's, and the error names the folder.
    from trl_rubric.real import smollm2_path

    code, err = run(
        "rgsd", files["good"], tiny_model_path, tmp_path, capfd, "--teacher_model_name_or_path", "smollm2://"
    )
    line = the_error_line("rgsd", code, err, tmp_path)
    assert f"teacher_model {smollm2_path()!r}: the teacher's tokenizer differs from the student's" in line
