"""Teacher focus (`RGSDConfig.teacher_focus="unlearned"`): the learned-criteria store against a plain reference, and
the RGSD teacher's prompt losing a criterion once the student meets it, with exact resume."""

import json
import random

import pytest
from datasets import Dataset

from trl_rubric.judges import RuleJudge
from trl_rubric.rewards import RubricReward
from trl_rubric.rubric import Criterion, Rubric
from trl_rubric.teacher import build_teacher_prompt
from trl_rubric.teacher_focus import LearnedCriteria, criterion_keys
from trl_rubric.testing import rgsd_test_config
from trl_rubric.trainers.rgsd import RGSDConfig, RGSDTrainer
from trl_rubric.trainers.rgsd_focus import FOCUS_STATE_FILE

# ---------------------------------------------------------------- the store against a plain reference


def reference_focus(history, rubric, threshold, min_obs, window):
    """Plain reference: `history` is every (criterion index, met) verdict of the prompt in order."""
    rates = []
    for i, c in enumerate(rubric):
        passes = [(met if c.weight > 0 else not met) for j, met in history if j == i][-window:]
        rates.append((sum(passes) / len(passes), len(passes)) if passes else (None, 0))
    learned = [c.weight > 0 and n >= min_obs and r >= threshold for c, (r, n) in zip(rubric, rates, strict=True)]
    kept = [i for i in range(len(rubric)) if not learned[i]]
    if not any(rubric[i].weight > 0 for i in kept):
        positives = [i for i, c in enumerate(rubric) if c.weight > 0]
        weakest = min(positives, key=lambda i: (rates[i][0], i))
        kept = sorted([i for i in kept] + [weakest])
    return [rubric[i] for i in kept]


def random_rubric(rng):
    n = rng.randint(1, 5)
    criteria = [Criterion(f"goal {i}", float(rng.randint(1, 5))) for i in range(n)]
    criteria += [Criterion(f"penalty {i}", -2.0) for i in range(rng.randint(0, 2))]
    rng.shuffle(criteria)
    if not any(c.weight > 0 for c in criteria):
        criteria.append(Criterion("goal x", 1.0))
    return Rubric(tuple(criteria))


@pytest.mark.parametrize("seed", range(6))
def test_store_matches_a_plain_reference_on_random_verdicts(seed):
    rng = random.Random(seed)
    threshold, min_obs, window = rng.choice([0.5, 0.8, 1.0]), rng.randint(1, 3), rng.randint(3, 6)
    store = LearnedCriteria(threshold, min_obs, window)
    prompts = [f"question {i}" for i in range(3)]
    rubrics = {p: random_rubric(rng) for p in prompts}
    history = {p: [] for p in prompts}
    bias = {p: [rng.random() for _ in rubrics[p]] for p in prompts}
    omitted_any = False
    for _ in range(40):
        p = rng.choice(prompts)
        verdicts = [None if rng.random() < 0.15 else rng.random() < b for b in bias[p]]
        store.update(p, rubrics[p], verdicts)
        history[p] += [(i, v) for i, v in enumerate(verdicts) if v is not None]
        for q in prompts:
            focused = store.focus(rubrics[q], q)
            expected = reference_focus(history[q], rubrics[q], threshold, min_obs, window)
            assert list(focused) == expected
            assert any(c.weight > 0 for c in focused)  # never without a goal
            assert [c for c in rubrics[q] if c.weight < 0] == [c for c in focused if c.weight < 0]  # penalties kept
            omitted_any |= len(focused) < len(rubrics[q])
    assert omitted_any  # the sequences did exercise the dropping


def test_criterion_is_learned_only_after_min_observations():
    rubric = Rubric((Criterion("a", 1.0), Criterion("b", 1.0), Criterion("avoid x", -1.0)))
    store = LearnedCriteria(threshold=0.8, min_observations=3, window=8)
    for n in range(1, 4):
        store.update("q", rubric, [True, False, True])
        focused = store.focus(rubric, "q")
        assert [c.text for c in focused] == (["b", "avoid x"] if n >= 3 else ["a", "b", "avoid x"])
    assert store.focus(rubric, "another question") == rubric  # per prompt


def test_all_goals_learned_keeps_the_least_met_and_every_penalty():
    rubric = Rubric((Criterion("a", 1.0), Criterion("b", 2.0), Criterion("avoid x", -1.0)))
    store = LearnedCriteria(threshold=0.5, min_observations=2, window=4)
    for met_b in (True, False, True, True):
        store.update("q", rubric, [True, met_b, False])
    assert [c.text for c in store.focus(rubric, "q")] == ["b", "avoid x"]  # b: 3/4, a: 4/4


def test_forgotten_criterion_comes_back_within_the_window():
    rubric = Rubric((Criterion("a", 1.0), Criterion("b", 1.0)))
    store = LearnedCriteria(threshold=0.75, min_observations=2, window=4)
    for _ in range(4):
        store.update("q", rubric, [True, False])
    assert [c.text for c in store.focus(rubric, "q")] == ["b"]
    store.update("q", rubric, [False, False])
    store.update("q", rubric, [False, False])  # a: 2/4 passes in the window
    assert [c.text for c in store.focus(rubric, "q")] == ["a", "b"]


def test_unknown_verdicts_are_not_observations_and_duplicate_keys_stay_apart():
    rubric = Rubric((Criterion("same", 1.0), Criterion("same", 1.0)))
    assert criterion_keys(rubric) == ["same", "same#2"]
    store = LearnedCriteria(threshold=1.0, min_observations=2, window=4)
    for _ in range(3):
        store.update("q", rubric, [True, None])
    assert store.pass_rate("q", rubric) == [(1.0, 3), (None, 0)]
    assert [c.text for c in store.focus(rubric, "q")] == ["same"] and store.learned("q", rubric) == [True, False]


def test_state_dict_round_trips_through_json():
    rng = random.Random(3)
    rubric = random_rubric(rng)
    store = LearnedCriteria(0.6, 2, 5)
    for _ in range(12):
        store.update([{"role": "user", "content": "a chat prompt"}], rubric, [rng.random() < 0.7 for _ in rubric])
    restored = LearnedCriteria(0.6, 2, 5)
    restored.load_state_dict(json.loads(json.dumps(store.state_dict())))
    assert restored.state_dict() == store.state_dict()
    assert restored.focus(rubric, [{"role": "user", "content": "a chat prompt"}]) == store.focus(
        rubric, [{"role": "user", "content": "a chat prompt"}]
    )
    with pytest.raises(ValueError, match="threshold"):
        LearnedCriteria(0.7, 2, 5).load_state_dict(store.state_dict())


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"teacher_focus": "learned"}, "teacher_focus is 'learned'"),
        ({"teacher_focus_threshold": 0.0}, "teacher_focus_threshold"),
        ({"teacher_focus_min_observations": 0}, "teacher_focus_min_observations"),
        ({"teacher_focus_min_observations": 9, "teacher_focus_window": 8}, "no criterion"),
    ],
)
def test_config_refuses_bad_teacher_focus_settings(overrides, message):
    with pytest.raises(ValueError, match=message):
        RGSDConfig(output_dir="out", use_cpu=True, bf16=False, **overrides)


# ---------------------------------------------------------------- in the trainer

WORDS = ["alpha", "beta", "gamma"]


def _rows():
    rubric = [{"text": f"mentions {w}", "weight": 1.0} for w in WORDS]
    return [{"prompt": f"question {i}: say something", "rubric": rubric} for i in range(2)]


def _judge():
    # "mentions alpha" is met by every answer, the others by none: alpha is learned after two gradings.
    return RuleJudge(resolver=lambda c: lambda response: c.text == "mentions alpha")


def _trainer(tiny_model_path, tmp_path, reward_funcs="judge", **overrides):
    if reward_funcs == "judge":
        reward_funcs = [RubricReward(_judge())]
    args = rgsd_test_config(
        tmp_path / "out",
        **{
            "teacher_focus": "unlearned",
            "teacher_focus_min_observations": 2,
            "per_device_train_batch_size": 2,
            "max_completion_length": 4,
            "disable_tqdm": True,
            **overrides,
        },
    )
    return RGSDTrainer(
        model=tiny_model_path, reward_funcs=reward_funcs, args=args, train_dataset=Dataset.from_list(_rows())
    )


def test_unlearned_focus_needs_a_rubric_reward(tiny_model_path, tmp_path):
    with pytest.raises(
        ValueError, match="teacher_focus='unlearned' needs per-criterion verdicts: pass a RubricReward"
    ):
        _trainer(tiny_model_path, tmp_path, reward_funcs=None)
    with pytest.raises(ValueError, match="teacher_focus='unlearned' needs per-criterion verdicts"):
        _trainer(tiny_model_path, tmp_path, reward_funcs=[lambda completions, **kw: [0.0] * len(completions)])


def test_unlearned_focus_refuses_a_context_without_one_rubric_list(tiny_model_path, tmp_path):
    with pytest.raises(ValueError, match="'criteria' teacher context"):
        _trainer(tiny_model_path, tmp_path, teacher_context="criteria", num_teacher_contexts=2)
    with pytest.raises(ValueError, match="grades column 'other'"):
        _trainer(tiny_model_path, tmp_path, reward_funcs=[RubricReward(_judge(), rubric_column="other")])
    with pytest.raises(ValueError, match="rubric_dropout=0.5"):
        _trainer(tiny_model_path, tmp_path, reward_funcs=[RubricReward(_judge(), rubric_dropout=0.5)])


class _RecordTeacherPrompts:
    """Wraps `_teacher_contexts` to keep the teacher prompts of every generation batch."""

    def __init__(self, trainer):
        self.batches, inner = [], trainer._teacher_contexts

        def record(inputs, completions=None):
            rows = inner(inputs, completions)
            self.batches.append([c.prompt for row in rows for c in row])
            return rows

        trainer._teacher_contexts = record


def test_teacher_prompt_drops_a_learned_criterion_from_the_next_batch_on(tiny_model_path, tmp_path):
    trainer = _trainer(tiny_model_path, tmp_path, max_steps=4)
    seen = _RecordTeacherPrompts(trainer)
    trainer.train()
    full = [build_teacher_prompt(r["prompt"], r["rubric"]) for r in _rows()]
    focused = [
        build_teacher_prompt(r["prompt"], [c for c in r["rubric"] if c["text"] != "mentions alpha"]) for r in _rows()
    ]
    # Batches of 2 hold both prompts, each graded once: alpha has 2 passing verdicts after batch 2; held back one
    # batch, they enter the store when batch 3 is graded, so the teacher drops alpha from batch 3 on.
    assert len(seen.batches) == 4
    for prompts in seen.batches[:2]:
        assert sorted(prompts) == sorted(full)
    for prompts in seen.batches[2:]:
        assert sorted(prompts) == sorted(focused)
        assert "mentions alpha" not in " ".join(prompts) and "mentions beta" in prompts[0]
    logged = [h for h in trainer.state.log_history if "rgsd/teacher_focus_rows" in h]
    assert [h["rgsd/teacher_focus_rows"] for h in logged] == [0.0, 0.0, 2.0, 2.0]
    assert [h["rgsd/teacher_focus_omitted"] for h in logged] == [0.0, 0.0, 1.0, 1.0]


def test_all_focus_keeps_the_whole_rubric_with_the_same_judge(tiny_model_path, tmp_path):
    trainer = _trainer(tiny_model_path, tmp_path, max_steps=4, teacher_focus="all")
    seen = _RecordTeacherPrompts(trainer)
    trainer.train()
    full = sorted(build_teacher_prompt(r["prompt"], r["rubric"]) for r in _rows())
    assert [sorted(b) for b in seen.batches] == [full] * 4
    assert not any("rgsd/teacher_focus_rows" in h for h in trainer.state.log_history)


def test_resume_restores_the_store_exactly(tiny_model_path, tmp_path):
    trainer = _trainer(tiny_model_path, tmp_path, max_steps=4, save_strategy="steps", save_steps=2)
    seen = _RecordTeacherPrompts(trainer)
    trainer.train()
    checkpoint = tmp_path / "out" / "checkpoint-2"
    saved = json.loads((checkpoint / FOCUS_STATE_FILE).read_text())
    assert saved["pending"]  # batch 2's verdicts, held back, are part of the state

    resumed = _trainer(tiny_model_path, tmp_path / "resumed", max_steps=4, save_strategy="no")
    resumed_seen = _RecordTeacherPrompts(resumed)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed._teacher_focus.state_dict() == trainer._teacher_focus.state_dict()
    # Steps 3 and 4 of the resumed run show the teacher what the uninterrupted run did (without the saved state the
    # store would start empty and step 3 would show the whole rubric).
    assert [sorted(b) for b in resumed_seen.batches] == [sorted(b) for b in seen.batches[2:]]
    assert "mentions alpha" not in " ".join(resumed_seen.batches[0])


def test_every_process_holds_the_same_store_under_torchrun(tmp_path):
    """2 CPU processes, each grading its own 2 of the 4 prompts: the verdicts are gathered, so both stores are equal
    and hold all 4 prompts, and both processes' teachers drop the learned criterion from batch 3 on."""
    from pathlib import Path

    from _torchrun import torchrun

    from trl_rubric.testing import make_tiny_model

    worker = Path(__file__).with_name("teacher_focus_worker.py")
    model = make_tiny_model(tmp_path / "tiny")
    out = tmp_path / "out"
    out.mkdir()
    torchrun(worker, model, out)
    r0, r1 = (json.loads((out / f"rank{r}.json").read_text()) for r in range(2))
    assert r0["state"] == r1["state"]
    assert len(r0["state"]["store"]["history"]) == 4  # every prompt, whichever process graded it
    for rank in (r0, r1):
        assert len(rank["batches"]) == 4
        assert all("mentions alpha" in p for b in rank["batches"][:2] for p in b)
        assert not any("mentions alpha" in p for b in rank["batches"][2:] for p in b)
