"""The judge API key never lands in anything a run writes or logs, through the Python API and through the CLI.

The key lives in an environment variable named by `judge_api_key_env`. A run with checkpoints, completion logging and
a model card writes many files (`training_args.bin`, `trainer_state.json`, optimizer and RNG states, the card,
completions parquet files, the judge cache); every byte of them, and everything logged or printed, is searched for
the key. The judge server echoes the Authorization header in its error messages, as some proxies do, and a few
requests fail for good, so the key reaches the client's error path and the `judge_error` completions column too.
The server must have received the key, or the test would prove nothing.
"""

import json
import logging

import pytest
from datasets import Dataset

from trl_rubric.cli import main as cli
from trl_rubric.testing import make_rubric_rows
from trl_rubric.testing.judge_server import FakeJudgeServer
from trl_rubric.trainers.rubric_grpo import RubricGRPOConfig, RubricGRPOTrainer

SECRET = "sk-test-SECRET-1234567890"
KEY_ENV = "TRL_RUBRIC_TEST_JUDGE_KEY"


class KeyEchoingServer(FakeJudgeServer):
    """A judge server whose error bodies quote the request's Authorization header."""

    def _handler_class(self):
        base = super()._handler_class()

        class Handler(base):
            def _send(self, status, body, headers=None):
                if status >= 400:
                    message = body.get("error", {}).get("message", "")
                    echoed = f"{message}; request headers: Authorization: {self.headers.get('Authorization')}"
                    body = {"error": {"message": echoed, "type": "server_error"}}
                super()._send(status, body, headers)

        return Handler


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    with KeyEchoingServer() as s:
        # Two of the first step's requests fail twice in a row (first try and the one retry): unknown for good.
        s.inject("500", times=4)
        yield s


def rows():
    data = make_rubric_rows(8, conversational=True)
    for row in data:  # a keyword random completions sometimes contain, so some criteria are met
        row["rubric"].append({"text": "mentions the", "weight": 1.0, "category": None, "title": None, "tags": []})
    return data


SETTINGS = dict(
    use_cpu=True,
    bf16=False,
    report_to="none",
    per_device_train_batch_size=4,
    num_generations=2,
    max_completion_length=6,
    max_steps=2,
    learning_rate=1e-2,
    logging_steps=1,
    save_strategy="steps",
    save_steps=1,
    seed=0,
    log_completions=True,
    judge_backend="openai",
    judge_model="fake-judge",
    judge_api_key_env=KEY_ENV,
    judge_max_retries=1,
    judge_max_concurrency=1,  # one request at a time, so the injected failures hit the same two grades
    judge_probe=True,
)


def assert_no_secret_in(output_dir, *texts):
    files = [p for p in output_dir.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    # The scan is only as good as what was written: everything we mean to scan must be there.
    for expected in ("training_args.bin", "trainer_state.json", "optimizer.pt", "README.md", "config.json"):
        assert expected in names, f"{expected} was not written; files: {sorted(names)}"
    assert any(p.suffix == ".parquet" for p in files), "no completions parquet was written"
    assert any(p.parent.name.startswith("checkpoint-") for p in files)
    assert any(p.suffix == ".json" and "judge-cache" in p.parts for p in files), "the judge cache holds grades"
    leaks = [str(p) for p in files if SECRET.encode() in p.read_bytes()]
    assert not leaks, f"the API key was written to {leaks}"
    for text in texts:
        assert SECRET not in text
    return files


def assert_key_was_sent_and_echoed(server, logged):
    assert f"Bearer {SECRET}" in server.auth_headers, "the judge never received the key"
    assert "request headers: Authorization: Bearer ***" in logged, "the echoed key was not redacted on its way out"


def test_python_api_run_writes_and_logs_no_api_key(server, tmp_path, tiny_model_path, caplog, capfd):
    out = tmp_path / "out"
    args = RubricGRPOConfig(
        output_dir=str(out), judge_base_url=server.url, judge_cache_dir=str(out / "judge-cache"), **SETTINGS
    )
    with caplog.at_level(logging.DEBUG):
        trainer = RubricGRPOTrainer(tiny_model_path, args=args, train_dataset=Dataset.from_list(rows()))
        trainer.train()
        trainer.save_model()
        trainer.create_model_card()
    captured = capfd.readouterr()
    logged = caplog.text + captured.out + captured.err
    state = json.dumps(trainer.state.log_history) + repr(trainer._logs) + repr(trainer.args) + repr(trainer.judge)
    assert_no_secret_in(out, logged, state)
    assert trainer.judge.stats.failures == 2, "the two grades whose requests failed twice stay unknown"
    assert_key_was_sent_and_echoed(server, logged + repr(trainer._logs))


def test_cli_run_writes_and_logs_no_api_key(server, tmp_path, tiny_model_path, caplog, capfd):
    data = tmp_path / "rubrics.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows()))
    out = tmp_path / "cli-out"
    flags = {
        **SETTINGS,
        "output_dir": str(out),
        "judge_base_url": server.url,
        "judge_cache_dir": str(out / "judge-cache"),
        "dataset_name": str(data),
        "model_name_or_path": tiny_model_path,
    }
    argv = ["grpo"]
    for key, value in flags.items():
        argv += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    with caplog.at_level(logging.DEBUG):
        assert cli(argv) == 0
    captured = capfd.readouterr()
    logged = caplog.text + captured.out + captured.err
    files = assert_no_secret_in(out, logged)
    assert (out / "README.md").read_text().strip(), "the CLI wrote a model card"
    assert len([p for p in files if p.suffix == ".parquet"]) == 2, "one completions table per logged step"
    assert_key_was_sent_and_echoed(server, logged)
