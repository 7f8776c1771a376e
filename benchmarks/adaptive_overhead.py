"""Overhead of adaptive rubrics (evaluation memory + asynchronous rubric revisions) on the offline toy world.

The same RubricGRPO run (toy model, world judge, seed, prompts, steps) with and without an `AdaptiveRubricCallback`
whose author is the fake OpenAI-compatible author server (`trl_rubric.testing.author_server`), answering after
`--author_delay` seconds like a slow remote model; the server runs in its own process, as a remote endpoint would. The fake author revises a stale toy rubric into one the world's
rule judge can grade: the prompt's topic word (essential), a length bound (important) and a hedge word (pitfall).

Arms, interleaved `--repeats` times so that machine load hits them alike:

- `off`: no callback;
- `async`: the callback, revisions applied at the first step boundary after they arrive (the default);
- `wait`: the callback with `wait_for_revisions=True` (every boundary waits for the author: the synchronous cost);
- `reject`: the callback with an author whose replies are never valid rubrics: every request is sent, answered,
  parsed and rejected, but no rubric changes, so training is the `off` run exactly and the time difference is the
  machinery's own cost (memory, retrieval, requests), free of the revisions' effect on what the policy learns.

Reported per arm: training wall time (`trainer.train()`, scoring excluded) and the CPU time of the training process
over the same span (all its threads, so the updater's client work counts; the author server's does not; on a shared
machine the CPU time is the steadier of the two), overhead against `off` (means of the repeats), revisions applied / rejected, memory records, and the weighted score and strict completion on the train
prompts graded against their *original* rubrics (so the arms are comparable), 2 answers per prompt.

    nice -n 5 .venv/bin/python benchmarks/adaptive_overhead.py --output_dir /tmp/adaptive_overhead
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import time

from trl_rubric.testing import OFFLINE_ENV

ARMS = ("off", "async", "wait", "reject")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--prompts_per_step", type=int, default=8)
    p.add_argument("--num_generations", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--author_delay", type=float, default=0.5, help="Seconds the fake author takes per reply.")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    p.add_argument("--output_dir", default="/tmp/adaptive_overhead")
    p.add_argument(
        "--model",
        choices=["toy", "smollm2"],
        default="toy",
        help="smollm2: SmolLM2-135M-Instruct with LoRA on a real world (--world), 96-token answers; only the `off` "
        "and `reject` arms make sense there (the fake author's revisions are written for the toy world), and the "
        "final scoring is skipped.",
    )
    p.add_argument("--world", default="instructions", help="Real world for --model smollm2.")
    return p.parse_args(argv)


_QUESTION = re.compile(r"\[QUESTION\]\n(.*?)\n\[/QUESTION\]", re.S)


def toy_revision(messages) -> str:
    """A revision the toy world's rule judge can grade (rule tags), built from the question's last word."""
    text = "\n".join(m["content"] for m in messages if m["role"] == "user")
    question = _QUESTION.search(text)
    words = re.findall(r"[a-z]+", (question.group(1) if question else "").lower())
    topic = words[-1] if words else "answer"
    return json.dumps(
        [
            {"text": f"mentions the topic word {topic}", "weight": 4, "category": "essential",
             "tags": [f"rule:contains:{topic}"]},
            {"text": "is at most 12 words long", "weight": 2, "category": "important", "tags": ["rule:max_words:12"]},
            {"text": "mentions the hedge word maybe", "weight": -1, "category": "pitfall",
             "tags": ["rule:contains:maybe"]},
        ]
    )  # fmt: skip


def not_a_rubric(messages) -> str:
    return "I would rather not."


def serve_author(delay: float, valid: bool, urls, stop) -> None:
    """Run the fake author in its own process, as a remote endpoint would be (its CPU is not the trainer's)."""
    from trl_rubric.testing.author_server import FakeAuthorServer

    with FakeAuthorServer(responder=toy_revision if valid else not_a_rubric, delay=delay) as server:
        urls.put(server.url)
        stop.wait()


def run_arm(arm, args, path, tokenizer, train, world, url, output_dir):
    from transformers import PrinterCallback

    real = args.model == "smollm2"

    from trl_rubric import RubricGRPOConfig, RubricGRPOTrainer
    from trl_rubric.adaptive import AdaptiveRubricCallback, EvaluationMemory
    from trl_rubric.authoring import AuthorArguments, build_author_backend

    config = RubricGRPOConfig(
        output_dir=output_dir,
        use_cpu=True,
        bf16=False,
        seed=args.seed,
        max_steps=args.steps,
        lr_scheduler_type="constant",
        learning_rate=args.lr,
        max_completion_length=96 if real else 24,
        temperature=0.7 if real else 1.0,
        per_device_train_batch_size=args.prompts_per_step * args.num_generations,
        num_generations=args.num_generations,
        logging_steps=max(1, args.steps // 10),
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        judge_probe=False,
    )
    callbacks = []
    if arm != "off":
        author = AuthorArguments(author_model="fake-author", author_base_url=url, author_probe=False)
        author.author_max_retries = 0
        callbacks.append(AdaptiveRubricCallback(build_author_backend(author), wait_for_revisions=arm == "wait"))
    peft = {}
    if real:
        from trl_rubric.real.model import lora_config

        peft = {"peft_config": lora_config()}
    trainer = RubricGRPOTrainer(
        path,
        args=config,
        train_dataset=train,
        processing_class=tokenizer,
        judge=world.judge(),
        callbacks=callbacks,
        **peft,
    )
    trainer.remove_callback(PrinterCallback)  # keep the output to one line per run
    start, cpu = time.perf_counter(), time.process_time()
    trainer.train()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    out = {"arm": arm, "train_s": seconds, "train_cpu_s": cpu}
    if callbacks:
        memory = EvaluationMemory(os.path.join(output_dir, "adaptive_memory.jsonl"))
        out.update(callbacks[0].stats)
        out["records"] = len(memory.records())
        out["revised_prompts"] = len(callbacks[0].versions)
    return out, trainer.model


def main(argv=None):
    args = parse_args(argv)
    os.environ.update(OFFLINE_ENV)
    os.environ.setdefault("OPENAI_API_KEY", "fake")
    import torch
    import transformers
    from transformers import AutoTokenizer

    from trl_rubric.toy import make_world, prepare_toy_model
    from trl_rubric.toy.experiment import score_model

    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    if args.model == "smollm2":
        from trl_rubric.real.model import smollm2_path
        from trl_rubric.real.worlds import make_named_world

        world = make_named_world(args.world, seed=args.seed)
        path = smollm2_path()
    else:
        world = make_world(seed=args.seed)
        path = prepare_toy_model(seed=args.seed)
    train = world.train_dataset()
    tokenizer = AutoTokenizer.from_pretrained(path)
    results = []
    ctx = multiprocessing.get_context("spawn")
    stop, urls, authors = ctx.Event(), {}, []
    for valid in (True, False):
        queue = ctx.Queue()
        authors.append(ctx.Process(target=serve_author, args=(args.author_delay, valid, queue, stop), daemon=True))
        authors[-1].start()
        urls[valid] = queue.get(timeout=120)
    try:
        for repeat in range(args.repeats):
            for arm in args.arms:
                output_dir = os.path.join(args.output_dir, f"{arm}-{repeat}")
                url = urls[arm != "reject"]
                out, model = run_arm(arm, args, path, tokenizer, train, world, url, output_dir)
                out.update(repeat=repeat)
                if args.model == "toy":
                    scores = score_model(model.eval(), tokenizer, train, world.judge(), n=2, seed=args.seed + 1)
                    out.update(score=scores["score"], strict=scores["strict"], length=scores["length"])
                print(json.dumps(out), flush=True)
                results.append(out)
    finally:
        stop.set()
        for author in authors:
            author.join(30)
    mean = {a: sum(r["train_s"] for r in results if r["arm"] == a) / args.repeats for a in args.arms}
    cpu = {a: sum(r["train_cpu_s"] for r in results if r["arm"] == a) / args.repeats for a in args.arms}
    summary = {
        "args": vars(args),
        "runs": results,
        "mean_train_s": mean,
        "mean_train_cpu_s": cpu,
        "overhead": {a: mean[a] / mean["off"] - 1 for a in args.arms if "off" in mean},
        "cpu_overhead": {a: cpu[a] / cpu["off"] - 1 for a in args.arms if "off" in cpu},
        "load": os.getloadavg(),
    }
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    keys = ("mean_train_s", "overhead", "mean_train_cpu_s", "cpu_overhead", "load")
    print(json.dumps({k: summary[k] for k in keys}, indent=2))
    return summary


if __name__ == "__main__":
    main()
