"""trl-rubric: rubric-based post-training for Hugging Face TRL.

Public API::

    from trl_rubric import (
        Criterion, Rubric, load_rubric_dataset,
        RGSDConfig, RGSDTrainer, RubricGRPOConfig, RubricGRPOTrainer,
        OpenAIJudge, TransformersJudge, RuleJudge, RubricReward,
    )

Names are imported on first use, so `trl-rubric --help` does not pay for importing TRL and torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0.dev0"

_EXPORTS = {
    "Criterion": ".rubric",
    "Rubric": ".rubric",
    "RubricError": ".rubric",
    "load_rubric_dataset": ".data",
    "RubricDatasetError": ".data",
    "Grade": ".judges.base",
    "RubricJudge": ".judges.base",
    "RuleJudge": ".judges.rule",
    "JudgeArguments": ".judges.factory",
    "build_judge": ".judges.factory",
    "OpenAIJudge": ".judges.openai_judge",
    "PanelJudge": ".judges.panel",
    "TransformersJudge": ".judges.transformers_judge",
    "RubricReward": ".rewards",
    "DEFAULT_TEACHER_PROMPT_TEMPLATE": ".teacher",
    "build_teacher_prompt": ".teacher",
    "evaluate": ".evaluation",
    "conditioning_gap": ".evaluation",
    "summarize": ".evaluation",
    "generate_responses": ".evaluation",
    "token_logratio_view": ".evaluation",
    "load_model_and_tokenizer": ".evaluation",
    "merge_adapter": ".evaluation",
    "EvalResult": ".evaluation",
    "EvalMetrics": ".evaluation",
    "GapResult": ".evaluation",
    "TokenView": ".evaluation",
    "EvaluationError": ".evaluation",
    "RGSDConfig": ".trainers.rgsd",
    "RGSDTrainer": ".trainers.rgsd",
    "RubricGRPOConfig": ".trainers.rubric_grpo",
    "RubricGRPOTrainer": ".trainers.rubric_grpo",
}

__all__ = [
    "Criterion",
    "DEFAULT_TEACHER_PROMPT_TEMPLATE",
    "EvalMetrics",
    "EvalResult",
    "EvaluationError",
    "GapResult",
    "Grade",
    "JudgeArguments",
    "OpenAIJudge",
    "PanelJudge",
    "RGSDConfig",
    "RGSDTrainer",
    "Rubric",
    "RubricDatasetError",
    "RubricError",
    "RubricGRPOConfig",
    "RubricGRPOTrainer",
    "RubricJudge",
    "RubricReward",
    "RuleJudge",
    "TokenView",
    "TransformersJudge",
    "build_judge",
    "build_teacher_prompt",
    "conditioning_gap",
    "evaluate",
    "generate_responses",
    "load_model_and_tokenizer",
    "load_rubric_dataset",
    "merge_adapter",
    "summarize",
    "token_logratio_view",
]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'trl_rubric' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:
    from .data import RubricDatasetError, load_rubric_dataset
    from .evaluation import (
        EvalMetrics,
        EvalResult,
        EvaluationError,
        GapResult,
        TokenView,
        conditioning_gap,
        evaluate,
        generate_responses,
        load_model_and_tokenizer,
        merge_adapter,
        summarize,
        token_logratio_view,
    )
    from .judges.base import Grade, RubricJudge
    from .judges.factory import JudgeArguments, build_judge
    from .judges.openai_judge import OpenAIJudge
    from .judges.panel import PanelJudge
    from .judges.rule import RuleJudge
    from .judges.transformers_judge import TransformersJudge
    from .rewards import RubricReward
    from .rubric import Criterion, Rubric, RubricError
    from .teacher import DEFAULT_TEACHER_PROMPT_TEMPLATE, build_teacher_prompt
    from .trainers.rgsd import RGSDConfig, RGSDTrainer
    from .trainers.rubric_grpo import RubricGRPOConfig, RubricGRPOTrainer
