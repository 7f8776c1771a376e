"""The evaluation harness's one error type."""

from __future__ import annotations


class EvaluationError(ValueError):
    """Bad input to the evaluation harness (model path, options); the message says what is wrong and how to fix it."""
