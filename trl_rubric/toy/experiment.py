"""Measuring a policy on the toy world: scores, learning curves during training, and their plots.

Shared by `trl-rubric demo` and `benchmarks/toy_world.py`, so that the demo and the benchmark score models the same
way: the evaluation harness ([`trl_rubric.evaluation.evaluate`]) with the world's `RuleJudge`, sampling at
temperature 1 as the trainers do.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

#: Answer length cap when scoring toy-world answers, in tokens (toy answers are at most about 16 words).
MAX_NEW_TOKENS = 24


def repeat_dataset(dataset, n: int):
    """`dataset` repeated `n` times, to sample several answers per prompt through the harness."""
    from datasets import concatenate_datasets

    return concatenate_datasets([dataset] * n) if n > 1 else dataset


def evaluate_toy(model, tokenizer, dataset, judge, n: int = 1, seed: int = 0):
    """The toy world's evaluation (sampled at temperature 1, `n` answers per prompt): the whole `EvaluationResult`."""
    from ..evaluation import evaluate

    return evaluate(
        model,
        repeat_dataset(dataset, n),
        judge,
        tokenizer=tokenizer,
        max_new_tokens=MAX_NEW_TOKENS,
        batch_size=64,
        temperature=1.0,
        seed=seed,
        n_bootstrap=200,
        progress=False,
    )


def score_model(model, tokenizer, dataset, judge, n: int = 1, seed: int = 0) -> dict[str, float]:
    """Weighted score, strict completion and mean answer length of `model` on `dataset`, `n` samples per prompt."""
    m = evaluate_toy(model, tokenizer, dataset, judge, n, seed).metrics
    return {"score": m.weighted_score, "strict": m.strict_completion, "length": m.mean_length}


def toy_gap(model, tokenizer, dataset, judge, n: int = 1, seed: int = 0):
    """The conditioning gap (`trl_rubric.evaluation.conditioning_gap`) on the toy world, with the teacher view the
    toy model was pretrained on and the same sampling as [`score_model`]."""
    from ..evaluation import conditioning_gap
    from .pretrain import TEACHER_PENALTIES, TEACHER_PROMPT_TEMPLATE, TEACHER_RENDER_STYLE

    return conditioning_gap(
        model,
        repeat_dataset(dataset, n),
        judge,
        tokenizer=tokenizer,
        teacher_prompt_template=TEACHER_PROMPT_TEMPLATE,
        rubric_render_style=TEACHER_RENDER_STYLE,
        teacher_penalties=TEACHER_PENALTIES,
        n_samples=None,
        max_new_tokens=MAX_NEW_TOKENS,
        batch_size=64,
        temperature=1.0,
        seed=seed,
        n_bootstrap=200,
        progress=False,
    )


class LearningCurve:
    """Records `score_model` on a fixed dataset every `every` optimizer steps; add `.callback` to a trainer.

    Each point holds the step, the seconds since the curve was created (training wall time, scoring excluded), and
    the scores. Scoring time is subtracted so that curves of methods with different costs compare fairly.
    """

    def __init__(self, tokenizer, dataset, judge, every: int, seed: int = 0, n: int = 1):
        from transformers import TrainerCallback

        self.points: list[dict[str, float]] = []
        self.tokenizer, self.dataset, self.judge, self.seed, self.n = tokenizer, dataset, judge, seed, n
        self._start = time.perf_counter()
        self._scoring_seconds = 0.0
        outer = self

        class _Callback(TrainerCallback):
            def on_step_end(self, args, state, control, model=None, **kwargs):
                if state.global_step % every == 0 or state.global_step == state.max_steps:
                    outer.record(model, state.global_step)

        self.callback = _Callback()

    def record(self, model, step: int) -> None:
        began = time.perf_counter()
        was_training = model.training
        model.eval()
        point = score_model(model, self.tokenizer, self.dataset, self.judge, n=self.n, seed=self.seed + step)
        model.train(was_training)
        self.points.append({"step": step, "seconds": began - self._start - self._scoring_seconds, **point})
        self._scoring_seconds += time.perf_counter() - began


def plot_learning_curves(
    curves: Mapping[str, list[dict[str, Any]]],
    path: str,
    references: Mapping[str, float] | None = None,
    title: str = "",
    metric: str = "score",
) -> None:
    """Plot one or more learning curves against optimizer steps and against wall time, side by side, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    styles = ["--", ":", "-.", (0, (1, 3))]
    for ax, key, label in ((axes[0], "step", "optimizer step"), (axes[1], "seconds", "training wall time (s)")):
        for name, points in curves.items():
            ax.plot([p[key] for p in points], [p[metric] for p in points], marker="o", markersize=3, label=name)
        for i, (name, value) in enumerate((references or {}).items()):
            ax.axhline(value, color="grey", linestyle=styles[i % len(styles)], linewidth=1, label=name)
        ax.set_xlabel(label)
        ax.set_ylabel("weighted rubric score (train prompts)" if metric == "score" else metric)
        ax.set_ylim(0, 1)
    axes[0].legend(fontsize=7, loc="upper left")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
