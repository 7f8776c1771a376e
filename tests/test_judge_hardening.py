"""Judge hardening (issue 26 items 1-3): cannot-assess verdicts, kept explanations, injection-proof prompts/parsing."""

from __future__ import annotations

import pytest

from trl_rubric import Rubric
from trl_rubric.judges.base import CANNOT_ASSESS_POLICIES, Grade, resolve_cannot_assess

# Two positive criteria (+3, +1) and one penalty (-2).
MIXED = Rubric.from_any(
    [
        {"text": "Mentions fever", "weight": 3},
        {"text": "Mentions rest", "weight": 1},
        {"text": "Promises a cure", "weight": -2},
    ]
)


def _hand_score(weights, verdicts):
    """The HealthBench formula written out: met points (negatives included) / positive points of known verdicts."""
    num = sum(w for w, v in zip(weights, verdicts) if v is True)
    den = sum(w for w, v in zip(weights, verdicts) if v is not None and w > 0)
    return None if den == 0 else num / den


@pytest.mark.parametrize(
    ("policy", "expected_scored"),
    [
        # fever met; rest cannot-assess; penalty cannot-assess
        ("penalties_worst_case", [True, None, True]),
        ("worst_case", [True, False, True]),
        ("skip", [True, None, None]),
        ("unmet", [True, False, False]),
    ],
)
def test_cannot_assess_scores_per_policy_against_hand_computation(policy, expected_scored):
    grade = Grade.from_verdicts(
        MIXED, [True, None, None], cannot_assess=[False, True, True], cannot_assess_policy=policy
    )
    assert grade.scored_verdicts == expected_scored
    assert grade.score == pytest.approx(_hand_score([3, 1, -2], expected_scored))
    assert grade.verdicts == [True, None, None]
    assert grade.outcomes == ["met", "cannot_assess", "cannot_assess"]
    assert grade.num_unknown == 0 and grade.num_cannot_assess == 2 and not grade.failed


def test_default_policy_never_removes_a_penalty():
    # Penalty cannot-assess under the default counts as met: (3 - 2) / 3, not 3 / 3.
    grade = Grade.from_verdicts(MIXED, [True, None, None], cannot_assess=[False, False, True])
    assert grade.score == pytest.approx(1 / 3)
    # ...and a positive criterion the judge cannot assess is left out, like an unknown, but is not counted as one.
    assert grade.num_unknown == 1 and grade.outcomes == ["met", "unknown", "cannot_assess"]


def test_true_false_none_scores_unchanged():
    for verdicts in ([True, False, None], [False, True, True], [None, None, None]):
        grade = Grade.from_verdicts(MIXED, verdicts)
        assert grade.score == MIXED.score(verdicts)
        assert grade.cannot_assess == [False] * 3 and grade.explanations == [None] * 3


def test_cannot_assess_with_a_verdict_is_refused():
    with pytest.raises(ValueError, match="cannot-assess but carry a verdict"):
        Grade(verdicts=[True], score=1.0, cannot_assess=[True])
    assert set(CANNOT_ASSESS_POLICIES) == {"penalties_worst_case", "worst_case", "skip", "unmet"}
    with pytest.raises(ValueError, match="cannot_assess policy"):
        resolve_cannot_assess(MIXED, [None] * 3, [True] * 3, "best_case")
