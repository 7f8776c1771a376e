"""Saved answers replayed through the decoding guard: which of them it would have stopped, and where.

`DegenerationGuard` bans tokens during sampling. Whether a ban would have changed a saved answer can be read off the
answer itself: tokenize it, and at each position ask the guard which next tokens it bans given the tokens before; if
the token written there is among them, guarded decoding would not have written this answer. This script does that
for every answer of `benchmarks/rgsd_sweep.py` result files (base and teacher answers, every trained student's train
and held-out answers) with SmolLM2's tokenizer, and counts, per file, the answers the guard would have stopped
against the answers the degeneration checks flag for the same reason (by default the piece-loop ban against the
piece-loop check: `--bans piece_loops`).

    .venv/bin/python benchmarks/guard_replay.py /work/runs/tgrpokt_ts0/results.json /work/runs/trecipe_ts0/results.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from typing import Any

from trl_rubric.evaluation.degeneration import _piece_loops, _words
from trl_rubric.evaluation.guard import DegenerationGuard

#: `--bans` choices: the guard's options for one ban alone, and the check its stopped answers are counted against.
BANS = {
    "piece_loops": (
        {"no_repeat_ngram_size": 0, "ban_empty_items": False, "ban_doubled_markers": False,
         "ban_repeated_lines": False, "ban_piece_loops": True},
        lambda answer: any(_piece_loops(word) for word in _words(answer)),
    ),
}  # fmt: skip


def saved_answers(results: dict[str, Any]) -> Iterator[str]:
    """Every answer text a sweep's `results.json` holds: base and teacher answers, the base model's answers under
    each `--decode` setting, then each run's train and held-out student answers, plain and under each setting."""
    for answers in results.get("responses", {}).values():
        yield from answers
    for decoded in results.get("decoded", {}).values():
        for split in ("train", "heldout"):
            yield from decoded.get(split, {}).get("responses", [])
    for run in results.get("runs", {}).values():
        for part in (run, *run.get("decoded", {}).values()):
            for split in ("train", "heldout"):
                yield from part.get(split, {}).get("responses", [])


def first_banned(guard: Any, ids: list[int]) -> int | None:
    """The first position whose written token `guard` bans given the tokens before it; None when there is none."""
    for t, tok in enumerate(ids):
        if tok in guard.bans(ids[:t]):
            return t
    return None


def replay(guard: Any, tokenizer: Any, answers: list[str], flagged: Any) -> dict[str, Any]:
    """Counts over `answers`: how many the check `flagged` flags, how many of those the guard would have stopped,
    and the loop-free answers it would have stopped (each listed)."""
    n_flagged = stopped_flagged = 0
    others: list[str] = []
    for answer in answers:
        hit = first_banned(guard, tokenizer(answer, add_special_tokens=False)["input_ids"]) is not None
        if flagged(answer):
            n_flagged += 1
            stopped_flagged += hit
        elif hit:
            others.append(answer)
    return {
        "answers": len(answers),
        "flagged": n_flagged,
        "flagged_stopped": stopped_flagged,
        "unflagged_stopped": len(others),
        "unflagged_stopped_examples": [a[:200] for a in others[:5]],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", help="rgsd_sweep.py results.json files")
    parser.add_argument("--bans", choices=sorted(BANS), default="piece_loops")
    parser.add_argument("--output", help="write the counts here as JSON")
    args = parser.parse_args(argv)
    from transformers import AutoTokenizer

    from trl_rubric.real.model import smollm2_path

    tokenizer = AutoTokenizer.from_pretrained(smollm2_path())
    options, flagged = BANS[args.bans]
    guard = DegenerationGuard(tokenizer, **options)
    out = {}
    for path in args.results:
        with open(path) as f:
            counts = replay(guard, tokenizer, list(saved_answers(json.load(f))), flagged)
        out[path] = counts
        print(
            f"{path}: {counts['answers']} answers, {counts['flagged']} flagged ({args.bans}), "
            f"{counts['flagged_stopped']} of them stopped by the ban; {counts['unflagged_stopped']} unflagged "
            "answers stopped"
        )
        for example in counts["unflagged_stopped_examples"]:
            print(f"  stopped, not flagged: {example[:120]!r}")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
