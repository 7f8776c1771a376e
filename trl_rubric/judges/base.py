"""The judge protocol: `RubricJudge.grade(prompt, response, rubric) -> Grade`, and batch grading."""

from __future__ import annotations

import asyncio
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..rubric import Rubric


@dataclass
class JudgeUsage:
    """What one grading cost: judge requests, retries, tokens and wall time."""

    calls: int = 0
    attempts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    cached: bool = False

    def add(self, other: JudgeUsage) -> None:
        self.calls += other.calls
        self.attempts += other.attempts
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.latency_s += other.latency_s


#: How a "cannot assess" verdict counts in a score (a judge option, [`RubricJudge.cannot_assess_policy`]):
#:   - `"penalties_worst_case"` (default): a penalty criterion (negative weight) counts as met, so that being
#:     unassessable never removes a penalty; a positive criterion is left out of the score, as an unknown is.
#:   - `"worst_case"`: the worst verdict for the response: penalties met, positive criteria unmet.
#:   - `"skip"`: left out of both sums of [`Rubric.score`], whatever the sign.
#:   - `"unmet"`: counts as not met, whatever the sign (for a penalty this is the best case).
CANNOT_ASSESS_POLICIES = ("penalties_worst_case", "worst_case", "skip", "unmet")
DEFAULT_CANNOT_ASSESS_POLICY = "penalties_worst_case"
#: The four outcomes of one criterion, as [`Grade.outcomes`] spells them (judge-check and eval reports read these).
MET, UNMET, CANNOT_ASSESS, UNKNOWN = "met", "unmet", "cannot_assess", "unknown"


def check_cannot_assess_policy(policy: str) -> str:
    if policy not in CANNOT_ASSESS_POLICIES:
        raise ValueError(f"cannot_assess policy is {policy!r}; expected one of {CANNOT_ASSESS_POLICIES}")
    return policy


def resolve_cannot_assess(
    rubric: Rubric,
    verdicts: Sequence[bool | None],
    cannot_assess: Sequence[bool],
    policy: str = DEFAULT_CANNOT_ASSESS_POLICY,
) -> list[bool | None]:
    """The verdicts a score is computed from: each cannot-assess criterion replaced as `policy` says.

    True / False / None (unknown) verdicts pass through unchanged; see [`CANNOT_ASSESS_POLICIES`].
    """
    check_cannot_assess_policy(policy)
    out: list[bool | None] = []
    for criterion, verdict, unassessable in zip(rubric, verdicts, cannot_assess, strict=True):
        if not unassessable:
            out.append(verdict)
        elif policy == "skip":
            out.append(None)
        elif policy == "unmet":
            out.append(False)
        elif criterion.weight < 0:  # worst case for a penalty: the mistake counts as made
            out.append(True)
        else:
            out.append(False if policy == "worst_case" else None)
    return out


@dataclass
class Grade:
    """A judge's verdicts on one response.

    **Verdict representation.** Each criterion has one of four outcomes ([`Grade.outcomes`]): met, unmet,
    *cannot assess* (the judge said that it cannot tell from the response and the conversation: a parsed answer, not a
    failure; never retried; cached) and unknown (no usable verdict: a failure, retried, never cached). `verdicts`
    keeps its old type, `True` / `False` / `None`, so code that reads it keeps working: a cannot-assess criterion has
    `verdicts[i] is None` **and** `cannot_assess[i] is True`; an unknown one has `verdicts[i] is None` and
    `cannot_assess[i] is False`. How a cannot-assess criterion scores is the judge's option (see
    [`CANNOT_ASSESS_POLICIES`]); `scored_verdicts` holds the verdicts after that choice, and `score` is
    [`Rubric.score`] of them.

    Attributes:
        verdicts: One per criterion, in rubric order: `True` met, `False` not met, `None` unknown or cannot-assess.
        score: [`Rubric.score`] of `scored_verdicts` (weighted), or `None` when nothing usable is known (also when
            every positive criterion is cannot-assess and the policy skips them: then `error` is `None`).
        unweighted_score: The same with every criterion counting +1 / -1.
        raw: The judge's raw output (concatenated for per-criterion mode).
        usage: Requests, retries, tokens and latency spent on this grade.
        error: Why some verdicts are unknown, if any are.
        rating: Set only by judges in implicit mode (one holistic rating for the whole rubric): the rating mapped to
            [0, 1]. Then `score` and `unweighted_score` both equal it and every verdict is `None`, because the judge
            gave no per-criterion verdicts; such a grade is complete, not failed.
        cannot_assess: One flag per criterion: `True` where the judge answered "cannot assess" (then the verdict is
            `None`). Empty at construction means none.
        explanations: One per criterion: the judge's own explanation of its verdict, or `None` where it gave none
            (rule judges, implicit mode, failures). Empty at construction means none.
        scored_verdicts: The verdicts the score was computed from (cannot-assess resolved by the judge's policy).
            Empty at construction means `verdicts`.
        agreement: Set only by a judge panel ([`PanelJudge`]): per criterion, the share of pairs of panel members,
            among those that gave a met / not-met verdict, whose verdicts agree; `None` where fewer than two members
            gave one. Empty for a single judge.
    """

    verdicts: list[bool | None]
    score: float | None
    unweighted_score: float | None = None
    raw: str | None = None
    usage: JudgeUsage = field(default_factory=JudgeUsage)
    error: str | None = None
    rating: float | None = None
    cannot_assess: list[bool] = field(default_factory=list)
    explanations: list[str | None] = field(default_factory=list)
    scored_verdicts: list[bool | None] = field(default_factory=list)
    agreement: list[float | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.verdicts is None:  # a custom judge's score-only grade: nothing per criterion to check
            return
        n = len(self.verdicts)
        self.cannot_assess = [bool(x) for x in self.cannot_assess] or [False] * n
        self.explanations = list(self.explanations) or [None] * n
        self.scored_verdicts = list(self.scored_verdicts) or list(self.verdicts)
        for name in ("cannot_assess", "explanations", "scored_verdicts"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"Grade.{name} has {len(getattr(self, name))} entries for {n} verdicts")
        bad = [
            i for i, (v, c) in enumerate(zip(self.verdicts, self.cannot_assess, strict=True)) if c and v is not None
        ]
        if bad:
            raise ValueError(
                f"Grade: criteria {bad} are cannot-assess but carry a verdict; their verdict must be None"
            )

    @classmethod
    def from_verdicts(
        cls,
        rubric: Rubric,
        verdicts: Sequence[bool | None],
        cannot_assess: Sequence[bool] | None = None,
        explanations: Sequence[str | None] | None = None,
        cannot_assess_policy: str = DEFAULT_CANNOT_ASSESS_POLICY,
        **kwargs: Any,
    ) -> Grade:
        """A grade from per-criterion verdicts; cannot-assess criteria are scored as `cannot_assess_policy` says."""
        verdicts = list(verdicts)
        flags = [bool(x) for x in cannot_assess] if cannot_assess else [False] * len(verdicts)
        verdicts = [None if c else v for v, c in zip(verdicts, flags, strict=True)]
        scored = resolve_cannot_assess(rubric, verdicts, flags, cannot_assess_policy)
        return cls(
            verdicts=verdicts,
            score=rubric.score(scored),
            unweighted_score=rubric.score(scored, weighted=False),
            cannot_assess=flags,
            explanations=list(explanations) if explanations else [],
            scored_verdicts=scored,
            **kwargs,
        )

    @classmethod
    def from_rating(cls, rubric: Rubric, rating: float | None, **kwargs: Any) -> Grade:
        """An implicit-mode grade: one rating in [0, 1] (or `None` if the judge gave none), no per-criterion verdicts."""
        return cls(verdicts=[None] * len(rubric), score=rating, unweighted_score=rating, rating=rating, **kwargs)

    @property
    def num_unknown(self) -> int:
        """Verdicts the judge should have given but did not (always 0 for a rated implicit-mode grade); a
        cannot-assess verdict is an answer, not an unknown."""
        if self.rating is not None:
            return 0
        return sum(v is None and not c for v, c in zip(self.verdicts, self.cannot_assess, strict=True))

    @property
    def num_cannot_assess(self) -> int:
        """Criteria the judge said it cannot assess."""
        return sum(self.cannot_assess)

    @property
    def outcomes(self) -> list[str]:
        """Per criterion: `"met"`, `"unmet"`, `"cannot_assess"` or `"unknown"` (all unknown in implicit mode)."""
        return [
            CANNOT_ASSESS if c else UNKNOWN if v is None else MET if v else UNMET
            for v, c in zip(self.verdicts, self.cannot_assess, strict=True)
        ]

    @property
    def graded_verdicts(self) -> list[bool | None]:
        """`verdicts` with each cannot-assess criterion as `False`: non-`None` wherever the judge answered, for
        [`Rubric.graded_fraction`] (a cannot-assess answer is graded, not missing)."""
        return [False if c else v for v, c in zip(self.verdicts, self.cannot_assess, strict=True)]

    @property
    def failed(self) -> bool:
        """True when the grade carries no score: the judge could not be used for this response."""
        return self.score is None


def prompt_to_text(prompt: Any) -> str:
    """Flatten a string or a list of chat messages into the text a judge reads."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, Sequence):
        parts = []
        for message in prompt:
            content = message.get("content", "")
            if isinstance(content, list):  # multimodal content blocks
                content = " ".join(block.get("text", "") for block in content if isinstance(block, dict))
            parts.append(f"{message.get('role', 'user')}: {content}")
        return "\n".join(parts)
    return str(prompt)


def completion_to_text(completion: Any) -> str:
    """A TRL completion (string, or list of assistant messages) as plain text."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence) and completion and isinstance(completion[0], dict):
        return "".join(str(m.get("content", "")) for m in completion)
    return str(completion)


def strip_thinking(text: str, start: str = "<think>", end: str = "</think>") -> str:
    """The answer part of a response, without its reasoning.

    Everything up to the last `end` delimiter is reasoning (this also covers chat templates that open the block in
    the prompt, so the response holds only its end). A block that is opened and never closed means the model never
    answered: the answer is what came before it, usually nothing. Text without delimiters is returned unchanged.
    """
    if end in text:
        return text[text.rindex(end) + len(end) :].strip()
    if start in text:
        return text[: text.index(start)].strip()
    return text


@dataclass
class JudgeStats:
    """Running totals over a judge's lifetime; readers take differences between snapshots."""

    grades: int = 0
    calls: int = 0
    retries: int = 0
    failures: int = 0
    unknown_verdicts: int = 0
    cannot_assess: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    #: Judge panels only: the sum of per-criterion agreement ([`Grade.agreement`]) over the (response, criterion)
    #: cells where it is defined, and the number of such cells; their ratio is the mean agreement (`judge/agreement`).
    agreement_sum: float = 0.0
    agreement_cells: int = 0

    def snapshot(self) -> JudgeStats:
        return JudgeStats(**vars(self))

    def since(self, earlier: JudgeStats) -> JudgeStats:
        return JudgeStats(**{k: v - getattr(earlier, k) for k, v in vars(self).items()})


class JudgeUnavailableError(RuntimeError):
    """The judge backend did not answer a start-up probe; raised before training or evaluation starts."""


class RubricJudge(ABC):
    """Grades a response against a rubric. Subclasses implement [`RubricJudge._grade`].

    A judge never raises on a bad answer from its backend: it retries where that makes sense, then returns a `Grade`
    whose affected verdicts are `None` (and whose score is `None` if nothing is known). `stats` counts it all.
    """

    #: Identifies the judge in cache keys, logs and model cards (never a secret).
    name: str = "judge"
    #: Grade only the answer of thinking models: drop `<think>...</think>` reasoning before grading.
    strip_thinking: bool = True
    #: The reasoning delimiters `strip_thinking` looks for.
    thinking_delimiters: tuple[str, str] = ("<think>", "</think>")
    #: Default bound on concurrent `grade` calls in `grade_many`.
    max_concurrency: int = 8
    #: How a "cannot assess" verdict scores; one of [`CANNOT_ASSESS_POLICIES`] (see [`Grade`]).
    cannot_assess_policy: str = DEFAULT_CANNOT_ASSESS_POLICY

    #: Attributes that cannot or must not be pickled (locks, live network clients); rebuilt lazily after unpickling.
    _transient: tuple[str, ...] = ("_stats_lock",)

    def __init__(self) -> None:
        self.stats = JudgeStats()
        self._stats_lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in self._transient}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._stats_lock = threading.Lock()

    @abstractmethod
    async def _grade(self, prompt: Any, response: str, rubric: Rubric) -> Grade:
        """Grade one response; implementations fill `usage` and may leave verdicts `None`."""

    async def probe(self) -> None:  # noqa: B027 - optional hook; most judges have nothing to probe
        """Check that the backend answers before a long job starts; raise a clear error if not. No-op by default."""

    def probe_sync(self) -> None:
        """Blocking [`probe`]."""
        run_sync(self.probe())

    async def grade(self, prompt: Any, response: str, rubric: Any) -> Grade:
        """Grade `response` to `prompt` against `rubric` (anything [`Rubric.from_any`] reads).

        With `strip_thinking` (the default), only the answer is graded: `<think>...</think>` reasoning is removed
        first, since a thinking model's reasoning restates the question and would earn credit the answer did not.
        """
        rubric = Rubric.from_any(rubric)
        text = completion_to_text(response)
        if self.strip_thinking:
            text = strip_thinking(text, *self.thinking_delimiters)
        grade = await self._grade(prompt, text, rubric)
        self._record(grade)
        return grade

    def _record(self, grade: Grade) -> None:
        with self._stats_lock:
            s = self.stats
            s.grades += 1
            s.failures += int(grade.failed)
            s.unknown_verdicts += grade.num_unknown
            s.cannot_assess += grade.num_cannot_assess
            known = [a for a in grade.agreement if a is not None]
            s.agreement_sum += sum(known)
            s.agreement_cells += len(known)
            if grade.usage.cached:
                s.cache_hits += 1
            else:
                s.calls += grade.usage.calls
                s.retries += max(0, grade.usage.attempts - grade.usage.calls)
                s.prompt_tokens += grade.usage.prompt_tokens
                s.completion_tokens += grade.usage.completion_tokens
                s.latency_s += grade.usage.latency_s

    async def grade_many(
        self,
        prompts: Sequence[Any],
        responses: Sequence[str],
        rubrics: Sequence[Any],
        max_concurrency: int | None = None,
        progress: bool = False,
    ) -> list[Grade]:
        """Grade many responses concurrently, at most `max_concurrency` at a time, keeping the input order."""
        if not (len(prompts) == len(responses) == len(rubrics)):
            raise ValueError(
                f"grade_many got {len(prompts)} prompts, {len(responses)} responses and {len(rubrics)} rubrics"
            )
        limit = asyncio.Semaphore(max_concurrency or self.max_concurrency)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(prompts), desc=f"grading ({self.name})", unit="resp")

        async def one(p, r, rb):
            async with limit:
                grade = await self.grade(p, r, rb)
            if bar is not None:
                bar.update(1)
            return grade

        try:
            return list(
                await asyncio.gather(*(one(p, r, rb) for p, r, rb in zip(prompts, responses, rubrics, strict=True)))
            )
        finally:
            if bar is not None:
                bar.close()

    def grade_many_sync(self, prompts, responses, rubrics, **kwargs) -> list[Grade]:
        """Blocking [`grade_many`], usable from scripts and notebooks (runs a private event loop in a thread)."""
        return run_sync(self.grade_many(prompts, responses, rubrics, **kwargs))


def run_sync(coro):
    """Run a coroutine to completion from sync code, even if the caller already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    result: dict[str, Any] = {}

    def target():
        try:
            result["value"] = asyncio.run(coro)
        except BaseException as e:  # re-raised in the caller's thread
            result["error"] = e

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]
