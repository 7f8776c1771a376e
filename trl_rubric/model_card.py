"""Model cards for models trained with trl-rubric, built with `huggingface_hub.ModelCard`.

Cards are assembled from an explicit list of safe facts (method, base model, data, teacher, divergence, judge model,
eval results). Nothing is copied wholesale from the training config or the environment, so API keys, endpoint
credentials and environment variables cannot leak into a card.
"""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from huggingface_hub import ModelCard, ModelCardData

from .criterion_diagnostics import METRIC_PREFIX
from .evaluation.loading import named_source
from .trainers.teacher_shaping import teacher_facts

STRICT_METRIC = f"{METRIC_PREFIX}/strict_completion"

RGSD_CITATION = """@article{rgsd2026,
    title        = {{Rubric-Guided Self-Distillation}},
    year         = 2026,
    eprint       = {arXiv:2606.12507}
}"""
TRL_CITATION = """@software{vonwerra2020trl,
    title        = {{TRL: Transformers Reinforcement Learning}},
    author       = {von Werra, Leandro and Belkada, Younes and Tunstall, Lewis and Beeching, Edward and Thrush, Tristan and Lambert, Nathan and Huang, Shengyi and Rasul, Kashif and Gallouédec, Quentin},
    year         = 2020,
    journal      = {GitHub repository},
    publisher    = {GitHub},
    howpublished = {\\url{https://github.com/huggingface/trl}}
}"""


def _public_url(url: str) -> str:
    """An endpoint without user info or query string, so tokens passed in URLs never reach a card."""
    parts = urlsplit(url.strip())
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _penalties_fact(trainer) -> str:
    # With "auto" the card states what was chosen, and on what evidence.
    choice = getattr(trainer, "teacher_view_choice", None)
    if trainer.args.teacher_penalties != "auto" or not choice:
        return trainer.args.teacher_penalties
    gaps = ", ".join(f"{v['name']} gap {v['gap']:+.3f}" for v in choice["views"] if v["gap"] is not None)
    return f"auto: {choice['teacher_penalties']} ({gaps}; {choice['n_examples']} prompts)"


def _adapter_fact(model) -> str | None:
    # A PEFT model: state the adapter the run trained (the active one, not RGSD's frozen `rgsd_teacher` copy).
    configs = getattr(model, "peft_config", None)
    if not isinstance(configs, dict) or not configs:
        return None
    active = getattr(model, "active_adapter", None)
    config = configs.get(active if isinstance(active, str) else "default") or next(iter(configs.values()))
    kind = str(getattr(config.peft_type, "value", config.peft_type))
    if kind.upper() != "LORA":
        return f"{kind} (PEFT)"
    targets = config.target_modules
    targets = ", ".join(sorted(targets)) if isinstance(targets, (set, list, tuple)) else str(targets)
    return f"LoRA (PEFT), r={config.r}, alpha={config.lora_alpha}, on {targets}"


def training_facts(trainer) -> dict[str, Any]:
    """The facts a card states about a trainer's run, read field by field from its config."""
    args = trainer.args
    model = trainer.accelerator.unwrap_model(trainer.model) if hasattr(trainer, "accelerator") else trainer.model
    base_model = getattr(model.config, "_name_or_path", None) or None
    facts: dict[str, Any] = {"base_model": named_source(base_model) or base_model, "adapter": _adapter_fact(model)}
    if getattr(trainer, "_name", "") == "RGSD":
        facts.update(
            method="RGSD",
            method_long="Rubric-Guided Self-Distillation",
            teacher=trainer.teacher_description,
            divergence=args.distillation_support,
            beta=args.distillation_beta,
            # "none" rather than a missing row: no clip is a choice the reader should see (the paper clips at 0.05).
            token_clip="none" if args.token_clip is None else args.token_clip,
            teacher_penalties=_penalties_fact(trainer),
            **teacher_facts(args),  # context and temperature / top-k, when not the plain rubric teacher
            rollouts_per_prompt=args.num_generations,
            mask_thinking=args.mask_thinking,
            train_judge_calls=_rgsd_judge_calls(trainer),
        )
    else:
        urls = [u for u in str(getattr(args, "judge_base_url", "") or "").split(",") if u.strip()]
        reward = next((f for f in getattr(trainer, "reward_funcs", []) if hasattr(f, "judge")), None)
        calls = reward.judge.stats.calls if reward is not None else None
        # Summed over processes after training (RubricGRPOTrainer.train); the local count is one process's share.
        calls = getattr(trainer, "judge_calls_total", calls)
        facts.update(
            method="GRPO + judge",
            method_long="GRPO with a rubric judge's reward",
            judge_backend=getattr(args, "judge_backend", None),
            judge_model=getattr(args, "judge_model", None),
            judge_mode=getattr(args, "judge_mode", None),
            judge_endpoints=[_public_url(u) for u in urls] if getattr(args, "judge_backend", None) == "openai" else [],
            rollouts_per_prompt=args.num_generations,
            train_judge_calls=calls,
        )
    facts["max_steps"] = trainer.state.global_step
    return facts


def _rgsd_judge_calls(trainer) -> int:
    """Judge calls of an RGSD run on this process: 0 for pure RGSD; the calls of a judge reward (hybrid, teacher focus,
    SGSD gate) and of the teacher-view choice (`teacher_penalties="auto"`) otherwise, each judge counted once."""
    judges = [f.judge for f in getattr(trainer, "reward_funcs", []) if hasattr(f, "judge")]
    judges.append(getattr(trainer, "_view_judge", None))
    distinct = {id(j): j for j in judges if j is not None and hasattr(j, "stats")}
    return sum(int(j.stats.calls) for j in distinct.values())


def _eval_results(trainer) -> dict[str, Any]:
    results = {}
    strict = [e[STRICT_METRIC] for e in trainer.state.log_history if isinstance(e.get(STRICT_METRIC), (int, float))]
    if strict:  # logged from the judge's verdicts on the training rollouts (trl_rubric.criterion_diagnostics)
        results[f"{STRICT_METRIC} (training, first log)"] = strict[0]
        results[f"{STRICT_METRIC} (training, last log)"] = strict[-1]
    for entry in trainer.state.log_history:
        results.update({k: v for k, v in entry.items() if k.startswith("eval_") and isinstance(v, (int, float))})
    path = os.path.join(trainer.args.output_dir, "eval", "results.json")
    if os.path.exists(path):
        with open(path) as f:
            harness = json.load(f)
        for key in ("weighted_score", "unweighted_score", "strict_completion", "mean_length", "n_examples"):
            if key in harness:
                results[f"rubric_eval/{key}"] = harness[key]
    return results


def build_model_card(trainer, model_name: str | None = None, dataset_name: str | None = None) -> ModelCard:
    """A model card for a trained RGSD or RubricGRPO model (no network needed)."""
    facts = training_facts(trainer)
    tags = sorted({"trl", "trl-rubric", *trainer._tag_names, *(("peft", "lora") if facts["adapter"] else ())})
    card_data = ModelCardData(
        base_model=facts["base_model"] if facts["base_model"] and not os.path.isdir(facts["base_model"]) else None,
        # The card's metadata takes Hub ids only; a local path is stated in the text instead.
        datasets=[dataset_name] if dataset_name and not os.path.exists(dataset_name) else None,
        # An adapter run saves the adapter only; the Hub's convention for such a repo is library_name "peft".
        library_name="peft" if facts["adapter"] else "transformers",
        tags=tags,
        model_name=model_name,
    )
    rows = [
        (k.replace("_", " "), v) for k, v in facts.items() if k not in ("method_long",) and v not in (None, [], "")
    ]
    table = "\n".join(f"| {k} | {', '.join(map(str, v)) if isinstance(v, list) else v} |" for k, v in rows)
    evals = _eval_results(trainer)
    eval_block = (
        "\n".join(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in evals.items())
        if evals
        else None
    )
    body = [
        "---",
        card_data.to_yaml(),
        "---",
        "",
        f"# {model_name or 'Model'}",
        "",
        f"Trained with **{facts['method_long']}** ({facts['method']}) using "
        "[trl-rubric](https://pypi.org/project/trl-rubric/), a plugin for [TRL](https://github.com/huggingface/trl).",
        "",
        "## Training",
        "",
        "| setting | value |",
        "|---|---|",
        table,
        "",
    ]
    if facts["method"] == "RGSD":
        body += [
            "The student saw each prompt alone and sampled one answer; the teacher, the same model shown the rubric, "
            "scored that answer token by token. No judge was called during training.",
            "",
        ]
        if facts.get("teacher_rollouts"):
            body[-2] = body[-2].replace(
                "sampled one answer;",
                "sampled one answer, except for a share of prompts the teacher answered itself (learned by the "
                "student under its own prompt);",
            )
    if eval_block:
        body += ["## Evaluation", "", "| metric | value |", "|---|---|", eval_block, ""]
    body += ["## Citations", "", "```bibtex", RGSD_CITATION, "```", "", "```bibtex", TRL_CITATION, "```", ""]
    if dataset_name:
        body.insert(body.index("## Training") + 2, f"Dataset: `{dataset_name}`.\n")
    return ModelCard("\n".join(body))


class RubricModelCardMixin:
    """Replaces TRL's card with ours in `save_model`, checkpoints and `push_to_hub`."""

    def create_model_card(self, model_name=None, dataset_name=None, tags=None, **kwargs):
        if not self.is_world_process_zero():
            return
        card = build_model_card(self, model_name=model_name, dataset_name=dataset_name)
        card.save(os.path.join(self.args.output_dir, "README.md"))
