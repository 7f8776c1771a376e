"""Group-wise grading: one judge call grades all G rollouts of a prompt, each one absolutely, per criterion.

GRPO samples G rollouts per prompt and a batched judge grades each in its own request, so a step costs G requests per
prompt, each repeating the conversation and the rubric. Group-wise grading (RULER-style; TRL left it to reward
functions, huggingface/trl#4707) puts the G answers in one request and asks for every answer's verdicts on every
criterion. What keeps it an *absolute* grade and not a ranking:

- the prompt asks for each answer to be graded on its own, as if it were the only one (no comparison, no ranking);
- the answers are **shuffled** before the call, with the judge's seeded generator, and the verdicts are put back in
  the rollouts' order after it, so a judge's position bias does not land on the same rollout index every step;
- hardening as for one answer: each answer sits between its own delimiters with a per-request random code, text
  shaped like our delimiters or headers is neutralised (`trl_rubric.judges.prompts`), and a verdict object copied
  from any answer is refused by the parser;
- an answer the judge left out, or whose verdicts cannot be read, is re-asked (only the gaps) and after the retry
  budget its verdicts are unknown (`None`, counted as `judge/unknown_verdicts`), never 0; the other answers keep
  theirs.

The group's one request is counted once: its usage (calls, tokens, latency) sits on the grade of the group's first
rollout, and the other grades carry none. Group grades skip the judge's grade cache: a verdict given beside other
answers is a different measurement from one given alone.

Which judges can: an LLM judge ([`ChatRubricJudge`]) in `"batched"` mode, and a [`PanelJudge`] with at least one
such member.
[`grade_in_groups`] falls back to one request per answer for any other judge.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Sequence
from typing import Any

from ..rubric import Rubric
from .base import Grade, JudgeUsage, RubricJudge, completion_to_text, prompt_to_text, strip_thinking
from .parsing import parse_group_answer
from .prompts import group_messages, neutralise, new_nonce


def supports_group_grading(judge: RubricJudge) -> bool:
    """Whether `judge` grades a whole group of answers in one call (`judge.grade_group`)."""
    return bool(getattr(judge, "supports_group_grading", False)) and callable(getattr(judge, "grade_group", None))


def _answer_texts(judge: RubricJudge, responses: Sequence[Any]) -> list[str]:
    texts = [completion_to_text(r) for r in responses]
    if judge.strip_thinking:
        texts = [strip_thinking(t, *judge.thinking_delimiters) for t in texts]
    return texts


async def grade_group_in_one_call(judge: Any, prompt: Any, responses: Sequence[Any], rubric: Any) -> list[Grade]:
    """Grade `responses` (all to `prompt`, all against `rubric`) in one request of the LLM judge `judge`.

    `judge` is a [`ChatRubricJudge`] (its `_ask`, `_rng` and `_verdict_grade` are used); the grades are recorded in
    its stats and returned in the order of `responses`.
    """
    rubric = Rubric.from_any(rubric)
    texts = _answer_texts(judge, responses)
    n, k = len(texts), len(rubric)
    if n == 0:
        return []
    # Position j of the request shows rollout order[j].
    order = list(range(n))
    judge._rng.shuffle(order)
    shown = [texts[i] for i in order]
    verdicts: list[list[bool | None]] = [[None] * k for _ in range(n)]
    cannot = [[False] * k for _ in range(n)]
    explanations: list[list[str | None]] = [[None] * k for _ in range(n)]
    problems: list[list[str]] = [[] for _ in range(n)]
    echo = "\n".join(f"{t}\n{neutralise(t)}" for t in shown)

    def missing(j: int) -> list[int]:
        return [i + 1 for i in range(k) if verdicts[j][i] is None and not cannot[j][i]]

    def read(text):
        for j, got in enumerate(parse_group_answer(text, n, k, echo=echo)):
            problems[j] = got.problems
            # Keep what earlier attempts established; a retry only has to fill the gaps.
            for i, (v, c, e) in enumerate(zip(got.verdicts, got.cannot_assess, got.explanations, strict=True)):
                if verdicts[j][i] is None and not cannot[j][i] and (v is not None or c):
                    verdicts[j][i], cannot[j][i], explanations[j][i] = v, c, e
        gaps = {f"A{j + 1}": missing(j) for j in range(n) if missing(j)}
        return f"no verdict for {gaps}" if gaps else None

    nonce = new_nonce(judge._rng, avoid=(prompt_to_text(prompt), *shown))
    usage, raw, problem = await judge._ask(group_messages(prompt, shown, rubric, nonce=nonce), read)
    grades: list[Grade | None] = [None] * n
    for j, rollout in enumerate(order):
        gaps = missing(j)
        error = None
        if gaps:
            why = "; ".join(problems[j]) or problem or "no verdict"
            error = f"group answer A{j + 1}: no verdict for criteria {gaps}: {why}"
            if problem and "attempt" in problem:
                error += f" ({problem.rsplit('(', 1)[-1]}"
        grades[rollout] = judge._verdict_grade(
            rubric,
            verdicts[j],
            cannot[j],
            explanations[j],
            raw=raw,
            usage=usage if rollout == 0 else JudgeUsage(),
            error=error,
        )
    for grade in grades:
        judge._record(grade)
    return grades  # type: ignore[return-value]


async def grade_group(judge: RubricJudge, prompt: Any, responses: Sequence[Any], rubric: Any) -> list[Grade]:
    """All `responses` to one prompt graded by `judge`: in one call if it can, else one `grade` per response."""
    if supports_group_grading(judge):
        return await judge.grade_group(prompt, responses, rubric)
    return list(await asyncio.gather(*(judge.grade(prompt, r, rubric) for r in responses)))


def group_bounds(prompts: Sequence[Any], rubrics: Sequence[Rubric], size: int | None = None) -> list[tuple[int, int]]:
    """Runs of consecutive completions with the same prompt and rubric (TRL lays out a prompt's G rollouts
    contiguously), each at most `size` long."""
    keys = [
        hashlib.sha1(
            (prompt_to_text(p) + "\x00" + json.dumps(r.to_list(), sort_keys=True)).encode("utf-8")
        ).hexdigest()
        for p, r in zip(prompts, rubrics, strict=True)
    ]
    bounds, start = [], 0
    for i in range(1, len(keys) + 1):
        if i == len(keys) or keys[i] != keys[start] or (size and i - start == size):
            bounds.append((start, i))
            start = i
    return bounds


async def grade_in_groups(
    judge: RubricJudge,
    prompts: Sequence[Any],
    responses: Sequence[Any],
    rubrics: Sequence[Any],
    group_size: int | None = None,
    max_concurrency: int | None = None,
) -> list[Grade]:
    """Like [`RubricJudge.grade_many`], but each prompt's group of responses is graded in one call.

    Groups are runs of consecutive responses with the same prompt and rubric, at most `group_size` long; at most
    `max_concurrency` groups are in flight at once (the judge's own bound by default). A judge that cannot grade a
    group in one call grades each response on its own (exactly `grade_many`).
    """
    if not (len(prompts) == len(responses) == len(rubrics)):
        raise ValueError(
            f"grade_in_groups got {len(prompts)} prompts, {len(responses)} responses and {len(rubrics)} rubrics"
        )
    if not supports_group_grading(judge):
        return await judge.grade_many(prompts, responses, rubrics, max_concurrency=max_concurrency)
    rubrics = [Rubric.from_any(r) for r in rubrics]
    limit = asyncio.Semaphore(max_concurrency or judge.max_concurrency)

    async def one(start: int, end: int) -> list[Grade]:
        async with limit:
            return await judge.grade_group(prompts[start], list(responses[start:end]), rubrics[start])

    bounds = group_bounds(prompts, rubrics, group_size)
    results = await asyncio.gather(*(one(s, e) for s, e in bounds))
    return [g for group in results for g in group]
