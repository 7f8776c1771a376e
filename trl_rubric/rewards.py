"""`RubricReward`: a rubric judge as a TRL reward function, with optional policy-aware criterion reweighting.

TRL calls a reward function with `prompts`, `completions` and every dataset column as keyword lists. `RubricReward`
reads the rubric column, grades every completion with its judge (concurrently, on TRL's background event loop, since
`__call__` is async), and returns one score per completion, or `None` where the judge gave no usable verdict: TRL turns
`None` into NaN and leaves that completion out, so a judge failure never counts as a score of 0.

**Criterion reweighting** (optional): within each prompt's group of rollouts, move weight toward the criteria whose
verdicts still separate the rollouts ([`trl_rubric.reweighting`]: our variant `"ours"` and our reading of POW3R,
`"pow3r"`). In implicit judge mode there are no verdicts, so the rating is returned unchanged.

**Degenerate answers** (optional, `degenerate_reward`): an answer the degeneration checks flag (a repeated line,
criterion text pasted in, talk about the requirements; [`trl_rubric.evaluation.degeneration`]) gets that reward
without being sent to the judge. A rule judge pays for the numbered items of a list that repeats itself, and an LLM
judge can be talked into it; a user would pay nothing. Logged as `judge/degenerate_frac`.

**A share of the prompts** (optional, `judge_share`): only that share of each call's prompts is sent to the judge
([`trl_rubric.judge_share`]); the others' rollouts get no reward (`None`). For hybrid RGSD with a costly judge, whose
distillation term still trains on every rollout.

**Some criteria only** (optional, `criteria`): the judge grades, and the reward scores, only the criteria whose
title, text, category or a tag is listed ([`Rubric.select`]). For hybrid RGSD: a cheap reward on what the teacher's
token signal does not carry (a row's key term), while the distillation term teaches the rest.

**Criterion diagnostics**: every call logs `criteria/*` (pass rate, within-group std, saturated / unreachable /
contrasting counts, strict completion; [`trl_rubric.criterion_diagnostics`]) and keeps them in `last_diagnostics`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import weakref
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from .criterion_diagnostics import CriterionDiagnostics, criterion_diagnostics, log_criterion_diagnostics
from .data import RubricDatasetError
from .evaluation.degeneration import degeneration_flags
from .judge_share import check_judge_share, judged_prompts
from .judges.base import Grade, RubricJudge, prompt_to_text
from .judges.groupwise import grade_in_groups, supports_group_grading
from .reweighting import (  # noqa: F401  (the math lives in reweighting.py; names kept importable from here)
    CriterionReweighter,
    ReweightingConfig,
    criterion_spread,
    ema_update,
    reweight,
    reweighting_factors,
    reweighting_from,
)
from .rubric import PITFALL_POLARITIES, Rubric, RubricError
from .rubric_dropout import check_dropout_probability, drop_criteria, dropout_step


def _group_bounds(keys: Sequence[str], size: int | None) -> list[tuple[int, int]]:
    """Runs of equal consecutive keys (TRL lays out a prompt's rollouts contiguously), at most `size` long."""
    bounds, start = [], 0
    for i in range(1, len(keys) + 1):
        if i == len(keys) or keys[i] != keys[start] or (size and i - start == size):
            bounds.append((start, i))
            start = i
    return bounds


def _verdict_cell(grade: Grade) -> str:
    if grade.rating is not None:
        return f"rating {grade.rating:.2f}"
    marks = {"met": "yes", "unmet": "no", "cannot_assess": "cannot", "unknown": "?"}
    return " ".join(f"{i}:{marks[o]}" for i, o in enumerate(grade.outcomes, start=1))


def _explanation_cell(grade: Grade, limit: int = 160) -> str:
    """The judge's explanation of each criterion, `1: ... | 2: ...` (each cut to `limit` characters)."""
    return " | ".join(
        f"{i}: {e if len(e) <= limit else e[: limit - 3] + '...'}"
        for i, e in enumerate(grade.explanations, start=1)
        if e
    )


#: Below this share of a rubric's points (by absolute weight) with a known verdict, a completion's reward is unknown
#: rather than a score over the few criteria that were graded: with one of three criteria graded, or a large penalty
#: left unknown, that score reads far higher than the response deserves.
DEFAULT_MIN_GRADED_FRACTION = 0.75


def check_degenerate_reward(value: float | None) -> float | None:
    """`degenerate_reward` as a float, or `None`; a clear error for anything else."""
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"degenerate_reward is {value!r}; expected a number or None") from None
    if not math.isfinite(value):
        raise ValueError(f"degenerate_reward is {value}; expected a finite number or None")
    return value


def unknown_where_judge_failed(rewards, judge_columns: Sequence[int]):
    """Rewards `[N, F]` with a whole row set to NaN wherever a judge column is NaN.

    TRL sums reward functions with `nansum`, so a failed judge next to other reward functions would count as 0. A
    completion the judge could not grade is instead left out altogether (NaN everywhere: zero advantage, and out of
    its group's baseline).
    """
    if not judge_columns or rewards.shape[1] == len(judge_columns):
        return rewards
    ungraded = torch.isnan(rewards[:, list(judge_columns)]).any(dim=1)
    if not ungraded.any():
        return rewards
    rewards = rewards.clone()
    rewards[ungraded] = torch.nan
    return rewards


def apply_reward_settings(
    reward_funcs,
    degenerate_reward: float | None = None,
    judge_share: float = 1.0,
    criteria: Sequence[str] | None = None,
) -> None:
    """A trainer config's `degenerate_reward` / `judge_share` / `reward_criteria` onto the [`RubricReward`]s among
    `reward_funcs`.

    A setting left at its default in the config changes nothing. One set in the config goes to every `RubricReward`
    that still has the default; a `RubricReward` built with another value is an error, naming both, since silently
    keeping either would train on a reward the user did not ask for.
    """
    funcs = reward_funcs if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
    wanted = {"degenerate_reward": (check_degenerate_reward(degenerate_reward), None),
              "judge_share": (check_judge_share(judge_share), 1.0),
              "criteria": (check_criteria(criteria), None)}  # fmt: skip
    for reward in (f for f in funcs if isinstance(f, RubricReward)):
        for name, (value, default) in wanted.items():
            own = getattr(reward, name)
            if value == default or own == value:
                continue
            if own != default:
                raise ValueError(
                    f"the config sets {name}={value} but the RubricReward {reward.__name__!r} among reward_funcs was "
                    f"built with {name}={own}; set it in one place"
                )
            if name == "judge_share":
                reward.set_judge_share(value)
            else:
                setattr(reward, name, value)


def check_criteria(criteria: Sequence[str] | None) -> tuple[str, ...] | None:
    """`criteria` as a tuple of names, or `None`; a `ValueError` for a bare string, an empty list or a blank name."""
    if criteria is None:
        return None
    if isinstance(criteria, str):
        raise ValueError(f"criteria is the string {criteria!r}; expected a list of titles, texts, categories or tags")
    names = tuple(criteria)
    if not names or any(not isinstance(n, str) or not n.strip() for n in names):
        raise ValueError(
            f"criteria is {list(names)!r}; expected a non-empty list of titles, texts, categories or tags"
        )
    return names


def validate_reward_criteria(reward_funcs, dataset: Any, name: str, column: str = "rubric") -> None:
    """Check, before training, that every row of `dataset` has a criterion each [`RubricReward`] with `criteria`
    grades; a `RubricDatasetError` names the dataset, the row and the names otherwise."""
    funcs = reward_funcs if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
    selective = [f for f in funcs if isinstance(f, RubricReward) and f.criteria is not None]
    columns = getattr(dataset, "column_names", None) if hasattr(dataset, "__len__") else None  # not iterable ones
    if not selective or not columns or column not in columns:
        return
    for index, value in enumerate(dataset[column]):
        for reward in selective:
            try:
                Rubric.from_any(value, pitfall_polarity=reward.pitfall_polarity).select(reward.criteria)
            except RubricError as e:
                raise RubricDatasetError(
                    f"{name} row {index}: column {column!r}: reward {reward.__name__!r}: {e}"
                ) from None


class _UnjudgedRowsFilter(logging.Filter):
    """Drops TRL's "All reward functions returned None" warning while a reward's last call left prompts out on
    purpose (`judge_share`): those rows have no reward by design, and the warning prints each one's whole row."""

    def __init__(self):
        super().__init__()
        self.rewards = weakref.WeakSet()

    def filter(self, record: logging.LogRecord) -> bool:
        if "All reward functions returned None" not in str(record.msg):  # accelerate may prefix "[RANK 0] "
            return True
        return not any(reward.last_unjudged for reward in self.rewards)


_UNJUDGED_FILTER = _UnjudgedRowsFilter()


class RubricReward:
    """Score completions against their rubrics with a judge; usable as a TRL `reward_funcs` entry.

    Args:
        judge: Any [`RubricJudge`].
        weighted: Return the weighted score (HealthBench formula, default) or, if `False`, the unweighted one
            (every criterion counts +1 or -1 by the sign of its weight).
        reweighting: `None`/`False` for none; `True` or `"ours"` for our variant, `"pow3r"` for our reading of POW3R
            (both with [`ReweightingConfig`] defaults), or a `ReweightingConfig`.
        rubric_column: Dataset column holding each prompt's rubric (any form [`Rubric.from_any`] reads).
        pitfall_polarity: How to sign RaR "Pitfall" criteria; see [`Rubric.from_any`].
        num_generations: Rollouts per prompt. [`RubricGRPOTrainer`] sets it; without it, groups are runs of identical
            consecutive prompts.
        name: Name TRL shows in its reward metrics (`rewards/<name>/mean`).
        min_graded_fraction: Smallest share of the rubric's points (absolute weights) that must have a known verdict
            for the score to count (default [`DEFAULT_MIN_GRADED_FRACTION`], 0.75); below it the reward is unknown
            (`None`), and the completion is counted in `judge/under_graded`. 0 scores any partly graded completion.
        group_grading: Grade each prompt's group of rollouts in one judge call (`trl_rubric.judges.groupwise`); the
            judge must support it (an LLM judge in batched mode, or a panel with one).
        rubric_dropout: Probability of leaving each criterion out, per prompt and step (`trl_rubric.rubric_dropout`);
            0 (default) turns it off. Dropped criteria are not sent to the judge and do not count in the reward.
        dropout_seed: Seed of the dropped sets (with `trainer_state.global_step` and the prompt).
        degenerate_reward: Reward of an answer that [`degeneration_flags`] flags against its rubric, given without
            calling the judge (`None`, the default, grades it like any other). `0.0` makes a looping list or a pasted
            criterion earn nothing. With `group_grading` the flagged answers are still sent (a prompt's group is graded
            in one call) and scored `degenerate_reward` afterwards.
        judge_share: Share of prompts, per call, whose rollouts are sent to the judge (1.0, the default, sends all);
            the rest get `None`. Which prompts is a function of `(dropout_seed, step, prompt)`
            ([`judged_prompts`]), so every rollout of a prompt is judged alike and a resumed run judges the same ones.
        criteria: Titles, texts, categories or tags of the only criteria to grade and score (`None`, the default,
            grades the whole rubric); see [`Rubric.select`]. A row with none of them is an error, checked before
            training by [`validate_reward_criteria`].
    """

    def __init__(
        self,
        judge: RubricJudge,
        weighted: bool = True,
        reweighting: ReweightingConfig | bool | str | None = None,
        rubric_column: str = "rubric",
        pitfall_polarity: str = "as_is",
        num_generations: int | None = None,
        name: str = "rubric_judge",
        min_graded_fraction: float = DEFAULT_MIN_GRADED_FRACTION,
        group_grading: bool = False,
        rubric_dropout: float = 0.0,
        dropout_seed: int = 0,
        degenerate_reward: float | None = None,
        judge_share: float = 1.0,
        criteria: Sequence[str] | None = None,
    ):
        if not isinstance(judge, RubricJudge):
            raise TypeError(f"RubricReward needs a RubricJudge; got {type(judge).__name__}")
        self.group_grading = bool(group_grading)
        #: Completions the last call left unjudged on purpose (`judge_share`).
        self.last_unjudged = 0
        self.set_judge_share(judge_share)
        if group_grading and not supports_group_grading(judge):
            raise ValueError(
                f"group grading needs a judge that grades a prompt's rollouts in one call (an LLM judge in batched "
                f"mode, or a panel with one); judge {judge.name!r} cannot. Turn judge_group_grading off"
            )
        self.rubric_dropout = check_dropout_probability(rubric_dropout)
        self.dropout_seed = int(dropout_seed)
        if pitfall_polarity not in PITFALL_POLARITIES:
            raise ValueError(f"pitfall_polarity is {pitfall_polarity!r}; expected one of {PITFALL_POLARITIES}")
        if not 0.0 <= min_graded_fraction <= 1.0:
            raise ValueError(f"min_graded_fraction is {min_graded_fraction}; expected a value in [0, 1]")
        self.min_graded_fraction = min_graded_fraction
        self.degenerate_reward = check_degenerate_reward(degenerate_reward)
        self.criteria = check_criteria(criteria)
        self.judge = judge
        self.weighted = weighted
        self.reweighting = reweighting_from(reweighting)
        self.rubric_column = rubric_column
        self.pitfall_polarity = pitfall_polarity
        self.num_generations = num_generations
        # TRL names reward functions by `__name__` in metrics and the completions table.
        self.__name__ = name
        self._reweighter = CriterionReweighter(self.reweighting) if self.reweighting is not None else None
        #: Grades of the last call, and why the last unknown rewards were unknown (read by the trainer's logs).
        self.last_grades: list[Grade] = []
        self.last_error: str | None = None
        self.last_diagnostics: CriterionDiagnostics | None = None
        #: Set by `trl_rubric.adaptive.AdaptiveRubricCallback`: maps each row's rubric to its current revision
        #: (`current(prompts, rubrics)`) and is told of every graded batch (`observe(...)`).
        self.rubric_source = None

    def set_judge_share(self, share: float) -> None:
        """Set `judge_share` (checked); below 1, TRL's warning about rows without any reward is dropped for the rows
        this reward leaves out on purpose."""
        share = check_judge_share(share)
        if share < 1.0 and self.group_grading:
            raise ValueError("judge_share < 1 and group grading together are not supported; turn one off")
        self.judge_share = share
        if share < 1.0:
            _UNJUDGED_FILTER.rewards.add(self)
            logging.getLogger("trl.trainer.grpo_trainer").addFilter(_UNJUDGED_FILTER)

    def __repr__(self) -> str:
        return f"RubricReward(judge={self.judge!r}, weighted={self.weighted}, reweighting={self.reweighting})"

    def _rubrics(self, kwargs: dict[str, Any], n: int) -> list[Rubric]:
        if self.rubric_column not in kwargs:
            columns = sorted(
                k for k in kwargs if k not in ("trainer_state", "log_extra", "log_metric", "completion_ids")
            )
            raise KeyError(
                f"RubricReward needs the dataset column {self.rubric_column!r}, but the reward function received only "
                f"{columns}; add the column, set rubric_column=..., and keep remove_unused_columns=False"
            )
        raw = kwargs[self.rubric_column]
        if len(raw) != n:
            raise ValueError(f"column {self.rubric_column!r} has {len(raw)} values for {n} completions")
        rubrics = []
        for i, value in enumerate(raw):
            try:
                rubrics.append(Rubric.from_any(value, pitfall_polarity=self.pitfall_polarity))
            except RubricError as e:
                raise RubricError(f"completion {i}: column {self.rubric_column!r}: {e}") from None
        return rubrics

    def _select(self, rubric: Rubric, index: int) -> Rubric:
        try:
            return rubric.select(self.criteria)
        except RubricError as e:
            raise RubricError(
                f"completion {index}: column {self.rubric_column!r}: criteria={list(self.criteria)}: {e}"
            ) from None

    def _base_weights(self, rubric: Rubric) -> list[float]:
        return [c.weight if self.weighted else math.copysign(1.0, c.weight) for c in rubric]

    def _group_keys(self, prompts: Sequence[Any], rubrics: list[Rubric]) -> list[str]:
        """One key per completion naming its prompt and rubric; a group is a run of equal keys."""
        keys = []
        for prompt, rubric in zip(prompts, rubrics, strict=True):
            text = prompt_to_text(prompt) + "\x00" + json.dumps(rubric.to_list(), sort_keys=True)
            keys.append(hashlib.sha1(text.encode("utf-8")).hexdigest())
        return keys

    def _reweighted_scores(self, keys: list[str], rubrics: list[Rubric], grades: list[Grade]) -> list[float | None]:
        scores: list[float | None] = [None] * len(grades)
        for start, end in _group_bounds(keys, self.num_generations):
            rubric = rubrics[start]
            weights = self._reweighter.group_weights(
                keys[start],
                [c.text for c in rubric],
                self._base_weights(rubric),
                [c.category for c in rubric],
                [grades[i].verdicts for i in range(start, end)],
            )
            reweighted = Rubric(tuple(replace(c, weight=w) for c, w in zip(rubric, weights, strict=True)))
            for i in range(start, end):
                grade = grades[i]
                scores[i] = grade.rating if grade.rating is not None else reweighted.score(grade.scored_verdicts)
        return scores

    async def __call__(self, prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float | None]:
        """Grade every completion; return its score, or `None` where the judge gave nothing usable."""
        rubrics = self._rubrics(kwargs, len(completions))
        if self.rubric_source is not None:
            rubrics = self.rubric_source.current(prompts, rubrics)
        if self.criteria is not None:
            rubrics = [self._select(r, i) for i, r in enumerate(rubrics)]
        if self.rubric_dropout:  # the judge grades, and the reward counts, the kept criteria only
            step = dropout_step(kwargs.get("trainer_state"))
            texts = [prompt_to_text(p) for p in prompts]
            full = [len(r) for r in rubrics]
            rubrics, _ = drop_criteria(texts, rubrics, self.rubric_dropout, self.dropout_seed, step)
            if kwargs.get("log_metric") is not None and full:
                kwargs["log_metric"]("judge/dropout_kept_frac", sum(map(len, rubrics)) / sum(full))
        before = self.judge.stats.snapshot()
        flagged = [False] * len(completions)
        if self.degenerate_reward is not None:
            flagged = [degeneration_flags(c, r).degenerate for c, r in zip(completions, rubrics, strict=True)]
        judged = judged_prompts(
            [prompt_to_text(p) for p in prompts], rubrics, self.judge_share, self.dropout_seed,
            dropout_step(kwargs.get("trainer_state")),
        )  # fmt: skip
        if self.group_grading:
            grades = await grade_in_groups(self.judge, prompts, completions, rubrics, self.num_generations)
        else:
            skip = [f or not j for f, j in zip(flagged, judged, strict=True)]
            grades = await self._grade_unflagged(prompts, completions, rubrics, skip)
        keys = self._group_keys(prompts, rubrics)
        if self.reweighting is not None:
            rewards = self._reweighted_scores(keys, rubrics, grades)
        else:
            rewards = [g.score if self.weighted else g.unweighted_score for g in grades]
        # A holistic rating has no verdicts: it is graded or not as a whole.
        graded = [
            # A "cannot assess" answer counts as graded: the judge answered.
            None if g.rating is not None else r.graded_fraction(g.graded_verdicts)
            for g, r in zip(grades, rubrics, strict=True)
        ]
        under = [
            f is not None and f < self.min_graded_fraction and rw is not None
            for f, rw in zip(graded, rewards, strict=True)
        ]
        rewards = [None if u else rw for u, rw in zip(under, rewards, strict=True)]
        if any(flagged):
            rewards = [self.degenerate_reward if f else rw for f, rw in zip(flagged, rewards, strict=True)]
        self.last_unjudged = len(judged) - sum(judged)
        if not all(judged):  # a prompt left out this step has no reward, flagged or not
            rewards = [rw if j else None for j, rw in zip(judged, rewards, strict=True)]
        if self.rubric_source is not None:
            self.rubric_source.observe(prompts, completions, rubrics, grades)
        self.last_grades = grades
        errors = [g.error for g in grades if g.error]
        self.last_error = errors[0] if errors else None
        # Rows left out on purpose (judge_share) are neither scored nor unknown: the judge was not asked.
        self._log(kwargs, rubrics, grades, [rw for rw, j in zip(rewards, judged, strict=True) if j],
                  self.judge.stats.since(before))  # fmt: skip
        group_ids = [g for g, (a, b) in enumerate(_group_bounds(keys, self.num_generations)) for _ in range(a, b)]
        verdicts = [g.scored_verdicts if g.rating is None and g.verdicts is not None else None for g in grades]
        self.last_diagnostics = criterion_diagnostics(rubrics, verdicts, group_ids)
        log_metric = kwargs.get("log_metric")
        if log_metric is not None:
            known = [f for f in graded if f is not None]
            if known:
                log_metric("judge/graded_frac", sum(known) / len(known))
            log_metric("judge/under_graded", float(sum(under)))
            if self.degenerate_reward is not None:
                log_metric("judge/degenerate_frac", sum(flagged) / max(1, len(flagged)))
            if self.judge_share < 1.0:
                log_metric("judge/judged_frac", sum(judged) / max(1, len(judged)))
            log_criterion_diagnostics(log_metric, self.last_diagnostics)
        return rewards

    async def _grade_unflagged(self, prompts, completions, rubrics, skip) -> list[Grade]:
        """The judge's grades of the answers not skipped; a skipped one gets an empty grade (no verdicts, no call)."""
        keep = [i for i, f in enumerate(skip) if not f]
        if len(keep) == len(skip):
            return await self.judge.grade_many(prompts, completions, rubrics)
        graded = await self.judge.grade_many(*([seq[i] for i in keep] for seq in (prompts, completions, rubrics)))
        grades = [Grade(verdicts=[None] * len(r), score=None) for r in rubrics]
        for i, grade in zip(keep, graded, strict=True):
            grades[i] = grade
        return grades

    def _log(self, kwargs, rubrics, grades, rewards, stats) -> None:
        """Judge metrics and completion-table columns; `rewards` are those of the judged rows only."""
        log_metric, log_extra = kwargs.get("log_metric"), kwargs.get("log_extra")
        if log_metric is not None:
            known = [r for r in rewards if r is not None]
            if known:
                log_metric("judge/score_mean", sum(known) / len(known))
            log_metric("judge/unknown_frac", 1.0 - len(known) / max(1, len(rewards)))
            met: dict[str, list[int]] = defaultdict(lambda: [0, 0])
            for rubric, grade in zip(rubrics, grades, strict=True):
                for criterion, verdict in zip(rubric, grade.verdicts, strict=True):
                    if verdict is not None:
                        counts = met[criterion.category or "uncategorized"]
                        counts[0] += int(verdict)
                        counts[1] += 1
            for category, (hits, total) in sorted(met.items()):
                log_metric(f"judge/frac_met/{category}", hits / total)
            log_metric("judge/calls", stats.calls)
            log_metric("judge/failures", stats.failures)
            log_metric("judge/retries", stats.retries)
            log_metric("judge/unknown_verdicts", stats.unknown_verdicts)
            log_metric("judge/cannot_assess", stats.cannot_assess)
            log_metric("judge/cache_hits", stats.cache_hits)
            log_metric("judge/prompt_tokens", stats.prompt_tokens)
            log_metric("judge/completion_tokens", stats.completion_tokens)
            if stats.agreement_cells:  # judge panels: mean pairwise agreement per criterion (trl_rubric.judges.panel)
                log_metric("judge/agreement", stats.agreement_sum / stats.agreement_cells)
            if stats.calls + stats.retries:
                # Per request attempt, so a slow judge shows up as such even when retries pile up.
                log_metric("judge/latency_mean_s", stats.latency_s / (stats.calls + stats.retries))
        if log_extra is not None:
            log_extra("judge_verdicts", [_verdict_cell(g) for g in grades])
            log_extra("judge_error", [(g.error or "")[:200] for g in grades])
            log_extra("judge_explanations", [_explanation_cell(g) for g in grades])
