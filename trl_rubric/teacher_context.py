"""What the teacher is shown: one interface for the self-distillation family.

RGSD (arXiv 2606.12507), RCSD (arXiv 2606.19327), OPSD / SDFT and SGSD (arXiv 2605.28791) differ mainly in the
teacher's context. A [`TeacherContextProvider`] turns one dataset row (its prompt, rubric and other columns) into one
or more [`TeacherContext`]s: a teacher prompt, with a weight when several teachers score the same rollout. Providers
that need the rollout (a critique of it, say) set `needs_completion` and receive its text.

Built-in providers, picked by name with `RGSDConfig.teacher_context`:

- `"rubric"`: the question with the rubric as hidden criteria (RGSD; the default). Exactly [`build_teacher_prompt`].
- `"reference"`: the question with a reference answer (OPSD / SDFT style), read from `reference_column`.
- `"rubric+reference"`: the question, a reference answer and the rubric in one pass (RCSD).
- `"criteria"`: K teachers per rollout, teacher k shown the question and one group of the criteria
  ([`CriterionViewsContext`], `trl_rubric.criterion_views`).

A preset (see [`TEACHER_CONTEXT_PRESETS`]) is a provider plus the loss settings of its paper, e.g. `"rcsd"`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .criterion_views import check_criterion_views, criterion_views
from .rubric import Rubric, RubricError
from .teacher import (
    DEFAULT_TEACHER_PENALTIES,
    DEFAULT_TEACHER_PROMPT_TEMPLATE,
    build_teacher_prompt,
    check_teacher_penalties,
    render_for_teacher,
    weave,
)

logger = logging.getLogger(__name__)

#: Teacher context with a reference answer only (OPSD / SDFT style), in our own words.
REFERENCE_TEACHER_PROMPT_TEMPLATE = (
    "{prompt}\n\n"
    "A reference answer (the reader will not see it):\n"
    "{reference}\n\n"
    "Answer the question above on your own. Let the reference guide what a good answer contains, "
    "but do not mention, quote or refer to it."
)

#: Teacher context with a reference answer shown as a worked example, then the question again, and no instruction about
#: the example. A small model told not to mention a hidden text talks about it ("Here's a reference for the
#: answer..."); shown an example instead, it does not (docs/concepts.md#self-written-references measures both on
#: SmolLM2-135M). Pass it as `teacher_prompt_template` with `teacher_context="reference"`.
EXAMPLE_REFERENCE_TEACHER_PROMPT_TEMPLATE = "Question: {prompt}\nAnswer: {reference}\n\nQuestion: {prompt}"

#: Teacher context with a reference answer and the rubric in one pass (RCSD, arXiv 2606.19327), in our own words.
RUBRIC_REFERENCE_TEACHER_PROMPT_TEMPLATE = (
    "{prompt}\n\n"
    "A reference answer (the reader will not see it):\n"
    "{reference}\n\n"
    "Hidden evaluation criteria (the reader will not see these):\n"
    "{rubric}\n\n"
    "Answer the question above on your own. Let the reference and the criteria guide what a good answer contains, "
    "but do not mention, quote or refer to them."
)

#: Teacher context with one retrieved skill (SGSD, arXiv 2605.28791, shows each teacher one skill-mistake pair).
SKILL_TEACHER_PROMPT_TEMPLATE = (
    "{prompt}\n\n"
    "A skill that may help (the reader will not see it):\n"
    "{skill}\n\n"
    "Answer the question above on your own. Use the skill where it applies, but do not mention, quote or refer to it."
)

_PLACEHOLDER = re.compile(r"\{(prompt|rubric|reference|skill|critique|analysis)\}")


@dataclass(frozen=True)
class TeacherContext:
    """One teacher's view of a rollout.

    Args:
        prompt: The teacher's prompt, a string or chat messages (as the student's prompt is).
        weight: Relative weight of this teacher when several score the same rollout (normalised per rollout).
    """

    prompt: str | list[dict[str, Any]]
    weight: float = 1.0


@runtime_checkable
class TeacherContextProvider(Protocol):
    """Turns a dataset row into the contexts its teachers see.

    Attributes:
        name: Short name, shown in metrics and model cards.
        num_contexts: Teacher contexts per rollout (K); every row gets exactly this many.
        needs_completion: True when the contexts depend on the sampled rollout; `contexts` then gets its text, and
            teacher prompt lengths can only be checked after sampling.
    """

    name: str
    num_contexts: int
    needs_completion: bool

    def validate(self, dataset: Any, name: str) -> None:
        """Raise a `ValueError` naming the dataset, row and column of the first unusable row (before training)."""

    def contexts(self, row: Mapping[str, Any], completion: str | None = None) -> list[TeacherContext]:
        """The `num_contexts` teacher contexts of one row (and, when `needs_completion`, its rollout's text).

        A provider that could not build a row's contexts (a failed judge call, say) returns them with weight 0: the
        trainer then leaves the row out of the loss and counts it in `rgsd/teacher_context_failed`. A provider may
        also define `prepare(rows, completions)`, called once per batch before `contexts`, to batch its work.
        """


def fill_template(template: str, **values: str) -> str:
    """Substitute `{prompt}`, `{rubric}`, `{reference}`, `{skill}`, `{critique}` and `{analysis}` in one pass.

    One pass, so a reference or rubric that itself contains the text `{prompt}` is inserted as it is; and no
    `str.format`, because answers often contain braces (JSON, LaTeX, code).
    """
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)] if m.group(1) in values else m.group(0), template)


def _check_placeholders(template: str, required: tuple[str, ...], provider: str) -> None:
    missing = [p for p in required if "{" + p + "}" not in template]
    if missing:
        raise ValueError(
            f"teacher_prompt_template for teacher_context={provider!r} must contain "
            f"{', '.join('{' + p + '}' for p in missing)}; got {template!r}"
        )


def _reference_text(row: Mapping[str, Any], column: str) -> str:
    value = row[column] if column in row else None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"column {column!r} is {value!r}; expected a non-empty reference answer (a string)")
    return value


def _rows_with_columns(dataset: Any, name: str, columns: tuple[str, ...]):
    """Check the columns exist, then yield `(index, row)`; map-style datasets only (streams are checked later)."""
    names = getattr(dataset, "column_names", None)
    if names is None or not hasattr(dataset, "__len__"):
        return
    for column in columns:
        if column not in names:
            raise ValueError(
                f"{name} has no {column!r} column (columns: {names}); the teacher context needs it. Add the column, "
                "or point the config at the right one (rubric_column / reference_column)."
            )
    yield from enumerate(dataset.select_columns(list(columns)))


@dataclass
class RubricContext:
    """The question with its rubric as hidden criteria (RGSD, arXiv 2606.12507): [`build_teacher_prompt`].

    `penalties="omit"` leaves the rubric's negative-weight criteria out of the teacher's view (see
    [`TEACHER_PENALTIES`]).
    """

    template: str = DEFAULT_TEACHER_PROMPT_TEMPLATE
    render_style: str = "numbered"
    rubric_column: str = "rubric"
    pitfall_polarity: str = "as_is"
    name: str = "rubric"
    num_contexts: int = 1
    needs_completion: bool = False
    penalties: str = DEFAULT_TEACHER_PENALTIES

    def __post_init__(self):
        check_teacher_penalties(self.penalties)

    def validate(self, dataset: Any, name: str) -> None:
        from .data import validate_rubric_column

        validate_rubric_column(dataset, self.rubric_column, name, self.pitfall_polarity)

    def _rubric(self, row: Mapping[str, Any]) -> Rubric:
        try:
            return Rubric.from_any(row[self.rubric_column], pitfall_polarity=self.pitfall_polarity)
        except (RubricError, KeyError) as e:
            raise ValueError(f"a training row has an unusable {self.rubric_column!r} column: {e}") from None

    def contexts(self, row: Mapping[str, Any], completion: str | None = None) -> list[TeacherContext]:
        prompt = build_teacher_prompt(
            row["prompt"], self._rubric(row), self.template, self.render_style, self.penalties
        )
        return [TeacherContext(prompt)]

    def rubric_text(self, row: Mapping[str, Any]) -> str:
        """The row's rubric as the teacher reads it: rendered in `render_style`, penalties shown or omitted."""
        return render_for_teacher(self._rubric(row), self.render_style, self.penalties)


@dataclass
class ReferenceContext:
    """The question with a reference answer (OPSD / SDFT style); with `with_rubric`, the rubric too (RCSD), its
    penalty criteria shown or omitted by `penalties` as in [`RubricContext`]."""

    template: str = REFERENCE_TEACHER_PROMPT_TEMPLATE
    reference_column: str = "reference"
    with_rubric: bool = False
    render_style: str = "json"
    rubric_column: str = "rubric"
    pitfall_polarity: str = "as_is"
    name: str = "reference"
    num_contexts: int = 1
    needs_completion: bool = False
    penalties: str = DEFAULT_TEACHER_PENALTIES
    _rubric_part: RubricContext | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        required = ("prompt", "reference", "rubric") if self.with_rubric else ("prompt", "reference")
        _check_placeholders(self.template, required, self.name)
        check_teacher_penalties(self.penalties)
        if self.with_rubric:
            self._rubric_part = RubricContext(
                render_style=self.render_style,
                rubric_column=self.rubric_column,
                pitfall_polarity=self.pitfall_polarity,
                penalties=self.penalties,
            )

    def validate(self, dataset: Any, name: str) -> None:
        if self._rubric_part is not None:
            self._rubric_part.validate(dataset, name)
        for index, row in _rows_with_columns(dataset, name, (self.reference_column,)):
            try:
                _reference_text(row, self.reference_column)
            except ValueError as e:
                raise ValueError(f"{name} row {index}: {e}. Fill it, or drop the row.") from None

    def contexts(self, row: Mapping[str, Any], completion: str | None = None) -> list[TeacherContext]:
        values = {"reference": _reference_text(row, self.reference_column)}
        if self._rubric_part is not None:
            values["rubric"] = self._rubric_part.rubric_text(row)
        prompt = weave(row["prompt"], lambda text: fill_template(self.template, prompt=text, **values))
        return [TeacherContext(prompt)]


@dataclass
class CriterionViewsContext:
    """K teachers per rollout, teacher k shown the question plus only criterion group k (`trl_rubric.criterion_views`:
    one group per criterion, per category, or goals against penalties). Groups are weighted equally or by their
    criteria's weights; rows with fewer groups than K get weight-0 views. Penalty criteria follow `penalties` as in
    [`RubricContext`]."""

    num_contexts: int = 4
    grouping: str = "criterion"
    weighting: str = "equal"
    template: str = DEFAULT_TEACHER_PROMPT_TEMPLATE
    render_style: str = "numbered"
    rubric_column: str = "rubric"
    pitfall_polarity: str = "as_is"
    penalties: str = DEFAULT_TEACHER_PENALTIES
    name: str = "criteria"
    needs_completion: bool = False

    def __post_init__(self):
        _check_placeholders(self.template, ("prompt", "rubric"), self.name)
        check_teacher_penalties(self.penalties)
        check_criterion_views(self.grouping, self.weighting, self.penalties, self.num_contexts)

    def validate(self, dataset: Any, name: str) -> None:
        from .data import validate_rubric_column

        validate_rubric_column(dataset, self.rubric_column, name, self.pitfall_polarity)

    def contexts(self, row: Mapping[str, Any], completion: str | None = None) -> list[TeacherContext]:
        try:
            rubric = Rubric.from_any(row[self.rubric_column], pitfall_polarity=self.pitfall_polarity)
        except (RubricError, KeyError) as e:
            raise ValueError(f"a training row has an unusable {self.rubric_column!r} column: {e}") from None
        views = criterion_views(
            row["prompt"], rubric, self.template, self.render_style, self.penalties, self.grouping, self.weighting,
            self.num_contexts,
        )  # fmt: skip
        return [TeacherContext(prompt, weight) for prompt, weight in views]


def load_skill_bank(path: str | os.PathLike) -> list[str]:
    """Skill texts from a file: `.jsonl` rows with `text`, or with `skill` and optionally `mistake` (SGSD's
    skill-mistake pairs), with optional `instead` and `why` for the mistake; any other file has one skill per non-empty
    line. A mistake is rendered as SGSD's authors render theirs (arXiv 2605.28791, their public code): "Don't: ...",
    then "Instead: ..." and "Why this matters: ..." when given."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"skill_bank {str(path)!r} is not a file; expected a .jsonl or text file of skills")
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix != ".jsonl":
        return [line.strip() for line in lines if line.strip()]
    skills = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"skill_bank {str(path)!r} line {number}: not JSON ({e})") from None
        text = entry.get("text") or entry.get("skill") if isinstance(entry, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"skill_bank {str(path)!r} line {number}: expected a non-empty 'text' or 'skill' field")
        if isinstance(entry.get("mistake"), str) and entry["mistake"].strip():
            text = f"{text.strip()}\nDon't: {entry['mistake'].strip()}"
            for key, label in (("instead", "Instead"), ("why", "Why this matters")):
                if isinstance(entry.get(key), str) and entry[key].strip():
                    text += f"\n{label}: {entry[key].strip()}"
        skills.append(text.strip())
    return skills


def prompt_text(prompt: str | list[dict[str, Any]]) -> str:
    """The text a retriever should match: a plain prompt, or the last user turn of chat messages."""
    if isinstance(prompt, str):
        return prompt
    content = next((m["content"] for m in reversed(prompt) if m.get("role") == "user"), "")
    if isinstance(content, list):
        return " ".join(b.get("text", "") for b in content if b.get("type") == "text")
    return content


@dataclass
class SkillsContext:
    """K teachers per rollout, each shown one skill retrieved from a bank (SGSD, arXiv 2605.28791).

    Skills are ranked by `embed` (a function from a list of texts to a `[n, d]` array; cosine similarity) when given,
    otherwise by BM25 (the `bm25s` package). The K teachers are weighted by a softmax of their retrieval scores at
    `temperature`, as in SGSD. Retrieval reads only the prompt, so it is deterministic and resumes exactly.

    Args:
        bank: Path of the skill file (see [`load_skill_bank`]) or the skill texts themselves.
        num_contexts: K, teachers per rollout; at most the bank's size.
        embed: Optional embedding function; BM25 when None.
        temperature: Softmax temperature on the retrieval scores.
        template: Teacher template with `{prompt}` and `{skill}`.
    """

    bank: Any
    num_contexts: int = 4
    embed: Callable[[list[str]], Any] | None = None
    temperature: float = 1.0
    template: str = SKILL_TEACHER_PROMPT_TEMPLATE
    name: str = "skills"
    needs_completion: bool = False

    def __post_init__(self):
        _check_placeholders(self.template, ("prompt", "skill"), self.name)
        self.skills = load_skill_bank(self.bank) if isinstance(self.bank, (str, os.PathLike)) else list(self.bank)
        if not 1 <= self.num_contexts <= len(self.skills):
            raise ValueError(
                f"num_teacher_contexts is {self.num_contexts} but the skill bank holds {len(self.skills)} skills; "
                "expected 1 <= K <= bank size"
            )
        if not self.temperature > 0:
            raise ValueError(f"skill_weight_temperature is {self.temperature}; expected a positive number")
        if self.embed is not None:
            self._bank_vectors = _unit_rows(self.embed(self.skills))
        else:
            try:
                import bm25s
            except ImportError as e:
                raise ImportError(
                    "teacher_context='skills' without an embedding function ranks skills with BM25 from the `bm25s` "
                    "package: pip install 'trl-rubric[skills]' (or pass embed=...)"
                ) from e
            self._bm25 = bm25s.BM25()
            self._bm25.index(bm25s.tokenize(self.skills, stopwords=None, show_progress=False), show_progress=False)

    def retrieve(self, query: str) -> tuple[list[int], list[float]]:
        """Indices and scores of the `num_contexts` best skills for `query`, best first."""
        if self.embed is not None:
            scores = (self._bank_vectors @ _unit_rows(self.embed([query]))[0]).tolist()
            order = sorted(range(len(scores)), key=lambda i: -scores[i])[: self.num_contexts]
            return order, [scores[i] for i in order]
        import bm25s

        tokens = bm25s.tokenize([query], stopwords=None, show_progress=False)
        docs, scores = self._bm25.retrieve(tokens, k=self.num_contexts, show_progress=False)
        return [int(i) for i in docs[0]], [float(x) for x in scores[0]]

    def validate(self, dataset: Any, name: str) -> None:
        next(_rows_with_columns(dataset, name, ("prompt",)), None)  # the prompt is the retrieval query

    def contexts(self, row: Mapping[str, Any], completion: str | None = None) -> list[TeacherContext]:
        indices, scores = self.retrieve(prompt_text(row["prompt"]))
        top = max(scores)
        weights = [math.exp((s - top) / self.temperature) for s in scores]
        return [
            TeacherContext(
                weave(
                    row["prompt"],
                    lambda text, skill=self.skills[i]: fill_template(self.template, prompt=text, skill=skill),
                ),
                w / sum(weights),
            )
            for i, w in zip(indices, weights, strict=True)
        ]


def _unit_rows(vectors: Any):
    import numpy as np

    array = np.asarray(vectors, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"the embedding function must return a [n, d] array; got shape {array.shape}")
    return array / np.clip(np.linalg.norm(array, axis=1, keepdims=True), 1e-12, None)


@dataclass(frozen=True)
class TeacherContextPreset:
    """A named method: a provider kind, and the `RGSDConfig` settings of its paper.

    Args:
        provider: `"rubric"`, `"reference"` or `"rubric+reference"`.
        settings: Config fields the preset sets where they still hold their defaults. A field the user changed
            keeps the user's value, with a warning (a field set to its default value looks unset and takes the
            preset's).
        description: One line for docs and errors.
    """

    provider: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""


#: Presets by name for `RGSDConfig.teacher_context`.
TEACHER_CONTEXT_PRESETS: dict[str, TeacherContextPreset] = {
    "rubric": TeacherContextPreset("rubric", description="RGSD: the rubric as hidden criteria (arXiv 2606.12507)"),
    "reference": TeacherContextPreset("reference", description="OPSD / SDFT: a reference answer"),
    "rubric+reference": TeacherContextPreset(
        "rubric+reference", description="a reference answer and the rubric in one teacher pass"
    ),
    "skills": TeacherContextPreset(
        "skills", description="K teachers per rollout, one retrieved skill each (from skill_bank), averaged"
    ),
    "criteria": TeacherContextPreset(
        "criteria",
        description="K teachers per rollout, teacher k shown one group of the criteria (criterion_grouping), averaged",
    ),
    "sgsd": TeacherContextPreset(
        "skills",
        # As published (arXiv 2605.28791 and its code): 8 skill-mistake pairs retrieved, the gated loss on the sampled
        # token, averaged per rollout; gate_tau / gate_polarity_clip / gate_confidence_threshold default to its values.
        settings={
            "teacher_combine": "sgsd_gate",
            "distillation_support": "sampled_token",
            "num_teacher_contexts": 8,
            "loss_type": "grpo",
        },
        description="SGSD (arXiv 2605.28791): retrieved skills, K teachers combined by the verifier-gated loss",
    ),
    "rcsd": TeacherContextPreset(
        "rubric+reference",
        settings={
            "rubric_render_style": "json",
            "teacher_penalties": "show",
            "distillation_beta": 0.0,
            "distillation_support": "topk",
            "distillation_top_k": 20,
            "distillation_top_k_source": "teacher",
            "distillation_top_k_tail": False,
            "token_clip": 0.05,
            "token_clip_mode": "per_entry",
        },
        description=(
            "RCSD (arXiv 2606.19327): reference + JSON rubric, forward KL over the teacher's top-20 tokens "
            "renormalised, per-entry clip 0.05, frozen teacher"
        ),
    ),
}


def resolve_preset(name: str) -> TeacherContextPreset:
    if name not in TEACHER_CONTEXT_PRESETS:
        raise ValueError(f"teacher_context is {name!r}; expected one of {tuple(TEACHER_CONTEXT_PRESETS)}")
    return TEACHER_CONTEXT_PRESETS[name]


def apply_preset(config: Any, defaults: Mapping[str, Any]) -> None:
    """Set the preset's loss settings on `config` where the field still holds its default `defaults[field]`."""
    preset = resolve_preset(config.teacher_context)
    for key, value in preset.settings.items():
        current = getattr(config, key)
        if current == defaults[key]:
            setattr(config, key, value)
        elif current != value:
            logger.warning(
                "teacher_context=%r sets %s=%r, but the config sets %r; keeping %r (a departure from the preset).",
                config.teacher_context,
                key,
                value,
                current,
                current,
            )


def build_teacher_context(config: Any) -> TeacherContextProvider:
    """The provider an `RGSDConfig` names in `teacher_context`.

    The rubric provider uses `teacher_prompt_template`; the reference providers use theirs unless the user set
    `teacher_prompt_template` (which must then hold their placeholders).
    """
    preset = resolve_preset(config.teacher_context)
    custom = config.teacher_prompt_template != DEFAULT_TEACHER_PROMPT_TEMPLATE
    common = dict(
        rubric_column=config.rubric_column,
        pitfall_polarity=config.pitfall_polarity,
        penalties=config.teacher_penalties,
    )
    if preset.provider == "rubric":
        return RubricContext(config.teacher_prompt_template, config.rubric_render_style, **common)
    if preset.provider == "criteria":
        return CriterionViewsContext(
            num_contexts=config.num_teacher_contexts,
            grouping=config.criterion_grouping,
            weighting=config.criterion_view_weights,
            template=config.teacher_prompt_template,
            render_style=config.rubric_render_style,
            **common,
        )
    if preset.provider == "skills":
        if not config.skill_bank:
            raise ValueError(f"teacher_context={config.teacher_context!r} needs skill_bank, a file of skills")
        return SkillsContext(
            config.skill_bank,
            num_contexts=config.num_teacher_contexts,
            temperature=config.skill_weight_temperature,
            template=config.teacher_prompt_template if custom else SKILL_TEACHER_PROMPT_TEMPLATE,
        )
    with_rubric = preset.provider == "rubric+reference"
    default = RUBRIC_REFERENCE_TEACHER_PROMPT_TEMPLATE if with_rubric else REFERENCE_TEACHER_PROMPT_TEMPLATE
    return ReferenceContext(
        template=config.teacher_prompt_template if custom else default,
        reference_column=config.reference_column,
        with_rubric=with_rubric,
        render_style=config.rubric_render_style,
        name=preset.provider,
        **common,
    )


__all__ = [
    "CriterionViewsContext",
    "EXAMPLE_REFERENCE_TEACHER_PROMPT_TEMPLATE",
    "REFERENCE_TEACHER_PROMPT_TEMPLATE",
    "RUBRIC_REFERENCE_TEACHER_PROMPT_TEMPLATE",
    "SKILL_TEACHER_PROMPT_TEMPLATE",
    "SkillsContext",
    "load_skill_bank",
    "TEACHER_CONTEXT_PRESETS",
    "ReferenceContext",
    "RubricContext",
    "TeacherContext",
    "TeacherContextPreset",
    "TeacherContextProvider",
    "apply_preset",
    "build_teacher_context",
    "fill_template",
    "weave",
]
