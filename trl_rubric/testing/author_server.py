"""A fake OpenAI-compatible *author* server: the judge server's HTTP, faults and counters, with rubric replies.

    from trl_rubric.testing.author_server import FakeAuthorServer

    with FakeAuthorServer() as server:
        server.queue('```json\n[{"title": "Rest", "description": "Essential Criteria: Advises rest", "weight": 5}]\n```')
        ...  # point `--author_base_url` at server.url

Replies come, in order, from `queue(...)`d texts, then from `responder(messages)` (default: [`keyword_rubric`]).
Faults (`server.inject("500")`, `"hang"`, `"malformed"`, ...) work as in [`FakeJudgeServer`], which this subclasses.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Callable
from typing import Any

from .judge_server import FakeJudgeServer

_BLOCK = re.compile(r"\[(QUESTION|REFERENCE ANSWER|REFERENCE SOLUTION|EXPERT ANSWER|ANSWER A)\]\n(.*?)\n\[/\1\]", re.S)
_WORD = re.compile(r"[A-Za-z]{5,}")


def keyword_rubric(messages: list[dict[str, Any]]) -> str:
    """A deterministic valid reply: one Essential criterion per distinct long word of the material's first block
    after the question (the reference or the better answer), each ending in that word, so that the fake judge server
    (which marks a criterion met when its last word is in the response) grades them meaningfully; plus one Pitfall.
    A request without a rubric format (the keypoints mode's first step) gets a plain answer: the question echoed."""
    text = "\n".join(str(m.get("content", "")) for m in messages if m.get("role") == "user")
    blocks = dict(_BLOCK.findall(text))
    if "JSON" not in text:
        return f"An expert answer to: {blocks.get('QUESTION', text)[:200]}"
    source = next(
        (blocks[k] for k in ("REFERENCE ANSWER", "REFERENCE SOLUTION", "EXPERT ANSWER", "ANSWER A") if k in blocks),
        blocks.get("QUESTION", ""),
    )
    keywords = list(dict.fromkeys(w.lower() for w in _WORD.findall(source)))[:6] or ["answer"]
    items = [
        {"title": f"Mentions {w}", "description": f"Essential Criteria: The answer mentions {w}", "weight": 5}
        for w in keywords
    ]
    items.append({"title": "Invents facts", "description": "Pitfall Criteria: Makes up a statistic", "weight": -2})
    return json.dumps(items)


class FakeAuthorServer(FakeJudgeServer):
    """[`FakeJudgeServer`] whose chat answers are authored rubrics.

    Args:
        responder: `messages -> reply text` used when no queued reply is left; default [`keyword_rubric`].
        **kwargs: As for [`FakeJudgeServer`] (`delay`, `port`, `hang_s`, `model`).
    """

    def __init__(self, responder: Callable[[list[dict[str, Any]]], str] | None = None, **kwargs):
        kwargs.setdefault("model", "fake-author")
        super().__init__(**kwargs)
        self.responder = responder or keyword_rubric
        self._queued: deque[str] = deque()
        #: The user-turn text of every chat request answered, in order (for tests that check what the author saw).
        self.seen: list[str] = []

    def queue(self, *replies: str) -> None:
        """Answer the next chat requests with these texts, in order."""
        with self._lock:
            self._queued.extend(replies)

    def answer(self, messages: list[dict[str, Any]], fault: str | None = None) -> str:
        with self._lock:
            self.seen.append("\n".join(str(m.get("content", "")) for m in messages if m.get("role") == "user"))
            queued = self._queued.popleft() if self._queued else None
        if fault == "malformed":
            return '[{"title": "Rest", "description": "Essential Criteria: Advi'
        return queued if queued is not None else self.responder(messages)
