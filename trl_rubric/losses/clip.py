"""Per-token clipping of a divergence at `tau` (`"clamp"` or `"scale"`), so a few tokens cannot dominate a step."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

ClipMode = Literal["clamp", "scale"]

CLIP_MODES = ("clamp", "scale")


def clip_token_divergence(
    divergence: Tensor, tau: float | None, mode: ClipMode = "clamp", signed: bool = False
) -> tuple[Tensor, Tensor]:
    """Bound each token's divergence at `tau`, so a few tokens the teacher finds very unlikely cannot dominate a step.

    `"clamp"` replaces values above `tau` by `tau`; those tokens then give no gradient. `"scale"` also reports
    `min(divergence, tau)` but keeps their gradient direction, scaled by `tau / divergence` so its size is bounded.

    With `signed=True` (the `sampled_token` estimate `log p_s(y) - log p_t(y)`, which is negative wherever the teacher
    likes the sampled token more than the student), the bound is symmetric, `[-tau, tau]`: clipping only the positive
    side would drop the tokens that push probability down and keep those that push it up, biasing the gradient. For
    that estimate `"scale"` is a clip of the policy-gradient coefficient to `[-tau, tau]`.

    Args:
        divergence: Per-token divergence, any shape.
        tau: Positive threshold, or None to leave the divergence unchanged.
        mode: `"clamp"` or `"scale"`.
        signed: Bound `|divergence|` instead of `divergence`.

    Returns:
        `(clipped, clipped_mask)`: the clipped divergence and a bool tensor, True where the value exceeded `tau`.
    """
    if tau is None:
        return divergence, torch.zeros_like(divergence, dtype=torch.bool)
    if not tau > 0:
        raise ValueError(f"clip tau={tau!r}: expected a positive number, or None to disable clipping")
    if mode not in CLIP_MODES:
        raise ValueError(f"clip mode={mode!r}: expected one of {CLIP_MODES}")
    size = divergence.detach().abs() if signed else divergence.detach()
    clipped_mask = size > tau
    if mode == "clamp":
        if not signed:
            return torch.clamp(divergence, max=tau), clipped_mask
        bound = divergence.detach().clamp(-tau, tau)  # a constant: no gradient beyond the bound, on either side
        return torch.where(clipped_mask, bound, divergence), clipped_mask
    # tau > 0, so clipped tokens have a nonzero size and the factor keeps the gradient's sign
    factor = torch.where(clipped_mask, tau / size, torch.ones_like(divergence))
    return divergence * factor, clipped_mask
