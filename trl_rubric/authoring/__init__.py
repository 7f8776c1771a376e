"""Rubric authoring: turn prompts (and reference answers or contrasting answers) into rubrics, then filter them.

Modules, one job each: `prompts` (what the author model is asked, per mode), `parsing` (reading a reply into a valid
rubric, the copy check), `backend` (the author's settings and chat client, the judges' own), `author` (the runner:
retries, cache, skip-and-report), `filters` (validation, de-duplication, learnability for GRPO and for RGSD),
`outputs` (rubrics.jsonl, summary.json, report.md); and `references`, reference answers the model writes itself
(the best clean answer of a few, for the reference teacher context). See `docs/authoring.md`.
"""

from .author import DEFAULT_CRITERIA_BOUNDS, AuthoredRubric, AuthoringInput, RubricAuthor
from .backend import AUTHOR_BACKENDS, AuthorArguments, build_author_backend
from .filters import (
    dedup_rows,
    dedup_rubric,
    duplicate_pairs,
    grpo_learnability,
    rgsd_learnability,
    similarity,
    validate_rows,
)
from .parsing import ParsedRubric, copied_criteria, longest_shared_run, parse_rubric_reply
from .prompts import AUTHOR_MODES, AUTHOR_PROMPT_VERSION
from .references import SelfReferences, build_self_references

__all__ = [
    "AUTHOR_BACKENDS",
    "AUTHOR_MODES",
    "AUTHOR_PROMPT_VERSION",
    "DEFAULT_CRITERIA_BOUNDS",
    "AuthorArguments",
    "AuthoredRubric",
    "AuthoringInput",
    "ParsedRubric",
    "RubricAuthor",
    "SelfReferences",
    "build_self_references",
    "build_author_backend",
    "copied_criteria",
    "dedup_rows",
    "dedup_rubric",
    "duplicate_pairs",
    "grpo_learnability",
    "longest_shared_run",
    "parse_rubric_reply",
    "rgsd_learnability",
    "similarity",
    "validate_rows",
]
