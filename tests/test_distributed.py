"""Both trainers under `torchrun --nproc_per_node 2` on CPU (gloo): slicing, judge call counts, metrics, weights.

One launch runs `tests/distributed_worker.py` in two processes (RGSD, then RubricGRPO against a FakeJudgeServer that
lives in this test process); each rank writes what it saw to a JSON file, compared here.
"""

import json
import shutil
from pathlib import Path

import pytest
from _torchrun import torchrun

from trl_rubric.testing import make_tiny_model
from trl_rubric.testing.judge_server import FakeJudgeServer

WORKER = Path(__file__).with_name("distributed_worker.py")
NPROC, PER_DEVICE, STEPS = 2, 2, 2


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    model = make_tiny_model(root / "tiny")
    out = root / "out"
    out.mkdir()
    with FakeJudgeServer() as server:

        def fresh():  # a relaunch (tests/_torchrun.py) counts its own judge requests into a clean folder
            server.reset_counters()
            shutil.rmtree(out)
            out.mkdir()

        torchrun(WORKER, model, out, server.url, nproc=NPROC, before_retry=fresh)
        requests = server.requests
    results = [json.loads((out / f"rank{r}.json").read_text()) for r in range(NPROC)]
    return {"results": results, "requests": requests}


def test_rgsd_ranks_generate_disjoint_slices_of_the_global_batch(ranks):
    r0, r1 = (r["rgsd"] for r in ranks["results"])
    assert r0["num_processes"] == NPROC
    assert len(r0["prompts"]) == len(r1["prompts"]) == STEPS
    for step in range(STEPS):
        a, b = r0["prompts"][step], r1["prompts"][step]
        assert len(a) == len(b) == PER_DEVICE, "each rank generates for its own per-device slice only"
        assert not set(a) & set(b), f"step {step + 1}: both ranks generated for {set(a) & set(b)}"


def test_rgsd_metrics_are_reduced_over_ranks_not_per_rank(ranks):
    r0, r1 = (r["rgsd"] for r in ranks["results"])
    logged0 = [e["rgsd/divergence"] for e in r0["logs"]]
    logged1 = [e["rgsd/divergence"] for e in r1["logs"]]
    assert logged0 == logged1 and len(logged0) == STEPS
    for step in range(STEPS):
        a, b = r0["local"][step], r1["local"][step]
        local0, local1 = a["divergence_sum"] / a["tokens"], b["divergence_sum"] / b["tokens"]
        assert local0 != local1, "ranks saw different completions, so their local divergences differ"
        pooled = (a["divergence_sum"] + b["divergence_sum"]) / (a["tokens"] + b["tokens"])
        assert logged0[step] == pytest.approx(pooled, rel=1e-5)


def test_rgsd_final_weights_are_identical_on_both_ranks(ranks):
    r0, r1 = (r["rgsd"] for r in ranks["results"])
    assert r0["hash"] != r0["initial_hash"], "training moved the weights"
    assert r0["hash"] == r1["hash"]


def test_rubric_grpo_judges_each_completion_once_across_ranks(ranks):
    r0, r1 = (r["grpo"] for r in ranks["results"])
    completions_per_rank = STEPS * PER_DEVICE
    assert ranks["requests"] == NPROC * completions_per_rank, "one request per completion, not one per rank"
    assert r0["judge_calls"] == r1["judge_calls"] == completions_per_rank
    assert r0["judge_grades"] == r1["judge_grades"] == completions_per_rank
    assert r0["judge_failures"] == r1["judge_failures"] == 0
    for step in range(STEPS):
        a, b = r0["prompts"][step], r1["prompts"][step]
        assert len(a) == len(b) == PER_DEVICE
        # num_generations=2 with 2 completions per rank: each rank holds one whole group, a different one.
        assert len(set(a)) == len(set(b)) == 1 and set(a) != set(b)


def test_rubric_grpo_logs_and_final_weights_agree_across_ranks(ranks):
    r0, r1 = (r["grpo"] for r in ranks["results"])
    assert r0["hash"] != r0["initial_hash"] and r0["hash"] == r1["hash"]
    keys = ("judge/calls", "judge/failures", "reward", "judge/all_unknown_steps")
    assert [[e[k] for k in keys] for e in r0["logs"]] == [[e[k] for k in keys] for e in r1["logs"]]
    # log_metric values are averaged over processes: judge/calls is per process, not the total.
    assert all(e["judge/calls"] == PER_DEVICE for e in r0["logs"])


def test_rubric_grpo_model_card_states_the_judge_calls_of_all_ranks(ranks):
    r0, r1 = (r["grpo"] for r in ranks["results"])
    assert r1["card"] is None and r0["card"] is not None
    assert f"| train judge calls | {NPROC * STEPS * PER_DEVICE} |" in r0["card"], "not rank 0's share only"
