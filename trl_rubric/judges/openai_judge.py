"""`OpenAIJudge`: a judge behind any OpenAI-compatible `/v1/chat/completions` endpoint (vLLM, SGLang, OpenAI, ...)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import weakref
from collections.abc import Sequence
from typing import Any

from .base import JudgeUnavailableError
from .llm import ChatReply, ChatRubricJudge, JudgeBackendError

logger = logging.getLogger(__name__)

#: Sent when the API-key environment variable is unset. Local servers such as vLLM accept any key (and this is the
#: value their docs use), while hosted APIs reject it with a 401, which `probe()` reports clearly.
PLACEHOLDER_API_KEY = "EMPTY"
DEFAULT_BASE_URL = "http://localhost:8000/v1"
# Status codes worth retrying: request timeout, conflict, rate limit; every 5xx is added below.
_RETRYABLE_STATUS = {408, 409, 429}


def split_base_urls(base_url: str | Sequence[str] | None) -> list[str]:
    """Normalise `base_url` (one URL, a comma-separated string, or a list) into a non-empty list of URLs."""
    if base_url is None:
        return [DEFAULT_BASE_URL]
    items = base_url.split(",") if isinstance(base_url, str) else list(base_url)
    urls = [str(u).strip().rstrip("/") for u in items if str(u).strip()]
    if not urls:
        raise ValueError(f"judge base_url is {base_url!r}; expected a URL such as {DEFAULT_BASE_URL!r}")
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"judge base_url {url!r} does not start with http:// or https://")
    return urls


class _LoopState:
    """Clients and the in-flight limit for one event loop: `httpx` connections and semaphores are bound to a loop."""

    def __init__(self, max_concurrency: int):
        self.clients: dict[str, Any] = {}
        self.semaphore = asyncio.Semaphore(max_concurrency)


class OpenAIJudge(ChatRubricJudge):
    """Grades with a model served behind an OpenAI-compatible chat-completions API, through `openai.AsyncOpenAI`.

    The API key is read from the environment variable named by `api_key_env` each time a client is created; the judge
    keeps only the variable's name, so the key never appears in its `repr`, its pickled state, configs or logs. If the
    variable is unset, the placeholder key `"EMPTY"` is sent (local vLLM servers need no key).

    At most `max_concurrency` requests are in flight at once. Each request has a `timeout`; timeouts, connection
    errors, 429 and 5xx answers are retried up to `max_retries` times with exponential backoff and jitter (the
    client's own retries are off, so the budget is ours alone). Answers that cannot be parsed, or that leave criteria
    out, are asked again within the same budget. After that the affected verdicts are `None`: `grade` never raises on
    a backend failure.

    Args:
        model: Model name the server expects in the request (`"Qwen/Qwen3-8B"`, `"gpt-4.1-mini"`, ...).
        base_url: Endpoint root such as `"http://localhost:8000/v1"`, a comma-separated string of them, or a list;
            several URLs are used round-robin (a retry moves on to the next one).
        api_key_env: Name of the environment variable holding the API key.
        mode: `"batched"`, `"per_criterion"` or `"implicit"`; see [`ChatRubricJudge`].
        max_concurrency: Bound on requests in flight (and on concurrent grades in `grade_many`).
        timeout: Seconds one request may take before it is abandoned and retried.
        max_retries: Extra attempts per request after the first.
        cache_dir: Folder for the on-disk grade cache; `None` disables it.
        temperature: Sampling temperature for the judge; 0 makes grades as repeatable as the server allows.
        max_tokens: Cap on the judge's answer length; `None` leaves it to the server.
        request_kwargs: Extra fields merged into the request body (e.g. `{"chat_template_kwargs": {"enable_thinking":
            False}}` for a vLLM server, or `{"max_completion_tokens": 2048, "max_tokens": None}` for APIs that want it).
        probe_timeout: Seconds [`OpenAIJudge.probe`] waits for each endpoint.
        backoff_base: First backoff delay in seconds; doubles on each retry.
        backoff_max: Cap on one backoff delay.
        cannot_assess: How a "cannot assess" verdict scores (default `"penalties_worst_case"`: a penalty counts as
            met, a positive criterion is left out); see [`ChatRubricJudge`].
        seed: Seed of the per-request delimiter codes; `None` (default) draws them at random. For tests.
    """

    name = "openai"
    _transient = (*ChatRubricJudge._transient, "_loop_states")

    def __init__(
        self,
        model: str,
        base_url: str | Sequence[str] | None = DEFAULT_BASE_URL,
        api_key_env: str = "OPENAI_API_KEY",
        mode: str = "batched",
        max_concurrency: int = 32,
        timeout: float = 60.0,
        max_retries: int = 3,
        cache_dir: str | None = None,
        temperature: float | None = 0.0,
        max_tokens: int | None = 1024,
        request_kwargs: dict[str, Any] | None = None,
        probe_timeout: float = 10.0,
        backoff_base: float = 0.5,
        backoff_max: float = 8.0,
        cannot_assess: str = "penalties_worst_case",
        seed: int | None = None,
    ):
        if not model:
            raise ValueError("OpenAIJudge needs model=..., the model name the judge server expects")
        if float(timeout) <= 0:
            raise ValueError(f"judge timeout is {timeout!r}; expected a positive number of seconds")
        super().__init__(
            model_name=model,
            mode=mode,
            max_retries=max_retries,
            cache_dir=cache_dir,
            max_concurrency=max_concurrency,
            backoff_base=backoff_base,
            backoff_max=backoff_max,
            cannot_assess=cannot_assess,
            seed=seed,
        )
        self.model = model
        self.base_urls = split_base_urls(base_url)
        self.api_key_env = api_key_env
        self.timeout = float(timeout)
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.request_kwargs = dict(request_kwargs or {})
        self.probe_timeout = float(probe_timeout)
        self._next_url = itertools.count()
        self._loop_states: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        if os.environ.get(api_key_env) is None:
            logger.info("environment variable %s is unset; sending a placeholder API key to the judge", api_key_env)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._loop_states = weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        return (
            f"OpenAIJudge(model={self.model!r}, base_url={self.base_urls!r}, mode={self.mode!r}, "
            f"api_key_env={self.api_key_env!r}, max_concurrency={self.max_concurrency})"
        )

    def _api_key(self) -> str:
        return os.environ.get(self.api_key_env) or PLACEHOLDER_API_KEY

    def _redact(self, text: str) -> str:
        # Error messages from servers can echo what they received; never let a key through into logs or grades.
        key = os.environ.get(self.api_key_env)
        return text.replace(key, "***") if key and len(key) >= 4 else text

    def _make_client(self, url: str, timeout: float):
        import openai

        # Our own retry loop decides what to retry and counts it; the client's hidden retries would double it.
        return openai.AsyncOpenAI(base_url=url, api_key=self._api_key(), timeout=timeout, max_retries=0)

    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        state = self._loop_states.get(loop)
        if state is None:
            state = self._loop_states[loop] = _LoopState(self.max_concurrency)
        return state

    def _error(self, url: str, e: Exception) -> JudgeBackendError:
        import openai

        if isinstance(e, (asyncio.TimeoutError, openai.APITimeoutError)):
            return JudgeBackendError(f"{url}: no answer within {self.timeout:g}s")
        if isinstance(e, openai.APIConnectionError):
            return JudgeBackendError(f"{url}: connection failed ({self._redact(str(e))})")
        if isinstance(e, openai.APIStatusError):
            status = e.status_code
            retry_after = None
            try:
                retry_after = float(e.response.headers.get("retry-after"))
            except (TypeError, ValueError):
                pass
            return JudgeBackendError(
                f"{url}: HTTP {status} ({self._redact(str(e))[:200]})",
                retryable=status in _RETRYABLE_STATUS or status >= 500,
                retry_after=retry_after,
            )
        # Malformed bodies and other protocol surprises: likely transient on a struggling server.
        return JudgeBackendError(f"{url}: {type(e).__name__} ({self._redact(str(e))[:200]})")

    async def _chat(self, messages: list[dict[str, str]]) -> ChatReply:
        import openai
        from openai.types.chat import ChatCompletion

        url = self.base_urls[next(self._next_url) % len(self.base_urls)]
        state = self._state()
        client = state.clients.get(url)
        if client is None:
            client = state.clients[url] = self._make_client(url, self.timeout)
        body: dict[str, Any] = {"model": self.model, "messages": messages}
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        body.update(self.request_kwargs)
        body = {k: v for k, v in body.items() if v is not None}  # lets request_kwargs drop a default field
        async with state.semaphore:
            try:
                # `client.post` is the client's route for raw requests. `chat.completions.create` would first walk the
                # whole message list through its typed-parameter transform, about 5 ms of CPU per request, which
                # caps a 2-core trainer at a few hundred judge requests per second. The timeout, auth, error types
                # and response model are the client's own either way. wait_for bounds the whole request, the
                # client's timeout each socket operation.
                response = await asyncio.wait_for(
                    client.post("/chat/completions", cast_to=ChatCompletion, body=body), timeout=self.timeout
                )
            except (asyncio.TimeoutError, openai.APIError) as e:
                raise self._error(url, e) from None
        if not response.choices:
            return ChatReply(text=None)
        usage = response.usage
        return ChatReply(
            text=response.choices[0].message.content,
            prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
            completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
        )

    async def probe(self) -> None:
        """Ask every endpoint for its model list once; raise [`JudgeUnavailableError`] if one does not answer.

        Any HTTP answer other than 401/403 counts as alive (some servers have no `/models` route).
        """
        import openai

        async def one(url: str) -> None:
            client = self._make_client(url, self.probe_timeout)
            try:
                await asyncio.wait_for(client.models.list(), timeout=self.probe_timeout)
            except openai.APIStatusError as e:
                if e.status_code in (401, 403):
                    raise JudgeUnavailableError(
                        f"judge endpoint {url} rejected the API key (HTTP {e.status_code}); set the environment "
                        f"variable {self.api_key_env} to a valid key (judge_api_key_env names the variable)"
                    ) from None
            except (asyncio.TimeoutError, openai.APIError) as e:
                reason = self._error(url, e)
                raise JudgeUnavailableError(
                    f"judge endpoint {url} did not answer the start-up probe: {reason}. Start the judge server, fix "
                    "judge_base_url, or set judge_probe=False to skip this check."
                ) from None
            finally:
                await client.close()

        await asyncio.gather(*(one(url) for url in self.base_urls))
