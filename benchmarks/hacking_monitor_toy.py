"""Does `HackingMonitor` warn on a real run where the training judge is gamed, and stay quiet where it is not?

Toy world (`trl_rubric.toy`), RubricGRPO from the prepared toy model, two arms with the same seed and settings:

- `gameable`: the training judge is the world's exact rule judge with a blind spot that pays for length (the
  required-word criterion, the rubric's heaviest, counts as met by any answer of `--long_words` words or more);
- `exact`: the training judge is the exact rule judge.

In both arms a `HackingMonitor` grades greedy answers to the world's held-out prompts with the exact rule judge every
`--every` steps, and the training judge grades the same answers (`monitor/gap`: training judge minus monitor). Printed
per probe: monitor score, answer length, training signal, gap; then the warnings raised.

    nice -n 5 .venv/bin/python benchmarks/hacking_monitor_toy.py --steps 30 --every 5 --window 2
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings

from trl_rubric.judges import RuleJudge
from trl_rubric.testing import OFFLINE_ENV
from trl_rubric.testing.gameable_judge import LengthPayingJudge

KEYS = ("monitor/score", "monitor/length", "monitor/signal", "monitor/gap", "monitor/hacking_warning")


def _cell(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--every", type=int, default=5)
    p.add_argument("--window", type=int, default=2)
    p.add_argument("--prompts_per_step", type=int, default=8)
    p.add_argument("--num_generations", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--long_words", type=int, default=10)
    p.add_argument("--probes", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output_dir", default="/tmp/hacking_monitor_toy")
    args = p.parse_args()
    os.environ.update(OFFLINE_ENV)
    import torch
    import transformers
    from transformers import AutoTokenizer, PrinterCallback

    from trl_rubric import RubricGRPOConfig, RubricGRPOTrainer
    from trl_rubric.toy import make_world, prepare_toy_model
    from trl_rubric.trainers.hacking_monitor import HackingMonitor, RewardHackingWarning

    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    world = make_world(seed=args.seed)
    path = prepare_toy_model(seed=args.seed, progress=False)
    tokenizer = AutoTokenizer.from_pretrained(path)
    probes = world.heldout_dataset().select(range(args.probes))
    results = {"settings": vars(args), "arms": {}}
    for arm, judge in (("gameable", LengthPayingJudge(args.long_words)), ("exact", RuleJudge())):
        torch.manual_seed(args.seed)
        monitor = HackingMonitor(probes, RuleJudge(), every_n_steps=args.every, window=args.window)
        config = RubricGRPOConfig(
            output_dir=os.path.join(args.output_dir, arm),
            use_cpu=True,
            bf16=False,
            seed=args.seed,
            max_steps=args.steps,
            learning_rate=args.lr,
            lr_scheduler_type="constant",
            per_device_train_batch_size=args.prompts_per_step * args.num_generations,
            num_generations=args.num_generations,
            max_completion_length=24,
            temperature=1.0,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
        )
        trainer = RubricGRPOTrainer(
            path,
            args=config,
            train_dataset=world.train_dataset(),
            processing_class=tokenizer,
            judge=judge,
            callbacks=[monitor],
        )
        trainer.remove_callback(PrinterCallback)
        began = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.train()
        seconds = time.perf_counter() - began
        raised = [str(w.message) for w in caught if issubclass(w.category, RewardHackingWarning)]
        probes_log = [
            {k: e.get(k) for k in ("step", *KEYS)} for e in trainer.state.log_history if "monitor/score" in e
        ]
        first = {"step": 0, "monitor/score": monitor.scores[0][1], "monitor/length": monitor.lengths[0][1]}
        if monitor.probes[0][2] is not None:
            first["monitor/gap"] = sum(monitor.probes[0][2]) / len(monitor.probes[0][2])
        results["arms"][arm] = {"seconds": seconds, "probes": [first, *probes_log], "warnings": raised}
        print(f"\n== {arm} ({seconds:.0f} s)")
        print("| step | monitor score | length (tokens) | training signal | gap on probe answers | warning |")
        print("|---|---|---|---|---|---|")
        for row in [first, *probes_log]:
            cells = [_cell(row.get(k)) for k in KEYS[:4]]
            print(f"| {row['step']} | {' | '.join(cells)} | {row.get('monitor/hacking_warning') or 0:.0f} |")
        print(f"warnings: {len(raised)}")
        for message in raised[:2]:
            print("  ", message)
        print("last probe answers:", monitor.last_answers[:3])
        del trainer
    results["load_average_at_end"] = os.getloadavg()
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
