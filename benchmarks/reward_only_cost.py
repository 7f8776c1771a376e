"""What `distillation_weight=0.0` saves a reward-phase step on SmolLM2-135M-Instruct, in CPU seconds.

Since `RGSDTrainer` runs GRPO's loss alone at `distillation_weight=0.0` (a reward phase before RGSD), the teacher and
distillation passes whose weight is 0 no longer run. This script measures the loss side of one step both ways on the
same batch: the reward-only path, and the path every weight above 0 takes (here 1e-9: the same passes the old
`0.0` ran). One batch of the key-term reward phase (`recipes/rgsd_smollm2_key_term_reward.yaml`: 2 prompts x 8
rollouts, 96-token answers, LoRA) is sampled once; then the loss and its backward pass are timed `--repeats` times
each way, alternating, in process CPU seconds (which other jobs on the cores do not stretch) and wall seconds.
Generation, the other part of a step, is the same both ways and timed once.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/reward_only_cost.py --world instructions --repeats 3

Results: docs/benchmarks.md ("Reward first, then RGSD, against GRPO on the whole rubric").
"""

import argparse
import json
import os
import time

import torch


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--world", choices=["health", "instructions"], default="instructions")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--output", default=None, help="Write the timings here as JSON.")
    args = p.parse_args(argv)

    import transformers
    from transformers import AutoTokenizer

    from trl_rubric import RubricReward
    from trl_rubric.real import lora_config, smollm2_path
    from trl_rubric.real.worlds import make_named_world
    from trl_rubric.testing import OFFLINE_ENV
    from trl_rubric.trainers.rgsd import RGSDConfig, RGSDTrainer

    os.environ.update(OFFLINE_ENV)
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    world = make_named_world(args.world, seed=0)
    path = smollm2_path()
    config = RGSDConfig(
        output_dir="/tmp/reward_only_cost", use_cpu=True, bf16=False, report_to="none", save_strategy="no",
        learning_rate=5e-4, per_device_train_batch_size=16, num_generations=8, max_completion_length=96,
        temperature=0.7, distillation_weight=1e-9, reward_criteria=["key term"], max_steps=1, seed=0,
    )  # fmt: skip
    reward = RubricReward(world.judge(), num_generations=config.num_generations)
    trainer = RGSDTrainer(
        path, args=config, train_dataset=world.train_dataset(), reward_funcs=[reward],
        processing_class=AutoTokenizer.from_pretrained(path), peft_config=lora_config(16),
    )  # fmt: skip
    rows = [trainer.train_dataset[i] for i in range(2) for _ in range(config.num_generations)]
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = config.gradient_accumulation_steps  # set by train() otherwise
    batch = {}
    generation = timed(lambda: batch.update(trainer._generate_and_score_completions(rows)))

    def loss_step(reward_only: bool):
        trainer._rgsd_reward_only = reward_only
        trainer.model.zero_grad()
        trainer._compute_loss(trainer.model, batch).backward()

    times = {"reward_only": [], "with_teacher_pass": []}
    for _ in range(args.repeats):
        times["reward_only"].append(timed(lambda: loss_step(True)))
        times["with_teacher_pass"].append(timed(lambda: loss_step(False)))
    result = {
        "world": args.world,
        "tokens": int(batch["completion_mask"].sum()),
        "generation_cpu_s": generation[0],
        "generation_wall_s": generation[1],
        **{f"{k}_cpu_s": [t[0] for t in v] for k, v in times.items()},
        **{f"{k}_wall_s": [t[1] for t in v] for k, v in times.items()},
        "load_average": os.getloadavg(),
    }
    best = {k: min(t[0] for t in v) for k, v in times.items()}
    print(f"generation {generation[0]:.1f} CPU s; loss + backward: reward only {best['reward_only']:.1f} CPU s, "
          f"with the teacher pass {best['with_teacher_pass']:.1f} CPU s (best of {args.repeats}); "
          f"step ratio about {(generation[0] + best['with_teacher_pass']) / (generation[0] + best['reward_only']):.2f}; "
          f"load {result['load_average'][0]:.1f}")  # fmt: skip
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
