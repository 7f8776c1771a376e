"""What each process runs in `tests/test_engines.py::test_dtensor_lm_head_*`: `token_divergence` on an LM head sharded as
a DTensor over a 2-process gloo mesh (how FSDP2 holds it), against the same head as a plain tensor.

    python -m torch.distributed.run --nproc_per_node 2 tests/dtensor_worker.py OUT_DIR
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor

from trl_rubric.losses import token_divergence

CASES = [
    {"support": "full", "beta": 0.5},
    {"support": "full", "beta": 0.0, "entry_clip": 0.01},
    {"support": "topk", "beta": 1.0, "top_k": 8},
    {"support": "sampled_token", "beta": 1.0},
]


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    g = torch.Generator().manual_seed(0)  # the same inputs on every rank
    n, v, h = 40, 301, 16  # V not divisible by the world size: uneven shards
    hidden = torch.randn(n, h, generator=g) * 3
    weight, bias = torch.randn(v, h, generator=g) / 4, torch.randn(v, generator=g) * 0.1
    t_hidden, t_weight = torch.randn(n, h, generator=g) * 3, torch.randn(v, h, generator=g) / 4
    targets = torch.randint(0, v, (n,), generator=g)
    upstream = torch.rand(n, generator=g) + 0.5
    results = []
    for case in CASES:
        plain = [weight.clone().requires_grad_(), bias.clone().requires_grad_()]
        sharded = [
            torch.nn.Parameter(distribute_tensor(weight.clone(), mesh, [Shard(0)])),
            torch.nn.Parameter(distribute_tensor(bias.clone(), mesh, [Shard(0)])),
        ]
        t_sharded = distribute_tensor(t_weight.clone(), mesh, [Shard(0)])
        outs, grads = [], []
        for (w, b), tw in ((plain, t_weight), (sharded, t_sharded)):
            x = hidden.clone().requires_grad_()
            out = token_divergence(x, w, b, t_hidden, tw, None, target_ids=targets, chunk_size=16, **case)
            (out.divergence * upstream).sum().backward()
            outs.append(out.divergence.detach())
            grads.append(
                [x.grad, *(p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad for p in (w, b))]
            )
        results.append(
            {
                "case": case,
                "sharded_type": type(sharded[0]).__name__ + "/" + type(sharded[0].data).__name__,
                "local_rows": sharded[0].to_local().shape[0],
                "value_diff": (outs[0] - outs[1]).abs().max().item(),
                "grad_diffs": [(a - b).abs().max().item() for a, b in zip(*grads, strict=True)],
                "grad_norms": [a.norm().item() for a in grads[0]],
            }
        )
    with open(os.path.join(out_dir, f"rank{dist.get_rank()}.json"), "w") as f:
        json.dump(results, f)
    # Both ranks past their last collective before either tears the group down: a rank that destroys it while the
    # other still runs gloo work makes that one abort at exit ("terminate called without an active exception").
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
