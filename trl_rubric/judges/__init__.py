"""Rubric judges: the `RubricJudge` protocol and its backends."""

from .base import Grade, JudgeStats, JudgeUsage, RubricJudge, completion_to_text, prompt_to_text, run_sync
from .rule import RuleJudge

__all__ = [
    "Grade",
    "JudgeStats",
    "JudgeUsage",
    "RubricJudge",
    "RuleJudge",
    "completion_to_text",
    "prompt_to_text",
    "run_sync",
]
