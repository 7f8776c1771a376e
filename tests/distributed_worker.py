"""What each process runs in `tests/test_distributed.py`, under `torchrun --nproc_per_node 2` on CPU (gloo).

    python -m torch.distributed.run --nproc_per_node 2 tests/distributed_worker.py MODEL OUT_DIR JUDGE_URL

It trains RGSDTrainer, then RubricGRPOTrainer against the HTTP judge at JUDGE_URL, for a few steps each, and writes
`OUT_DIR/rank{r}.json` with what this process saw: the prompts it generated for, its own (local) divergence sums, the
logged metrics, its judge counters, and a hash of its final weights. The test compares the two files.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

import torch

from trl_rubric.testing import make_rubric_rows, set_offline_env

set_offline_env()
torch.set_num_threads(1)


def weights_hash(model) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().float().numpy().tobytes())
    return digest.hexdigest()


def prompt_text(prompt) -> str:
    return prompt if isinstance(prompt, str) else prompt[-1]["content"]


def common_args(out_dir: str, **overrides) -> dict:
    """Config fields of a short CPU run, shared with `engine_worker.py`; `overrides` win."""
    return {
        **dict(
            output_dir=out_dir,
            use_cpu=True,
            bf16=False,
            report_to="none",
            max_completion_length=6,
            per_device_train_batch_size=2,
            max_steps=2,
            logging_steps=1,
            save_strategy="no",
            learning_rate=1e-2,
            seed=0,
            disable_tqdm=True,
        ),
        **overrides,
    }


def run_rgsd(model_path: str, out_dir: str) -> dict:
    from datasets import Dataset

    from trl_rubric.trainers.rgsd import RGSDConfig, RGSDTrainer

    args = RGSDConfig(**common_args(os.path.join(out_dir, "rgsd")))
    trainer = RGSDTrainer(model_path, args=args, train_dataset=Dataset.from_list(make_rubric_rows(8)))
    seen, local = [], []
    generate, loss = trainer._generate_and_score_completions, trainer._rgsd_loss

    def recording_generate(inputs):
        seen.append([prompt_text(x["prompt"]) for x in inputs])
        return generate(inputs)

    def recording_loss(*a, **kw):
        value, stats = loss(*a, **kw)
        local.append({"divergence_sum": stats[0].item(), "tokens": stats[4].item()})
        return value, stats

    trainer._generate_and_score_completions = recording_generate
    trainer._rgsd_loss = recording_loss
    initial = weights_hash(trainer.model)
    trainer.train()
    return {
        "prompts": seen,
        "local": local,
        "logs": [e for e in trainer.state.log_history if "rgsd/divergence" in e],
        "initial_hash": initial,
        "hash": weights_hash(trainer.model),
        "num_processes": trainer.accelerator.num_processes,
    }


def length_reward(completions, **kwargs):
    return [len(c if isinstance(c, str) else c[0]["content"]) / 10 for c in completions]


def run_grpo(model_path: str, out_dir: str, judge_url: str) -> dict:
    from datasets import Dataset

    from trl_rubric.trainers.rubric_grpo import RubricGRPOConfig, RubricGRPOTrainer

    args = RubricGRPOConfig(
        **common_args(os.path.join(out_dir, "grpo")),
        num_generations=2,
        judge_backend="openai",
        judge_model="fake-judge",
        judge_base_url=judge_url,
        judge_max_retries=0,
        judge_probe=False,  # the test checks the request count; a probe is a GET and would not count anyway
    )
    rows = make_rubric_rows(8)
    for row in rows:  # a criterion random completions often meet, so groups have reward variance
        row["rubric"].append({"text": "mentions the", "weight": 1.0, "category": None, "title": None, "tags": []})
    # Random tiny-model completions rarely meet a keyword criterion, so the judge's rewards are often equal within a
    # group; a length reward next to it guarantees non-zero advantages, hence a weight update to compare across ranks.
    trainer = RubricGRPOTrainer(
        model_path, reward_funcs=[length_reward], args=args, train_dataset=Dataset.from_list(rows)
    )
    seen = []
    generate = trainer._generate_and_score_completions

    def recording_generate(inputs):
        seen.append([prompt_text(x["prompt"]) for x in inputs])
        return generate(inputs)

    trainer._generate_and_score_completions = recording_generate
    initial = weights_hash(trainer.model)
    trainer.train()
    stats = trainer.judge.stats
    card = None
    if trainer.accelerator.is_main_process:
        trainer.create_model_card()  # the main process alone, as trl-rubric grpo does
        card = open(os.path.join(args.output_dir, "README.md")).read()
    return {
        "prompts": seen,
        "judge_grades": stats.grades,
        "judge_calls": stats.calls,
        "judge_failures": stats.failures,
        "card": card,
        "logs": [e for e in trainer.state.log_history if "judge/calls" in e],
        "initial_hash": initial,
        "hash": weights_hash(trainer.model),
    }


def main(argv: list[str]) -> None:
    model_path, out_dir, judge_url = argv
    rank = int(os.environ["RANK"])
    result = {"rank": rank, "rgsd": run_rgsd(model_path, out_dir), "grpo": run_grpo(model_path, out_dir, judge_url)}
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1:])
