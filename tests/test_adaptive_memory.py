"""Evaluation memory (trl_rubric.adaptive.memory) and the revision updater against the fake author server."""

import json
import multiprocessing

import pytest

from trl_rubric.adaptive import (
    EvaluationMemory,
    RevisionRequest,
    RubricUpdater,
    hashed_bag_of_words,
    read_revision,
    revision_messages,
)
from trl_rubric.authoring import AuthorArguments, build_author_backend
from trl_rubric.rubric import Rubric
from trl_rubric.teacher_context import _unit_rows
from trl_rubric.testing.author_server import FakeAuthorServer

RUBRIC = Rubric.from_any(
    [
        {"text": "Mentions rest", "weight": 5},
        {"text": "Mentions fluids", "weight": 3},
        {"text": "Invents a statistic", "weight": -2},
    ]
)


def summary(step, key, prompt="q", stale=1.0):
    return {"kind": "summary", "step": step, "key": key, "prompt": prompt, "stale_fraction": stale, "version": 0}


def update(step, key, version, prompt="q", texts=("new",)):
    return {
        "kind": "update",
        "step": step,
        "key": key,
        "prompt": prompt,
        "old_version": version - 1,
        "new_version": version,
        "old_rubric": [],
        "new_rubric": [{"text": t, "weight": 1} for t in texts],
    }


def test_resume_record_drops_the_abandoned_future_and_versions_replay_to_the_checkpoint(tmp_path):
    memory = EvaluationMemory(tmp_path / "m.jsonl")
    memory.append([{"kind": "resume", "step": 0}, summary(1, "a"), update(2, "a", 1, texts=("v1",))])
    memory.append([summary(3, "a"), update(4, "a", 2, texts=("v2",)), update(4, "b", 1)])
    assert memory.versions()["a"] == {"version": 2, "rubric": [{"text": "v2", "weight": 1}]}
    # The run is resumed from its step-2 checkpoint: what happened at steps 3-4 is gone, v1 is current again.
    memory.append([{"kind": "resume", "step": 2}])
    assert memory.versions() == {"a": {"version": 1, "rubric": [{"text": "v1", "weight": 1}]}}
    assert [r["step"] for r in memory.records("summary")] == [1]
    # New records after the resume count again.
    memory.append([summary(3, "a", stale=0.0)])
    assert [r["stale_fraction"] for r in memory.recent("a", n=5)] == [1.0, 0.0]


def test_bad_records_are_refused_and_a_damaged_line_is_named(tmp_path):
    memory = EvaluationMemory(tmp_path / "m.jsonl")
    with pytest.raises(ValueError, match="kind"):
        memory.append([{"kind": "note", "step": 1}])
    with pytest.raises(ValueError, match="integer step"):
        memory.append([{"kind": "summary", "step": "1"}])
    memory.append([summary(1, "a")])
    with open(memory.path, "a") as f:
        f.write("{not json\n")
    with pytest.raises(ValueError, match="line 2"):
        memory.records()


def test_similar_ranks_by_cosine_of_the_embedding_like_the_skills_context(tmp_path):
    memory = EvaluationMemory(tmp_path / "m.jsonl")
    prompts = ["How do I treat a fever in a child?", "What causes rust on iron?", "Fever and chills in adults"]
    memory.append([update(1, f"k{i}", 1, prompt=p) for i, p in enumerate(prompts)])
    query = "my child has a fever"
    got = memory.similar(query, k=2, exclude_key="k2")
    # Plain reference: cosine similarity of the hashed bag-of-words vectors, computed directly.
    vectors = _unit_rows(hashed_bag_of_words(prompts[:2]))
    q = _unit_rows(hashed_bag_of_words([query]))[0]
    expected = sorted(range(2), key=lambda i: -float(vectors[i] @ q))
    assert [r["key"] for _, r in got] == [f"k{i}" for i in expected]
    assert got[0][0] == pytest.approx(float(vectors[expected[0]] @ q))
    assert got[0][1]["key"] == "k0"  # the other fever question wins over rust


def _append_many(path, worker):
    memory = EvaluationMemory(path)
    for i in range(50):
        memory.append([summary(i, f"w{worker}", prompt="x" * 2000)])


def test_appends_from_several_processes_never_interleave(tmp_path):
    path = tmp_path / "m.jsonl"
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_append_many, args=(path, w)) for w in range(3)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(60)
    lines = path.read_text().splitlines()
    assert len(lines) == 150
    assert all(json.loads(line)["prompt"] == "x" * 2000 for line in lines)


def request(version=0):
    return RevisionRequest(
        key="k",
        prompt="How should I treat a mild fever at home?",
        rubric=RUBRIC,
        version=version,
        pass_rates=[1.0, 0.0, 0.0],
        statuses=["saturated", "unreachable", "saturated"],
        failure="Drink water.",
    )


def test_revision_prompt_marks_saturated_and_unreachable_criteria_and_keeps_the_question_as_material():
    text = revision_messages(request())[1]["content"]
    assert "[QUESTION]\nHow should I treat a mild fever at home?\n[/QUESTION]" in text
    assert "pass rate 1.00, SATURATED) Mentions rest" in text
    assert "pass rate 0.00, UNREACHABLE) Mentions fluids" in text
    assert "(weight -2;" in text  # penalties are shown as penalties
    assert "[WEAK ANSWER]\nDrink water." in text


def test_read_revision_accepts_a_valid_rubric_and_names_the_problem_of_a_bad_one():
    rubric, problem = read_revision('[{"title": "A", "description": "Essential Criteria: X", "weight": 5}]', 1, 5)
    assert problem is None and [c.weight for c in rubric] == [5]
    rubric, problem = read_revision('[{"title": "A", "description": "Essential Criteria: X", "weight": "high"}]', 1, 5)
    assert rubric is None and "weight" in problem
    assert read_revision("no json here", 1, 5)[0] is None


def backend(server):
    args = AuthorArguments(author_model="fake-author", author_base_url=server.url, author_probe=False)
    args.author_max_retries = 0
    return build_author_backend(args)


def test_updater_thread_returns_a_valid_revision_and_rejects_a_malformed_one(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    with FakeAuthorServer() as server:
        updater = RubricUpdater(backend(server), min_criteria=1)
        assert updater.submit(request())
        assert not updater.submit(request())  # one request in flight per prompt
        (result,) = updater.take_done(wait=True, timeout=30)
        assert result.error is None
        assert any("mentions" in c.text for c in result.rubric)  # the fake author's keyword rubric
        assert updater.in_flight == set()
        server.queue('[{"title": "A", "description": "Essential Criteria: X", "weight": "lots"}]')
        updater.submit(request())
        (bad,) = updater.take_done(wait=True, timeout=30)
        assert bad.rubric is None and "weight" in bad.error
        updater.close()


def test_closing_the_updater_does_not_wait_for_a_slow_author(monkeypatch):
    import time

    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    with FakeAuthorServer(delay=20.0) as server:
        updater = RubricUpdater(backend(server), min_criteria=1)
        updater.submit(request())
        start = time.perf_counter()
        updater.close()
        assert time.perf_counter() - start < 10.0
        assert updater.take_done() == [] and updater.in_flight == set()
