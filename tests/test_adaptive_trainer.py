"""AdaptiveRubricCallback in RubricGRPOTrainer runs: stale rubrics revised by the fake author at step boundaries,
the reward grading with the revision, bad revisions rejected, and an exact resume of the rubric versions."""

import hashlib

import pytest
from datasets import Dataset
from transformers import TrainerCallback

from trl_rubric.adaptive import AdaptiveRubricCallback, EvaluationMemory
from trl_rubric.authoring import AuthorArguments, build_author_backend
from trl_rubric.judges import RuleJudge
from trl_rubric.testing import make_rubric_rows, rubric_grpo_test_config
from trl_rubric.testing.author_server import FakeAuthorServer
from trl_rubric.trainers.rubric_grpo import RubricGRPOTrainer

REVISED = "The answer mentions"  # how the fake author's criteria begin


def stale_then_contrasting_judge(seen):
    """Every dataset criterion is met by every rollout (positives saturated, the penalty unreachable); the author's
    revised criteria split rollouts by a hash bit. Records every criterion text it grades into `seen`."""

    def resolver(criterion):
        def check(response):
            seen.add(criterion.text)
            if criterion.text.startswith(REVISED):
                return hashlib.sha256(f"{criterion.text}|{response}".encode()).digest()[0] % 2 == 0
            return True

        return check

    return RuleJudge(resolver=resolver)


def args(tmp_path, **kwargs):
    return rubric_grpo_test_config(tmp_path, **{"max_steps": 4, **kwargs})


def author(server):
    config = AuthorArguments(author_model="fake-author", author_base_url=server.url, author_probe=False)
    config.author_max_retries = 0
    return build_author_backend(config)


class RecordVersions(TrainerCallback):
    def __init__(self, adaptive):
        self.adaptive, self.at_begin = adaptive, None

    def on_train_begin(self, args, state, control, **kwargs):
        self.at_begin = {k: (v["version"], v["rubric"].to_list()) for k, v in self.adaptive.versions.items()}


@pytest.fixture
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")


def test_stale_rubrics_are_revised_at_a_step_boundary_and_the_reward_grades_the_revision(
    tiny_model_path, tmp_path, api_key
):
    seen: set[str] = set()
    with FakeAuthorServer() as server:
        adaptive = AdaptiveRubricCallback(author(server), wait_for_revisions=True, max_revisions=1)
        trainer = RubricGRPOTrainer(
            model=tiny_model_path,
            args=args(tmp_path),
            train_dataset=Dataset.from_list(make_rubric_rows(4, seed=1)),
            judge=stale_then_contrasting_judge(seen),
            callbacks=[adaptive],
        )
        trainer.train()
    memory = EvaluationMemory(tmp_path / "adaptive_memory.jsonl")
    updates = memory.records("update")
    # Step 1's stale groups are sent at its end; with wait_for_revisions they are applied at step 2's boundary.
    assert updates and min(u["step"] for u in updates) == 2
    for u in updates:
        assert u["old_version"] == 0 and u["new_version"] == 1
        assert not any(c["text"].startswith(REVISED) for c in u["old_rubric"])
        assert all(c["text"].startswith(REVISED) for c in u["new_rubric"] if c["weight"] > 0)
    assert any(text.startswith(REVISED) for text in seen)  # the reward graded revised rubrics afterwards
    summaries = memory.records("summary")
    assert summaries[0]["stale_fraction"] == 1.0 and summaries[0]["n_saturated"] == 4
    assert any(s["version"] == 1 for s in summaries)  # groups graded with the revision are summarised as v1
    logged = [h for h in trainer.state.log_history if "adaptive/revisions_applied" in h]
    assert logged[-1]["adaptive/revisions_applied"] == len(updates)
    assert logged[-1]["adaptive/revisions_rejected"] == 0
    # Evaluation grades the original rubrics and writes nothing to the memory.
    seen.clear()
    trainer.evaluate(Dataset.from_list(make_rubric_rows(4, seed=1)))
    assert seen and not any(text.startswith(REVISED) for text in seen)
    assert len(memory.records("summary")) == len(summaries)


def test_a_revision_that_is_not_a_valid_rubric_is_rejected_counted_and_never_applied(
    tiny_model_path, tmp_path, api_key
):
    seen: set[str] = set()
    with FakeAuthorServer(responder=lambda messages: '[{"title": "x", "weight": "very"}]') as server:
        adaptive = AdaptiveRubricCallback(author(server), wait_for_revisions=True)
        trainer = RubricGRPOTrainer(
            model=tiny_model_path,
            args=args(tmp_path, max_steps=3),
            train_dataset=Dataset.from_list(make_rubric_rows(4, seed=1)),
            judge=stale_then_contrasting_judge(seen),
            callbacks=[adaptive],
        )
        trainer.train()
    memory = EvaluationMemory(tmp_path / "adaptive_memory.jsonl")
    assert memory.records("update") == [] and adaptive.versions == {}
    rejected = memory.records("rejected")
    assert rejected and all(r["error"] for r in rejected)
    assert not any(text.startswith(REVISED) for text in seen)
    logged = [h for h in trainer.state.log_history if "adaptive/revisions_rejected" in h]
    assert logged[-1]["adaptive/revisions_rejected"] == len(rejected)


def test_resume_from_a_checkpoint_restores_the_rubric_versions_it_had(tiny_model_path, tmp_path, api_key):
    rows = Dataset.from_list(make_rubric_rows(8, seed=1))
    with FakeAuthorServer() as server:
        first = AdaptiveRubricCallback(author(server), wait_for_revisions=True, max_revisions=3)
        trainer = RubricGRPOTrainer(
            model=tiny_model_path,
            args=args(tmp_path, save_strategy="steps", save_steps=2),
            train_dataset=rows,
            judge=stale_then_contrasting_judge(set()),
            callbacks=[first],
        )
        trainer.train()
        at_step_2 = {
            u["key"]: (u["new_version"], u["new_rubric"])
            for u in EvaluationMemory(tmp_path / "adaptive_memory.jsonl").records("update")
            if u["step"] <= 2
        }
        final = {k: v["version"] for k, v in first.versions.items()}
        assert at_step_2 and final != {k: v for k, (v, _) in at_step_2.items()}  # steps 3-4 changed more

        resumed = AdaptiveRubricCallback(author(server), wait_for_revisions=True, max_revisions=3)
        recorder = RecordVersions(resumed)
        trainer = RubricGRPOTrainer(
            model=tiny_model_path,
            args=args(tmp_path, save_strategy="steps", save_steps=2),
            train_dataset=rows,
            judge=stale_then_contrasting_judge(set()),
            callbacks=[resumed, recorder],
        )
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert recorder.at_begin == at_step_2
    assert resumed.stats["applied"] == len(EvaluationMemory(tmp_path / "adaptive_memory.jsonl").records("update"))


def test_config_fields_turn_adaptive_rubrics_on_and_bad_values_name_the_field(tiny_model_path, tmp_path, api_key):
    with pytest.raises(ValueError, match="adaptive_stale_fraction"):
        args(tmp_path, adaptive_author_model="m", adaptive_stale_fraction=2.0)
    with pytest.raises(ValueError, match="adaptive_max_revisions"):
        args(tmp_path, adaptive_author_model="m", adaptive_max_revisions=0)
    secret = "sk-live-not-a-variable-name"
    with pytest.raises(ValueError, match="adaptive_author_api_key_env") as error:
        args(tmp_path, adaptive_author_model="m", adaptive_author_api_key_env=secret)
    assert secret not in str(error.value)
    args(tmp_path, adaptive_stale_fraction=2.0)  # ignored while adaptive rubrics are off

    with FakeAuthorServer() as server:
        config = args(tmp_path, max_steps=3, adaptive_author_model="fake-author", adaptive_author_base_url=server.url)
        config.adaptive_wait = True
        trainer = RubricGRPOTrainer(
            model=tiny_model_path,
            args=config,
            train_dataset=Dataset.from_list(make_rubric_rows(4, seed=1)),
            judge=stale_then_contrasting_judge(set()),
        )
        (adaptive,) = [c for c in trainer.callback_handler.callbacks if isinstance(c, AdaptiveRubricCallback)]
        assert trainer.rubric_reward.rubric_source is adaptive and adaptive.wait_for_revisions
        trainer.train()
    assert EvaluationMemory(tmp_path / "adaptive_memory.jsonl").records("update")
