"""Token masks around the divergence: thinking blocks, the first tokens of a completion, non-finite rows."""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import torch
from torch import Tensor


def _find_subsequence(ids: Tensor, pattern: Tensor) -> Tensor:
    # [B, T] bool, True where `pattern` starts at that position
    batch, length = ids.shape
    n = pattern.numel()
    starts = torch.zeros((batch, length), dtype=torch.bool, device=ids.device)
    if n <= length:
        windows = ids.unfold(1, n, 1)  # [B, T - n + 1, n]
        starts[:, : length - n + 1] = (windows == pattern).all(-1)
    return starts


def _as_id_tensor(ids: Sequence[int] | Tensor, name: str, device: torch.device) -> Tensor:
    ids = torch.as_tensor(ids, dtype=torch.long, device=device).flatten()
    if ids.numel() == 0:
        raise ValueError(f"thinking_mask: {name} is empty; pass the token ids of the delimiter, e.g. tokenizer.encode")
    return ids


def thinking_mask(
    completion_ids: Tensor,
    start_ids: Sequence[int] | Tensor,
    end_ids: Sequence[int] | Tensor,
    *,
    open_at_start: bool = False,
) -> Tensor:
    """Mask that leaves thinking blocks out of the loss: the teacher's reasoning there may quote the rubric.

    Tokens from each start delimiter through its matching end delimiter (both inclusive) are False. A block that is
    never closed runs to the end of the row. A start delimiter inside a block and an end delimiter outside one are
    ordinary tokens.

    Args:
        completion_ids: `[B, T]` completion token ids.
        start_ids: Token ids of the opening delimiter, e.g. `tokenizer.encode("<think>", add_special_tokens=False)`.
        end_ids: Token ids of the closing delimiter, e.g. for `"</think>"`.
        open_at_start: True when the prompt already opened the block (chat templates that end the generation prompt
            with `<think>`), so each row starts inside it.

    Returns:
        `[B, T]` bool, True for tokens to keep.
    """
    start = _as_id_tensor(start_ids, "start_ids", completion_ids.device)
    end = _as_id_tensor(end_ids, "end_ids", completion_ids.device)
    start_len, end_len = start.numel(), end.numel()
    starts = _find_subsequence(completion_ids, start).cpu()
    ends = _find_subsequence(completion_ids, end).cpu()
    keep = torch.ones(completion_ids.shape, dtype=torch.bool)
    for row in range(completion_ids.shape[0]):
        # Visit delimiter positions only, so long rows cost nothing extra
        start_pos = starts[row].nonzero().flatten().tolist()
        end_pos = ends[row].nonzero().flatten().tolist()
        block_start, cursor = (0, 0) if open_at_start else (None, 0)
        while True:
            if block_start is None:
                i = bisect.bisect_left(start_pos, cursor)
                if i == len(start_pos):
                    break
                block_start, cursor = start_pos[i], start_pos[i] + start_len
            else:
                j = bisect.bisect_left(end_pos, cursor)
                if j == len(end_pos):
                    keep[row, block_start:] = False
                    break
                cursor = end_pos[j] + end_len
                keep[row, block_start:cursor] = False
                block_start = None
    return keep.to(completion_ids.device)


def completion_thinking_mask(
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    completion_ids: Tensor,
    start_ids: Sequence[int],
    end_ids: Sequence[int],
) -> Tensor:
    """[`thinking_mask`] of left-padded completions whose prompts may already have opened a block: a row starts
    inside one when its prompt's last start delimiter comes after its last end delimiter (chat templates that end the
    generation prompt with "<think>\n"). Returns the `[B, T]` keep mask of `completion_ids`."""
    # A row is open when its prompt's last start comes after its last end.
    real_prompts = prompt_ids.masked_fill(prompt_mask == 0, -1)
    opened = thinking_mask(real_prompts, start_ids, end_ids, open_at_start=False)
    end = torch.tensor(list(end_ids), device=prompt_ids.device)
    ends_closed = (prompt_ids[:, -len(end_ids) :] == end).all(dim=1)  # a block closed by the prompt's last tokens
    open_rows = (~opened[:, -1]) & (prompt_mask[:, -1] == 1) & ~ends_closed
    closed_keep = thinking_mask(completion_ids, start_ids, end_ids, open_at_start=False)
    if not open_rows.any():
        return closed_keep
    open_keep = thinking_mask(completion_ids, start_ids, end_ids, open_at_start=True)
    return torch.where(open_rows[:, None], open_keep, closed_keep)


def skip_first_tokens_mask(mask: Tensor, n: int) -> Tensor:
    """Drop the first `n` completion tokens of each row from a `[B, T]` loss mask (`num_loss_tokens_to_skip`).

    Completions are right-padded, so column `j` is the row's `j`-th token.
    """
    if n < 0:
        raise ValueError(f"num_loss_tokens_to_skip={n}: expected 0 or more")
    if n == 0:
        return mask
    kept = torch.arange(mask.shape[-1], device=mask.device) >= n
    return mask & kept if mask.dtype == torch.bool else mask * kept.to(mask.dtype)


def finite_token_mask(*tensors: Tensor | None, token_dims: int = 1) -> Tensor:
    """True for tokens where every given per-token value is finite.

    Args:
        *tensors: Tensors whose first `token_dims` dimensions index tokens (e.g. `[N]` log-probs, `[N, H]` hidden
            states); trailing dimensions are reduced. None entries are skipped.
        token_dims: How many leading dimensions index tokens (2 for `[B, T]` or `[B, T, H]`).

    Returns:
        Bool tensor of the common token shape.
    """
    given = [t for t in tensors if t is not None]
    if not given:
        raise ValueError("finite_token_mask needs at least one tensor")
    finite = None
    for t in given:
        ok = t.isfinite()
        if ok.dim() > token_dims:
            ok = ok.flatten(token_dims).all(-1)
        finite = ok if finite is None else finite & ok
    return finite


def sanitize_hidden(hidden: Tensor) -> tuple[Tensor, Tensor]:
    """Zero the rows of `[N, H]` hidden states that hold a NaN or inf, so the chunked kernels stay finite.

    Gradients reaching the zeroed rows are zero, so they do not turn the LM-head gradient into NaN.

    Returns:
        `(clean_hidden, finite_rows)` with `finite_rows` `[N]` bool.
    """
    finite_rows = hidden.detach().isfinite().all(-1)
    if bool(finite_rows.all()):
        return hidden, finite_rows
    return torch.where(finite_rows.unsqueeze(-1), hidden, hidden.new_zeros(())), finite_rows
