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
import json
import logging
import queue
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
    """A background thread that sends [`RevisionRequest`]s to an author backend and keeps the results.

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
        self._requests: queue.Queue[RevisionRequest | None] = queue.Queue()
        self._done: list[RevisionResult] = []
        self._lock = threading.Lock()
        self._in_flight: set[str] = set()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"RubricUpdater(backend={self.backend!r})"

    @property
    def in_flight(self) -> set[str]:
        """Keys of the prompts with a request queued or being answered (or answered and not yet taken)."""
        with self._lock:
            return set(self._in_flight)

    def submit(self, request: RevisionRequest) -> bool:
        """Queue a request; `False` (and nothing queued) if that prompt already has one in flight."""
        with self._lock:
            if request.key in self._in_flight:
                return False
            self._in_flight.add(request.key)
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="rubric-updater", daemon=True)
            self._thread.start()
        self._requests.put(request)
        return True

    def take_done(self, wait: bool = False, timeout: float | None = None) -> list[RevisionResult]:
        """The results that arrived since the last call (with `wait`, first wait for every queued request)."""
        if wait:
            self.wait(timeout)
        with self._lock:
            done, self._done = self._done, []
            for result in done:
                self._in_flight.discard(result.request.key)
        return done

    def wait(self, timeout: float | None = None) -> None:
        """Block until every queued request has an answer (or `timeout` seconds pass)."""
        finished = threading.Event()

        def watch():
            self._requests.join()
            finished.set()

        threading.Thread(target=watch, daemon=True).start()
        finished.wait(timeout)

    def close(self) -> None:
        """Stop the thread after the queued requests (their results stay available to [`take_done`])."""
        if self._thread is not None and self._thread.is_alive():
            self._requests.put(None)
            self._thread.join()
        self._thread = None

    def _run(self) -> None:
        loop = asyncio.new_event_loop()  # the backends keep their HTTP clients per event loop
        try:
            while True:
                request = self._requests.get()
                try:
                    if request is None:
                        return
                    result = loop.run_until_complete(self._revise(request))
                    with self._lock:
                        self._done.append(result)
                finally:
                    self._requests.task_done()
        finally:
            loop.close()

    async def _revise(self, request: RevisionRequest) -> RevisionResult:
        box: list[Rubric | None] = [None]

        def read(text):
            box[0], problem = read_revision(text, self.min_criteria, self.max_criteria)
            return problem

        try:
            _, raw, problem = await self.backend._ask(revision_messages(request), read)
        except Exception as e:  # a crashed request must not kill the thread or leave the prompt in flight forever
            logger.warning("rubric revision for %s failed: %r", request.key[:12], e)
            return RevisionResult(request, None, error=f"{type(e).__name__}: {e}")
        if problem is not None:
            return RevisionResult(request, None, error=problem, raw=raw)
        return RevisionResult(request, box[0], raw=raw)


def rubric_json(rubric: Rubric) -> str:
    """A rubric's canonical JSON (for logs and keys)."""
    return json.dumps(rubric.to_list(), ensure_ascii=False, sort_keys=True)
