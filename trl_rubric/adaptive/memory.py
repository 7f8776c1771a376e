"""`EvaluationMemory`: an append-only JSONL store of per-step evaluation summaries and rubric-update records.

The store (AMARIS-style, arXiv 2605.18592: a persistent memory of step-level evaluation summaries, retrieved by recency
and by semantic similarity) lives in the run's output folder. Every record is one JSON line with a `kind` and the
training `step` it belongs to:

- `summary`: one prompt's group at one step: criterion texts, pass rates, which are saturated / unreachable, and an
  example failure (the lowest-scored completion, cut to a few hundred characters);
- `update`: a rubric revision applied at a step boundary: prompt key, old and new version, old and new rubric;
- `rejected`: a revision the author wrote that did not parse as a valid rubric (never applied), with the reason;
- `resume`: training (re)started at `step`; every record written before it with a later step belongs to an abandoned
  future and is dropped when the store is read, so a run resumed from a checkpoint sees exactly what it saw then.

Appends take a `filelock` lock next to the file and write whole lines in one write, so several processes (or a second
run in the same folder) never interleave partial lines; readers parse only complete lines.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from filelock import FileLock

from ..teacher_context import _unit_rows

MEMORY_FILE = "adaptive_memory.jsonl"
RECORD_KINDS = ("summary", "update", "rejected", "resume")
_TOKEN = re.compile(r"[a-z0-9]+")


def hashed_bag_of_words(texts: list[str], dim: int = 512):
    """A dependency-free offline embedding: word counts hashed into `dim` buckets (a `[n, dim]` array).

    Good enough to find prompts about the same topic by shared words; pass a real embedding function (for example a
    `sentence-transformers` model's `encode`) to [`EvaluationMemory`] for semantic matches.
    """
    import numpy as np

    out = np.zeros((len(texts), dim), dtype=np.float64)
    for row, text in enumerate(texts):
        for word in _TOKEN.findall(text.lower()):
            out[row, int(hashlib.md5(word.encode()).hexdigest()[:8], 16) % dim] += 1.0
    return out


class EvaluationMemory:
    """Evaluation summaries and rubric updates of one run, on disk, with recent and similar-prompt retrieval.

    Args:
        path: The JSONL file (its folder is created); usually `<output_dir>/adaptive_memory.jsonl`.
        embed: Function from a list of texts to a `[n, d]` array, used (cosine similarity, the same code as the
            `skills` teacher context) by [`similar`]; default [`hashed_bag_of_words`].
    """

    def __init__(self, path: str | os.PathLike, embed: Callable[[list[str]], Any] | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.embed = embed or hashed_bag_of_words
        self._lock = FileLock(str(self.path) + ".lock")
        # Parsed records and how many bytes of the file they cover: reads parse only what was appended since.
        self._parsed: list[dict[str, Any]] = []
        self._offset = 0
        self._lines = 0
        self._vectors: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"EvaluationMemory({str(self.path)!r})"

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        """Append records (each needs `kind` in [`RECORD_KINDS`] and an integer `step`) under the file lock."""
        lines = []
        for record in records:
            if record.get("kind") not in RECORD_KINDS or not isinstance(record.get("step"), int):
                raise ValueError(f"memory record needs kind in {RECORD_KINDS} and an integer step; got {record!r}")
            lines.append(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
        if not lines:
            return
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(lines))  # one write of whole lines under the lock (no fsync: it cost ~20 ms a step)

    def _refresh(self) -> None:
        if not self.path.exists() or self.path.stat().st_size == self._offset:
            return
        with self._lock, open(self.path, "rb") as f:
            f.seek(self._offset)
            tail = f.read()
        complete = tail[: tail.rfind(b"\n") + 1]  # appends are whole lines; never parse a half-written one
        self._offset += len(complete)
        for line in complete.decode("utf-8").splitlines():
            self._lines += 1
            if not line.strip():
                continue
            try:
                self._parsed.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"{self.path}: line {self._lines} is not JSON ({e}); the memory file is damaged"
                ) from None

    def records(self, kind: str | None = None) -> list[dict[str, Any]]:
        """The live records in write order (records cut off by a later `resume` are dropped), optionally one kind."""
        self._refresh()
        live: list[dict[str, Any]] = []
        for record in self._parsed:
            if record["kind"] == "resume":
                live = [r for r in live if r["step"] <= record["step"]]
            live.append(record)
        return [r for r in live if kind is None or r["kind"] == kind]

    def recent(self, key: str, n: int = 3) -> list[dict[str, Any]]:
        """The last `n` summaries of the prompt with key `key`, oldest first."""
        return [r for r in self.records("summary") if r.get("key") == key][-n:]

    def similar(self, query: str, k: int = 3, kind: str = "update", exclude_key: str | None = None):
        """Up to `k` records of `kind` whose prompt is most similar to `query`, best first, as `(score, record)`."""
        pool = [r for r in self.records(kind) if r.get("key") != exclude_key and r.get("prompt")]
        if not pool or k <= 0:
            return []
        import numpy as np

        missing = list(dict.fromkeys(r["prompt"] for r in pool if r["prompt"] not in self._vectors))
        if missing:  # each distinct prompt is embedded once
            self._vectors.update(zip(missing, _unit_rows(self.embed(missing)), strict=True))
        vectors = np.stack([self._vectors[r["prompt"]] for r in pool])
        scores = (vectors @ _unit_rows(self.embed([query]))[0]).tolist()
        order = sorted(range(len(pool)), key=lambda i: -scores[i])[:k]
        return [(scores[i], pool[i]) for i in order]

    def versions(self) -> dict[str, dict[str, Any]]:
        """The current rubric of every revised prompt, `{key: {"version": v, "rubric": [...]}}`, replayed from the
        live `update` records (so it restores exactly what a resumed checkpoint had)."""
        table: dict[str, dict[str, Any]] = {}
        for record in self.records("update"):
            table[record["key"]] = {"version": record["new_version"], "rubric": record["new_rubric"]}
        return table
