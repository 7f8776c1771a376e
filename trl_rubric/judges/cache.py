"""On-disk grade cache shared by judges: one JSON file per key, written atomically, safe across processes.

A key is the sha256 of a canonical JSON of everything that determines a grade: the judge model, `PROMPT_VERSION`,
the grading mode, the prompt, the response and the rubric. Each entry is written to a temporary file in the same
folder and moved into place with `os.replace`, which is atomic on POSIX and Windows, so readers see either no file or a
complete one, and several training processes can share a folder without locks. Two writers of the same key write the
same content, so the last one winning is harmless.

Only complete grades are stored (every verdict known, or a rating in implicit mode): a failed or partial grade must be
asked again next time, never replayed from disk.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from ..rubric import Rubric
from .base import prompt_to_text

logger = logging.getLogger(__name__)


def cache_key(judge_model: str, prompt_version: str, mode: str, prompt: Any, response: str, rubric: Rubric) -> str:
    """The sha256 hex digest of a canonical JSON of the inputs that determine a grade."""
    payload = {
        "judge_model": judge_model,
        "prompt_version": prompt_version,
        "mode": mode,
        "prompt": prompt if isinstance(prompt, str) else prompt_to_text(prompt),
        "response": response,
        "rubric": rubric.to_list(),
    }
    canonical = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class GradeCache:
    """A folder of cached grades, `<dir>/<key[:2]>/<key>.json`.

    Args:
        cache_dir: Folder to use; created if missing.
    """

    def __init__(self, cache_dir: str | os.PathLike):
        self.root = Path(cache_dir).expanduser()
        self.root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"GradeCache({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored entry for `key`, or `None` if absent or unreadable (an unreadable file counts as a miss)."""
        path = self._path(key)
        try:
            with open(path, encoding="utf-8") as f:
                entry = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError) as e:
            logger.warning("ignoring unreadable judge cache entry %s: %s", path, e)
            return None
        return entry if isinstance(entry, dict) and entry.get("key") == key else None

    def put(self, key: str, entry: dict[str, Any]) -> None:
        """Store `entry` under `key` atomically. Failures to write are logged, never raised: a cache is optional."""
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{key[:8]}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump({**entry, "key": key}, f, ensure_ascii=False)
                os.replace(tmp, path)
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
        except OSError as e:
            logger.warning("could not write judge cache entry %s: %s", path, e)

    def __len__(self) -> int:
        return sum(1 for _ in self.root.glob("*/*.json"))
