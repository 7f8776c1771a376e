"""`rgsd_sweep.py` with teacher-side n-gram penalties (or loss masking) on every run: measures the mitigation of
RGSD's degenerate answers before it becomes an `RGSDConfig` field.

`--bias "no_repeat=4,copy=4,penalty=10,mode=bias"` (or `--bias none`, a baseline):
- `no_repeat=n`: tokens completing an n-gram already in the completion;
- `copy=n`: tokens extending an n-gram only the teacher saw (teacher prompt minus student prompt: rubric, template);
- `mode=bias`: the teacher's logit of each such (position, token) is lowered by `penalty` before the divergence
  (trl_rubric.losses.teacher_bias); `mode=mask`: the completion tokens that themselves complete such an n-gram are
  left out of the loss instead.
Every other argument goes to `rgsd_sweep.py` unchanged (same seed and sizes: paired to its runs).
`--reuse_reference results.json` grades a finished sweep's saved base and teacher answers (same seed and sizes)
instead of generating them again (the rule judge is cheap; generation on a shared CPU is not).

    .venv/bin/python benchmarks/teacher_bias_sweep.py --bias "no_repeat=4,copy=4,penalty=10,mode=bias" \\
        --steps 24 --output_dir /work/runs/w1_bias --settings "bias_lr2e-3:learning_rate=2e-3"
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import rgsd_sweep  # noqa: E402

from trl_rubric import losses  # noqa: E402
from trl_rubric.losses import teacher_bias  # noqa: E402
from trl_rubric.trainers import rgsd  # noqa: E402

_pending: list = []
_stats = {"rows": 0, "bans": 0, "masked": 0, "tokens": 0}


_content_cache: dict[int, frozenset[int]] = {}


def _content(tokenizer) -> frozenset[int]:
    if id(tokenizer) not in _content_cache:
        _content_cache[id(tokenizer)] = teacher_bias.content_token_ids(tokenizer)
    return _content_cache[id(tokenizer)]


def install(no_repeat: int | None, copy: int | None, penalty: float, mode: str) -> None:
    original_loss = rgsd.RGSDTrainer._rgsd_loss
    original_divergence = losses.token_divergence

    def _rgsd_loss(self, unwrapped, inputs, teacher):
        if inputs["teacher_prompt_ids"].dim() == 3:
            raise ValueError("teacher penalties support one teacher context per row")
        bans = teacher_bias.batch_bans(
            inputs["completion_ids"], inputs["completion_mask"], inputs["teacher_prompt_ids"],
            inputs["teacher_prompt_mask"], inputs["prompt_ids"], inputs["prompt_mask"],
            no_repeat_ngram_size=no_repeat, copy_ngram_size=copy, content_tokens=_content(self.processing_class),
        )  # fmt: skip
        mask = inputs["rgsd_loss_mask"]
        _stats["rows"] += len(bans)
        _stats["bans"] += sum(len(r) for r in bans)
        _stats["tokens"] += int(mask.sum())
        if mode == "mask":
            hit = teacher_bias.banned_target_mask(bans, inputs["completion_ids"]).to(mask.device)
            _stats["masked"] += int((hit & mask.bool()).sum())
            inputs = {**inputs, "rgsd_loss_mask": mask * (~hit).to(mask.dtype)}
            return original_loss(self, unwrapped, inputs, teacher)
        vocab = unwrapped.get_output_embeddings().weight.shape[0]
        _pending.append(teacher_bias.bias_columns(bans, mask, penalty, vocab))
        try:
            return original_loss(self, unwrapped, inputs, teacher)
        finally:
            _pending.clear()

    def token_divergence(s_hidden, s_weight, s_bias, t_hidden, t_weight, t_bias, **kwargs):
        if _pending:
            cols, table = _pending[0]
            t_hidden = torch.cat([t_hidden, cols.to(t_hidden)], dim=1)
            t_weight = torch.cat([t_weight.detach(), table.to(t_weight)], dim=1)
        return original_divergence(s_hidden, s_weight, s_bias, t_hidden, t_weight, t_bias, **kwargs)

    rgsd.RGSDTrainer._rgsd_loss = _rgsd_loss
    losses.token_divergence = token_divergence


def reuse_reference(path: str) -> None:
    """The sweep's base/teacher reference answers from a finished sweep's results.json, graded again here."""
    import json

    from trl_rubric import evaluation

    saved = json.load(open(path))["responses"]
    gap_texts = [saved["base_train"], saved["teacher_train"]]
    heldout = [saved["base_heldout"]]
    original_gap, original_eval = evaluation.conditioning_gap, evaluation.evaluate

    def conditioning_gap(model, dataset, *args, **kwargs):
        if gap_texts:
            texts = list(gap_texts)
            gap_texts.clear()
            kwargs["generate_fn"] = lambda prompts: _same_count(texts.pop(0), prompts)
        return original_gap(model, dataset, *args, **kwargs)

    def evaluate(model, dataset, *args, **kwargs):
        if heldout:
            texts = heldout.pop()
            kwargs["generate_fn"] = lambda prompts: _same_count(texts, prompts)
        return original_eval(model, dataset, *args, **kwargs)

    evaluation.conditioning_gap, evaluation.evaluate = conditioning_gap, evaluate


def _same_count(texts: list[str], prompts: list) -> list[str]:
    if len(texts) != len(prompts):
        raise ValueError(f"saved reference has {len(texts)} answers for {len(prompts)} prompts: not the same sizes")
    return texts


def main(argv=None):
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--bias", required=True)
    p.add_argument("--reuse_reference", default=None)
    args, rest = p.parse_known_args(argv)
    if args.reuse_reference:
        reuse_reference(args.reuse_reference)
    if args.bias == "none":  # the same script with no mitigation: a paired baseline
        return rgsd_sweep.main(rest)
    spec = dict(item.split("=", 1) for item in args.bias.split(","))
    mode = spec.get("mode", "bias")
    if mode not in ("bias", "mask"):
        raise SystemExit(f"mode={mode!r}: expected bias or mask")
    install(
        int(spec["no_repeat"]) if spec.get("no_repeat") else None,
        int(spec["copy"]) if spec.get("copy") else None,
        float(spec.get("penalty", 10.0)),
        mode,
    )
    results = rgsd_sweep.main(rest)
    print(f"teacher bias {spec}: {_stats}", flush=True)
    return results


if __name__ == "__main__":
    main()
