"""Rubric dropout: one dropped set per prompt and step for all G rollouts, a positive criterion always kept, dropped
criteria never reach the judge, the reward scores the kept criteria only, and the sets are a function of
(seed, step, prompt)."""

import asyncio
from types import SimpleNamespace

import pytest

from trl_rubric import Rubric
from trl_rubric.judges import RuleJudge
from trl_rubric.judges.llm import ChatReply, ChatRubricJudge
from trl_rubric.rewards import RubricReward
from trl_rubric.rubric_dropout import drop_criteria, kept_criteria, prompt_key
from trl_rubric.testing.judge_server import FakeJudgeServer

WORDS = ["fever", "dose", "rest", "water", "doctor", "sleep", "wrong", "panic"]
RUBRIC = [
    {"text": f"mentions {w}", "weight": -2.0 if w in ("wrong", "panic") else 1.0 + i} for i, w in enumerate(WORDS)
]
RULES = {f"mentions {w}": w for w in WORDS}


class RecordingRuleJudge(RuleJudge):
    """A rule judge that remembers the rubric it was asked to grade for each response."""

    def __init__(self):
        super().__init__(RULES)
        self.seen = []

    async def _grade(self, prompt, response, rubric):
        self.seen.append((prompt, response, [c.text for c in rubric]))
        return await super()._grade(prompt, response, rubric)


class ScriptedChatJudge(ChatRubricJudge):
    """An LLM judge whose 'model' is the fake server's grading rule, called without HTTP; keeps every prompt."""

    def __init__(self, **kwargs):
        super().__init__("scripted", seed=0, **kwargs)
        self.server = FakeJudgeServer()
        self.messages = []

    async def _chat(self, messages):
        self.messages.append(messages)
        return ChatReply(self.server.answer(messages))


def call(reward, prompts, completions, step=0, **kwargs):
    state = SimpleNamespace(global_step=step)
    return asyncio.run(reward(prompts=prompts, completions=completions, trainer_state=state, **kwargs))


def batch(num_prompts=3, g=4):
    prompts = [f"question {p}" for p in range(num_prompts) for _ in range(g)]
    completions = [" ".join(WORDS[(p + j) % 8 : (p + j) % 8 + 3]) for p in range(num_prompts) for j in range(g)]
    return prompts, completions


def test_all_rollouts_of_a_prompt_share_one_dropped_set_and_prompts_differ():
    judge = RecordingRuleJudge()
    reward = RubricReward(judge, rubric_dropout=0.5, dropout_seed=3, num_generations=4, min_graded_fraction=0.0)
    prompts, completions = batch(num_prompts=6)
    call(reward, prompts, completions, step=7, rubric=[RUBRIC] * len(prompts))
    by_prompt = {}
    for prompt, _, criteria in judge.seen:
        by_prompt.setdefault(prompt, set()).add(tuple(criteria))
    assert all(len(sets) == 1 for sets in by_prompt.values()), "every rollout of a prompt sees the same criteria"
    assert len({next(iter(s)) for s in by_prompt.values()}) > 1, "different prompts draw different sets"
    assert any(len(next(iter(s))) < len(RUBRIC) for s in by_prompt.values()), "something was dropped"


def test_at_least_one_positive_criterion_is_always_kept():
    rubric = Rubric.from_any(
        [{"text": "good", "weight": 1.0}] + [{"text": f"bad {i}", "weight": -1.0} for i in range(5)]
    )
    sizes = set()
    for step in range(300):
        kept = kept_criteria(rubric, 0.9, seed=0, step=step, key="k")
        assert 0 in kept, f"step {step}: the only positive criterion was dropped ({kept})"
        sizes.add(len(kept))
    assert 1 in sizes and max(sizes) > 1, "penalties are dropped and kept at random around the forced positive"


def test_drop_rate_matches_the_probability():
    rubric = Rubric.from_any(RUBRIC)
    dropped = total = 0
    for step in range(400):
        kept = kept_criteria(rubric, 0.3, seed=1, step=step, key=prompt_key("q", rubric))
        dropped += len(rubric) - len(kept)
        total += len(rubric)
    assert 0.25 < dropped / total < 0.35, dropped / total


def test_sets_are_a_function_of_seed_step_and_prompt():
    rubric = Rubric.from_any(RUBRIC)
    key = prompt_key("question 1", rubric)
    first = [kept_criteria(rubric, 0.4, seed=5, step=s, key=key) for s in range(20)]
    again = [kept_criteria(rubric, 0.4, seed=5, step=s, key=key) for s in range(20)]  # e.g. after a resume
    assert first == again
    assert len(set(first)) > 5, "the set changes from step to step"
    other_seed = [kept_criteria(rubric, 0.4, seed=6, step=s, key=key) for s in range(20)]
    assert other_seed != first
    # Batch position does not matter: the same prompt at another index (or on another process) draws the same set.
    rubrics, kept = drop_criteria(["a", "question 1", "b"], [rubric] * 3, 0.4, seed=5, step=3)
    assert kept[1] == first[3]
    assert [c.text for c in rubrics[1]] == [rubric[i].text for i in first[3]]


def test_dropped_criteria_are_absent_from_the_judge_prompt():
    judge = ScriptedChatJudge()
    reward = RubricReward(judge, rubric_dropout=0.5, dropout_seed=0, num_generations=2, min_graded_fraction=0.0)
    prompts, completions = batch(num_prompts=2, g=2)
    step = 4
    call(reward, prompts, completions, step=step, rubric=[RUBRIC] * 4)
    rubric = Rubric.from_any(RUBRIC)
    checked = 0
    for messages in judge.messages:
        user = messages[-1]["content"]
        prompt = next(p for p in set(prompts) if p in user)
        kept = kept_criteria(rubric, 0.5, seed=0, step=step, key=prompt_key(prompt, rubric))
        assert len(kept) < len(rubric), "this seed drops something (else the test checks nothing)"
        for i, criterion in enumerate(rubric):
            assert (criterion.text in user) == (i in kept), f"criterion {criterion.text!r}, kept={kept}"
        checked += 1
    assert checked == 4


def reference_reward(completion, kept):
    """Plain reference: HealthBench formula over the kept criteria, verdicts from the keyword rules by hand."""
    words = set(completion.split())
    num = sum(RUBRIC[i]["weight"] for i in kept if WORDS[i] in words)
    den = sum(RUBRIC[i]["weight"] for i in kept if RUBRIC[i]["weight"] > 0)
    return num / den


def test_reward_equals_a_plain_reference_on_the_kept_criteria():
    reward = RubricReward(RuleJudge(RULES), rubric_dropout=0.4, dropout_seed=11, min_graded_fraction=0.0)
    prompts, completions = batch(num_prompts=4, g=3)
    rubric = Rubric.from_any(RUBRIC)
    for step in (0, 1, 9):
        got = call(reward, prompts, completions, step=step, rubric=[RUBRIC] * len(prompts))
        want = [
            reference_reward(c, kept_criteria(rubric, 0.4, seed=11, step=step, key=prompt_key(p, rubric)))
            for p, c in zip(prompts, completions, strict=True)
        ]
        assert got == pytest.approx(want)
    full = call(RubricReward(RuleJudge(RULES)), prompts, completions, rubric=[RUBRIC] * len(prompts))
    assert got != pytest.approx(full), "dropout changed some reward (else the comparison is vacuous)"


def test_zero_dropout_leaves_rewards_unchanged():
    prompts, completions = batch()
    plain = call(RubricReward(RuleJudge(RULES)), prompts, completions, rubric=[RUBRIC] * len(prompts))
    zero = call(RubricReward(RuleJudge(RULES), rubric_dropout=0.0), prompts, completions, rubric=[RUBRIC] * 12)
    assert zero == plain


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, "half"])
def test_bad_dropout_probability_is_refused_at_construction(bad):
    from trl_rubric.trainers.rubric_grpo import RubricGRPOConfig

    with pytest.raises(ValueError, match="rubric_dropout is"):
        RubricGRPOConfig("out", judge_backend="rule", rubric_dropout=bad, report_to=[])
    with pytest.raises(ValueError, match="rubric_dropout is"):
        RubricReward(RuleJudge(RULES), rubric_dropout=bad)


def test_rubric_grpo_drops_criteria_per_step_for_whole_groups(tmp_path, tiny_model_path):
    from datasets import Dataset

    from trl_rubric.trainers.rubric_grpo import RubricGRPOConfig, RubricGRPOTrainer

    rows = [{"prompt": f"question {i}", "rubric": RUBRIC} for i in range(2)]
    judge = RecordingRuleJudge()
    args = RubricGRPOConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        bf16=False,
        report_to="none",
        max_completion_length=8,
        per_device_train_batch_size=4,
        num_generations=4,
        max_steps=3,
        logging_steps=1,
        save_strategy="no",
        judge_probe=False,
        rubric_dropout=0.5,
        min_graded_fraction=0.0,
        seed=0,
    )
    RubricGRPOTrainer(tiny_model_path, args=args, train_dataset=Dataset.from_list(rows), judge=judge).train()
    assert len(judge.seen) == 3 * 4
    calls = [judge.seen[i : i + 4] for i in range(0, 12, 4)]  # one prompt group per step
    rubric = Rubric.from_any(RUBRIC)
    for step, group in enumerate(calls):
        assert len({tuple(c) for _, _, c in group}) == 1, f"step {step}: one set for the whole group"
        prompt = group[0][0]
        kept = kept_criteria(rubric, 0.5, seed=0, step=step, key=prompt_key(prompt, rubric))
        assert group[0][2] == [rubric[i].text for i in kept], f"step {step}: the set is f(seed, step, prompt)"


def test_reward_logs_the_share_of_criteria_kept():
    metrics = {}
    reward = RubricReward(RuleJudge(RULES), rubric_dropout=0.5, dropout_seed=2, min_graded_fraction=0.0)
    prompts, completions = batch(num_prompts=4, g=2)
    call(reward, prompts, completions, step=5, rubric=[RUBRIC] * 8, log_metric=metrics.__setitem__)
    rubric = Rubric.from_any(RUBRIC)
    kept = [len(kept_criteria(rubric, 0.5, seed=2, step=5, key=prompt_key(p, rubric))) for p in prompts]
    assert metrics["judge/dropout_kept_frac"] == pytest.approx(sum(kept) / (8 * len(RUBRIC)))
    assert metrics["judge/dropout_kept_frac"] < 1.0
