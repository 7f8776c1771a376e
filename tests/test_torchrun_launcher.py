"""The multi-process test launcher (`tests/_torchrun.py`): one relaunch after a gloo teardown abort, none otherwise."""

import subprocess

import pytest
from _torchrun import TEARDOWN_ABORT, torchrun


def fake_runs(monkeypatch, results):
    calls = []

    def run(cmd, **kwargs):
        calls.append(cmd)
        code, err = results[len(calls) - 1]
        return subprocess.CompletedProcess(cmd, code, "", err)

    monkeypatch.setattr(subprocess, "run", run)
    return calls


def test_a_teardown_abort_is_launched_once_more(monkeypatch):
    calls = fake_runs(monkeypatch, [(1, f"{TEARDOWN_ABORT}\nSIGABRT"), (0, "")])
    assert torchrun("worker.py").returncode == 0 and len(calls) == 2


def test_before_retry_runs_before_the_relaunch_only(monkeypatch):
    resets = []
    calls = fake_runs(monkeypatch, [(1, TEARDOWN_ABORT), (0, "")])
    torchrun("worker.py", before_retry=lambda: resets.append(len(calls)))
    assert resets == [1]  # after the first launch, before the second
    calls = fake_runs(monkeypatch, [(0, "")])
    torchrun("worker.py", before_retry=lambda: resets.append("again"))
    assert resets == [1]


def test_other_failures_and_a_second_abort_fail_at_once(monkeypatch):
    calls = fake_runs(monkeypatch, [(1, "AssertionError: values differ")])
    with pytest.raises(AssertionError, match="values differ"):
        torchrun("worker.py")
    assert len(calls) == 1
    calls = fake_runs(monkeypatch, [(1, TEARDOWN_ABORT), (1, TEARDOWN_ABORT)])
    with pytest.raises(AssertionError, match="terminate called"):
        torchrun("worker.py")
    assert len(calls) == 2
