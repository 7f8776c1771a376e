"""What each process runs in `tests/test_adaptive_distributed.py`, under `torchrun --nproc_per_node 2` on CPU (gloo).

    python -m torch.distributed.run --nproc_per_node 2 tests/adaptive_worker.py MODEL OUT_DIR AUTHOR_URL

It trains RubricGRPOTrainer with an `AdaptiveRubricCallback` (author at AUTHOR_URL, waiting for revisions at every
boundary) and a rule judge under which every dataset criterion is stale, and writes `OUT_DIR/rank{r}.json`: the
rubric versions this process ended with and the criterion texts its judge graded.
"""

from __future__ import annotations

import json
import os
import sys

import torch
from datasets import Dataset

from trl_rubric.testing import make_rubric_rows, set_offline_env

set_offline_env()
torch.set_num_threads(1)

REVISED = "The answer mentions"


def main(argv: list[str]) -> None:
    from trl_rubric.adaptive import AdaptiveRubricCallback
    from trl_rubric.authoring import AuthorArguments, build_author_backend
    from trl_rubric.judges import RuleJudge
    from trl_rubric.trainers.rubric_grpo import RubricGRPOConfig, RubricGRPOTrainer

    model_path, out_dir, author_url = argv
    rank = int(os.environ["RANK"])
    seen: set[str] = set()

    def resolver(criterion):
        def check(response):
            seen.add(criterion.text)
            return len(response) % 2 == 0 if criterion.text.startswith(REVISED) else True

        return check

    author = AuthorArguments(author_model="fake-author", author_base_url=author_url, author_probe=False)
    adaptive = AdaptiveRubricCallback(build_author_backend(author), wait_for_revisions=True, max_revisions=1)
    args = RubricGRPOConfig(
        output_dir=out_dir,
        use_cpu=True,
        bf16=False,
        report_to="none",
        max_completion_length=6,
        per_device_train_batch_size=2,
        num_generations=2,
        max_steps=4,
        logging_steps=1,
        save_strategy="no",
        learning_rate=1e-2,
        seed=0,
        disable_tqdm=True,
        judge_probe=False,
    )
    trainer = RubricGRPOTrainer(
        model_path,
        args=args,
        train_dataset=Dataset.from_list(make_rubric_rows(4, seed=1)),  # 2 steps an epoch: revised prompts return
        judge=RuleJudge(resolver=resolver),
        callbacks=[adaptive],
    )
    trainer.train()
    versions = {k: [v["version"], [c.text for c in v["rubric"]]] for k, v in adaptive.versions.items()}
    result = {"rank": rank, "versions": versions, "seen": sorted(seen), "stats": adaptive.stats}
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1:])
