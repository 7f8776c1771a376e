"""Judge panels: majority / all / any / mean against a plain reference, ties and failures unknown (never 0), pairwise
agreement per criterion, `judge/agreement` in the reward's metrics, and members' caches and stats reused."""

import asyncio
import itertools
import random

import pytest

from trl_rubric import Rubric
from trl_rubric.judges import Grade, JudgeUsage, RubricJudge, RuleJudge
from trl_rubric.judges.panel import PanelJudge, combine_grades, pairwise_agreement
from trl_rubric.rewards import RubricReward

RUBRIC = Rubric.from_any(
    [
        {"text": "mentions fever", "weight": 3.0},
        {"text": "mentions dose", "weight": 1.0},
        {"text": "mentions rest", "weight": 2.0},
        {"text": "mentions wrong", "weight": -2.0},
    ]
)


class ScriptedJudge(RubricJudge):
    """Returns fixed verdicts per response; `None` entries are unknown; `fail=True` returns a failed grade."""

    def __init__(self, name, table, fail=False, cannot=None):
        super().__init__()
        self.name, self.table, self.fail, self.cannot = name, table, fail, cannot or {}

    async def _grade(self, prompt, response, rubric):
        usage = JudgeUsage(calls=1, attempts=1, prompt_tokens=10)
        if self.fail:
            return Grade.from_verdicts(rubric, [None] * len(rubric), usage=usage, error="boom")
        cannot = self.cannot.get(response)
        return Grade.from_verdicts(rubric, self.table[response], cannot_assess=cannot, usage=usage)


def grade(judge, response="r", rubric=RUBRIC):
    return asyncio.run(judge.grade("q", response, rubric))


def reference_vote(column, how):
    """Plain reference written from the definitions, one criterion at a time."""
    yes = [v for v in column if v is True]
    no = [v for v in column if v is False]
    if not yes and not no:
        return None
    if how == "majority":
        return None if len(yes) == len(no) else len(yes) > len(no)
    if how == "all":
        return not no
    return bool(yes)


def reference_agreement(column):
    known = [v for v in column if v is not None]
    pairs = list(itertools.combinations(known, 2))
    return sum(a == b for a, b in pairs) / len(pairs) if pairs else None


@pytest.mark.parametrize("how", ["majority", "all", "any"])
def test_panel_verdicts_and_agreement_match_a_plain_reference_on_random_votes(how):
    rng = random.Random(0)
    for trial in range(60):
        members = rng.randint(2, 5)
        table = [[rng.choice([True, False, None]) for _ in RUBRIC] for _ in range(members)]
        judges = [ScriptedJudge(f"j{m}", {"r": table[m]}) for m in range(members)]
        got = grade(PanelJudge(judges, aggregation=how))
        columns = list(zip(*table, strict=True))
        want = [reference_vote(c, how) for c in columns]
        assert got.verdicts == want, (trial, table)
        assert got.agreement == [reference_agreement(c) for c in columns]
        scored = [v for v in want]
        assert got.score == RUBRIC.score(scored)


def test_majority_tie_is_unknown_not_a_verdict():
    a = ScriptedJudge("a", {"r": [True, True, False, False]})
    b = ScriptedJudge("b", {"r": [False, True, False, True]})
    g = grade(PanelJudge([a, b]))
    assert g.verdicts == [None, True, False, None]
    assert g.outcomes[0] == "unknown" and g.cannot_assess == [False] * 4
    assert g.agreement == [0.0, 1.0, 1.0, 0.0]


def test_failed_member_is_left_out_and_all_failed_is_a_failure_never_zero():
    good = ScriptedJudge("good", {"r": [True, False, True, False]})
    bad = ScriptedJudge("bad", {}, fail=True)
    g = grade(PanelJudge([good, bad]))
    assert g.verdicts == [True, False, True, False]
    assert g.score == pytest.approx(5 / 6)
    assert "bad: boom" in g.error
    assert g.agreement == [None] * 4, "one vote: no pair to agree"
    worst = grade(PanelJudge([bad, ScriptedJudge("bad2", {}, fail=True)]))
    assert worst.failed and worst.score is None


def test_all_and_any_differ_as_strict_and_lenient_panels():
    a = ScriptedJudge("a", {"r": [True, True, False, True]})
    b = ScriptedJudge("b", {"r": [True, False, False, False]})
    c = ScriptedJudge("c", {"r": [True, False, True, None]})
    assert grade(PanelJudge([a, b, c], aggregation="all")).verdicts == [True, False, False, False]
    assert grade(PanelJudge([a, b, c], aggregation="any")).verdicts == [True, True, True, True]
    assert grade(PanelJudge([a, b, c], aggregation="majority")).verdicts == [True, False, False, None]


def test_mean_aggregation_averages_the_members_scores():
    a = ScriptedJudge("a", {"r": [True, True, True, False]})  # 6/6
    b = ScriptedJudge("b", {"r": [True, False, False, True]})  # (3-2)/6
    bad = ScriptedJudge("bad", {}, fail=True)
    g = grade(PanelJudge([a, b, bad], aggregation="mean"))
    assert g.score == pytest.approx((1.0 + 1 / 6) / 2)
    assert g.unweighted_score == pytest.approx((1.0 + 0.0) / 2)


def test_cannot_assess_only_when_no_member_voted():
    a = ScriptedJudge("a", {"r": [True, None, None, None]}, cannot={"r": [False, True, True, False]})
    b = ScriptedJudge("b", {"r": [True, False, None, None]}, cannot={"r": [False, False, True, False]})
    g = grade(PanelJudge([a, b]))
    assert g.outcomes == ["met", "unmet", "cannot_assess", "unknown"]


def test_rule_judge_panel_agrees_with_each_member_when_they_agree():
    rules = {"mentions fever": "fever", "mentions dose": "dose", "mentions rest": "rest", "mentions wrong": "wrong"}
    panel = PanelJudge([RuleJudge(rules), RuleJudge(rules), RuleJudge(rules)])
    for response in ["fever and rest", "wrong dose", ""]:
        g = grade(panel, response)
        assert g.verdicts == RuleJudge(rules).verdicts(response, RUBRIC)
        assert g.agreement == [1.0] * 4


def test_panel_usage_adds_up_members_and_stats_count_agreement():
    a = ScriptedJudge("a", {"r": [True, True, False, False]})
    b = ScriptedJudge("b", {"r": [True, False, False, False]})
    panel = PanelJudge([a, b])
    g = grade(panel)
    assert g.usage.calls == 2 and g.usage.prompt_tokens == 20
    assert panel.stats.calls == 2 and a.stats.calls == 1 and b.stats.calls == 1
    assert panel.stats.agreement_cells == 4 and panel.stats.agreement_sum == pytest.approx(3.0)


def test_reward_logs_judge_agreement_for_a_panel():
    a = ScriptedJudge("a", {"x": [True, True, False, False], "y": [True, True, True, False]})
    b = ScriptedJudge("b", {"x": [True, False, False, False], "y": [True, True, True, False]})
    metrics = {}
    reward = RubricReward(PanelJudge([a, b]), min_graded_fraction=0.0)
    asyncio.run(
        reward(
            prompts=["q", "q"],
            completions=["x", "y"],
            rubric=[RUBRIC.to_list()] * 2,
            log_metric=lambda k, v: metrics.__setitem__(k, v),
        )
    )
    assert metrics["judge/agreement"] == pytest.approx(7 / 8)
    single = {}
    asyncio.run(
        RubricReward(a)(
            prompts=["q"],
            completions=["x"],
            rubric=[RUBRIC.to_list()],
            log_metric=lambda k, v: single.__setitem__(k, v),
        )
    )
    assert "judge/agreement" not in single, "a single judge has no agreement to report"


def test_panel_uses_members_caches(tmp_path):
    from trl_rubric.judges import OpenAIJudge
    from trl_rubric.testing.judge_server import FakeJudgeServer

    with FakeJudgeServer() as server:
        members = [
            OpenAIJudge("fake-judge", base_url=server.url, cache_dir=str(tmp_path / f"c{i}"), max_retries=0)
            for i in range(2)
        ]
        panel = PanelJudge(members)
        first = grade(panel, "fever and rest")
        assert server.requests == 2
        second = grade(panel, "fever and rest")
        assert server.requests == 2, "both members answered from their caches"
        assert second.usage.cached and second.verdicts == first.verdicts == [True, False, True, False]


def test_panel_refuses_bad_construction():
    a = ScriptedJudge("a", {})
    with pytest.raises(ValueError, match="at least two judges"):
        PanelJudge([a])
    with pytest.raises(ValueError, match="aggregation is 'vote'"):
        PanelJudge([a, a], aggregation="vote")
    with pytest.raises(TypeError, match="panel member 1"):
        PanelJudge([a, "judge"])


def test_pairwise_agreement_definition():
    assert pairwise_agreement([True, True, False]) == pytest.approx(1 / 3)
    assert pairwise_agreement([True, None]) is None
    assert combine_grades(RUBRIC, []).failed


def test_eval_metrics_and_report_state_the_panel_agreement():
    from trl_rubric.evaluation.metrics import summarize
    from trl_rubric.evaluation.report import metrics_markdown

    a = ScriptedJudge("a", {"x": [True, True, False, False], "y": [True, True, True, False]})
    b = ScriptedJudge("b", {"x": [True, False, False, False], "y": [True, True, True, False]})
    panel = PanelJudge([a, b])
    grades = panel.grade_many_sync(["q", "q"], ["x", "y"], [RUBRIC, RUBRIC])
    metrics = summarize(grades, [RUBRIC, RUBRIC], [3, 4], n_bootstrap=0)
    assert metrics.judge_agreement == pytest.approx(7 / 8)
    assert metrics.to_dict()["judge_agreement"] == pytest.approx(7 / 8), "results.json carries it"
    assert any("judge panel agreement | 87.5%" in line for line in metrics_markdown(metrics))
    single = summarize(a.grade_many_sync(["q"], ["x"], [RUBRIC]), [RUBRIC], [3], n_bootstrap=0)
    assert single.judge_agreement is None
    assert not any("agreement" in line for line in metrics_markdown(single))


def test_panel_is_built_from_the_judge_settings():
    from trl_rubric.judges import JudgeArguments, OpenAIJudge, build_judge

    args = JudgeArguments(
        judge_panel="openai:m1@http://127.0.0.1:9/v1, openai:m2 ,rule",
        judge_panel_aggregation="all",
        judge_max_retries=1,
        judge_base_url="http://127.0.0.1:8/v1",
    )
    panel = build_judge(args)
    assert isinstance(panel, PanelJudge) and panel.aggregation == "all"
    first, second, third = panel.judges
    assert isinstance(first, OpenAIJudge) and first.model == "m1" and first.base_urls == ["http://127.0.0.1:9/v1"]
    assert second.model == "m2" and second.base_urls == ["http://127.0.0.1:8/v1"] and second.max_retries == 1
    assert isinstance(third, RuleJudge)
    assert JudgeArguments(judge_panel=["rule", "rule"]).judge_panel == "rule,rule", "a YAML list is accepted"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("rule", "a panel needs at least two"),
        ("rule,vllm:m", "member 2 'vllm:m': backend 'vllm' is unknown"),
        ("rule,openai:@http://x/v1", "member 2 'openai:@http://x/v1': no model"),
    ],
)
def test_bad_panel_spec_is_refused_naming_the_member(spec, message):
    from trl_rubric.judges import JudgeArguments

    with pytest.raises(ValueError, match=message):
        JudgeArguments(judge_panel=spec)


def test_trl_rubric_eval_with_a_panel_writes_the_agreement(tiny_model_path, tmp_path):
    import json

    from trl_rubric.cli import main

    rows = [
        {
            "prompt": f"question {i}",
            "rubric": [
                {"text": "mentions the", "weight": 1.0, "tags": ["rule:contains:the"]},
                {"text": "is short", "weight": 1.0, "tags": ["rule:max_words:3"]},
            ],
        }
        for i in range(3)
    ]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "eval"
    argv = ["eval", "--model_name_or_path", tiny_model_path, "--dataset_name", str(data), "--judge_panel", "rule,rule",
            "--max_completion_length", "4", "--n_samples", "3", "--bootstrap_samples", "0", "--plots", "false",
            "--progress", "false", "--output_dir", str(out)]  # fmt: skip
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["judge_agreement"] == 1.0, "two identical rule judges always agree"
    assert "judge panel agreement | 100.0%" in (out / "report.md").read_text()


def test_panel_reward_pickles_for_a_rollout_process():
    import pickle

    from trl_rubric.judges import OpenAIJudge
    from trl_rubric.testing.judge_server import FakeJudgeServer

    with FakeJudgeServer() as server:
        members = [OpenAIJudge("fake-judge", base_url=server.url, max_retries=0) for _ in range(3)]
        reward = RubricReward(PanelJudge(members), num_generations=2, group_grading=True, rubric_dropout=0.2)
        copy = pickle.loads(pickle.dumps(reward))
        scores = asyncio.run(
            copy(prompts=["q", "q"], completions=["fever rest", "dose"], rubric=[RUBRIC.to_list()] * 2)
        )
        assert server.requests == 3, "one group request per member"
    assert all(s is not None for s in scores)
