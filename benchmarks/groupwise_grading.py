"""Group-wise vs per-answer grading on the fake judge server: calls, prompt/completion tokens, wall time, agreement.

Prompts and rubrics are the SmolLM2 health and science world's (`trl_rubric.real.world`); each prompt gets G synthetic
answers built from its criteria's keywords and filler words, so verdicts vary within a group. Both ways grade the same
answers with `OpenAIJudge` in batched mode over real HTTP against `FakeJudgeServer` (keyword rule, fixed latency):

- per answer: `RubricReward` as today, one request per answer;
- group-wise: `RubricReward(group_grading=True)`, one request per prompt group (answers shuffled, seeded).

Tokens are the fake server's whitespace-word counts (no tokenizer). Agreement is the share of (answer, criterion)
verdicts on which both ways agree. The fake server grades every answer by the same rule however it is asked, so
agreement here checks the mechanism (shuffling undone, nothing lost or mis-assigned), not a real judge's consistency
between the two prompt shapes: that needs a real model (llama.cpp is not built on this machine).

    python benchmarks/groupwise_grading.py --prompts 16 --group_sizes 4,8,16 --latency 0.05
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time

from trl_rubric.judges import OpenAIJudge
from trl_rubric.real.world import make_real_world
from trl_rubric.rewards import RubricReward
from trl_rubric.testing.judge_server import FakeJudgeServer, keyword

FILLER = "the a patient should often may help with and it is to of in for when".split()


def answers_for(rubric: list[dict], g: int, rng: random.Random) -> list[str]:
    keys = [keyword(c["text"]) for c in rubric]
    out = []
    for _ in range(g):
        words = [k for k in keys if rng.random() < 0.5] + rng.choices(FILLER, k=rng.randint(30, 70))
        rng.shuffle(words)
        out.append(" ".join(words))
    return out


def run(server: FakeJudgeServer, group: bool, prompts, completions, rubrics, g: int, seed: int):
    judge = OpenAIJudge("fake-judge", base_url=server.url, max_retries=1, max_concurrency=32, seed=seed)
    reward = RubricReward(judge, num_generations=g, group_grading=group, min_graded_fraction=0.0)
    metrics: dict[str, float] = {}
    server.reset_counters()
    start = time.perf_counter()
    rewards = asyncio.run(
        reward(prompts=prompts, completions=completions, rubric=rubrics, log_metric=metrics.__setitem__)
    )
    wall = time.perf_counter() - start
    return rewards, reward.last_grades, metrics, server.requests, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--group_sizes", default="4,8,16")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds the fake server holds each answer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args()
    world = make_real_world(seed=args.seed)
    rows = world.train_rows[: args.prompts]
    out = []
    with FakeJudgeServer(delay=args.latency) as server:
        for g in (int(x) for x in args.group_sizes.split(",")):
            rng = random.Random(args.seed)
            prompts, completions, rubrics = [], [], []
            for row in rows:
                for answer in answers_for(row["rubric"], g, rng):
                    prompts.append(row["prompt"])
                    completions.append(answer)
                    rubrics.append(row["rubric"])
            per, per_grades, per_m, per_req, per_wall = run(server, False, prompts, completions, rubrics, g, args.seed)
            grp, grp_grades, grp_m, grp_req, grp_wall = run(server, True, prompts, completions, rubrics, g, args.seed)
            cells = [
                (a, b)
                for x, y in zip(per_grades, grp_grades, strict=True)
                for a, b in zip(x.verdicts, y.verdicts, strict=True)
            ]
            agree = sum(a == b for a, b in cells) / len(cells)
            unknown = sum(v is None for _, v in cells)
            out.append(
                {
                    "G": g,
                    "answers": len(completions),
                    "calls_per_answer": per_req,
                    "calls_group": grp_req,
                    "call_ratio": per_req / grp_req,
                    "prompt_tokens_per_answer": per_m["judge/prompt_tokens"],
                    "prompt_tokens_group": grp_m["judge/prompt_tokens"],
                    "completion_tokens_per_answer": per_m["judge/completion_tokens"],
                    "completion_tokens_group": grp_m["judge/completion_tokens"],
                    "wall_s_per_answer": round(per_wall, 3),
                    "wall_s_group": round(grp_wall, 3),
                    "verdict_agreement": agree,
                    "unknown_verdicts_group": unknown,
                    "rewards_equal": per == grp,
                }
            )
    keys = list(out[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in out:
        print("| " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in row.values()) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
