"""Charts (matplotlib, optional): score by category, length histogram, token-view strips."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from .metrics import EvalMetrics
from .stats import _mean
from .token_view import TokenView, _colour_scale

logger = logging.getLogger(__name__)


def _require_matplotlib():
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("charts need matplotlib: pip install 'trl-rubric[plot]'") from None
    return Figure


def _plain(text: str, limit: int) -> str:
    # Matplotlib reads "$...$" as math; newlines would break the grid; control characters have no glyph.
    text = "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape").decode() for c in text)
    text = text.replace("$", r"\$")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def plot_token_views(views: Sequence[TokenView], path: str | os.PathLike, tokens_per_row: int = 24) -> str:
    """Draw the token views as colour strips (one grid of tokens per sample), shaded by log-ratio.

    Written with matplotlib's object API, so it never changes the caller's pyplot backend.

    Returns:
        The path written.
    """
    import numpy as np

    Figure = _require_matplotlib()
    from matplotlib.colors import TwoSlopeNorm

    scale = _colour_scale(views)
    rows_per_view = [max(1, math.ceil(len(v.tokens) / tokens_per_row)) for v in views] or [1]
    fig = Figure(
        figsize=(tokens_per_row * 0.5, 0.9 + sum(r * 0.45 + 0.5 for r in rows_per_view)), layout="constrained"
    )
    axes = fig.subplots(len(rows_per_view), 1, squeeze=False, height_ratios=rows_per_view)[:, 0]
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-scale, vmax=scale)
    image = None
    for ax, view, n_rows in zip(axes, views, rows_per_view, strict=False):
        grid = np.full((n_rows, tokens_per_row), np.nan)
        lr = view.logratios
        grid.flat[: len(lr)] = lr
        image = ax.imshow(grid, cmap="RdYlGn", norm=norm, aspect="auto")
        for i, piece in enumerate(view.tokens):
            ax.text(i % tokens_per_row, i // tokens_per_row, _plain(piece, 7), ha="center", va="center", fontsize=6)
        ax.set_xticks([])
        ax.set_yticks([])
        mean = _mean(lr)
        ax.set_title(
            _plain(view.prompt, 90) + (f"   (mean {mean:+.3f} nats)" if mean is not None else "   (empty)"),
            fontsize=8,
            loc="left",
        )
    if not views:
        axes[0].set_axis_off()
        axes[0].set_title("no samples")
    if image is not None:
        fig.colorbar(image, ax=list(axes), label="log-ratio (nats)", fraction=0.03, pad=0.01)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return str(path)


def plot_score_by_category(metrics: EvalMetrics, path: str | os.PathLike) -> str:
    """Bar chart of the met rate per criterion category (penalty categories hatched: lower is better)."""
    Figure = _require_matplotlib()
    names = list(metrics.by_category) or ["(none)"]
    rates = [(metrics.by_category.get(n, {}).get("met_rate") or 0.0) for n in names]
    fig = Figure(figsize=(max(4.5, 0.8 * len(names) + 2), 3.6), layout="constrained")
    ax = fig.subplots()
    bars = ax.bar(range(len(names)), rates, color="#4c72b0")
    for bar, name in zip(bars, names, strict=True):
        info = metrics.by_category.get(name, {})
        if info.get("polarity") == "penalty":
            bar.set_color("#dd8452")
            bar.set_hatch("//")
        ax.annotate(f"n={info.get('n', 0)}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                    va="bottom", fontsize=7)  # fmt: skip
    if metrics.weighted_score is not None:
        ax.axhline(
            metrics.weighted_score, color="k", ls="--", lw=1, label=f"weighted score {metrics.weighted_score:.3f}"
        )
        ax.legend(fontsize=8, loc="upper right")
    ax.set_xticks(range(len(names)), [_plain(n, 18) for n in names], rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("fraction of criteria met")
    ax.set_title("Criteria met by category\n(hatched: penalty criteria, lower is better)", fontsize=9)
    fig.savefig(path, dpi=110)
    return str(path)


def plot_length_histogram(lengths: Mapping[str, Sequence[int]] | Sequence[int], path: str | os.PathLike) -> str:
    """Histogram of response lengths in tokens; pass `{label: lengths}` to overlay several runs or views."""
    Figure = _require_matplotlib()
    series = dict(lengths) if isinstance(lengths, Mapping) else {"responses": list(lengths)}
    fig = Figure(figsize=(5.5, 3.4), layout="constrained")
    ax = fig.subplots()
    everything = [x for xs in series.values() for x in xs]
    bins = min(30, max(1, len(set(everything)))) if everything else 1
    lo, hi = (min(everything), max(everything)) if everything else (0, 1)
    for label, xs in series.items():
        if xs:
            mean = sum(xs) / len(xs)
            ax.hist(xs, bins=bins, range=(lo, max(hi, lo + 1)), alpha=0.6, label=f"{label} (mean {mean:.1f})")
    ax.set_xlabel("response length (tokens)")
    ax.set_ylabel("responses")
    ax.set_title("Response length", fontsize=9)
    if everything:
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    return str(path)


def _charts_available() -> bool:
    try:
        _require_matplotlib()
    except ImportError:
        logger.warning("matplotlib is not installed; skipping charts (pip install 'trl-rubric[plot]')")
        return False
    return True
