"""The text every LLM judge reads, for the three grading modes, in one place.

`PROMPT_VERSION` goes into the grade cache key: change it whenever a prompt's wording changes, so that cached grades
made with the old wording are not reused.

Modes:
    - `"batched"`: one request grades every criterion; the judge answers `{"1": {"met": ..}, "2": ..}`.
    - `"per_criterion"`: one request per criterion (as HealthBench grades); the judge answers `{"met": ..}`.
    - `"implicit"`: one holistic 1-10 rating of the response against the whole rubric (as in "Rubrics as Rewards",
      arXiv 2507.17746, implicit aggregation); the judge answers `{"rating": ..}`.
"""

from __future__ import annotations

from typing import Any, Literal

from ..rubric import Criterion, Rubric
from .base import prompt_to_text

JudgeMode = Literal["batched", "per_criterion", "implicit"]
JUDGE_MODES = ("batched", "per_criterion", "implicit")

PROMPT_VERSION = "trl-rubric-judge-v1"

# Section headers. The fake test server (`trl_rubric.testing.judge_server`) finds the response and criteria by them.
CONVERSATION_HEADER = "### Conversation"
RESPONSE_HEADER = "### Response to grade"
CRITERIA_HEADER = "### Criteria"
CRITERION_HEADER = "### Criterion"
END_MARKER = "### End of material"

RATING_MIN, RATING_MAX = 1, 10

_SYSTEM = (
    "You grade answers written by an AI assistant. You are strict, impartial and literal: you judge only what the "
    "response actually says, not what it might have meant, and you ignore its length and style unless a criterion is "
    "about them. Some criteria describe a mistake and carry negative points; such a criterion is met when the "
    "response makes that mistake. You always answer with one JSON object and nothing else."
)


def _criterion_line(index: int, criterion: Criterion) -> str:
    points = f"{criterion.weight:+g} points"
    label = f"{criterion.category}, {points}" if criterion.category else points
    return f"{index}. [{label}] {criterion.text}"


def _material(prompt: Any, response: str) -> str:
    return f"{CONVERSATION_HEADER}\n{prompt_to_text(prompt)}\n\n{RESPONSE_HEADER}\n{response}\n\n"


def batched_messages(prompt: Any, response: str, rubric: Rubric) -> list[dict[str, str]]:
    """Chat messages asking for a verdict on every criterion of `rubric` in one answer."""
    criteria = "\n".join(_criterion_line(i, c) for i, c in enumerate(rubric, start=1))
    example = ", ".join(
        f'"{i}": {{"met": {"true" if i % 2 else "false"}, "explanation": "..."}}'
        for i in range(1, min(len(rubric), 3) + 1)
    )
    user = (
        _material(prompt, response) + f"{CRITERIA_HEADER}\n{criteria}\n\n{END_MARKER}\n\n"
        f"Decide, for each of the {len(rubric)} criteria above, whether the response meets it. Reply with a single "
        'JSON object whose keys are the criterion numbers as strings, from "1" to '
        f'"{len(rubric)}", each mapped to {{"met": true or false, "explanation": "one short sentence"}}. '
        f"Give every criterion exactly once. For example: {{{example}}}"
    )
    return [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": user}]


def per_criterion_messages(prompt: Any, response: str, criterion: Criterion) -> list[dict[str, str]]:
    """Chat messages asking whether the response meets one criterion."""
    user = (
        _material(prompt, response) + f"{CRITERION_HEADER}\n{_criterion_line(1, criterion)}\n\n{END_MARKER}\n\n"
        "Decide whether the response meets this criterion. Reply with a single JSON object: "
        '{"met": true or false, "explanation": "one short sentence"}.'
    )
    return [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": user}]


def implicit_messages(prompt: Any, response: str, rubric: Rubric) -> list[dict[str, str]]:
    """Chat messages asking for one holistic rating of the response against the whole rubric."""
    criteria = "\n".join(_criterion_line(i, c) for i, c in enumerate(rubric, start=1))
    user = (
        _material(prompt, response) + f"{CRITERIA_HEADER}\n{criteria}\n\n{END_MARKER}\n\n"
        f"Taking all the criteria above into account, with their points, rate the response on a scale from "
        f"{RATING_MIN} (meets almost none of the positive criteria, or makes the penalised mistakes) to {RATING_MAX} "
        "(meets every positive criterion and makes none of the penalised mistakes). Reply with a single JSON object: "
        f'{{"rating": an integer from {RATING_MIN} to {RATING_MAX}, "explanation": "one or two sentences"}}.'
    )
    return [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": user}]


def rating_to_score(rating: float) -> float:
    """Map a 1-10 rating linearly onto [0, 1]."""
    return (float(rating) - RATING_MIN) / (RATING_MAX - RATING_MIN)
