"""Shared machinery of judges that read a chat prompt and write text: grading modes, retries, parsing, cache.

A backend ([`OpenAIJudge`], [`TransformersJudge`]) only implements `_chat(messages)`: one attempt at one request. This
module turns attempts into grades: it builds the prompts for the chosen mode, retries transport failures with
exponential backoff and jitter, re-asks when an answer cannot be parsed or leaves criteria out, and after the retry
budget reports the affected verdicts as unknown (`None`), never as "not met".
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..rubric import Rubric
from .base import (
    DEFAULT_CANNOT_ASSESS_POLICY,
    Grade,
    JudgeUsage,
    RubricJudge,
    check_cannot_assess_policy,
    prompt_to_text,
)
from .cache import GradeCache, cache_key
from .parsing import CANNOT_ASSESS, parse_answer, parse_rating, parse_single_answer
from .prompts import (
    JUDGE_MODES,
    PROMPT_VERSION,
    batched_messages,
    implicit_messages,
    neutralise,
    new_nonce,
    per_criterion_messages,
    rating_to_score,
)

logger = logging.getLogger(__name__)


@dataclass
class ChatReply:
    """What one successful request returned."""

    text: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0


class JudgeBackendError(Exception):
    """One request failed in transport (timeout, refused connection, HTTP error).

    Args:
        message: What happened, naming the endpoint (never a credential).
        retryable: Whether trying again may help (timeouts, connection errors, 408/409/429/5xx) or not (400, 401).
        retry_after: Seconds the server asked us to wait, if it said.
    """

    def __init__(self, message: str, retryable: bool = True, retry_after: float | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


class ChatRubricJudge(RubricJudge):
    """Base class for LLM judges; subclasses implement [`ChatRubricJudge._chat`].

    Args:
        model_name: The judge model's name; part of the cache key and of logs.
        mode: `"batched"` (one request returns every verdict), `"per_criterion"` (one request per criterion) or
            `"implicit"` (one 1-10 rating for the whole rubric, mapped to [0, 1]; see [`Grade`]).
        max_retries: Extra attempts per request after the first, for transport failures and for answers that cannot
            be parsed or leave criteria out.
        cache_dir: Folder for the on-disk grade cache; `None` disables caching.
        max_concurrency: Bound on concurrent grades in [`RubricJudge.grade_many`].
        backoff_base: First backoff delay in seconds after a transport failure; doubles on each retry.
        backoff_max: Cap on one backoff delay, also on a server's `Retry-After`.
        cannot_assess: How a "cannot assess" verdict scores: `"penalties_worst_case"` (default: a penalty counts as
            met, a positive criterion is left out), `"worst_case"`, `"skip"` or `"unmet"`; see
            [`CANNOT_ASSESS_POLICIES`]. Only the score changes; the cache stores the verdicts, so it is shared.
        seed: Seed of the per-request delimiter codes (see `trl_rubric.judges.prompts`); `None` draws them from the
            operating system. Set it only to make prompts reproducible in tests.
    """

    def __init__(
        self,
        model_name: str,
        mode: str = "batched",
        max_retries: int = 3,
        cache_dir: str | None = None,
        max_concurrency: int = 8,
        backoff_base: float = 0.5,
        backoff_max: float = 8.0,
        cannot_assess: str = DEFAULT_CANNOT_ASSESS_POLICY,
        seed: int | None = None,
    ):
        super().__init__()
        self._rng = random.Random(seed)  # seeded from the OS when `seed` is None
        self.cannot_assess_policy = check_cannot_assess_policy(cannot_assess)
        if mode not in JUDGE_MODES:
            raise ValueError(f"judge mode is {mode!r}; expected one of {JUDGE_MODES}")
        if int(max_retries) < 0:
            raise ValueError(f"max_retries is {max_retries!r}; expected an integer >= 0")
        if int(max_concurrency) < 1:
            raise ValueError(f"max_concurrency is {max_concurrency!r}; expected an integer >= 1")
        self.model_name = model_name
        self.mode = mode
        self.max_retries = int(max_retries)
        self.max_concurrency = int(max_concurrency)
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self.cache = GradeCache(cache_dir) if cache_dir else None

    @property
    def supports_group_grading(self) -> bool:
        """Batched-mode judges can grade all of a prompt's responses in one request ([`grade_group`])."""
        return self.mode == "batched"

    async def grade_group(self, prompt: Any, responses: list[str], rubric: Any) -> list[Grade]:
        """Grade all `responses` to `prompt` in one request; see `trl_rubric.judges.groupwise`."""
        if not self.supports_group_grading:
            raise ValueError(f"judge {self.name} grades groups in 'batched' mode only; its mode is {self.mode!r}")
        from .groupwise import grade_group_in_one_call

        return await grade_group_in_one_call(self, prompt, responses, rubric)

    @abstractmethod
    async def _chat(self, messages: list[dict[str, str]]) -> ChatReply:
        """Send one request and return the reply; raise [`JudgeBackendError`] if it failed in transport."""

    def _backoff_delay(self, retry: int, retry_after: float | None) -> float:
        # Exponential backoff with jitter, so that many workers hitting one overloaded server spread out.
        delay = min(self.backoff_max, self.backoff_base * 2 ** (retry - 1)) * random.uniform(0.5, 1.0)
        if retry_after is not None:
            delay = max(delay, min(float(retry_after), self.backoff_max))
        return delay

    async def _ask(self, messages: list[dict[str, str]], read: Callable[[str | None], str | None]):
        """Send `messages` until `read(answer)` returns `None` (complete) or the retry budget is spent.

        Returns:
            `(usage, raw, problem)`: `problem` is `None` on success, else why the answer is (partly) unknown.
        """
        usage = JudgeUsage(calls=1)
        raw, problem, retry_after, backoff = None, None, None, False
        for attempt in range(self.max_retries + 1):
            if attempt and backoff:
                await asyncio.sleep(self._backoff_delay(attempt, retry_after))
            usage.attempts += 1
            start = time.perf_counter()
            try:
                reply = await self._chat(messages)
            except JudgeBackendError as e:
                usage.latency_s += time.perf_counter() - start
                problem, retry_after, backoff = str(e), e.retry_after, True
                logger.debug("judge %s attempt %d failed: %s", self.name, attempt + 1, problem)
                if not e.retryable:
                    break
                continue
            except Exception as e:  # a backend bug must not take training down; it is reported as unknown
                usage.latency_s += time.perf_counter() - start
                problem = f"{type(e).__name__}: {e}"
                logger.warning("judge %s failed unexpectedly: %s", self.name, problem)
                break
            usage.latency_s += time.perf_counter() - start
            usage.prompt_tokens += reply.prompt_tokens
            usage.completion_tokens += reply.completion_tokens
            raw, retry_after, backoff = reply.text, None, False
            problem = read(reply.text)
            if problem is None:
                return usage, raw, None
            logger.debug("judge %s attempt %d gave an unusable answer: %s", self.name, attempt + 1, problem)
        return usage, raw, f"{problem} (after {usage.attempts} attempt{'s' * (usage.attempts != 1)})"

    async def _grade(self, prompt: Any, response: str, rubric: Rubric) -> Grade:
        key = None
        if self.cache is not None:
            key = cache_key(self.model_name, PROMPT_VERSION, self.mode, prompt, response, rubric)
            entry = self.cache.get(key)
            if entry is not None:
                usage = JudgeUsage(cached=True)
                if self.mode == "implicit":
                    return Grade.from_rating(rubric, entry["rating"], raw=entry.get("raw"), usage=usage)
                return self._verdict_grade(
                    rubric,
                    entry["verdicts"],
                    entry.get("cannot_assess"),
                    entry.get("explanations"),
                    raw=entry.get("raw"),
                    usage=usage,
                )
        if self.mode == "batched":
            grade = await self._grade_batched(prompt, response, rubric)
        elif self.mode == "per_criterion":
            grade = await self._grade_per_criterion(prompt, response, rubric)
        else:
            grade = await self._grade_implicit(prompt, response, rubric)
        if key is not None and grade.error is None:
            # Only complete grades are stored: a failure must be asked again next time, not replayed.
            # Cannot-assess is an answer, so it is stored too (and never asked again); the policy applies on reading.
            entry = (
                {"rating": grade.rating}
                if self.mode == "implicit"
                else {
                    "verdicts": grade.verdicts,
                    "cannot_assess": grade.cannot_assess,
                    "explanations": grade.explanations,
                }
            )
            await asyncio.to_thread(self.cache.put, key, {**entry, "raw": grade.raw})
        return grade

    def _verdict_grade(self, rubric, verdicts, cannot_assess=None, explanations=None, **kwargs) -> Grade:
        return Grade.from_verdicts(
            rubric,
            verdicts,
            cannot_assess=cannot_assess,
            explanations=explanations,
            cannot_assess_policy=self.cannot_assess_policy,
            **kwargs,
        )

    @staticmethod
    def _echo(response: str) -> str:
        # What a judge can quote of the response: as written, and as the prompt showed it (neutralised).
        return f"{response}\n{neutralise(response)}"

    def _nonce(self, prompt: Any, response: str) -> str:
        # A fresh delimiter code per request, drawn from the judge's own generator (seedable for tests).
        return new_nonce(self._rng, avoid=(prompt_to_text(prompt), response))

    async def _grade_batched(self, prompt: Any, response: str, rubric: Rubric) -> Grade:
        verdicts: list[bool | None] = [None] * len(rubric)
        cannot = [False] * len(rubric)
        explanations: list[str | None] = [None] * len(rubric)

        def read(text):
            got = parse_answer(text, len(rubric), echo=self._echo(response))
            # Keep what earlier attempts established; a retry only has to fill the gaps.
            for i, (v, c, e) in enumerate(zip(got.verdicts, got.cannot_assess, got.explanations, strict=True)):
                if verdicts[i] is None and not cannot[i] and (v is not None or c):
                    verdicts[i], cannot[i], explanations[i] = v, c, e
            missing = [i + 1 for i, v in enumerate(verdicts) if v is None and not cannot[i]]
            return f"no verdict for criteria {missing}: {'; '.join(got.problems)}" if missing else None

        messages = batched_messages(prompt, response, rubric, nonce=self._nonce(prompt, response))
        usage, raw, problem = await self._ask(messages, read)
        return self._verdict_grade(rubric, verdicts, cannot, explanations, raw=raw, usage=usage, error=problem)

    async def _grade_per_criterion(self, prompt: Any, response: str, rubric: Rubric) -> Grade:
        async def one(criterion):
            box: list[Any] = [None, None]

            def read(text):
                box[0], box[1], problem = parse_single_answer(text, echo=self._echo(response))
                return problem

            messages = per_criterion_messages(prompt, response, criterion, nonce=self._nonce(prompt, response))
            usage, raw, problem = await self._ask(messages, read)
            return box[0], box[1], usage, raw, problem

        results = await asyncio.gather(*(one(c) for c in rubric))
        usage = JudgeUsage()
        for *_, u, _, _ in results:
            usage.add(u)
        errors = [f"criterion {i}: {r[-1]}" for i, r in enumerate(results, start=1) if r[-1]]
        raw = "\n".join(f"[{i}] {r[3]}" for i, r in enumerate(results, start=1))
        cannot = [r[0] == CANNOT_ASSESS for r in results]
        return self._verdict_grade(
            rubric,
            [None if c else r[0] for r, c in zip(results, cannot, strict=True)],
            cannot,
            [r[1] for r in results],
            raw=raw,
            usage=usage,
            error="; ".join(errors) or None,
        )

    async def _grade_implicit(self, prompt: Any, response: str, rubric: Rubric) -> Grade:
        box: list[float | None] = [None]

        def read(text):
            box[0], problem = parse_rating(text, echo=self._echo(response))
            return problem

        messages = implicit_messages(prompt, response, rubric, nonce=self._nonce(prompt, response))
        usage, raw, problem = await self._ask(messages, read)
        score = rating_to_score(box[0]) if box[0] is not None else None
        return Grade.from_rating(rubric, score, raw=raw, usage=usage, error=problem)
