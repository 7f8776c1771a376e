"""Rubric judges: the `RubricJudge` protocol and its backends."""

from .base import (
    CANNOT_ASSESS_POLICIES,
    Grade,
    JudgeStats,
    JudgeUnavailableError,
    JudgeUsage,
    RubricJudge,
    completion_to_text,
    prompt_to_text,
    run_sync,
)
from .cache import GradeCache
from .factory import JudgeArguments, build_judge
from .groupwise import grade_in_groups, supports_group_grading
from .llm import ChatRubricJudge, JudgeBackendError
from .openai_judge import OpenAIJudge
from .panel import PANEL_AGGREGATIONS, PanelJudge
from .prompts import JUDGE_MODES, PROMPT_VERSION
from .rule import RuleJudge
from .transformers_judge import TransformersJudge

__all__ = [
    "CANNOT_ASSESS_POLICIES",
    "JUDGE_MODES",
    "PANEL_AGGREGATIONS",
    "PROMPT_VERSION",
    "ChatRubricJudge",
    "Grade",
    "GradeCache",
    "JudgeArguments",
    "JudgeBackendError",
    "JudgeStats",
    "JudgeUnavailableError",
    "JudgeUsage",
    "OpenAIJudge",
    "PanelJudge",
    "RubricJudge",
    "RuleJudge",
    "TransformersJudge",
    "build_judge",
    "completion_to_text",
    "grade_in_groups",
    "prompt_to_text",
    "run_sync",
    "supports_group_grading",
]
