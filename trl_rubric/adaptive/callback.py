"""`AdaptiveRubricCallback`: evaluation memory and asynchronous rubric updates for [`RubricGRPOTrainer`].

Pass it in `callbacks=[...]`; the trainer binds it to its [`RubricReward`] (`rubric_source`), which from then on asks
it for each prompt's current rubric before grading and reports every graded group back to it. At each step boundary
(`on_step_end`) the callback

1. writes one `summary` record per rollout group of the step to the [`EvaluationMemory`] (pass rates, saturated and
   unreachable criteria, the weakest answer);
2. applies the revisions the [`RubricUpdater`] finished since the last boundary: a valid one bumps that prompt's
   rubric version and is written as an `update` record (old and new rubric) and logged; an invalid one is written as
   `rejected` and counted, never applied;
3. sends a revision request for each prompt whose latest `patience` summaries all had at least `stale_fraction` of
   their criteria saturated or unreachable (at most `max_revisions` per prompt, one in flight at a time).

The author's answers arrive on a background thread while training goes on, so a slow author costs no training time;
`wait_for_revisions=True` instead waits at every boundary (reproducible runs, tests). On resume the rubric versions
are replayed from the memory's `update` records up to the checkpoint's step, so they restore exactly; requests that
were in flight at the checkpoint are not replayed. In multi-process training every process grades its own slice:
the observations are gathered to the main process, which alone talks to the author, and the applied revisions are
broadcast so every process grades with the same rubrics.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from transformers import TrainerCallback

from ..criterion_diagnostics import SATURATED, UNREACHABLE, group_cells
from ..judges.base import Grade, prompt_to_text
from ..rubric import Rubric
from .memory import MEMORY_FILE, EvaluationMemory
from .updater import RevisionRequest, RubricUpdater

logger = logging.getLogger(__name__)

#: Characters of a prompt and of an example failure kept in a summary record.
PROMPT_CHARS, FAILURE_CHARS = 500, 400


def prompt_key(prompt: Any, rubric: Rubric) -> str:
    """Stable key of a dataset row: its prompt and its *original* rubric (revisions are looked up under it)."""
    text = prompt_to_text(prompt) + "\x00" + rubric_text(rubric)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def rubric_text(rubric: Rubric) -> str:
    import json

    return json.dumps(rubric.to_list(), ensure_ascii=False, sort_keys=True)


class AdaptiveRubricCallback(TrainerCallback):
    """Keeps an evaluation memory and revises stale rubrics with an author model during [`RubricGRPOTrainer`] runs.

    Args:
        backend: The author's chat backend ([`build_author_backend`]); any OpenAI-compatible endpoint or a local
            model. Ignored when `updater` is given.
        memory_path: The memory's JSONL file; default `<output_dir>/adaptive_memory.jsonl`.
        stale_fraction: Share of a group's criteria (with a status) that must be saturated or unreachable for the
            group to count as stale. Lower it to revise sooner.
        patience: Consecutive stale summaries of a prompt before a revision is asked for.
        max_revisions: Most revisions applied per prompt over the run.
        wait_for_revisions: Wait at each step boundary for every request in flight (reproducible, slower).
        recent_k: Recent summaries of the prompt shown to the author.
        similar_k: Revisions of the most similar other prompts shown to the author (memory retrieval).
        embed: Embedding function for similarity retrieval (see [`EvaluationMemory`]).
        updater: A ready [`RubricUpdater`] (e.g. with other bounds on the rubric size).
    """

    def __init__(
        self,
        backend=None,
        memory_path: str | os.PathLike | None = None,
        stale_fraction: float = 0.5,
        patience: int = 1,
        max_revisions: int = 2,
        wait_for_revisions: bool = False,
        recent_k: int = 3,
        similar_k: int = 2,
        embed: Callable[[list[str]], Any] | None = None,
        updater: RubricUpdater | None = None,
    ):
        if updater is None and backend is None:
            raise ValueError(
                "AdaptiveRubricCallback needs an author backend (build_author_backend(...)) or an updater"
            )
        if not 0.0 < stale_fraction <= 1.0:
            raise ValueError(f"stale_fraction is {stale_fraction}; expected a value in (0, 1]")
        for name, value in (("patience", patience), ("max_revisions", max_revisions)):
            if int(value) < 1:
                raise ValueError(f"{name} is {value!r}; expected an integer >= 1")
        self.updater = updater or RubricUpdater(backend)
        self.memory_path = memory_path
        self.memory: EvaluationMemory | None = None
        self.embed = embed
        self.stale_fraction, self.patience, self.max_revisions = (
            float(stale_fraction),
            int(patience),
            int(max_revisions),
        )
        self.wait_for_revisions = bool(wait_for_revisions)
        self.recent_k, self.similar_k = int(recent_k), int(similar_k)
        #: `{prompt key: {"version": v, "rubric": Rubric}}` for every revised prompt.
        self.versions: dict[str, dict[str, Any]] = {}
        self.revision_counts: dict[str, int] = {}
        #: Revision attempts per prompt, applied or rejected; at most `2 * max_revisions`, so a prompt the author
        #: keeps failing on stops costing calls.
        self.attempts: dict[str, int] = {}
        self.stats = {"requests": 0, "applied": 0, "rejected": 0}
        self._keys: dict[tuple[str, str | None], str] = {}
        self._current: dict[str, Rubric] = {}
        self._observed: list[dict[str, Any]] = []
        self._trainer = None
        self.num_generations: int | None = None

    # -- binding and the reward's hook -------------------------------------------------------------------------------

    def bind_trainer(self, trainer) -> None:
        """Called by [`RubricGRPOTrainer`]: become its reward's rubric source and open the memory."""
        self._trainer = trainer
        trainer.rubric_reward.rubric_source = self
        self.num_generations = trainer.args.num_generations
        path = self.memory_path or os.path.join(trainer.args.output_dir, MEMORY_FILE)
        self.memory = EvaluationMemory(path, embed=self.embed)

    def _training(self) -> bool:
        # Evaluation grades with the dataset's rubrics and leaves the memory alone: its scores stay comparable
        # across the run, and eval prompts never trigger revisions.
        return self._trainer is None or self._trainer.model.training

    def current(self, prompts: Sequence[Any], rubrics: Sequence[Rubric]) -> list[Rubric]:
        """Each row's current rubric: its latest applied revision, else the dataset's (always the dataset's while the
        trainer evaluates)."""
        if not self._training():
            return list(rubrics)
        out = []
        for prompt, rubric in zip(prompts, rubrics, strict=True):
            key = prompt_key(prompt, rubric)
            entry = self.versions.get(key)
            now = entry["rubric"] if entry else rubric
            text = prompt_to_text(prompt)
            self._keys[(text, rubric_text(now))] = key
            self._keys[(text, None)] = key  # rubric dropout may grade a subset: fall back to the prompt alone
            self._current[key] = now
            out.append(now)
        return out

    def observe(self, prompts: Sequence[Any], completions: Sequence[Any], rubrics: Sequence[Rubric], grades) -> None:
        """Record the graded groups of this call (consecutive rollouts of one prompt) for the step's summaries."""
        if not self._training():
            return
        size = self.num_generations or len(prompts)
        start = 0
        while start < len(prompts):
            end = start + 1
            while end < len(prompts) and end - start < size and prompts[end] == prompts[start]:
                end += 1
            self._observed.append(self._summary(prompts, completions, rubrics, grades, start, end))
            start = end

    def _summary(self, prompts, completions, rubrics, grades: Sequence[Grade], start: int, end: int) -> dict[str, Any]:
        rubric = rubrics[start]
        text = prompt_to_text(prompts[start])
        key = self._keys.get((text, rubric_text(rubric))) or self._keys.get((text, None))
        key = key or prompt_key(prompts[start], rubric)
        rows = [grades[i].verdicts for i in range(start, end) if len(grades[i].verdicts) == len(rubric)]
        cells = group_cells(0, rubric, rows) if rows else []
        statuses = [c.status for c in cells]
        judged = [s for s in statuses if s is not None]
        n_sat, n_unr = statuses.count(SATURATED), statuses.count(UNREACHABLE)
        scored = [(grades[i].score, i) for i in range(start, end) if grades[i].score is not None]
        failure = None
        if scored:
            completion = completions[min(scored)[1]]
            failure = prompt_to_text(completion) if not isinstance(completion, str) else completion
        return {
            "kind": "summary",
            "key": key,
            "prompt": text[:PROMPT_CHARS],
            "version": self.versions.get(key, {}).get("version", 0),
            "criteria": [c.text for c in rubric],
            "pass_rates": [c.pass_rate for c in cells],
            "statuses": statuses,
            "n_saturated": n_sat,
            "n_unreachable": n_unr,
            "stale_fraction": (n_sat + n_unr) / len(judged) if judged else None,
            "failure": failure[:FAILURE_CHARS] if failure else None,
            "_prompt": prompts[start],
            "_rubric": self._current.get(key, rubric),  # the whole current rubric, also when dropout graded a part
        }

    # -- trainer events ----------------------------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, **kwargs):
        if self.memory is None:
            raise RuntimeError("AdaptiveRubricCallback works with RubricGRPOTrainer, which binds it to its reward")
        if state.is_world_process_zero:
            self.memory.append([{"kind": "resume", "step": int(state.global_step)}])
        self._sync_processes()
        self.versions = {
            key: {"version": e["version"], "rubric": Rubric.from_any(e["rubric"])}
            for key, e in self.memory.versions().items()
        }
        self.revision_counts = {key: e["version"] for key, e in self.versions.items()}
        self.attempts = {}
        counts = {"update": 0, "rejected": 0}
        for record in self.memory.records():
            if record["kind"] in counts:
                self.attempts[record["key"]] = self.attempts.get(record["key"], 0) + 1
                counts[record["kind"]] += 1
        # Running totals continue across a resume (requests in flight at the checkpoint were lost: not counted).
        self.stats = {"requests": sum(counts.values()), "applied": counts["update"], "rejected": counts["rejected"]}
        if self.versions:
            logger.info(
                "adaptive rubrics: %d revised rubrics restored at step %d", len(self.versions), state.global_step
            )

    def on_step_end(self, args, state, control, **kwargs):
        observed, self._observed = self._gather(self._observed), []
        applied: list[dict[str, Any]] | None = None
        if state.is_world_process_zero:
            step = int(state.global_step)
            self.memory.append([_public(record, step) for record in observed])
            applied = self._apply_done(step)
            self._submit(observed)
        applied = self._broadcast(applied)
        for record in applied:
            self.versions[record["key"]] = {
                "version": record["new_version"],
                "rubric": Rubric.from_any(record["new_rubric"]),
            }
            self.revision_counts[record["key"]] = record["new_version"]
        self._log_metrics(observed)

    def on_train_end(self, args, state, control, **kwargs):
        self.updater.close()

    # -- step-boundary work (main process) ---------------------------------------------------------------------------

    def _apply_done(self, step: int) -> list[dict[str, Any]]:
        records, applied = [], []
        for result in self.updater.take_done(wait=self.wait_for_revisions):
            request = result.request
            self.attempts[request.key] = self.attempts.get(request.key, 0) + 1
            if result.rubric is None:
                self.stats["rejected"] += 1
                records.append({"kind": "rejected", "step": step, "key": request.key, "error": result.error})
                logger.warning("adaptive rubrics: revision of %s rejected (%s)", request.key[:12], result.error)
                continue
            old = self.versions.get(request.key, {}).get("version", 0)
            if old != request.version:
                continue  # the rubric moved on while this request was out: its evidence is stale
            record = {
                "kind": "update",
                "step": step,
                "key": request.key,
                "prompt": prompt_to_text(request.prompt)[:PROMPT_CHARS],
                "old_version": old,
                "new_version": old + 1,
                "old_rubric": request.rubric.to_list(),
                "new_rubric": result.rubric.to_list(),
            }
            records.append(record)
            applied.append(record)
            self.stats["applied"] += 1
            logger.info(
                "adaptive rubrics: step %d: prompt %s rubric v%d -> v%d\n  old: %s\n  new: %s",
                step,
                request.key[:12],
                old,
                old + 1,
                [c.text for c in request.rubric],
                [c.text for c in result.rubric],
            )
        self.memory.append(records)
        return applied

    def _submit(self, observed: list[dict[str, Any]]) -> None:
        busy = self.updater.in_flight
        history: dict[str, list[dict[str, Any]]] = {}  # one pass over the memory per boundary, not one per group
        for summary in self.memory.records("summary"):
            history.setdefault(summary["key"], []).append(summary)
        for record in observed:
            key = record["key"]
            if key in busy or self.revision_counts.get(key, 0) >= self.max_revisions:
                continue
            if self.attempts.get(key, 0) >= 2 * self.max_revisions:
                continue
            if record["version"] != self.versions.get(key, {}).get("version", 0):
                continue  # graded before the latest revision
            if len(record["statuses"]) != len(record["_rubric"]):
                continue  # graded on a part of the rubric (rubric dropout): no per-criterion evidence to show
            recent = [r for r in history.get(key, [])[-self.patience :] if r["version"] == record["version"]]
            if len(recent) < self.patience or any(
                r["stale_fraction"] is None or r["stale_fraction"] < self.stale_fraction for r in recent
            ):
                continue
            similar = self.memory.similar(record["prompt"], self.similar_k, kind="update", exclude_key=key)
            request = RevisionRequest(
                key=key,
                prompt=record["_prompt"],
                rubric=record["_rubric"],
                version=record["version"],
                pass_rates=record["pass_rates"],
                statuses=record["statuses"],
                failure=record["failure"],
                recent=history.get(key, [])[-self.recent_k :],
                similar_updates=[r for _, r in similar],
            )
            if self.updater.submit(request):
                self.stats["requests"] += 1
                busy.add(key)

    def _log_metrics(self, observed: list[dict[str, Any]]) -> None:
        trainer = self._trainer
        if trainer is None:
            return
        metrics = trainer._metrics["train"]
        stale = [r["stale_fraction"] for r in observed if r["stale_fraction"] is not None]
        if stale:
            metrics["adaptive/stale_frac"].append(sum(stale) / len(stale))
        for name, value in self.stats.items():
            metrics[f"adaptive/revisions_{name}"].append(float(value))
        metrics["adaptive/revised_prompts"].append(float(len(self.versions)))
        metrics["adaptive/in_flight"].append(float(len(self.updater.in_flight)))

    # -- multi-process plumbing --------------------------------------------------------------------------------------

    def _num_processes(self) -> int:
        return 1 if self._trainer is None else self._trainer.accelerator.num_processes

    def _gather(self, observed: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self._num_processes() == 1:
            return observed
        from accelerate.utils import gather_object

        return gather_object(observed)

    def _broadcast(self, applied):
        if self._num_processes() == 1:
            return applied or []
        from accelerate.utils import broadcast_object_list

        box = [applied]
        broadcast_object_list(box, from_process=0)
        return box[0] or []

    def _sync_processes(self) -> None:
        if self._num_processes() > 1:
            self._trainer.accelerator.wait_for_everyone()  # the resume record is written before anyone replays


def _public(record: dict[str, Any], step: int) -> dict[str, Any]:
    """The JSON-safe part of an observation (keys starting with `_` hold live objects), stamped with the step."""
    return {**{k: v for k, v in record.items() if not k.startswith("_")}, "step": step}


#: The `RubricGRPOConfig` fields that configure adaptive rubrics (documented there), with their defaults.
ADAPTIVE_FIELDS = {
    "adaptive_author_model": None,
    "adaptive_author_base_url": "http://localhost:8000/v1",
    "adaptive_author_api_key_env": "OPENAI_API_KEY",
    "adaptive_stale_fraction": 0.5,
    "adaptive_max_revisions": 2,
    "adaptive_wait": False,
}


def adaptive_callback_from(args: Any) -> AdaptiveRubricCallback | None:
    """The [`AdaptiveRubricCallback`] a config's `adaptive_*` fields describe, or `None` when `adaptive_author_model`
    is unset. Raises `ValueError` naming the field that is wrong; builds the author client but sends nothing."""
    from ..authoring.backend import AuthorArguments, build_author_backend

    settings = {name: getattr(args, name, default) for name, default in ADAPTIVE_FIELDS.items()}
    if not settings["adaptive_author_model"]:
        return None
    try:
        author = AuthorArguments(
            author_model=settings["adaptive_author_model"],
            author_base_url=settings["adaptive_author_base_url"],
            author_api_key_env=settings["adaptive_author_api_key_env"],
            author_probe=False,
        )
        return AdaptiveRubricCallback(
            build_author_backend(author),
            stale_fraction=settings["adaptive_stale_fraction"],
            max_revisions=settings["adaptive_max_revisions"],
            wait_for_revisions=settings["adaptive_wait"],
        )
    except ValueError as e:
        message = str(e)
        for name in ("author_", "stale_fraction", "max_revisions"):
            message = message.replace(name, f"adaptive_{name}")
        raise ValueError(message) from None
