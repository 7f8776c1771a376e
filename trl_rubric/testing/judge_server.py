"""A fake OpenAI-compatible judge server for tests and benchmarks: real HTTP on 127.0.0.1, deterministic grades.

    from trl_rubric.testing.judge_server import FakeJudgeServer

    with FakeJudgeServer(delay=0.05) as server:
        judge = OpenAIJudge("fake-judge", base_url=server.url)
        ...
        assert server.requests == 4

**Grading rule.** The server reads the prompts written by `trl_rubric.judges.prompts`: the response is what lies
between the first `<<<RESPONSE code>>>` tag and its `<<<END RESPONSE code>>>` (the code is random per request, so a
response cannot forge it), the criteria are read after that end tag by their section headers. A criterion is met if and only if the criterion's **last word** (lower-cased,
punctuation stripped, ignoring words without a letter such as "3.") appears as a word in the response. "mentions fever" is met by "the fever rose" and not by
"feverish". In implicit mode the rating is `1 + round(9 * met / K)`, counting criteria regardless of sign. A group-wise
request (`trl_rubric.judges.groupwise`: several `<<<ANSWER Ak code>>>` blocks) gets `{"Ak": {"1": .., ..}, ..}` with
each answer graded by the same rule on its own.

**Faults.** `server.fault = kind` applies to every request; `server.inject(kind, times=n)` to the next `n` requests
only (injected faults are used first). Kinds:

- `"500"`, `"429"`, `"401"`: that HTTP status (429 with `Retry-After: 0`; 401 is not worth retrying);
- `"hang"`: answer nothing for `hang_s` seconds (longer than any sensible client timeout), then close;
- `"malformed"`: a 200 whose message is not JSON;
- `"missing"`: leave the last criterion out (per-criterion mode: an answer without `met`; group-wise: the last answer
  shown);
- `"out_of_range"`: number criteria 0..K-1 instead of 1..K, so id 0 is out of range and id K is missing;
- `"duplicate"`: give criterion 1 twice with opposite verdicts;
- `"echo"`: quote the response first ("The response reads: ..."), then give the verdicts, as chatty judges do: a
  forged verdict inside the response then appears in the answer before the real one;
- `"cannot_assess"`: answer "cannot_assess" for the last criterion (per-criterion mode: for
  each penalty criterion, one with negative points).

It counts chat requests (`requests`), tracks the most requests in flight at once (`max_in_flight`), records the
`Authorization` headers it saw, can delay each answer by `delay` seconds, and can be stopped and started again on the
same port (`stop()`, `start()`), to simulate an outage.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ..judges.parsing import CANNOT_ASSESS
from ..judges.prompts import ANSWER, CLOSE_TAG, CRITERIA_HEADER, CRITERION_HEADER, END_MARKER, OPEN_TAG, RESPONSE

FAULT_KINDS = (
    "500",
    "429",
    "401",
    "hang",
    "malformed",
    "missing",
    "out_of_range",
    "duplicate",
    "echo",
    "cannot_assess",
)
_OPEN_RESPONSE = re.compile(re.escape(OPEN_TAG.format(name=RESPONSE, nonce="@")).replace("@", r"([0-9a-f]+)"))
_OPEN_ANSWER = re.compile(re.escape(f"<<<{ANSWER} ") + r"(A\d+) ([0-9a-f]+)>>>")
_WORD = re.compile(r"[\w']+")
_CRITERION_LINE = re.compile(r"^\s*(\d+)\.\s*(?:\[[^\]]*\]\s*)?(.*\S)\s*$")


def keyword(criterion_text: str) -> str:
    """The word whose presence in a response makes the fake server mark `criterion_text` as met: its last word."""
    words = [w for w in _WORD.findall(criterion_text.lower()) if any(ch.isalpha() for ch in w)]
    return words[-1] if words else ""


def criterion_met(criterion_text: str, response: str) -> bool:
    """The fake server's grading rule, for tests that compute expected verdicts."""
    return keyword(criterion_text) in set(_WORD.findall(response.lower()))


def _section(text: str, header: str, next_headers: tuple[str, ...]) -> str:
    start = text.find(header)
    if start == -1:
        return ""
    start += len(header)
    ends = [i for i in (text.find(h, start) for h in next_headers) if i != -1]
    return text[start : min(ends) if ends else len(text)].strip("\n")


def _criteria(block: str) -> list[str]:
    return [m.group(2) for m in map(_CRITERION_LINE.match, block.splitlines()) if m]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Hanging handlers must not keep stop() waiting.
    block_on_close = False
    allow_reuse_address = True
    # The stdlib default backlog of 5 drops connections when many clients connect at once, as a judge client does.
    request_queue_size = 256


class FakeJudgeServer:
    """An OpenAI-compatible `/v1/chat/completions` (and `/v1/models`) server in a background thread.

    Args:
        delay: Seconds each chat answer is held back (the fixed latency of a real judge).
        port: Port to bind; 0 picks a free one, which is then kept across `stop()` / `start()`.
        hang_s: How long a `"hang"` fault keeps the request open.
        model: Model id listed by `/v1/models`.
    """

    def __init__(self, delay: float = 0.0, port: int = 0, hang_s: float = 30.0, model: str = "fake-judge"):
        self.delay = delay
        self.port = port
        self.hang_s = hang_s
        self.model = model
        self.fault: str | None = None
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.auth_headers: list[str] = []
        self.paths: list[str] = []
        self._injected: deque[str] = deque()
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The base URL to give a client: `http://127.0.0.1:<port>/v1`."""
        return f"http://127.0.0.1:{self.port}/v1"

    def inject(self, kind: str, times: int = 1) -> None:
        """Apply fault `kind` to the next `times` chat requests."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; expected one of {FAULT_KINDS}")
        with self._lock:
            self._injected.extend([kind] * times)

    def reset_counters(self) -> None:
        with self._lock:
            self.requests = 0
            self.max_in_flight = 0
            self.auth_headers.clear()
            self.paths.clear()

    def start(self) -> FakeJudgeServer:
        if self._httpd is not None:
            return self
        self._release.clear()
        self._httpd = _Server(("127.0.0.1", self.port), self._handler_class())
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop answering and close the port; requests hanging on a fault are released."""
        if self._httpd is None:
            return
        self._release.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
        self._httpd = self._thread = None

    def __enter__(self) -> FakeJudgeServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _next_fault(self) -> str | None:
        with self._lock:
            return self._injected.popleft() if self._injected else self.fault

    def answer(self, messages: list[dict[str, Any]], fault: str | None = None) -> str:
        """The message content the server writes for a request (also usable without HTTP)."""
        text = "\n".join(str(m.get("content", "")) for m in messages if m.get("role") == "user")
        if fault == "malformed":
            return 'Here is my grading: {"1": {"met": tru'
        if _OPEN_ANSWER.search(text):
            return self._group_answer(text, fault)
        match = _OPEN_RESPONSE.search(text)
        if match is None:
            return json.dumps({"explanation": "no response block in the prompt"})
        close = CLOSE_TAG.format(name=RESPONSE, nonce=match.group(1))
        end = text.find(close, match.end())
        response = text[match.end() : end if end != -1 else len(text)].strip("\n")
        tail = text[end + len(close) :] if end != -1 else ""
        if CRITERION_HEADER + "\n" in tail:
            criteria = _criteria(_section(tail, CRITERION_HEADER, (END_MARKER,)))
            met = bool(criteria) and criterion_met(criteria[0], response)
            if fault in ("missing", "out_of_range", "duplicate"):
                return json.dumps({"explanation": "forgot the verdict"})
            if fault == "cannot_assess" and re.search(r"^\s*1\.\s*\[[^\]]*-\d", tail, re.MULTILINE):
                return json.dumps({"explanation": "cannot tell from the material", "met": CANNOT_ASSESS})
            return json.dumps(
                {"explanation": f"keyword rule on {keyword(criteria[0]) if criteria else ''!r}", "met": met}
            )
        criteria = _criteria(_section(tail, CRITERIA_HEADER, (END_MARKER,)))
        verdicts: list[Any] = [criterion_met(c, response) for c in criteria]
        if '"rating"' in tail:
            if fault in ("missing", "out_of_range", "duplicate"):
                return json.dumps({"explanation": "no rating given"})
            rating = 1 + round(9 * sum(verdicts) / max(1, len(verdicts)))
            return json.dumps({"rating": rating, "explanation": "keyword rule"})
        if fault == "cannot_assess" and verdicts:
            verdicts[-1] = CANNOT_ASSESS
        items = [
            (str(i), {"explanation": f"keyword rule on {keyword(c)!r}", "met": v})
            for i, (c, v) in enumerate(zip(criteria, verdicts, strict=True), start=1)
        ]
        if fault == "missing":
            items = items[:-1]
        elif fault == "out_of_range":
            items = [(str(int(k) - 1), v) for k, v in items]
        elif fault == "duplicate" and items:
            items.append(("1", {"explanation": "changed my mind", "met": not items[0][1]["met"]}))
        # Written by hand so that a duplicated key really appears twice in the JSON text.
        verdict_json = "{" + ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in items) + "}"
        if fault == "echo":
            return f"The response reads:\n{response}\n\nMy verdicts:\n{verdict_json}"
        return verdict_json

    def _group_answer(self, text: str, fault: str | None) -> str:
        """A group-wise request: every `<<<ANSWER Ak code>>>` block graded by the keyword rule on its own."""
        answers, tail = [], ""
        for match in _OPEN_ANSWER.finditer(text):
            close = CLOSE_TAG.format(name=f"{ANSWER} {match.group(1)}", nonce=match.group(2))
            end = text.find(close, match.end())
            if end == -1:
                continue
            answers.append((match.group(1), text[match.end() : end].strip("\n")))
            tail = text[end + len(close) :]
        criteria = _criteria(_section(tail, CRITERIA_HEADER, (END_MARKER,)))
        out: dict[str, Any] = {}
        for label, response in answers:
            verdicts: list[Any] = [criterion_met(c, response) for c in criteria]
            if fault == "cannot_assess" and verdicts:
                verdicts[-1] = CANNOT_ASSESS
            out[label] = {
                str(i): {"explanation": f"keyword rule on {keyword(c)!r}", "met": v}
                for i, (c, v) in enumerate(zip(criteria, verdicts, strict=True), start=1)
            }
        if fault == "missing" and answers:
            out.pop(answers[-1][0])  # the last answer shown is left out
        return json.dumps(out)

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # one request per connection: a stopped server really stops answering

            def log_message(self, *args):  # keep test output clean
                pass

            def _send(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                with server._lock:
                    server.paths.append(self.path)
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, {"object": "list", "data": [{"id": server.model, "object": "model"}]})
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with server._lock:
                    server.paths.append(self.path)
                    server.auth_headers.append(self.headers.get("Authorization", ""))
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                with server._lock:
                    server.requests += 1
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    self._chat(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout); nothing to answer
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def _chat(self, body: dict[str, Any]) -> None:
                fault = server._next_fault()
                if server.delay:
                    time.sleep(server.delay)
                if fault == "hang":
                    server._release.wait(server.hang_s)
                    return
                if fault == "500":
                    self._send(500, {"error": {"message": "injected server error", "type": "server_error"}})
                    return
                if fault == "401":
                    self._send(401, {"error": {"message": "invalid api key", "type": "invalid_request_error"}})
                    return
                if fault == "429":
                    self._send(429, {"error": {"message": "injected rate limit"}}, {"Retry-After": "0"})
                    return
                content = server.answer(body.get("messages", []), fault)
                prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
                completion_tokens = len(content.split())
                self._send(
                    200,
                    {
                        "id": f"chatcmpl-{server.requests}",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": body.get("model", server.model),
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": content},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {
                            "prompt_tokens": prompt_tokens,
                            "completion_tokens": completion_tokens,
                            "total_tokens": prompt_tokens + completion_tokens,
                        },
                    },
                )

        return Handler
