"""`RubricAuthor`: asks an author model for a rubric per row, re-asks when the reply is unusable, caches good ones.

The requests go through the judge backends' own retry loop ([`ChatRubricJudge._ask`]): transport failures (timeouts,
429/5xx) back off and retry, and a reply that is not a valid rubric is asked again within the same budget. When the
budget is spent the row gets `rubric=None` and the reason; nothing partial is ever returned.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from ..judges.base import JudgeUsage, run_sync
from ..judges.cache import GradeCache
from ..judges.llm import ChatRubricJudge
from ..rubric import Rubric
from .parsing import parse_rubric_reply
from .prompts import (
    AUTHOR_MODES,
    AUTHOR_PROMPT_VERSION,
    answer_messages,
    contrastive_messages,
    keypoints_messages,
    process_messages,
    reference_messages,
)

#: `(min_criteria, max_criteria)` asked for and accepted by default, per mode (RaR 7-20 items, ExpRL 2-6 checkpoints).
DEFAULT_CRITERIA_BOUNDS = {"reference": (7, 20), "keypoints": (7, 20), "contrastive": (3, 10), "process": (2, 6)}


@dataclass
class AuthoringInput:
    """What one row gives the author: the prompt and, depending on the mode, a reference or two answers."""

    prompt: Any
    reference: str | None = None
    strong_answer: str | None = None
    policy_answer: str | None = None


@dataclass
class AuthoredRubric:
    """The outcome for one row: a valid `rubric`, or `error` saying why there is none."""

    rubric: Rubric | None
    error: str | None = None
    raw: str | None = None
    usage: JudgeUsage = field(default_factory=JudgeUsage)
    own_answer: str | None = None
    cached: bool = False


#: What each mode needs besides the prompt.
MODE_INPUTS = {
    "reference": ("reference",),
    "process": ("reference",),
    "contrastive": ("strong_answer", "policy_answer"),
    "keypoints": (),
}


def check_input(mode: str, item: AuthoringInput, where: str, skip: tuple[str, ...] = ()) -> None:
    """Raise `ValueError` naming the row (`where`) and field when `item` lacks what `mode` needs (fields in `skip`
    are not checked, e.g. policy answers still to be generated)."""
    for name in MODE_INPUTS[mode]:
        value = getattr(item, name)
        if name not in skip and (not isinstance(value, str) or not value.strip()):
            raise ValueError(f"{where}: mode {mode!r} needs a non-empty {name}; got {value!r}")


class RubricAuthor:
    """Writes rubrics with an author model in one of [`AUTHOR_MODES`].

    Args:
        backend: A chat backend from [`build_author_backend`] (an [`OpenAIJudge`] or a [`TransformersJudge`]); its
            client, retries, backoff and concurrency bound are used as they are.
        mode: `"reference"`, `"keypoints"`, `"contrastive"` or `"process"` (see `docs/authoring.md`).
        min_criteria, max_criteria: Criteria asked for and accepted; `None` takes the mode's default
            ([`DEFAULT_CRITERIA_BOUNDS`]). A reply outside the bounds is asked again.
        max_copy_words: A criterion sharing more consecutive words than this with the reference is a copy, and the
            reply is asked again; 0 disables the check.
        cache_dir: Folder for the on-disk cache of valid rubrics; `None` disables it.
    """

    def __init__(
        self,
        backend: ChatRubricJudge,
        mode: str = "reference",
        min_criteria: int | None = None,
        max_criteria: int | None = None,
        max_copy_words: int = 12,
        cache_dir: str | None = None,
    ):
        if mode not in AUTHOR_MODES:
            raise ValueError(f"authoring mode is {mode!r}; expected one of {AUTHOR_MODES}")
        low, high = DEFAULT_CRITERIA_BOUNDS[mode]
        self.min_criteria = low if min_criteria is None else int(min_criteria)
        self.max_criteria = high if max_criteria is None else int(max_criteria)
        if not 1 <= self.min_criteria <= self.max_criteria:
            raise ValueError(
                f"min_criteria={self.min_criteria}, max_criteria={self.max_criteria}; expected 1 <= min <= max"
            )
        if int(max_copy_words) < 0:
            raise ValueError(f"max_copy_words is {max_copy_words!r}; expected an integer >= 0 (0 disables the check)")
        self.backend = backend
        self.mode = mode
        self.max_copy_words = int(max_copy_words)
        self.cache = GradeCache(cache_dir) if cache_dir else None

    def _key(self, messages: list[dict[str, str]]) -> str:
        payload = {
            "author_model": self.backend.model_name,
            "prompt_version": AUTHOR_PROMPT_VERSION,
            "mode": self.mode,
            "bounds": [self.min_criteria, self.max_criteria, self.max_copy_words],
            "messages": messages,
        }
        canonical = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def check_input(self, item: AuthoringInput, where: str) -> None:
        """Raise `ValueError` naming the row and field when `item` lacks what the mode needs."""
        check_input(self.mode, item, where)

    async def _rubric_request(self, messages, reference: str | None) -> AuthoredRubric:
        box: list[Rubric | None] = [None]

        def read(text):
            parsed = parse_rubric_reply(
                text,
                min_criteria=self.min_criteria,
                max_criteria=self.max_criteria,
                reference=reference,
                max_copy_words=self.max_copy_words,
                ordered=self.mode == "process",
            )
            box[0] = parsed.rubric
            return parsed.problem

        usage, raw, problem = await self.backend._ask(messages, read)
        return AuthoredRubric(rubric=box[0] if problem is None else None, error=problem, raw=raw, usage=usage)

    async def author(self, item: AuthoringInput) -> AuthoredRubric:
        """One row's rubric (or the reason there is none). Never raises on a backend failure."""
        prompt = item.prompt
        if self.mode == "keypoints":
            first = answer_messages(prompt)
        elif self.mode == "contrastive":
            first = contrastive_messages(
                prompt, item.strong_answer, item.policy_answer, self.min_criteria, self.max_criteria
            )
        elif self.mode == "process":
            first = process_messages(prompt, item.reference, self.min_criteria, self.max_criteria)
        else:
            first = reference_messages(prompt, item.reference, self.min_criteria, self.max_criteria)
        key = self._key(first) if self.cache is not None else None
        if key is not None:
            entry = await asyncio.to_thread(self.cache.get, key)
            if entry is not None:
                return AuthoredRubric(
                    Rubric.from_any(entry["rubric"]),
                    raw=entry.get("raw"),
                    own_answer=entry.get("own_answer"),
                    cached=True,
                    usage=JudgeUsage(cached=True),
                )
        own_answer = None
        if self.mode == "keypoints":
            box: list[str | None] = [None]

            def read_answer(text):
                box[0] = text.strip() if text and text.strip() else None
                return None if box[0] else "empty answer"

            usage, _, problem = await self.backend._ask(first, read_answer)
            if problem is not None:
                return AuthoredRubric(None, error=f"the author's own answer failed: {problem}", usage=usage)
            own_answer = box[0]
            result = await self._rubric_request(
                keypoints_messages(prompt, own_answer, self.min_criteria, self.max_criteria), own_answer
            )
            usage.add(result.usage)
            result.usage, result.own_answer = usage, own_answer
        else:
            # Contrastive criteria are checked against the stronger answer: that is the text they must not paste.
            reference = item.strong_answer if self.mode == "contrastive" else item.reference
            result = await self._rubric_request(first, reference)
        if key is not None and result.rubric is not None:
            entry = {"rubric": result.rubric.to_list(), "raw": result.raw, "own_answer": own_answer}
            await asyncio.to_thread(self.cache.put, key, entry)
        return result

    async def author_many(self, items: list[AuthoringInput], max_concurrency: int | None = None):
        """Rubrics for every item, at most `max_concurrency` rows at once (the backend's bound by default)."""
        semaphore = asyncio.Semaphore(max_concurrency or self.backend.max_concurrency)

        async def one(item):
            async with semaphore:
                return await self.author(item)

        return await asyncio.gather(*(one(item) for item in items))

    def author_many_sync(self, items: list[AuthoringInput], max_concurrency: int | None = None):
        """Blocking [`author_many`]."""
        return run_sync(self.author_many(items, max_concurrency))
