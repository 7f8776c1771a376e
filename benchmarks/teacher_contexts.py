"""Teacher contexts compared on the offline toy world: what should the teacher be shown?

The same RGSD run (`benchmarks/toy_world.py`'s settings: cached toy model, 64 train / 32 held-out prompts, P = 32
prompts per step, one rollout each, lr 2e-3, `token_clip=None`, equal optimizer steps) with only `teacher_context`
changed:

- `rubric`: the rubric as hidden criteria (RGSD, arXiv 2606.12507);
- `reference`: a reference answer only (OPSD / SDFT style);
- `rubric+reference`: both in one pass (the context of RCSD, arXiv 2606.19327; here with RGSD's loss, not RCSD's);
- `two_teachers`: K = 2 teachers per rollout, the rubric one and the reference one, averaged (`teacher_combine="mean"`).

Each toy row's reference answer is the world's own `reference_response`: an answer that meets the row's rubric. The
toy model was pretrained to read rubrics, never references, so this measures whether a 2-layer model can use a
context it was not trained on, not what a real LLM would do with one. Scores are `toy.experiment.score_model`'s
(4 answers per prompt, rule judge, same seeds for every method); gap closed is (score - base) / (rubric-conditioned
teacher - base) on train prompts. No judge is called during training by any of them.

Run from the repository root (about 3 minutes on a shared 2-core CPU):

    .venv/bin/python benchmarks/teacher_contexts.py --output_dir /tmp/teacher_contexts
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time

from trl_rubric.testing import OFFLINE_ENV

METHODS = ("rubric", "reference", "rubric+reference", "two_teachers")
MAX_COMPLETION_LENGTH = 24  # as benchmarks/toy_world.py and the demo


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=150, help="Optimizer steps, the same for every method.")
    p.add_argument("--prompts_per_step", type=int, default=32, help="Prompts (rollouts) per optimizer step.")
    p.add_argument("--lr", type=float, default=2e-3, help="Learning rate (benchmarks/toy_world.py's RGSD choice).")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--eval_samples", type=int, default=4, help="Answers sampled per prompt in the final scores.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output_dir", default="teacher_contexts_results")
    return p.parse_args(argv)


class RubricAndReference:
    """K = 2 contexts per rollout: the rubric teacher and the reference teacher, equally weighted."""

    name, num_contexts, needs_completion = "rubric|reference", 2, False

    def __init__(self):
        from trl_rubric.teacher_context import ReferenceContext, RubricContext, TeacherContext

        self._make, self.rubric, self.reference = TeacherContext, RubricContext(), ReferenceContext()

    def validate(self, dataset, name):
        self.rubric.validate(dataset, name)
        self.reference.validate(dataset, name)

    def contexts(self, row, completion=None):
        return [self.rubric.contexts(row)[0], self.reference.contexts(row)[0]]


def with_references(dataset, seed: int):
    from trl_rubric.toy.world import reference_response

    rng = random.Random(seed)
    return dataset.map(lambda row: {"reference": reference_response(rng, row["topic"], row["rubric"])})


def main(argv=None):
    args = parse_args(argv)
    os.environ.update(OFFLINE_ENV)
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback

    from trl_rubric import RGSDConfig, RGSDTrainer
    from trl_rubric.toy import make_world, prepare_toy_model
    from trl_rubric.toy.experiment import score_model, toy_gap

    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    world = make_world(seed=args.seed)
    train = with_references(world.train_dataset(), args.seed)
    heldout = world.heldout_dataset()
    path = prepare_toy_model(seed=args.seed)
    tokenizer = AutoTokenizer.from_pretrained(path)
    base = AutoModelForCausalLM.from_pretrained(path).eval()
    gap = toy_gap(base, tokenizer, world.train_dataset(), world.judge(), n=args.eval_samples, seed=args.seed + 1)
    base_train, teacher_train = gap.score_without_rubric, gap.score_with_rubric
    print(f"train: base {base_train:.3f}, base shown the rubric {teacher_train:.3f}", flush=True)

    results = {"base_train": base_train, "teacher_train": teacher_train, "methods": {}}
    for method in args.methods:
        torch.manual_seed(args.seed)
        config = RGSDConfig(
            output_dir=os.path.join(args.output_dir, "runs", method.replace("+", "_")),
            use_cpu=True,
            bf16=False,
            seed=args.seed,
            max_steps=args.steps,
            learning_rate=args.lr,
            lr_scheduler_type="constant",
            per_device_train_batch_size=args.prompts_per_step,
            max_completion_length=MAX_COMPLETION_LENGTH,
            temperature=1.0,
            logging_steps=max(1, args.steps // 10),
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            token_clip=None,
            teacher_context="rubric" if method == "two_teachers" else method,
        )
        provider = RubricAndReference() if method == "two_teachers" else None
        trainer = RGSDTrainer(
            path, args=config, train_dataset=train, processing_class=tokenizer, teacher_context=provider
        )
        trainer.remove_callback(PrinterCallback)
        began = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - began
        model = trainer.accelerator.unwrap_model(trainer.model).eval()
        scores = {
            split: score_model(model, tokenizer, dataset, world.judge(), n=args.eval_samples, seed=args.seed + offset)
            for split, dataset, offset in (("train", world.train_dataset(), 1), ("heldout", heldout, 2))
        }
        ratios = [e["rgsd/teacher_token_ratio"] for e in trainer.state.log_history if "rgsd/teacher_token_ratio" in e]
        results["methods"][method] = {
            "train": scores["train"]["score"],
            "heldout": scores["heldout"]["score"],
            "gap_closed_train": (scores["train"]["score"] - base_train) / (teacher_train - base_train),
            "train_seconds": seconds,
            "teacher_token_ratio": sum(ratios) / len(ratios),
        }
        print(method, json.dumps(results["methods"][method]), flush=True)

    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(
        "\n| teacher_context | train score | held-out score | gap closed (train) | train wall s | teacher tokens / "
        "student token | judge calls |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for method, r in results["methods"].items():
        print(
            f"| `{method}` | {r['train']:.3f} | {r['heldout']:.3f} | {r['gap_closed_train']:.2f} | "
            f"{r['train_seconds']:.0f} | {r['teacher_token_ratio']:.2f} | 0 |"
        )
    return results


if __name__ == "__main__":
    main()
