"""A fake OpenAI-compatible *completions* server (vLLM's `/v1/completions` with token ids), for rollout tests on CPU.

TRL's `async_grpo` rollout worker asks a vLLM server for completions of token-id prompts, with
`return_token_ids=True` and `logprobs=0`, and reads `choices[0]["token_ids"]` and
`choices[0]["logprobs"]["token_logprobs"]`. This server answers that request with random tokens drawn from `vocab`
(seeded by the request's `seed`, so an answer is reproducible), ending with `eos_token_id` after between
`min_tokens` and `max_tokens` tokens (a completion may also run to `max_tokens` without it, as a truncated one does).
Each token's log-probability is that of the uniform draw, `-log(len(vocab))`.

    from trl_rubric.testing.completions_server import FakeCompletionsServer

    with FakeCompletionsServer(vocab=range(10, 200), eos_token_id=2) as server:
        ...  # vllm_server_url=server.base_url
        assert server.requests > 0

It also answers `GET /health` (200) and `GET /v1/models`. `delay` holds every answer back by that many seconds;
`hold_after=n` answers the first `n` requests and holds every later one until `release()` or `stop()`, so a test can
let a client that never stops asking (a rollout worker) produce exactly `n` completions.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler
from typing import Any

from .judge_server import _Server


class FakeCompletionsServer:
    """`POST /v1/completions` on 127.0.0.1 in a background thread; see the module docstring.

    Args:
        vocab: Token ids completions are drawn from (keep special tokens out).
        eos_token_id: Token that ends a completion.
        min_tokens: Fewest tokens before the end-of-sequence token may come.
        model: Model id the server reports.
        delay: Seconds each answer is held back.
        hold_after: Answer this many requests, then hold the rest until `release()` or `stop()` (`None`: never).
    """

    def __init__(
        self,
        vocab: Iterable[int],
        eos_token_id: int,
        min_tokens: int = 1,
        model: str = "fake-policy",
        delay: float = 0.0,
        hold_after: int | None = None,
    ):
        self.vocab = list(vocab)
        if not self.vocab:
            raise ValueError("vocab is empty; give the token ids completions may be drawn from")
        self.eos_token_id = eos_token_id
        self.min_tokens = min_tokens
        self.model = model
        self.delay = delay
        self.hold_after = hold_after
        self._released = threading.Event()
        self._served = 0
        self.requests = 0
        self.models_requested: list[str] = []
        self._lock = threading.Lock()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """The server root (`vllm_server_url` / `vllm_server_base_url` take it without `/v1`)."""
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> FakeCompletionsServer:
        if self._httpd is None:
            self._httpd = _Server(("127.0.0.1", 0), self._handler_class())
            self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05})
            self._thread.daemon = True
            self._thread.start()
        return self

    def release(self) -> None:
        """Answer the requests held by `hold_after`, and all later ones."""
        self._released.set()

    def stop(self) -> None:
        self.release()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)
            self._httpd = self._thread = None

    def __enter__(self) -> FakeCompletionsServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """The answer to one `/v1/completions` request."""
        max_tokens = int(body.get("max_tokens") or 16)
        rng = random.Random(body.get("seed"))
        ids: list[int] = []
        while len(ids) < max_tokens:
            if len(ids) >= self.min_tokens and rng.random() < 0.25:
                ids.append(self.eos_token_id)
                break
            ids.append(rng.choice(self.vocab))
        logprob = -math.log(len(self.vocab))
        choice = {
            "index": 0,
            "text": "",
            "token_ids": ids,
            "logprobs": {"token_logprobs": [logprob] * len(ids)},
            "finish_reason": "stop" if ids[-1] == self.eos_token_id else "length",
        }
        usage = {"prompt_tokens": len(body.get("prompt") or []), "completion_tokens": len(ids)}
        return {"id": f"cmpl-{self.requests}", "object": "text_completion", "choices": [choice], "usage": usage}

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # one request per connection: a held request pins no pooled connection

            def log_message(self, *args):
                pass

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                path = self.path.rstrip("/")
                if path == "/health":
                    self._send(200, {})
                elif path.endswith("/models"):
                    self._send(200, {"object": "list", "data": [{"id": server.model, "object": "model"}]})
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if not self.path.rstrip("/").endswith("/v1/completions"):
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                with server._lock:
                    server.requests += 1
                    server.models_requested.append(str(body.get("model")))
                    # A slot is taken on arrival, so concurrent requests cannot overshoot `hold_after`.
                    hold = server.hold_after is not None and server._served >= server.hold_after
                    server._served += not hold
                if hold:
                    server._released.wait()
                if server.delay:
                    time.sleep(server.delay)
                with server._lock:
                    answer = server.complete(body)
                try:
                    self._send(200, answer)
                except (BrokenPipeError, ConnectionResetError):
                    # The client gave up on this request (a timeout under load) and will retry it: the answer was
                    # never delivered, so it gives its `hold_after` slot back for the retry.
                    if not hold:
                        with server._lock:
                            server._served -= 1

        return Handler
