"""The gap verdict: a plain-language reading of a conditioning gap and its length ratio."""

from __future__ import annotations


def gap_verdict(
    gap: float | None,
    gap_ci: tuple[float, float] | None,
    length_ratio: float | None,
    min_gap: float = 0.05,
    max_length_ratio: float = 1.3,
) -> tuple[list[str], bool, bool]:
    """Plain-language reading of a conditioning gap.

    Args:
        gap: Score with the rubric minus score without (0-1 scale).
        gap_ci: Its interval; an interval reaching 0 means the gap may be noise.
        length_ratio: Mean length with the rubric over without.
        min_gap: Smallest gap worth distilling.
        max_length_ratio: Length ratio above which part of the gap may be mere length.

    Returns:
        `(lines, recommend_rgsd, length_warning)`.
    """
    lines = []
    if gap is None:
        lines.append("No gap could be measured: the judge scored no prompt in both views. Check the judge.")
        return lines, False, False
    pp = f"{100 * gap:+.1f}pp"
    ci = f" (CI {100 * gap_ci[0]:+.1f} to {100 * gap_ci[1]:+.1f}pp)" if gap_ci else ""
    uncertain = gap_ci is not None and gap_ci[0] <= 0
    if gap < min_gap:
        lines.append(
            f"Conditioning gap {pp}{ci} is below the {100 * min_gap:.0f}pp threshold: RGSD has little to distill "
            "here, because the model barely does better when it sees the rubric. Consider GRPO with a judge instead "
            "(`trl-rubric grpo`)."
        )
        recommend = False
    elif uncertain:
        lines.append(
            f"Conditioning gap {pp}{ci} is not clearly above 0: on this sample RGSD may have little to distill here. "
            "Sample more prompts (--n_samples) to tell, or consider GRPO with a judge instead (`trl-rubric grpo`)."
        )
        recommend = False
    else:
        lines.append(
            f"Conditioning gap {pp}{ci}: the model does better when it sees the rubric, so RGSD has a signal to "
            "distill (the RGSD paper, arXiv 2606.12507, reports 30-45pp on its models)."
        )
        recommend = True
    warn = length_ratio is not None and length_ratio > max_length_ratio
    if warn:
        lines.append(
            f"Warning: with the rubric, answers are {length_ratio:.2f}x as long (threshold {max_length_ratio:.2f}x); "
            "part of the gap may be mere length. Read a few pairs in responses.jsonl, or rerun with a smaller "
            "--max_completion_length to compare at matched lengths."
        )
    return lines, recommend, warn
