"""The HTML token view: token views written as colour-shaded, escaped text."""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from pathlib import Path

from .stats import _mean
from .token_view import TokenView, _colour_scale


def write_token_view_html(views: Sequence[TokenView], path: str | os.PathLike, title: str = "Per-token view") -> str:
    """Write the token views as colour-shaded text: green where the rubric makes a token more likely, red less.

    All model and prompt text is HTML-escaped. Hovering a token shows its log-probabilities.

    Returns:
        The path written.
    """
    scale = _colour_scale(views)
    parts = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        ".c{white-space:pre-wrap;font-family:monospace;line-height:1.6;border:1px solid #ccc;padding:.6em}"
        ".p{white-space:pre-wrap;color:#444}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<p>Shade = log p<sub>teacher</sub>(token) &minus; log p<sub>student</sub>(token) on the student's own "
        "completion. <span style='background:rgba(0,160,0,.5)'>green</span>: the rubric makes the token more likely; "
        f"<span style='background:rgba(220,0,0,.5)'>red</span>: less likely. Full shade at |log-ratio| &ge; "
        f"{scale:.3g} nats. Hover a token for its numbers.</p>",
    ]
    for n, view in enumerate(views, start=1):
        lr = view.logratios
        mean = _mean(lr)
        summary = f"{len(lr)} tokens, mean log-ratio {mean:+.3f} nats" if mean is not None else "empty completion"
        parts.append(f"<h2>Sample {n}</h2><p>{html.escape(summary)}</p>")
        parts.append(f"<div class='p'><b>Prompt:</b> {html.escape(view.prompt)}</div><p><b>Completion:</b></p>")
        spans = []
        for piece, value, s, t in zip(view.tokens, lr, view.student_logprobs, view.teacher_logprobs, strict=True):
            alpha = min(1.0, abs(value) / scale) * 0.6
            rgb = "0,160,0" if value >= 0 else "220,0,0"
            tip = f"log-ratio {value:+.3f} | student {s:.3f} | teacher {t:.3f}"
            spans.append(
                f"<span style='background:rgba({rgb},{alpha:.3f})' title='{html.escape(tip)}'>{html.escape(piece)}</span>"
            )
        parts.append(f"<div class='c'>{''.join(spans)}</div>")
    parts.append("</body></html>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return str(path)
