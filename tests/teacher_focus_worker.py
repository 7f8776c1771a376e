"""What each process runs in `tests/test_teacher_focus.py`'s distributed test, under `torchrun --nproc_per_node 2` on
CPU (gloo).

    python -m torch.distributed.run --nproc_per_node 2 tests/teacher_focus_worker.py MODEL OUT_DIR

It trains RGSDTrainer with `teacher_focus="unlearned"` and a rule judge under which "mentions alpha" is always met and
the other criteria never are, on 4 prompts (2 a process each step), and writes `OUT_DIR/rank{r}.json`: the store's
state at the end and this process's teacher prompts, per generation batch.
"""

from __future__ import annotations

import json
import os
import sys

import torch
from datasets import Dataset

from trl_rubric.testing import rgsd_test_config, set_offline_env

set_offline_env()
torch.set_num_threads(1)

WORDS = ["alpha", "beta", "gamma"]


def main(argv: list[str]) -> None:
    from trl_rubric.judges import RuleJudge
    from trl_rubric.rewards import RubricReward
    from trl_rubric.trainers.rgsd import RGSDTrainer

    model_path, out_dir = argv
    rank = int(os.environ["RANK"])
    rubric = [{"text": f"mentions {w}", "weight": 1.0} for w in WORDS]
    rows = [{"prompt": f"question {i}: say something", "rubric": rubric} for i in range(4)]
    judge = RuleJudge(resolver=lambda c: lambda response: c.text == "mentions alpha")
    args = rgsd_test_config(
        out_dir, teacher_focus="unlearned", per_device_train_batch_size=2, max_steps=4, max_completion_length=4,
        disable_tqdm=True,
    )  # fmt: skip
    trainer = RGSDTrainer(
        model=model_path, reward_funcs=[RubricReward(judge)], args=args, train_dataset=Dataset.from_list(rows)
    )
    batches, inner = [], trainer._teacher_contexts

    def record(inputs, completions=None):
        contexts = inner(inputs, completions)
        batches.append([c.prompt for row in contexts for c in row])
        return contexts

    trainer._teacher_contexts = record
    trainer.train()
    state = trainer._teacher_focus.state_dict()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"state": state, "batches": batches}, f)


if __name__ == "__main__":
    main(sys.argv[1:])
