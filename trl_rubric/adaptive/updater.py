"""`RubricUpdater`: asks an author model, on a background thread, to revise rubrics whose criteria stopped teaching.

A request carries the question, the current rubric with each criterion's pass rate in the prompt's latest rollout
groups (which are saturated: every rollout passes; which unreachable: none does), an example of a weak answer, and
what the memory retrieved: the prompt's own recent summaries and the revisions made to the most similar prompts. The
reply is read by the authoring parser ([`parse_rubric_reply`], so a revision is held to the same checks as an authored
rubric) and then by [`Rubric.from_any`]; a reply that fails either is a rejected revision, never applied.

The thread only produces results; the training loop takes them ([`RubricUpdater.take_done`]) at a step boundary,
so a rubric never changes in the middle of a step.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from ..authoring.parsing import parse_rubric_reply
from ..authoring.prompts import _FORMAT, _SYSTEM
from ..judges.base import prompt_to_text
from ..rubric import Rubric, RubricError

logger = logging.getLogger(__name__)

#: Bumped whenever the revision wording below changes.
REVISION_PROMPT_VERSION = "revise-v1"


@dataclass
class RevisionRequest:
    """What the author is asked to revise: one prompt's rubric and the evidence for it."""

    key: str
    prompt: Any
    rubric: Rubric
    version: int
    pass_rates: list[float | None]
    statuses: list[str | None]
    failure: str | None = None
    recent: list[dict[str, Any]] = field(default_factory=list)
    similar_updates: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class RevisionResult:
    """The author's answer to a [`RevisionRequest`]: a new rubric, or the reason there is none."""

    request: RevisionRequest
    rubric: Rubric | None
    error: str | None = None
    raw: str | None = None


def revision_messages(request: RevisionRequest) -> list[dict[str, str]]:
    """The chat messages asking the author for a revised rubric (our own wording)."""
    lines = []
    for i, (criterion, rate, status) in enumerate(
        zip(request.rubric, request.pass_rates, request.statuses, strict=True), start=1
    ):
        rate_text = "no verdicts" if rate is None else f"pass rate {rate:.2f}"
        flag = f", {status.upper()}" if status in ("saturated", "unreachable") else ""
        lines.append(f"{i}. (weight {criterion.weight:g}; {rate_text}{flag}) {criterion.text}")
    history = [
        f"- step {r['step']}: {r.get('n_saturated', 0)} saturated, {r.get('n_unreachable', 0)} unreachable"
        for r in request.recent
    ]
    examples = [
        "- a similar question's rubric was revised; its new criteria: "
        + "; ".join(c.get("text", "") for c in u.get("new_rubric", [])[:4])
        for u in request.similar_updates
    ]
    parts = [
        f"[QUESTION]\n{prompt_to_text(request.prompt)}\n[/QUESTION]",
        "[CURRENT RUBRIC]\n" + "\n".join(lines) + "\n[/CURRENT RUBRIC]",
    ]
    if request.failure:
        parts.append(f"[WEAK ANSWER]\n{request.failure}\n[/WEAK ANSWER]")
    if history or examples:
        parts.append("[NOTES FROM EARLIER STEPS]\n" + "\n".join(history + examples) + "\n[/NOTES FROM EARLIER STEPS]")
    parts.append(
        "The policy being trained now passes every criterion marked SATURATED on all its attempts, and fails every "
        "criterion marked UNREACHABLE on all of them, so neither tells its better attempts from its worse ones. "
        "Write a revised rubric for the question: keep the criteria that separate attempts, make saturated ones "
        "more demanding (what an expert answer adds beyond them), and split unreachable ones into smaller steps a "
        "weak answer can reach. Keep penalties as penalties."
    )
    parts.append(_FORMAT)
    return [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": "\n\n".join(parts)}]


def read_revision(text: str | None, min_criteria: int, max_criteria: int) -> tuple[Rubric | None, str | None]:
    """`(rubric, None)` for a valid revision, `(None, problem)` otherwise (the authoring parser, then the Rubric)."""
    parsed = parse_rubric_reply(text, min_criteria=min_criteria, max_criteria=max_criteria, max_copy_words=0)
    if parsed.problem is not None:
        return None, parsed.problem
    try:
        return Rubric.from_any(parsed.rubric.to_list()), None
    except RubricError as e:  # the parser already builds a Rubric: this guards a round trip through the store
        return None, str(e)


class RubricUpdater:
    """A background thread running an event loop that sends [`RevisionRequest`]s to an author backend, several at
    once (up to the backend's `max_concurrency`), and keeps the results until the training loop takes them.

    Args:
        backend: A chat backend from [`build_author_backend`] (an [`OpenAIJudge`] or a [`TransformersJudge`]); its
            retries and timeouts apply, and a reply that is not a valid rubric is asked again like any authored one.
        min_criteria, max_criteria: Bounds on the revised rubric's size.
    """

    def __init__(self, backend, min_criteria: int = 2, max_criteria: int = 20):
        if not 1 <= min_criteria <= max_criteria:
            raise ValueError(f"min_criteria={min_criteria}, max_criteria={max_criteria}; expected 1 <= min <= max")
        self.backend = backend
        self.min_criteria, self.max_criteria = int(min_criteria), int(max_criteria)
        self._lock = threading.Lock()
        self._in_flight: set[str] = set()
        self._futures: list[concurrent.futures.Future] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._semaphore: asyncio.Semaphore | None = None

    def __repr__(self) -> str:
        return f"RubricUpdater(backend={self.backend!r})"

    @property
    def in_flight(self) -> set[str]:
        """Keys of the prompts with a request being answered (or answered and not yet taken)."""
        with self._lock:
            return set(self._in_flight)

    def _start(self) -> None:
        # The backends keep their HTTP clients per event loop: one long-lived loop on our own thread.
        self._loop = asyncio.new_event_loop()
        self._semaphore = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="rubric-updater", daemon=True)
        self._thread.start()

    def submit(self, request: RevisionRequest) -> bool:
        """Send a request; `False` (and nothing sent) if that prompt already has one in flight."""
        with self._lock:
            if request.key in self._in_flight:
                return False
            self._in_flight.add(request.key)
        if self._thread is None:
            self._start()
        future = asyncio.run_coroutine_threadsafe(self._revise(request), self._loop)
        with self._lock:
            self._futures.append(future)
        return True

    def take_done(self, wait: bool = False, timeout: float | None = None) -> list[RevisionResult]:
        """The results that arrived since the last call (with `wait`, first wait for every request in flight)."""
        if wait:
            self.wait(timeout)
        with self._lock:
            done = [f.result() for f in self._futures if f.done() and not f.cancelled()]
            self._futures = [f for f in self._futures if not f.done()]
            for result in done:
                self._in_flight.discard(result.request.key)
        return done

    def wait(self, timeout: float | None = None) -> None:
        """Block until every request sent so far has an answer (or `timeout` seconds pass)."""
        with self._lock:
            futures = list(self._futures)
        concurrent.futures.wait(futures, timeout=timeout)

    def close(self) -> None:
        """Stop the thread without waiting for unanswered requests (their revisions could no longer be applied)."""
        with self._lock:
            futures, self._futures = self._futures, []
        for future in futures:
            future.cancel()
        if self._thread is not None:
            try:  # let the cancelled requests unwind (close their connections) before the loop stops
                asyncio.run_coroutine_threadsafe(_cancel_pending(), self._loop).result(timeout=10)
            except Exception:  # noqa: BLE001  (best effort: the thread is a daemon)
                pass
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()
        self._thread = self._loop = None
        with self._lock:
            self._in_flight.clear()

    async def _revise(self, request: RevisionRequest) -> RevisionResult:
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(max(1, int(getattr(self.backend, "max_concurrency", 4))))
        box: list[Rubric | None] = [None]

        def read(text):
            box[0], problem = read_revision(text, self.min_criteria, self.max_criteria)
            return problem

        try:
            async with self._semaphore:
                _, raw, problem = await self.backend._ask(revision_messages(request), read)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a crashed request must not kill the loop or leave the prompt in flight forever
            logger.warning("rubric revision for %s failed: %r", request.key[:12], e)
            return RevisionResult(request, None, error=f"{type(e).__name__}: {e}")
        if problem is not None:
            return RevisionResult(request, None, error=problem, raw=raw)
        return RevisionResult(request, box[0], raw=raw)


async def _cancel_pending() -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def rubric_json(rubric: Rubric) -> str:
    """A rubric's canonical JSON (for logs and keys)."""
    return json.dumps(rubric.to_list(), ensure_ascii=False, sort_keys=True)
