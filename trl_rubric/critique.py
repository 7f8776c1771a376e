"""The `critique` teacher context: after sampling, a judge critiques the rollout step by step; the teacher sees that.

Follows the idea of step-aligned critique (arXiv 2606.11173), in our own words: a frozen critic walks through the
student's answer in order, keeps the steps that are right, and corrects the ones that are wrong or miss a rubric
criterion; the teacher reads the question with that critique, so the per-token signal lands on the failing tokens.

One judge call per rollout, all of a batch concurrently, cached on disk through the judge's grade cache (a cached
critique costs no call). A failed critique never becomes an empty context: its row gets weight 0, the trainer leaves
it out of the loss and counts it in `rgsd/teacher_context_failed`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .judges.base import prompt_to_text as _chat_to_text
from .judges.cache import cache_key
from .judges.llm import ChatRubricJudge
from .rubric import Rubric
from .teacher import DEFAULT_TEACHER_PENALTIES, teacher_rubric
from .teacher_context import (
    RUBRIC_REFERENCE_TEACHER_PROMPT_TEMPLATE,
    ReferenceContext,
    RubricContext,
    TeacherContext,
    _check_placeholders,
    _reference_text,
    fill_template,
    weave,
)

#: Part of the cache key: change it whenever the critique prompt's wording changes.
CRITIQUE_PROMPT_VERSION = "trl-rubric-critique-v1"

CRITIQUE_SYSTEM_PROMPT = (
    "You review a draft answer against a rubric. Go through the draft in order, step by step. Keep each step that is "
    "correct, marked as correct. For each step that is wrong, or that misses what a rubric criterion asks for, say "
    "what is wrong and write the corrected step. Criteria marked as losing points describe what a good answer avoids. "
    "Do not write a new answer from scratch, and do not add a summary."
)

#: Teacher context with a critique of the rollout, in our own words.
CRITIQUE_TEACHER_PROMPT_TEMPLATE = (
    "{prompt}\n\n"
    "A step-by-step review of a draft answer to this question (the reader will not see it):\n"
    "{critique}\n\n"
    "Answer the question above on your own. Let the review guide what a good answer contains, "
    "but do not mention, quote or refer to it."
)


def prompt_to_text(prompt: Any) -> str:
    return prompt if isinstance(prompt, str) else _chat_to_text(prompt)


def _rubric_key(rubric: Rubric) -> str:
    # Part of the in-memory keys: two rows with the same prompt and different rubrics get their own texts
    return json.dumps(rubric.to_list(), sort_keys=True, ensure_ascii=False)


def critique_messages(prompt: Any, response: str, rubric: Rubric) -> list[dict[str, str]]:
    """The judge request for one rollout's critique."""
    question = prompt_to_text(prompt)
    user = (
        f"Question:\n{question}\n\nRubric:\n{rubric.render('weighted')}\n\nDraft answer:\n{response}\n\n"
        "Review the draft step by step."
    )
    return [{"role": "system", "content": CRITIQUE_SYSTEM_PROMPT}, {"role": "user", "content": user}]


def _read_critique(text: str | None) -> str | None:
    return "the judge returned an empty critique" if text is None or not text.strip() else None


@dataclass
class CritiqueContext:
    """The question plus a judge's step-aligned critique of this rollout (arXiv 2606.11173).

    Args:
        judge: An LLM judge (e.g. [`OpenAIJudge`]); its retries, concurrency bound and `cache_dir` are used.
        template: Teacher template with `{prompt}` and `{critique}`.
        rubric_column, pitfall_polarity: Where the rubric the critic checks against comes from.
    """

    judge: ChatRubricJudge
    template: str = CRITIQUE_TEACHER_PROMPT_TEMPLATE
    rubric_column: str = "rubric"
    pitfall_polarity: str = "as_is"
    name: str = "critique"
    num_contexts: int = 1
    needs_completion: bool = True
    prompt_version: str = CRITIQUE_PROMPT_VERSION
    #: Judge calls and failures so far, for metrics (cached critiques make no call).
    calls: int = field(default=0, init=False)
    failures: int = field(default=0, init=False)
    _pending: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self):
        if not isinstance(self.judge, ChatRubricJudge):
            raise TypeError(f"teacher_context='critique' needs an LLM judge; got {type(self.judge).__name__}")
        _check_placeholders(self.template, ("prompt", "critique"), self.name)
        self._rubrics = RubricContext(rubric_column=self.rubric_column, pitfall_polarity=self.pitfall_polarity)

    def validate(self, dataset: Any, name: str) -> None:
        self._rubrics.validate(dataset, name)

    async def _judge_text(self, messages, prompt: Any, response: str, rubric: Rubric) -> str | None:
        """One judge-written text, from the cache when there; `None` when the judge failed."""
        cache = self.judge.cache
        key = cache_key(self.judge.model_name, self.prompt_version, self.name, prompt, response, rubric)
        if cache is not None:
            entry = await asyncio.to_thread(cache.get, key)
            if entry is not None and isinstance(entry.get("text"), str):
                return entry["text"]
        async with self._semaphore:
            self.calls += 1
            _, raw, problem = await self.judge._ask(messages, _read_critique)
        if problem is not None:
            return None
        if cache is not None:  # only complete texts are stored: a failure is asked again next time
            await asyncio.to_thread(cache.put, key, {"text": raw})
        return raw

    async def _critique(self, prompt: Any, response: str, rubric: Rubric) -> str | None:
        return await self._judge_text(critique_messages(prompt, response, rubric), prompt, response, rubric)

    def prepare(self, rows: Sequence[Mapping[str, Any]], completions: Sequence[str]) -> None:
        """Critique every rollout of a batch concurrently; `contexts` then reads the results."""

        async def run_all():
            self._semaphore = asyncio.Semaphore(self.judge.max_concurrency)
            jobs = [
                self._critique(row["prompt"], completion, self._rubrics._rubric(row))
                for row, completion in zip(rows, completions, strict=True)
            ]
            return await asyncio.gather(*jobs)

        # A worker thread has no running event loop, so this works from notebooks and async callers too.
        with ThreadPoolExecutor(max_workers=1) as pool:
            critiques = pool.submit(asyncio.run, run_all()).result()
        self._pending = {}
        for row, completion, critique in zip(rows, completions, critiques, strict=True):
            self._pending[self._key(row, completion)] = critique
            self.failures += critique is None

    def _key(self, row: Mapping[str, Any], completion: str | None) -> tuple:
        return prompt_to_text(row["prompt"]), _rubric_key(self._rubrics._rubric(row)), completion

    def contexts(self, row: Mapping[str, Any], completion: str | None = None) -> list[TeacherContext]:
        key = self._key(row, completion)
        if key not in self._pending:
            self.prepare([row], [completion])
        critique = self._pending[key]
        if critique is None:
            # Weight 0: the trainer drops the row from the loss and counts it; the prompt is only a placeholder.
            return [TeacherContext(row["prompt"], 0.0)]
        return [
            TeacherContext(weave(row["prompt"], lambda t: fill_template(self.template, prompt=t, critique=critique)))
        ]


#: Part of the cache key of reason-first analyses.
ANALYSIS_PROMPT_VERSION = "trl-rubric-rcsd-analysis-v1"

ANALYSIS_SYSTEM_PROMPT = (
    "You prepare to answer a question. From the reference answer and the rubric, write a short analysis of what a good "
    "answer must contain and what it must avoid (criteria with negative points describe what it must avoid). Do not "
    "write the answer itself."
)

#: RCSD's context with the reason-first analysis (arXiv 2606.19327), in our own words.
REASON_FIRST_TEACHER_PROMPT_TEMPLATE = (
    "{prompt}\n\n"
    "A reference answer (the reader will not see it):\n"
    "{reference}\n\n"
    "Hidden evaluation criteria (the reader will not see these):\n"
    "{rubric}\n\n"
    "What a good answer needs, from the reference and the criteria:\n"
    "{analysis}\n\n"
    "Answer the question above on your own. Let all of this guide what a good answer contains, "
    "but do not mention, quote or refer to it."
)


def analysis_messages(prompt: Any, reference: str, rubric_text: str) -> list[dict[str, str]]:
    """The request for one row's reason-first analysis."""
    user = f"Question:\n{prompt_to_text(prompt)}\n\nReference answer:\n{reference}\n\nRubric:\n{rubric_text}"
    return [{"role": "system", "content": ANALYSIS_SYSTEM_PROMPT}, {"role": "user", "content": user}]


@dataclass
class ReasonFirstContext(CritiqueContext):
    """RCSD's optional "reason first" (arXiv 2606.19327): question, reference, JSON rubric, plus a short analysis of
    what they require, written once per row by `judge` (serve the frozen base model behind it to have the teacher
    write it, as the paper does) and cached. A failed analysis drops the row from the loss, counted.

    `penalties` (`"show"` or `"omit"`) decides whether the rubric's penalty criteria are in the teacher's view; with
    `"omit"` the analysis is written from the criteria the teacher sees, so it cannot bring them back. None (default):
    `RGSDTrainer` sets it from `RGSDConfig.teacher_penalties`; used on its own, the library default."""

    template: str = REASON_FIRST_TEACHER_PROMPT_TEMPLATE
    reference_column: str = "reference"
    render_style: str = "json"
    name: str = "rcsd_reason_first"
    needs_completion: bool = False
    prompt_version: str = ANALYSIS_PROMPT_VERSION
    penalties: str | None = None

    def __post_init__(self):
        if not isinstance(self.judge, ChatRubricJudge):
            raise TypeError(f"reason-first needs an LLM judge to write the analysis; got {type(self.judge).__name__}")
        _check_placeholders(self.template, ("prompt", "reference", "rubric", "analysis"), self.name)
        self._reference = ReferenceContext(
            template=RUBRIC_REFERENCE_TEACHER_PROMPT_TEMPLATE,
            reference_column=self.reference_column,
            with_rubric=True,
            render_style=self.render_style,
            rubric_column=self.rubric_column,
            pitfall_polarity=self.pitfall_polarity,
            penalties=self.penalties or DEFAULT_TEACHER_PENALTIES,  # checks the value
        )
        self._rubrics = self._reference._rubric_part

    def validate(self, dataset: Any, name: str) -> None:
        self._reference.validate(dataset, name)

    def _parts(self, row: Mapping[str, Any]) -> tuple[str, Rubric, str]:
        """The reference, the rubric the teacher is shown (penalties as `penalties` says) and its rendering."""
        rubric = teacher_rubric(self._rubrics._rubric(row), self.penalties or DEFAULT_TEACHER_PENALTIES)
        return _reference_text(row, self.reference_column), rubric, rubric.render(self.render_style)

    def _key(self, row: Mapping[str, Any], completion: str | None = None) -> tuple:
        return prompt_to_text(row["prompt"]), _rubric_key(self._parts(row)[1])

    def prepare(self, rows: Sequence[Mapping[str, Any]], completions: Sequence[str] | None = None) -> None:
        """Write the analyses of the rows not seen yet, concurrently (each row's analysis is kept for later)."""
        todo = {self._key(r): r for r in rows if self._key(r) not in self._pending}

        async def run_all():
            self._semaphore = asyncio.Semaphore(self.judge.max_concurrency)
            jobs = []
            for row in todo.values():
                reference, rubric, rubric_text = self._parts(row)
                messages = analysis_messages(row["prompt"], reference, rubric_text)
                jobs.append(self._judge_text(messages, row["prompt"], reference, rubric))
            return await asyncio.gather(*jobs)

        if not todo:
            return
        with ThreadPoolExecutor(max_workers=1) as pool:
            analyses = pool.submit(asyncio.run, run_all()).result()
        for key, analysis in zip(todo, analyses, strict=True):
            if analysis is None:
                self.failures += 1  # not kept: asked again the next time the row comes up
            else:
                self._pending[key] = analysis

    def contexts_for_length_check(self, row: Mapping[str, Any]) -> list[TeacherContext]:
        """The teacher context with the analysis left empty, for the trainer's start-up length check: a lower bound
        of the real prompt that costs no judge call (the full prompt is checked on each batch, once written)."""
        reference, _, rubric_text = self._parts(row)
        values = {"reference": reference, "rubric": rubric_text, "analysis": ""}
        return [TeacherContext(weave(row["prompt"], lambda t: fill_template(self.template, prompt=t, **values)))]

    def contexts(self, row: Mapping[str, Any], completion: str | None = None) -> list[TeacherContext]:
        key = self._key(row)
        if key not in self._pending:
            self.prepare([row])
        analysis = self._pending.get(key)
        if analysis is None:
            return [TeacherContext(row["prompt"], 0.0)]  # dropped from the loss and counted by the trainer
        reference, _, rubric_text = self._parts(row)
        values = {"reference": reference, "rubric": rubric_text, "analysis": analysis}
        return [TeacherContext(weave(row["prompt"], lambda t: fill_template(self.template, prompt=t, **values)))]


__all__ = [
    "CRITIQUE_PROMPT_VERSION",
    "CRITIQUE_TEACHER_PROMPT_TEMPLATE",
    "REASON_FIRST_TEACHER_PROMPT_TEMPLATE",
    "CritiqueContext",
    "ReasonFirstContext",
    "analysis_messages",
    "critique_messages",
]
