"""Rubrics that adapt during training: an evaluation memory and asynchronous rubric revisions (AMARIS-style).

Modules, one job each: `memory` (the on-disk store of step summaries and rubric updates, with recent and
similar-prompt retrieval), `updater` (the background thread asking an author model for revisions, and what it is
asked), `callback` (the `TrainerCallback` that ties them to [`RubricGRPOTrainer`]: observe, apply at step
boundaries, resume). See `docs/adaptive.md`.
"""

from .callback import ADAPTIVE_FIELDS, AdaptiveRubricCallback, adaptive_callback_from, prompt_key
from .memory import MEMORY_FILE, EvaluationMemory, hashed_bag_of_words
from .updater import RevisionRequest, RevisionResult, RubricUpdater, read_revision, revision_messages

__all__ = [
    "ADAPTIVE_FIELDS",
    "MEMORY_FILE",
    "AdaptiveRubricCallback",
    "EvaluationMemory",
    "RevisionRequest",
    "RevisionResult",
    "RubricUpdater",
    "adaptive_callback_from",
    "hashed_bag_of_words",
    "prompt_key",
    "read_revision",
    "revision_messages",
]
