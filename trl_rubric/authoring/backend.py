"""`AuthorArguments` and `build_author_backend`: the author model, served through the judges' own clients.

An author is asked for text and reads it back, exactly what a judge does, so it reuses the judge backends unchanged:
[`OpenAIJudge`] (the `openai` client, the API key read from the environment variable it names and never stored,
timeouts, retries with backoff on 429/5xx, round-robin endpoints, concurrency bound) and [`TransformersJudge`]
(batched local generation). [`RubricAuthor`] drives them through their retry loop with its own prompts and parser.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from ..judges.llm import ChatRubricJudge

AUTHOR_BACKENDS = ("openai", "transformers")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class AuthorArguments:
    r"""
    Settings of the author model, the LLM that writes rubrics. The `--author_*` flags of `trl-rubric rubrics`.

    Parameters:
        > Parameters that control the author model

        author_backend (`str`, *optional*, defaults to `"openai"`):
            `"openai"`: any OpenAI-compatible endpoint (vLLM, SGLang, llama.cpp's server, OpenAI). `"transformers"`:
            a local model loaded from `author_model` (`smollm2://` works offline).
        author_model (`str` or `None`, *optional*, defaults to `None`):
            The author model: the name the server expects (`openai`) or a path / Hub id (`transformers`). Required.
        author_base_url (`str` or `None`, *optional*, defaults to `"http://localhost:8000/v1"`):
            Endpoint root for the `openai` backend; several comma-separated URLs are used round-robin.
        author_api_key_env (`str`, *optional*, defaults to `"OPENAI_API_KEY"`):
            NAME of the environment variable holding the API key; the key itself is never logged or written.
        author_max_concurrency (`int`, *optional*, defaults to `8`):
            Most author requests in flight at once (`transformers`: the generation batch size).
        author_timeout (`float`, *optional*, defaults to `120.0`):
            Seconds one request may take before it is retried. Rubrics are long answers; allow more than a judge.
        author_max_retries (`int`, *optional*, defaults to `2`):
            Extra attempts per row after a transport failure or a reply that is not a valid rubric. After that the
            row is skipped and reported in `summary.json`, never written with an empty or partial rubric.
        author_max_tokens (`int`, *optional*, defaults to `1024`):
            Cap on the length of one reply.
        author_temperature (`float`, *optional*, defaults to `0.7`):
            Sampling temperature. Above 0 a retry can give a different reply (a greedy local model repeats itself).
        author_cache_dir (`str` or `None`, *optional*, defaults to `None`):
            Folder for an on-disk cache of valid rubrics (keyed by model, prompt wording version, mode and the
            request); a rerun reuses them without calls. Failures are never cached.
        author_probe (`bool`, *optional*, defaults to `True`):
            Check at start-up that the endpoint answers (`openai` backend), failing fast with a clear error.
    """

    author_backend: Literal["openai", "transformers"] = field(
        default="openai", metadata={"help": "Author backend: 'openai' (OpenAI-compatible endpoint) or 'transformers'."}
    )
    author_model: str | None = field(
        default=None, metadata={"help": "Author model: name served by the endpoint, or a path / Hub id."}
    )
    author_base_url: str | None = field(
        default="http://localhost:8000/v1",
        metadata={"help": "Author endpoint root; several comma-separated URLs are used round-robin."},
    )
    author_api_key_env: str = field(
        default="OPENAI_API_KEY",
        metadata={"help": "NAME of the environment variable holding the author API key (never stored)."},
    )
    author_max_concurrency: int = field(default=8, metadata={"help": "Most author requests in flight at once."})
    author_timeout: float = field(default=120.0, metadata={"help": "Seconds one author request may take."})
    author_max_retries: int = field(
        default=2, metadata={"help": "Extra attempts per row before it is skipped and reported."}
    )
    author_max_tokens: int = field(default=1024, metadata={"help": "Cap on the length of one author reply."})
    author_temperature: float = field(default=0.7, metadata={"help": "Sampling temperature of the author."})
    author_cache_dir: str | None = field(
        default=None, metadata={"help": "Folder for an on-disk cache of valid authored rubrics."}
    )
    author_probe: bool = field(
        default=True, metadata={"help": "Check at start-up that the author endpoint answers (openai)."}
    )

    def __post_init__(self):
        if self.author_backend not in AUTHOR_BACKENDS:
            raise ValueError(f"author_backend is {self.author_backend!r}; expected one of {AUTHOR_BACKENDS}")
        if not isinstance(self.author_api_key_env, str) or not _ENV_NAME.match(self.author_api_key_env):
            # Do not echo the value: someone may have pasted the key itself here.
            raise ValueError(
                "author_api_key_env must be the NAME of an environment variable (e.g. OPENAI_API_KEY), not a key; "
                "the value given is not a valid variable name and is not shown"
            )
        if int(self.author_max_concurrency) < 1:
            raise ValueError(f"author_max_concurrency is {self.author_max_concurrency!r}; expected an integer >= 1")
        if float(self.author_timeout) <= 0:
            raise ValueError(f"author_timeout is {self.author_timeout!r}; expected a positive number of seconds")
        if int(self.author_max_retries) < 0:
            raise ValueError(f"author_max_retries is {self.author_max_retries!r}; expected an integer >= 0")
        if float(self.author_temperature) < 0:
            raise ValueError(f"author_temperature is {self.author_temperature!r}; expected a number >= 0")
        if isinstance(self.author_base_url, (list, tuple)):
            self.author_base_url = ",".join(str(u).strip() for u in self.author_base_url)


def build_author_backend(args: AuthorArguments, model=None, tokenizer=None) -> ChatRubricJudge:
    """The chat backend that `args` describes: an [`OpenAIJudge`] or a [`TransformersJudge`], used for its client.

    Args:
        args: [`AuthorArguments`].
        model, tokenizer: An already loaded model for the `transformers` backend (otherwise loaded from
            `args.author_model`).

    Raises:
        ValueError: naming the field that is missing or wrong.
    """
    if not args.author_model and model is None:
        raise ValueError("author_model is unset; name the author model (a served model name, or a path)")
    if args.author_backend == "openai":
        from ..judges.openai_judge import OpenAIJudge

        return OpenAIJudge(
            model=args.author_model,
            base_url=args.author_base_url,
            api_key_env=args.author_api_key_env,
            max_concurrency=args.author_max_concurrency,
            timeout=args.author_timeout,
            max_retries=args.author_max_retries,
            temperature=args.author_temperature,
            max_tokens=args.author_max_tokens,
        )
    from ..judges.transformers_judge import TransformersJudge

    sampling = {"do_sample": True, "temperature": float(args.author_temperature)} if args.author_temperature else {}
    return TransformersJudge(
        model if model is not None else args.author_model,
        tokenizer=tokenizer,
        max_new_tokens=args.author_max_tokens,
        batch_size=args.author_max_concurrency,
        max_retries=args.author_max_retries,
        generation_kwargs=sampling,
    )
