"""`JudgeArguments`: the judge settings shared by training and evaluation configs, and `build_judge(args)`."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Literal

from .base import CANNOT_ASSESS_POLICIES, RubricJudge
from .prompts import JUDGE_MODES

PANEL_AGGREGATION_CHOICES = ("majority", "all", "any", "mean")

JUDGE_BACKENDS = ("openai", "transformers", "rule")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class JudgeArguments:
    r"""
    Settings of the rubric judge. Mixed into [`RubricGRPOConfig`] and the evaluation config, so that `--judge_*` flags
    and recipe keys mean the same everywhere.

    Parameters:
        > Parameters that control the judge

        judge_backend (`str`, *optional*, defaults to `"openai"`):
            Which judge grades responses: `"openai"` (any OpenAI-compatible endpoint: vLLM, SGLang, OpenAI),
            `"transformers"` (a local model loaded from `judge_model`) or `"rule"` (deterministic checks read from the
            criteria's `rule:<kind>:<arg>` tags; no model).
        judge_model (`str` or `None`, *optional*, defaults to `None`):
            The judge model: the name the server expects (`openai`) or a path / Hub id (`transformers`). Required by
            both.
        judge_base_url (`str` or `None`, *optional*, defaults to `"http://localhost:8000/v1"`):
            Endpoint root for the `openai` backend. Several endpoints, comma-separated (`"http://h1:8000/v1,
            http://h2:8000/v1"`) or as a YAML list, are used round-robin.
        judge_api_key_env (`str`, *optional*, defaults to `"OPENAI_API_KEY"`):
            Name of the environment variable that holds the API key. Only the name is stored in configs; if the
            variable is unset, a placeholder key is sent (local vLLM servers need none).
        judge_mode (`str`, *optional*, defaults to `"batched"`):
            `"batched"`: one request returns a verdict for every criterion. `"per_criterion"`: one request per
            criterion (more requests, sometimes more accurate). `"implicit"`: one 1-10 rating for the whole rubric,
            mapped to [0, 1], with no per-criterion verdicts.
        judge_max_concurrency (`int`, *optional*, defaults to `32`):
            Most judge requests in flight at once (for `transformers`: the generation batch size).
        judge_timeout (`float`, *optional*, defaults to `60.0`):
            Seconds one judge request may take before it is retried.
        judge_max_retries (`int`, *optional*, defaults to `3`):
            Extra attempts per request after a timeout, connection error, 429/5xx, or an answer that cannot be parsed.
            After that the verdicts are unknown (the reward is NaN and excluded), never 0.
        judge_max_tokens (`int`, *optional*, defaults to `1024`):
            Cap on the length of the judge's answer.
        judge_temperature (`float`, *optional*, defaults to `0.0`):
            Sampling temperature of the judge (`openai` backend).
        judge_cache_dir (`str` or `None`, *optional*, defaults to `None`):
            Folder for an on-disk cache of complete grades, safe to share between processes. Useful for evaluation
            and reruns; during training responses rarely repeat.
        judge_probe (`bool`, *optional*, defaults to `True`):
            Check at start-up that every judge endpoint answers, and stop with a clear error if one does not, instead
            of discovering it after the model has loaded.
        judge_cannot_assess (`str`, *optional*, defaults to `"penalties_worst_case"`):
            How a criterion the judge answers "cannot assess" scores (LLM backends): `"penalties_worst_case"` counts
            a penalty as met and leaves a positive criterion out, so being unassessable never removes a penalty;
            `"worst_case"` also counts positive criteria as unmet; `"skip"` leaves every such criterion out;
            `"unmet"` counts it as unmet. Change it when a judge abstains often and you would rather it cost reward.
        judge_panel (`str` or `None`, *optional*, defaults to `None`):
            Grade with a panel of judges instead of one ([`PanelJudge`]): comma-separated member specs
            `backend:model@base_url` (`@base_url` optional, defaulting to `judge_base_url`; `rule` needs no model),
            e.g. `"openai:Qwen/Qwen3-8B@http://h1:8000/v1,openai:google/gemma-3-12b-it@http://h2:8000/v1,rule"`,
            or a YAML list of them. Every other `judge_*` setting applies to each member. Use it when one judge's
            noise matters; `judge/agreement` then logs how often the members agree.
        judge_panel_aggregation (`str`, *optional*, defaults to `"majority"`):
            How the panel combines its members per criterion: `"majority"` (a tie is unknown), `"all"` (strict),
            `"any"` (lenient), or `"mean"` of the members' scores; see `trl_rubric.judges.panel`.
    """

    judge_backend: Literal["openai", "transformers", "rule"] = field(
        default="openai",
        metadata={
            "help": "Judge backend: 'openai' (OpenAI-compatible endpoint), 'transformers' (local model) or 'rule'."
        },
    )
    judge_model: str | None = field(
        default=None,
        metadata={"help": "Judge model: name served by the endpoint (openai) or path / Hub id (transformers)."},
    )
    judge_base_url: str | None = field(
        default="http://localhost:8000/v1",
        metadata={"help": "Judge endpoint root; several comma-separated URLs are used round-robin."},
    )
    judge_api_key_env: str = field(
        default="OPENAI_API_KEY",
        metadata={
            "help": "NAME of the environment variable holding the judge API key (the key itself is never stored)."
        },
    )
    judge_mode: Literal["batched", "per_criterion", "implicit"] = field(
        default="batched",
        metadata={"help": "'batched' (all verdicts in one request), 'per_criterion' or 'implicit' (one 1-10 rating)."},
    )
    judge_max_concurrency: int = field(
        default=32, metadata={"help": "Most judge requests in flight at once (transformers: batch size)."}
    )
    judge_timeout: float = field(default=60.0, metadata={"help": "Seconds one judge request may take."})
    judge_max_retries: int = field(
        default=3, metadata={"help": "Extra attempts per judge request before its verdicts count as unknown."}
    )
    judge_max_tokens: int = field(default=1024, metadata={"help": "Cap on the length of the judge's answer."})
    judge_temperature: float = field(default=0.0, metadata={"help": "Sampling temperature of the judge (openai)."})
    judge_cache_dir: str | None = field(
        default=None, metadata={"help": "Folder for an on-disk cache of complete grades (multi-process safe)."}
    )
    judge_probe: bool = field(
        default=True,
        metadata={"help": "Check at start-up that the judge answers; fail fast with a clear error if not."},
    )

    judge_cannot_assess: Literal["penalties_worst_case", "worst_case", "skip", "unmet"] = field(
        default="penalties_worst_case",
        metadata={
            "help": "How a 'cannot assess' verdict scores: penalties_worst_case (penalty met, positive criterion "
            "left out), worst_case, skip or unmet."
        },
    )

    judge_panel: str | None = field(
        default=None,
        metadata={
            "help": "Panel of judges: comma-separated 'backend:model@base_url' specs (e.g. 'openai:m1@http://h1/v1,"
            "rule'); every other judge_* setting applies to each member."
        },
    )
    judge_panel_aggregation: Literal["majority", "all", "any", "mean"] = field(
        default="majority",
        metadata={"help": "How a judge panel combines verdicts: majority (tie unknown), all, any, or mean score."},
    )

    def __post_init__(self):
        if isinstance(self.judge_panel, (list, tuple)):
            self.judge_panel = ",".join(str(x).strip() for x in self.judge_panel)
        if self.judge_panel_aggregation not in PANEL_AGGREGATION_CHOICES:
            raise ValueError(
                f"judge_panel_aggregation is {self.judge_panel_aggregation!r}; expected one of "
                f"{PANEL_AGGREGATION_CHOICES}"
            )
        if self.judge_panel:
            panel_members(self.judge_panel)  # a bad spec fails here, naming the member
        if self.judge_cannot_assess not in CANNOT_ASSESS_POLICIES:
            raise ValueError(
                f"judge_cannot_assess is {self.judge_cannot_assess!r}; expected one of {CANNOT_ASSESS_POLICIES}"
            )
        if self.judge_backend not in JUDGE_BACKENDS:
            raise ValueError(f"judge_backend is {self.judge_backend!r}; expected one of {JUDGE_BACKENDS}")
        if self.judge_mode not in JUDGE_MODES:
            raise ValueError(f"judge_mode is {self.judge_mode!r}; expected one of {JUDGE_MODES}")
        if not isinstance(self.judge_api_key_env, str) or not _ENV_NAME.match(self.judge_api_key_env):
            # Do not echo the value: someone may have pasted the key itself here.
            raise ValueError(
                "judge_api_key_env must be the NAME of an environment variable (e.g. OPENAI_API_KEY), not a key; "
                "the value given is not a valid variable name and is not shown"
            )
        if int(self.judge_max_concurrency) < 1:
            raise ValueError(f"judge_max_concurrency is {self.judge_max_concurrency!r}; expected an integer >= 1")
        if float(self.judge_timeout) <= 0:
            raise ValueError(f"judge_timeout is {self.judge_timeout!r}; expected a positive number of seconds")
        if int(self.judge_max_retries) < 0:
            raise ValueError(f"judge_max_retries is {self.judge_max_retries!r}; expected an integer >= 0")
        if isinstance(self.judge_base_url, (list, tuple)):
            # A YAML list arrives as a list; keep one canonical, CLI-compatible form.
            self.judge_base_url = ",".join(str(u).strip() for u in self.judge_base_url)
        # Cooperative: JudgeArguments is mixed in front of GRPOConfig, whose __post_init__ must still run.
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()


def panel_members(spec: str) -> list[tuple[str, str | None, str | None]]:
    """`(backend, model, base_url)` of each member of a `judge_panel` spec (see [`JudgeArguments`])."""
    members = []
    items = [x.strip() for x in str(spec).split(",") if x.strip()]
    for i, item in enumerate(items, start=1):
        backend, _, rest = item.partition(":")
        backend = backend.strip()
        if backend not in JUDGE_BACKENDS:
            raise ValueError(
                f"judge_panel member {i} {item!r}: backend {backend!r} is unknown; expected one of {JUDGE_BACKENDS} "
                "(spec: backend:model@base_url)"
            )
        model, _, url = rest.partition("@")
        if backend != "rule" and not model.strip():
            raise ValueError(f"judge_panel member {i} {item!r}: no model; expected {backend}:model[@base_url]")
        members.append((backend, model.strip() or None, url.strip() or None))
    if len(members) < 2:
        raise ValueError(f"judge_panel {spec!r} names {len(members)} judge(s); a panel needs at least two")
    return members


def build_judge(args: JudgeArguments) -> RubricJudge:
    """Build the judge that `args` describes (a [`PanelJudge`] when `judge_panel` is set).

    Args:
        args: A [`JudgeArguments`] or any config that inherits it (such as [`RubricGRPOConfig`]).

    Raises:
        ValueError: naming the field that is missing or wrong.
    """
    panel = getattr(args, "judge_panel", None)
    if panel:
        from .panel import PanelJudge

        settings = {f.name: getattr(args, f.name) for f in dataclasses.fields(JudgeArguments) if hasattr(args, f.name)}
        settings["judge_panel"] = None
        judges = []
        for backend, model, url in panel_members(panel):
            member = {**settings, "judge_backend": backend, "judge_model": model}
            if url:
                member["judge_base_url"] = url
            judges.append(build_judge(JudgeArguments(**member)))
        return PanelJudge(
            judges,
            aggregation=args.judge_panel_aggregation,
            cannot_assess=getattr(args, "judge_cannot_assess", "penalties_worst_case"),
        )
    backend = args.judge_backend
    if backend == "rule":
        from .rule import RuleJudge

        return RuleJudge()
    if not args.judge_model:
        raise ValueError(f"judge_backend={backend!r} needs judge_model (the judge model's name or path); it is unset")
    if backend == "openai":
        from .openai_judge import OpenAIJudge

        return OpenAIJudge(
            model=args.judge_model,
            base_url=args.judge_base_url,
            api_key_env=args.judge_api_key_env,
            mode=args.judge_mode,
            max_concurrency=args.judge_max_concurrency,
            timeout=args.judge_timeout,
            max_retries=args.judge_max_retries,
            cache_dir=args.judge_cache_dir,
            temperature=args.judge_temperature,
            max_tokens=args.judge_max_tokens,
            cannot_assess=getattr(args, "judge_cannot_assess", "penalties_worst_case"),
        )
    if backend == "transformers":
        from .transformers_judge import TransformersJudge

        return TransformersJudge(
            args.judge_model,
            mode=args.judge_mode,
            max_new_tokens=args.judge_max_tokens,
            batch_size=args.judge_max_concurrency,
            max_retries=args.judge_max_retries,
            cache_dir=args.judge_cache_dir,
            cannot_assess=getattr(args, "judge_cannot_assess", "penalties_worst_case"),
        )
    raise ValueError(f"judge_backend is {backend!r}; expected one of {JUDGE_BACKENDS}")
