"""Rubric authoring without the CLI: reply parsing, the copy check, de-duplication, the runner and the filters."""

import asyncio
import json

import pytest

from trl_rubric.authoring import (
    AuthoringInput,
    RubricAuthor,
    copied_criteria,
    dedup_rubric,
    duplicate_pairs,
    grpo_learnability,
    longest_shared_run,
    parse_rubric_reply,
    rgsd_learnability,
    similarity,
    validate_rows,
)
from trl_rubric.judges.llm import ChatReply, ChatRubricJudge, JudgeBackendError
from trl_rubric.rubric import Rubric

ITEMS = [
    {"title": "Rest", "description": "Essential Criteria: Advises rest", "weight": 5},
    {"title": "Fluids", "description": "Important Criteria: Recommends drinking fluids", "weight": 3},
    {"title": "Cure", "description": "Pitfall Criteria: Promises an instant cure", "weight": -2},
]


def test_bare_array_is_read_with_categories_and_negative_pitfall():
    parsed = parse_rubric_reply(json.dumps(ITEMS))
    assert parsed.problem is None
    assert [c.category for c in parsed.rubric] == ["essential", "important", "pitfall"]
    assert [c.weight for c in parsed.rubric] == [5.0, 3.0, -2.0]
    assert parsed.rubric[0].text == "Advises rest" and parsed.rubric[0].title == "Rest"


def test_fenced_json_block_with_chatter_around_it_is_read():
    reply = "Sure! Here is the rubric:\n```json\n" + json.dumps(ITEMS, indent=2) + "\n```\nHope it helps."
    assert len(parse_rubric_reply(reply).rubric) == 3


@pytest.mark.parametrize("key", ["criteria", "rubric"])
def test_object_holding_the_list_under_criteria_or_rubric_is_read(key):
    parsed = parse_rubric_reply(json.dumps({"notes": "x", key: ITEMS}))
    assert parsed.problem is None and len(parsed.rubric) == 3


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("I cannot write a rubric for this.", "no JSON array"),
        ("", "empty reply"),
        ("[]", "empty"),
        ('[{"title": "x", "description": "Essential Criteria: A", "weight": "high"}]', "weight"),
        ('[{"title": "x", "description": "Pitfall Criteria: Lies", "weight": -2}]', "positive weight"),
        ('{"criteria": "rest, fluids"}', "no JSON array"),
        ('[{"title": "Rest", "description": "Essential Criteria: Advi', "no JSON array"),
    ],
)
def test_garbage_and_invalid_rubrics_are_problems_not_rubrics(reply, expected):
    parsed = parse_rubric_reply(reply)
    assert parsed.rubric is None and expected in parsed.problem


def test_criteria_count_outside_bounds_is_a_problem():
    assert (
        "3 criteria; expected 4 to 20"
        in parse_rubric_reply(json.dumps(ITEMS), min_criteria=4, max_criteria=20).problem
    )
    assert parse_rubric_reply(json.dumps(ITEMS), max_criteria=2).rubric is None


def test_process_checkpoints_keep_their_order_as_tags():
    steps = [{"title": f"s{i}", "description": f"Establishes value {i}", "weight": 2} for i in (1, 2, 3)]
    rubric = parse_rubric_reply(json.dumps(steps), ordered=True).rubric
    assert [c.tags for c in rubric] == [("checkpoint:1",), ("checkpoint:2",), ("checkpoint:3",)]
    assert {c.category for c in rubric} == {"checkpoint"}


def _plain_longest_run(a, b):
    # Plain reference: try every start pair and extend.
    best = 0
    for i in range(len(a)):
        for j in range(len(b)):
            n = 0
            while i + n < len(a) and j + n < len(b) and a[i + n] == b[j + n]:
                n += 1
            best = max(best, n)
    return best


def test_longest_shared_run_matches_a_plain_reference():
    import random

    rng = random.Random(0)
    for _ in range(200):
        a = [rng.choice("abcd") for _ in range(rng.randint(0, 12))]
        b = [rng.choice("abcd") for _ in range(rng.randint(0, 12))]
        assert longest_shared_run(a, b) == _plain_longest_run(a, b)


def test_a_criterion_pasting_the_reference_is_caught_and_a_paraphrase_is_not():
    reference = (
        "Rinse the cut under clean running water, wash around it with soap, pat it dry and cover it with a bandage."
    )
    pasted = [
        {"title": "Clean", "description": "Essential Criteria: " + reference, "weight": 5},
        {"title": "Bandage", "description": "Important Criteria: Suggests covering the cut", "weight": 3},
    ]
    parsed = parse_rubric_reply(json.dumps(pasted), reference=reference, max_copy_words=12)
    assert parsed.rubric is None and "copies the reference: criterion 1" in parsed.problem
    rubric = Rubric.from_any(
        [{"text": "Says to rinse the wound with running water", "weight": 5}, {"text": "Mentions soap", "weight": 2}]
    )
    assert copied_criteria(rubric, reference, 12) == []
    assert copied_criteria(Rubric.from_any(pasted), reference, 0) == []  # 0 disables the check


def _plain_duplicates(rubric, threshold):
    # Plain reference: compare each criterion with every earlier kept one, same sign, in order.
    rubric = Rubric.from_any(rubric)
    kept, pairs = [], []
    for j, c in enumerate(rubric):
        for i in kept:
            if (rubric[i].weight > 0) == (c.weight > 0) and similarity(rubric[i].text, c.text) >= threshold:
                pairs.append((i, j))
                break
        else:
            kept.append(j)
    return pairs


def test_dedup_matches_a_plain_pairwise_reference():
    import random

    rng = random.Random(1)
    phrases = [
        "Mentions rest",
        "mentions rest.",
        "Advises drinking fluids",
        "Advises drinking more fluids",
        "Is short",
    ]
    for _ in range(100):
        n = rng.randint(1, 8)
        rubric = [{"text": rng.choice(phrases), "weight": rng.choice([1, 2, -1])} for _ in range(n)]
        rubric[0]["weight"] = 1
        for threshold in (0.7, 0.9, 1.0):
            assert duplicate_pairs(rubric, threshold) == _plain_duplicates(rubric, threshold)


def test_dedup_merges_near_identical_criteria_of_the_same_sign_only():
    rubric = [
        {"text": "Mentions rest.", "weight": 2},
        {"text": "mentions REST", "weight": 1},
        {"text": "Mentions rest", "weight": -1},
        {"text": "Advises drinking fluids", "weight": 2},
    ]
    kept, pairs = dedup_rubric(rubric)
    assert pairs == [(0, 1)]
    assert [c["text"] for c in kept] == ["Mentions rest.", "Mentions rest", "Advises drinking fluids"]


def test_validate_rows_reports_each_bad_row_by_its_number():
    rows = [
        {"prompt": "q0", "rubric": [{"text": "a", "weight": 1}]},
        {"prompt": "q1", "rubric": [{"text": "a", "weight": "high"}]},
        {"prompt": "", "rubric": [{"text": "a", "weight": 1}]},
    ]
    kept, report = validate_rows(rows)
    assert kept == rows[:1]
    assert [d["row"] for d in report["dropped"]] == [1, 2]
    assert "row 1" in report["dropped"][0]["reason"] and "high" in report["dropped"][0]["reason"]


class _ScriptedBackend(ChatRubricJudge):
    """A chat backend answering from a list: strings are replies, exceptions are raised (transport failures)."""

    name = "scripted"

    def __init__(self, replies, max_retries=2):
        super().__init__("scripted-author", max_retries=max_retries, backoff_base=0.0, backoff_max=0.0)
        self.replies = list(replies)
        self.messages = []

    async def _chat(self, messages):
        self.messages.append(messages)
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return ChatReply(reply, prompt_tokens=10, completion_tokens=5)


def test_author_retries_garbage_then_returns_the_valid_rubric():
    backend = _ScriptedBackend(["nonsense", JudgeBackendError("HTTP 500"), json.dumps(ITEMS)])
    author = RubricAuthor(backend, "reference", min_criteria=2, max_criteria=5)
    result = asyncio.run(author.author(AuthoringInput("q?", reference="Rest and fluids.")))
    assert result.error is None and len(result.rubric) == 3
    assert result.usage.attempts == 3 and result.usage.prompt_tokens == 20


def test_author_gives_no_rubric_after_the_budget_and_says_why():
    backend = _ScriptedBackend(["nonsense"] * 3)
    author = RubricAuthor(backend, "reference", min_criteria=2, max_criteria=5)
    result = asyncio.run(author.author(AuthoringInput("q?", reference="Rest.")))
    assert result.rubric is None and "no JSON array" in result.error and "3 attempts" in result.error


def test_keypoints_mode_answers_first_then_builds_the_rubric_from_that_answer():
    backend = _ScriptedBackend(["Rest a lot and drink fluids.", json.dumps(ITEMS)])
    author = RubricAuthor(backend, "keypoints", min_criteria=2, max_criteria=5)
    result = asyncio.run(author.author(AuthoringInput("How do I get over a cold?")))
    assert result.own_answer == "Rest a lot and drink fluids." and len(result.rubric) == 3
    assert "Rest a lot and drink fluids." in backend.messages[1][-1]["content"]
    assert "JSON" not in backend.messages[0][-1]["content"]


def test_contrastive_mode_shows_both_answers_and_needs_them():
    backend = _ScriptedBackend([json.dumps(ITEMS)])
    author = RubricAuthor(backend, "contrastive")
    with pytest.raises(ValueError, match="row 3: mode 'contrastive' needs a non-empty policy_answer"):
        author.check_input(AuthoringInput("q?", strong_answer="good"), "row 3")
    result = asyncio.run(author.author(AuthoringInput("q?", strong_answer="STRONG TEXT", policy_answer="WEAK TEXT")))
    assert result.rubric is not None
    content = backend.messages[0][-1]["content"]
    assert content.index("STRONG TEXT") < content.index("WEAK TEXT")


def test_cache_reuses_a_valid_rubric_without_a_call_and_never_stores_a_failure(tmp_path):
    backend = _ScriptedBackend(["nonsense"] * 3 + [json.dumps(ITEMS)])
    author = RubricAuthor(backend, "reference", 2, 5, cache_dir=str(tmp_path))
    item = AuthoringInput("q?", reference="Rest.")
    assert asyncio.run(author.author(item)).rubric is None
    assert asyncio.run(author.author(item)).rubric is not None  # asked again: the failure was not cached
    again = asyncio.run(author.author(item))
    assert again.cached and again.rubric.to_list() == Rubric.from_any(ITEMS).to_list()
    assert backend.replies == []


class _FakeGrade:
    def __init__(self, score):
        self.score = score


class _KeywordJudge:
    """Scores 1.0 when the response contains the rubric's first criterion text's last word, else 0; None for 'x'."""

    def grade_many_sync(self, prompts, responses, rubrics, max_concurrency=None):
        out = []
        for response, rubric in zip(responses, rubrics, strict=True):
            word = Rubric.from_any(rubric)[0].text.split()[-1]
            out.append(_FakeGrade(None if response == "x" else float(word in response)))
        return out


def test_grpo_learnability_keeps_prompts_strictly_between_the_bounds():
    rows = [
        {"prompt": "always", "rubric": [{"text": "mentions rest", "weight": 1}]},
        {"prompt": "never", "rubric": [{"text": "mentions rest", "weight": 1}]},
        {"prompt": "half", "rubric": [{"text": "mentions rest", "weight": 1}]},
        {"prompt": "broken", "rubric": [{"text": "mentions rest", "weight": 1}]},
    ]
    calls = []

    def generate(prompts):
        calls.append(len(prompts))
        counter = {}
        out = []
        for p in prompts:
            text = p[-1]["content"]
            counter[text] = counter.get(text, 0) + 1
            if text == "broken":
                out.append("x")
            elif text == "half":
                out.append("rest" if counter[text] % 2 else "no")
            else:
                out.append("rest" if text == "always" else "no")
        return out

    kept, report = grpo_learnability(rows, _KeywordJudge(), generate, k=4)
    assert calls == [16]
    assert [r["prompt"] for r in kept] == ["half"] and kept[0]["pass_rate"] == 0.5
    assert report["pass_rates"] == [1.0, 0.0, 0.5, None]
    assert "could be graded" in report["dropped"][-1]["reason"]


class _GapResult:
    def __init__(self, deltas):
        self.deltas, self.gap = deltas, sum(d for d in deltas if d is not None) / len(deltas)

    def table(self):
        return [{"score_delta": d} for d in self.deltas]


def test_rgsd_learnability_keeps_prompts_whose_rubric_changes_the_model():
    rows = [{"prompt": f"q{i}", "rubric": [{"text": "mentions rest", "weight": 1}]} for i in range(3)]
    seen = []

    def gap_fn(dataset):
        seen.append(len(dataset))
        return _GapResult([0.5, 0.3, 0.0, 0.0, -0.2, None])

    kept, report = rgsd_learnability(rows, gap_fn, k=2, min_delta=0.0)
    assert seen == [6]
    assert [r["prompt"] for r in kept] == ["q0"] and kept[0]["conditioning_gap"] == pytest.approx(0.4)
    assert report["gaps"] == [pytest.approx(0.4), 0.0, -0.2]
