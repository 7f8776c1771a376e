"""Judges: prompts, parsing, OpenAIJudge over real HTTP against the fake server, cache, TransformersJudge, factory."""

import asyncio
import logging
import multiprocessing
import os
import pickle
import time

import pytest

from trl_rubric import Rubric
from trl_rubric.judges import (
    PROMPT_VERSION,
    GradeCache,
    JudgeArguments,
    JudgeUnavailableError,
    OpenAIJudge,
    RuleJudge,
    TransformersJudge,
    build_judge,
)
from trl_rubric.judges.cache import cache_key
from trl_rubric.judges.parsing import extract_json, parse_rating, parse_single_verdict, parse_verdicts
from trl_rubric.testing import make_rubric_rows
from trl_rubric.testing.judge_server import FakeJudgeServer, criterion_met

SECRET = "sk-test-0123456789abcdef-secret"
RUBRIC = [
    {"text": "mentions fever", "weight": 3.0, "category": "essential"},
    {"text": "mentions dose", "weight": 1.0, "category": "important"},
    {"text": "mentions wrong", "weight": -2.0, "category": "pitfall"},
]
RESPONSES = ["fever is common", "the dose and the fever", "this is wrong", "nothing relevant"]


@pytest.fixture
def server():
    with FakeJudgeServer() as s:
        yield s


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv("TRL_RUBRIC_TEST_KEY", SECRET)
    return "TRL_RUBRIC_TEST_KEY"


def judge_for(server, key_env="TRL_RUBRIC_TEST_KEY", **kwargs):
    kwargs.setdefault("backoff_base", 0.01)
    kwargs.setdefault("timeout", 5.0)
    return OpenAIJudge("fake-judge", base_url=server.url, api_key_env=key_env, **kwargs)


def expected_verdicts(rubric, response):
    return [criterion_met(c.text, response) for c in Rubric.from_any(rubric)]


# --- parsing -------------------------------------------------------------------------------------------------------


def test_parser_reads_plain_fenced_and_wrapped_json():
    assert parse_verdicts('{"1": true, "2": {"met": false, "explanation": "no"}}', 2) == ([True, False], [])
    fenced = 'Sure.\n```json\n{"1": {"met": true}, "2": {"met": true}}\n```\nHope this helps.'
    assert parse_verdicts(fenced, 2)[0] == [True, True]
    chatty = 'My verdicts: {"1": false, "2": true} -- done'
    assert parse_verdicts(chatty, 2)[0] == [False, True]
    assert parse_verdicts('{"verdicts": {"1": true, "2": false}}', 2)[0] == [True, False]


def test_parser_marks_missing_duplicate_and_unreadable_criteria_unknown():
    verdicts, problems = parse_verdicts('{"1": true, "1": false, "2": true, "4": true, "0": false}', 3)
    assert verdicts == [None, True, None]
    assert any("more than once" in p for p in problems)
    assert any("[3] missing" in p for p in problems)
    assert any("outside 1..3" in p for p in problems)
    assert parse_verdicts('{"1": "maybe", "2": true}', 2)[0] == [None, True]
    assert parse_verdicts("I cannot grade this.", 2) == (
        [None, None],
        ["no JSON object in the answer: 'I cannot grade this.'"],
    )


def test_parser_reads_single_verdicts_and_ratings():
    assert parse_single_verdict('{"met": true}') == (True, None)
    assert parse_single_verdict("false") == (False, None)
    assert parse_single_verdict('{"explanation": "x"}')[0] is None
    assert parse_rating('```\n{"rating": 7}\n```') == (7.0, None)
    assert parse_rating('{"rating": 11}')[0] is None
    assert parse_rating('{"rating": "8"}') == (8.0, None)
    obj, reason = extract_json("")
    assert obj is None and reason == "empty answer"


# --- OpenAIJudge over real HTTP -------------------------------------------------------------------------------------


def test_batched_mode_gives_keyword_verdicts_and_scores(server, key_env):
    rows = make_rubric_rows(6, seed=3)
    responses = [" ".join(c["text"].split()[-1] for c in row["rubric"][::2]) for row in rows]
    judge = judge_for(server)
    grades = judge.grade_many_sync([r["prompt"] for r in rows], responses, [r["rubric"] for r in rows])
    for row, response, grade in zip(rows, responses, grades, strict=True):
        verdicts = expected_verdicts(row["rubric"], response)
        assert grade.verdicts == verdicts
        assert grade.score == pytest.approx(Rubric.from_any(row["rubric"]).score(verdicts))
        assert grade.error is None and grade.usage.calls == 1 and grade.usage.prompt_tokens > 0
    assert server.requests == len(rows)
    assert judge.stats.calls == len(rows) and judge.stats.failures == 0


def test_per_criterion_mode_sends_one_request_per_criterion(server, key_env):
    judge = judge_for(server, mode="per_criterion")
    grades = judge.grade_many_sync(["q"] * len(RESPONSES), RESPONSES, [RUBRIC] * len(RESPONSES))
    assert [g.verdicts for g in grades] == [expected_verdicts(RUBRIC, r) for r in RESPONSES]
    assert server.requests == len(RESPONSES) * len(RUBRIC)
    assert all(g.usage.calls == len(RUBRIC) for g in grades)


def test_implicit_mode_maps_rating_to_unit_interval(server, key_env):
    judge = judge_for(server, mode="implicit")
    grades = judge.grade_many_sync(["q"] * 2, ["fever and dose", "nothing"], [RUBRIC] * 2)
    # 2 of 3 criteria met -> rating 1 + round(9 * 2/3) = 7 -> (7 - 1) / 9; none met -> rating 1 -> 0.
    assert grades[0].score == pytest.approx(6 / 9) and grades[0].rating == pytest.approx(6 / 9)
    assert grades[1].score == 0.0
    assert all(g.verdicts == [None, None, None] and g.num_unknown == 0 and not g.failed for g in grades)
    assert judge.stats.unknown_verdicts == 0


def test_in_flight_requests_are_bounded_by_max_concurrency(server, key_env):
    server.delay = 0.2
    judge = judge_for(server, max_concurrency=3)
    start = time.perf_counter()
    grades = judge.grade_many_sync(["q"] * 6, ["fever"] * 6, [RUBRIC] * 6)
    elapsed = time.perf_counter() - start
    assert all(g.verdicts == [True, False, False] for g in grades)
    assert server.max_in_flight == 3
    assert elapsed >= 0.4  # two waves of three, not six at once


@pytest.mark.parametrize(
    "fault, unknown",
    [
        ("500", [0, 1, 2]),
        ("429", [0, 1, 2]),
        ("hang", [0, 1, 2]),
        ("malformed", [0, 1, 2]),
        ("missing", [2]),
        ("out_of_range", [2]),
        ("duplicate", [0]),
    ],
)
def test_each_fault_is_retried_then_reported_unknown(server, key_env, fault, unknown):
    server.fault = fault
    server.hang_s = 3.0
    judge = judge_for(server, max_retries=2, timeout=0.3)
    grade = asyncio.run(judge.grade("q", "fever and dose", RUBRIC))  # must not raise
    assert server.requests == 3, "first attempt plus two retries"
    assert grade.usage.attempts == 3 and judge.stats.retries == 2
    assert [i for i, v in enumerate(grade.verdicts) if v is None] == unknown
    assert grade.error and "after 3 attempts" in grade.error
    if len(unknown) == len(RUBRIC):
        assert grade.score is None and judge.stats.failures == 1  # unknown, never a silent 0
    else:
        assert grade.score is not None and judge.stats.unknown_verdicts == len(unknown)


def test_transient_faults_recover_within_the_retry_budget(server, key_env):
    server.inject("500")
    server.inject("429")
    server.inject("malformed")
    judge = judge_for(server, max_retries=3)
    grade = asyncio.run(judge.grade("q", "fever and dose", RUBRIC))
    assert grade.verdicts == [True, True, False] and grade.error is None
    assert grade.usage.attempts == 4 and server.requests == 4


def test_rejected_key_is_not_retried(server, key_env):
    server.fault = "401"
    judge = judge_for(server, max_retries=3)
    grade = asyncio.run(judge.grade("q", "fever", RUBRIC))
    assert grade.failed and "HTTP 401" in grade.error and SECRET not in grade.error
    assert server.requests == 1 and grade.usage.attempts == 1


def test_partial_answer_is_completed_by_a_retry(server, key_env):
    server.inject("missing")
    judge = judge_for(server, max_retries=1)
    grade = asyncio.run(judge.grade("q", "wrong", RUBRIC))
    assert grade.verdicts == [False, False, True] and grade.usage.attempts == 2


def test_outage_then_restart_on_the_same_port(server, key_env):
    judge = judge_for(server, max_retries=0)
    port = server.port
    server.stop()
    down = asyncio.run(judge.grade("q", "fever", RUBRIC))
    assert down.failed and "connection failed" in down.error
    server.start()
    assert server.port == port
    up = asyncio.run(judge.grade("q", "fever", RUBRIC))
    assert up.verdicts == [True, False, False]


def test_cache_hit_on_second_pass_makes_no_requests(server, key_env, tmp_path):
    prompts, rubrics = ["q"] * len(RESPONSES), [RUBRIC] * len(RESPONSES)
    first = judge_for(server, cache_dir=str(tmp_path)).grade_many_sync(prompts, RESPONSES, rubrics)
    assert server.requests == len(RESPONSES)
    judge = judge_for(server, cache_dir=str(tmp_path))
    second = judge.grade_many_sync(prompts, RESPONSES, rubrics)
    assert server.requests == len(RESPONSES), "no new requests on a cache hit"
    assert [g.verdicts for g in second] == [g.verdicts for g in first]
    assert all(g.usage.cached and g.usage.calls == 0 for g in second)
    assert judge.stats.cache_hits == len(RESPONSES) and judge.stats.calls == 0
    # Another mode is another key.
    judge_for(server, cache_dir=str(tmp_path), mode="implicit").grade_many_sync(
        prompts[:1], RESPONSES[:1], rubrics[:1]
    )
    assert server.requests == len(RESPONSES) + 1


def test_failed_grades_are_not_cached(server, key_env, tmp_path):
    server.fault = "missing"
    judge = judge_for(server, cache_dir=str(tmp_path), max_retries=0)
    assert asyncio.run(judge.grade("q", "fever", RUBRIC)).error is not None
    assert len(GradeCache(tmp_path)) == 0
    server.fault = None
    grade = asyncio.run(judge.grade("q", "fever", RUBRIC))
    assert not grade.usage.cached and grade.error is None and server.requests == 2
    assert len(GradeCache(tmp_path)) == 1


def _write_entries(root, worker, n):
    cache = GradeCache(root)
    rubric = Rubric.from_any(RUBRIC)
    for i in range(n):
        # Half the keys are shared by every worker, so writers really collide on the same files.
        response = f"shared {i}" if i % 2 else f"worker {worker} {i}"
        key = cache_key("m", PROMPT_VERSION, "batched", "q", response, rubric)
        cache.put(key, {"verdicts": [True, False, i % 3 == 0], "raw": "x" * 2000})


def test_cache_is_safe_with_concurrent_writer_processes(tmp_path):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_write_entries, args=(str(tmp_path), w, 40)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    cache = GradeCache(tmp_path)
    rubric = Rubric.from_any(RUBRIC)
    assert len(cache) == 4 * 20 + 20  # 20 private keys per worker + 20 shared ones
    for i in range(1, 40, 2):
        entry = cache.get(cache_key("m", PROMPT_VERSION, "batched", "q", f"shared {i}", rubric))
        assert entry["verdicts"] == [True, False, i % 3 == 0]
    assert not list(tmp_path.glob("*/*.tmp")), "no temporary files left behind"


def test_requests_go_round_robin_across_base_urls(key_env):
    with FakeJudgeServer() as a, FakeJudgeServer() as b:
        judge = OpenAIJudge("fake-judge", base_url=f"{a.url}, {b.url}", api_key_env=key_env)
        assert judge.base_urls == [a.url, b.url]
        grades = judge.grade_many_sync(["q"] * 8, ["fever"] * 8, [RUBRIC] * 8)
        assert all(g.verdicts == [True, False, False] for g in grades)
        assert (a.requests, b.requests) == (4, 4)
        # A retry moves on to the other endpoint, so one dead endpoint costs a retry, not the grade.
        a.fault = "500"
        judge = OpenAIJudge("fake-judge", base_url=[a.url, b.url], api_key_env=key_env, backoff_base=0.01)
        grades = judge.grade_many_sync(["q"] * 4, ["fever"] * 4, [RUBRIC] * 4)
        assert all(not g.failed for g in grades)


def test_api_key_is_sent_but_never_exposed(server, key_env, caplog):
    caplog.set_level(logging.DEBUG)
    judge = judge_for(server, max_retries=1)
    server.inject("500")
    grade = asyncio.run(judge.grade("q", "fever", RUBRIC))
    assert grade.verdicts == [True, False, False]
    assert server.auth_headers == [f"Bearer {SECRET}"] * 2, "the key is sent as the Authorization header"
    assert SECRET not in repr(judge)
    assert SECRET not in str(vars(judge))
    assert SECRET.encode() not in pickle.dumps(judge)
    assert SECRET not in caplog.text and SECRET not in (grade.raw or "") + (grade.error or "")
    assert "retry" not in caplog.text.lower() or SECRET not in caplog.text
    restored = pickle.loads(pickle.dumps(judge))
    assert asyncio.run(restored.grade("q", "dose", RUBRIC)).verdicts == [False, True, False]


def test_unset_key_variable_sends_a_placeholder(server, monkeypatch):
    monkeypatch.delenv("TRL_RUBRIC_UNSET_KEY", raising=False)
    judge = judge_for(server, key_env="TRL_RUBRIC_UNSET_KEY")
    assert not asyncio.run(judge.grade("q", "fever", RUBRIC)).failed
    assert server.auth_headers == ["Bearer EMPTY"]


def test_probe_fails_fast_when_the_endpoint_is_down(server, key_env):
    judge = judge_for(server, probe_timeout=2.0)
    judge.probe_sync()  # alive: no error
    assert any(p.endswith("/models") for p in server.paths)
    url = server.url
    server.stop()
    start = time.perf_counter()
    with pytest.raises(JudgeUnavailableError, match="did not answer the start-up probe") as err:
        judge.probe_sync()
    assert url in str(err.value) and "judge_probe=False" in str(err.value)
    assert time.perf_counter() - start < 3


def test_judge_works_across_event_loops(server, key_env):
    # Training grades on TRL's background loop while scripts use asyncio.run: clients must follow the loop.
    judge = judge_for(server)
    for _ in range(2):
        assert asyncio.run(judge.grade("q", "fever", RUBRIC)).verdicts == [True, False, False]
    assert judge.grade_many_sync(["q"], ["dose"], [RUBRIC])[0].verdicts == [False, True, False]


# --- TransformersJudge ----------------------------------------------------------------------------------------------


def test_transformers_judge_batches_requests_and_reports_usage(tiny_model_path):
    judge = TransformersJudge(tiny_model_path, max_new_tokens=6, batch_size=4, max_retries=0)
    grades = judge.grade_many_sync(["q"] * 6, RESPONSES + RESPONSES[:2], [RUBRIC] * 6)
    # A random tiny model writes no JSON: every grade is unknown (never 0), and nothing crashes.
    assert all(g.failed and g.error for g in grades)
    assert judge.generated_requests == 6 and judge.generate_calls == 2, "6 concurrent requests in batches of 4"
    assert all(g.usage.calls == 1 and g.usage.prompt_tokens > 50 for g in grades)
    assert all(1 <= g.usage.completion_tokens <= 6 for g in grades)
    assert judge.stats.prompt_tokens == sum(g.usage.prompt_tokens for g in grades)
    # Same prompt, greedy decoding: padding on the left must not change a row's answer.
    assert grades[0].raw == grades[4].raw


# --- factory and rule judge -----------------------------------------------------------------------------------------


def test_build_judge_from_arguments(server):
    assert isinstance(build_judge(JudgeArguments(judge_backend="rule")), RuleJudge)
    args = JudgeArguments(judge_model="fake-judge", judge_base_url=[server.url, server.url], judge_mode="implicit")
    judge = build_judge(args)
    assert isinstance(judge, OpenAIJudge) and judge.mode == "implicit" and judge.base_urls == [server.url] * 2
    with pytest.raises(ValueError, match="needs judge_model"):
        build_judge(JudgeArguments())
    with pytest.raises(ValueError, match="judge_mode is 'holistic'"):
        JudgeArguments(judge_mode="holistic")


def test_key_pasted_into_api_key_env_is_rejected_without_echo():
    with pytest.raises(ValueError, match="NAME of an environment variable") as err:
        JudgeArguments(judge_api_key_env=SECRET)
    assert SECRET not in str(err.value)


def test_rule_judge_grades_from_tags_and_reports_missing_rules_as_unknown():
    rubric = [
        {"text": "says fever", "weight": 2.0, "tags": ["rule:contains:fever"]},
        {"text": "is short", "weight": 1.0, "tags": ["rule:max_words:3"]},
        {"text": "is kind", "weight": 1.0},
    ]
    grade = asyncio.run(RuleJudge().grade("q", "a fever today", rubric))
    assert grade.verdicts == [True, True, None]
    assert grade.score == pytest.approx(1.0) and "no rule for criteria [3]" in grade.error
    assert os.environ.get("HF_HUB_OFFLINE") == "1"


def test_judges_grade_the_answer_not_the_reasoning():
    from trl_rubric.judges import RuleJudge
    from trl_rubric.judges.base import strip_thinking

    assert strip_thinking("<think>fever is key</think>\nrest and fluids") == "rest and fluids"
    assert strip_thinking("fever is key</think>rest") == "rest"  # template opened the block in the prompt
    assert strip_thinking("<think>fever, fever, fever") == ""  # never answered
    assert strip_thinking("plain answer") == "plain answer"
    rubric = [{"text": "mentions fever", "weight": 1.0, "tags": ["rule:contains:fever"]}]
    judge = RuleJudge()
    [grade] = judge.grade_many_sync(["q"], ["<think>fever matters</think> drink water"], [rubric])
    assert grade.verdicts == [False]
    judge.strip_thinking = False
    [grade] = judge.grade_many_sync(["q"], ["<think>fever matters</think> drink water"], [rubric])
    assert grade.verdicts == [True]
