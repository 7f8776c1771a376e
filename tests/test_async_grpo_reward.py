"""The rubric reward inside TRL's async GRPO: TRL's real rollout worker (spawned child process, aiohttp client, its
scoring loop) against a fake OpenAI-compatible completions server, grading with an HTTP judge on the fake judge server.

Pinned: the reward is called once per prompt group, in the child; each sample's reward is the judge's grade of that
sample's completion; the judge metrics reach `AsyncGRPOTrainer.log()` (built with a no-op weight transfer) instead of
vanishing; a model object and a missing aiohttp fail with a clear error.
"""

import asyncio
import importlib.util
import math
import queue
import time

import pytest
from datasets import Dataset
from transformers import AutoTokenizer
from trl.chat_template_utils import qwen2_5_chat_template
from trl.experimental.async_grpo import AsyncGRPOConfig, async_grpo_trainer, async_rollout_worker
from trl.experimental.async_grpo.async_grpo_trainer import _reduce_metric

from trl_rubric import async_reward
from trl_rubric.async_reward import (
    GROUPS_METRIC,
    AsyncRubricReward,
    RubricRolloutWorker,
    check_async_grpo_requirements,
    rubric_async_grpo_trainer,
)
from trl_rubric.judges import OpenAIJudge, RuleJudge
from trl_rubric.rubric import Rubric
from trl_rubric.testing import make_rubric_rows
from trl_rubric.testing.completions_server import FakeCompletionsServer
from trl_rubric.testing.judge_server import FakeJudgeServer, criterion_met

GROUPS, G = 3, 2


class NoWeightTransfer:
    """TRL's WeightTransferProtocol doing nothing (the fake server has no weights); counts the syncs."""

    def __init__(self):
        self.sent = 0

    def init_weight_transfer(self):
        pass

    def pause(self):
        pass

    def send_weights(self, iterator):
        self.sent += sum(1 for _ in iterator)

    def resume(self):
        pass

    def destroy(self):
        pass


@pytest.fixture
def tokenizer(tiny_model_path):
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    # The worker parses responses with the response schema TRL knows for Qwen chat templates; the tiny model's ChatML
    # template is close to it but not byte-identical, so give it Qwen 2.5's (same special tokens).
    tok.chat_template = qwen2_5_chat_template
    return tok


def expected_score(completion, rubric):
    text = completion[-1]["content"]
    rubric = Rubric.from_any(rubric)
    return rubric.score([criterion_met(c.text, text) for c in rubric])


def drain(q, timeout):
    items, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            items.append(q.get(timeout=0.5))
        except queue.Empty:
            if items:
                break
    return items


def test_rubric_reward_runs_in_trls_rollout_worker_and_its_judge_metrics_reach_the_logs(
    tiny_model_path, tokenizer, tmp_path, monkeypatch
):
    # The worker checks for vLLM at construction, yet only talks HTTP to a server: the fake one stands in for it.
    monkeypatch.setattr(async_rollout_worker, "is_vllm_available", lambda: True)
    # The trainer reads the GPU's name for its MFU metric at construction (CUDA only); on CPU there is no peak.
    monkeypatch.setattr(async_grpo_trainer, "get_peak_flops_per_device", lambda *args: None)
    rows = make_rubric_rows(GROUPS, conversational=True, seed=3)
    vocab = [i for i in range(len(tokenizer)) if i not in tokenizer.all_special_ids]
    with (
        # Exactly GROUPS prompt groups are generated: later requests are held until the server stops.
        FakeCompletionsServer(
            vocab=vocab, eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"), hold_after=GROUPS * G
        ) as policy,
        FakeJudgeServer() as judge_server,
    ):
        reward = AsyncRubricReward(OpenAIJudge("fake-judge", base_url=judge_server.url, api_key_env="FAKE_JUDGE_KEY"))
        worker = RubricRolloutWorker(
            model_name="tiny",
            dataset=Dataset.from_list(rows),
            reward_funcs=[reward],
            processing_class=tokenizer,
            eos_token_ids=[tokenizer.convert_tokens_to_ids("<|im_end|>")],
            num_generations=G,
            max_inflight_tasks=G,  # one prompt group in flight at a time
            vllm_server_url=policy.base_url,
            max_tokens=8,
            request_timeout=30,
            child_ready_timeout=120,
        )
        args = AsyncGRPOConfig(
            output_dir=str(tmp_path),
            use_cpu=True,
            bf16=False,
            report_to="none",
            num_generations=G,
            max_steps=1,
            vllm_server_base_url=policy.base_url,
        )
        transfer = NoWeightTransfer()
        trainer = rubric_async_grpo_trainer(
            tiny_model_path,
            reward,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
            rollout_worker=worker,
            weight_transfer=transfer,
        )
        assert trainer.rollout_worker is worker
        worker.start()
        try:
            samples = []
            deadline = time.monotonic() + 180  # ends as soon as every sample is in; generous for a loaded machine
            while len(samples) < GROUPS * G and time.monotonic() < deadline:
                worker.check_health(stale_after_s=60)
                try:
                    samples.append(worker.rollout_buffer.get(timeout=1.0))
                except queue.Empty:
                    pass
            assert len(samples) == GROUPS * G, f"got {len(samples)} scored samples"
            trainer._sync_weight()  # the no-op transfer: the worker now asks for policy version 1
            assert worker.model_version == 1 and transfer.sent > 0
            time.sleep(1.0)  # let the child push its last metrics
            logs = {}
            trainer.model.train()  # as in train(): log() reports the train-mode metrics the queue was drained into
            trainer.log(logs)
        finally:
            worker.stop()

    assert policy.requests >= GROUPS * G and set(policy.models_requested) == {"tiny"}
    by_group = {}
    for s in samples:
        by_group.setdefault(s.group_id, []).append(s)
    assert sorted(by_group) == list(range(GROUPS)) and all(len(g) == G for g in by_group.values())
    for group_id, group in by_group.items():
        rubric = rows[group_id]["rubric"]
        rewards = [s.metrics["reward"] for s in group]
        for s in group:
            assert s.metrics["reward"] == pytest.approx(expected_score(s.completion, rubric)), "grade of this answer"
            assert s.metrics["rewards/rubric_judge"] == s.metrics["reward"]
        mean = sum(rewards) / G
        std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / G)
        for s, r in zip(group, rewards, strict=True):
            assert s.advantage == pytest.approx((r - mean) / (std + 1e-8), abs=1e-6)
    # One judge request per completion (batched mode), made from the child.
    assert judge_server.requests == GROUPS * G
    # The judge metrics came through the worker's metrics queue into AsyncGRPOTrainer.log().
    assert logs[GROUPS_METRIC] == GROUPS, "one reward call per prompt group, summed over the logging window"
    assert logs["judge/calls"] == pytest.approx(G), "judge calls per prompt group"
    assert logs["judge/failures"] == 0
    assert logs["judge/score_mean"] == pytest.approx(sum(s.metrics["reward"] for s in samples) / len(samples))
    assert "rollout/score_s" in logs  # TRL's own worker metrics, drained the same way


def test_reduce_metric_sums_the_group_counter_and_averages_judge_gauges():
    assert _reduce_metric(GROUPS_METRIC, [1.0, 1.0, 1.0]) == 3.0
    assert _reduce_metric("judge/calls", [2.0, 4.0]) == 3.0


def test_plain_worker_reward_warns_that_metrics_are_dropped():
    reward = AsyncRubricReward(RuleJudge())
    rows = make_rubric_rows(1, seed=1)
    for criterion in rows[0]["rubric"]:
        criterion["tags"] = ["rule:min_words:1"]
    with pytest.warns(UserWarning, match="judge metrics .* are not forwarded"):
        rewards = asyncio.run(reward(prompts=["q", "q"], completions=["a b", "c d"], rubric=[rows[0]["rubric"]] * 2))
    assert len(rewards) == 2


def test_async_grpo_needs_the_model_as_a_string_and_aiohttp(tiny_model_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    with pytest.raises(TypeError, match="takes the model as a string .* got a Qwen2ForCausalLM"):
        check_async_grpo_requirements(model)
    check_async_grpo_requirements(tiny_model_path)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        async_reward.importlib.util, "find_spec", lambda name: None if name == "aiohttp" else real_find_spec(name)
    )
    with pytest.raises(ImportError, match=r"needs aiohttp.*pip install 'trl-rubric\[async\]'"):
        check_async_grpo_requirements(tiny_model_path)
