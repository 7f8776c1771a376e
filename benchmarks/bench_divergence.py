"""Peak memory and time of one forward + backward of the per-token divergence, naive logits vs chunked.

Methods:
- `naive`: both models' full `[N, V]` logits, log-softmax, generalized JSD (what `trl.experimental.sdft` does);
- `chunked-128`: `trl_rubric.losses.token_divergence(support="full", chunk_size=128)`, i.e. TRL's
  `ChunkedDivergenceFunction` on 128-token chunks;
- `kernel-once`: `ChunkedDivergenceFunction` called once on all N tokens (its CPU fallback tiles 4096 x 32768);
- `topk-20`, `sampled-token`: the cheaper supports of `token_divergence`, for reference (different quantities, so
  their loss is not comparable).

Each (method, N) runs in a fresh subprocess. After the imports and the inputs, the process resets its peak resident set
size (Linux `/proc/self/clear_refs`), so the table reports the peak RSS during the loss minus the RSS before it: what
the loss itself needed at its worst. (`tracemalloc` does not see torch's CPU allocations.)

glibc raises its mmap threshold after large frees (up to 32 MB), after which freed `[chunk, V]` tiles stay in the heap
and the RSS grows with N although nothing is alive; children therefore run with `MALLOC_MMAP_THRESHOLD_=131072` by
default (`--mmap-threshold 0` keeps glibc's default), so the peak reflects what the computation holds.

    python benchmarks/bench_divergence.py                 # V=32768, H=64, beta=0.5, N in 512 1024 4096
    python benchmarks/bench_divergence.py --n 1024 --methods naive chunked-128 topk-20 sampled-token
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

METHODS = ("naive", "chunked-128", "kernel-once", "topk-20", "sampled-token")


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+) kB", f.read()).group(1)) / 1024


def _reset_peak_rss() -> None:
    # "5" resets the peak RSS (VmHWM) to the current RSS; the imports' transient peak must not count
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def run_one(
    method: str, n: int, vocab: int, hidden: int, beta: float, repeats: int, warmup: int, threads: int
) -> dict:
    import math

    import torch

    torch.set_num_threads(threads)
    from trl.kernels.chunked_divergence import ChunkedDivergenceFunction

    from trl_rubric.losses import token_divergence

    g = torch.Generator().manual_seed(0)
    h_s = (torch.randn(n, hidden, generator=g) * 3).requires_grad_()
    w_s = (torch.randn(vocab, hidden, generator=g) / math.sqrt(hidden)).requires_grad_()
    h_t = torch.randn(n, hidden, generator=g) * 3
    w_t = torch.randn(vocab, hidden, generator=g) / math.sqrt(hidden)
    targets = torch.randint(0, vocab, (n,), generator=g)

    def step() -> float:
        h_s.grad = w_s.grad = None
        if method == "naive":
            s = torch.log_softmax(h_s @ w_s.t(), -1)
            t = torch.log_softmax(h_t @ w_t.t(), -1)
            log_m = torch.logaddexp(s + math.log(1 - beta), t + math.log(beta))
            div = beta * (t.exp() * (t - log_m)).sum(-1) + (1 - beta) * (s.exp() * (s - log_m)).sum(-1)
        elif method == "kernel-once":
            div, _ = ChunkedDivergenceFunction.apply(h_s, w_s, None, h_t, w_t, None, beta)
        else:
            support = {"chunked-128": "full", "topk-20": "topk", "sampled-token": "sampled_token"}[method]
            # Target log-probs only where the support needs them, so every method computes the same thing
            target_ids = targets if support == "sampled_token" else None
            div = token_divergence(
                h_s, w_s, None, h_t, w_t, None, beta=beta, support=support, target_ids=target_ids, chunk_size=128
            ).divergence
        loss = div.sum()
        loss.backward()
        return loss.item()

    _reset_peak_rss()
    baseline = _status_mb("VmRSS")
    for _ in range(warmup):
        step()
    wall, cpu = [], []
    for _ in range(repeats):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        loss = step()
        wall.append(time.perf_counter() - start_wall)
        cpu.append(time.process_time() - start_cpu)
    return {
        "method": method,
        "n": n,
        "wall_s": statistics.median(wall),
        "cpu_s": statistics.median(cpu),
        "peak_mb": _status_mb("VmHWM") - baseline,
        "loss_per_token": loss / n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[512, 1024, 4096])
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--beta", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=1, help="timed steps (median reported)")
    parser.add_argument(
        "--warmup", type=int, default=0, help="untimed steps first (CPU allocations are fresh each step)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads; 1 keeps timings stable on a shared box")
    parser.add_argument("--methods", nargs="+", default=list(METHODS[:3]), choices=METHODS)
    parser.add_argument(
        "--mmap-threshold", type=int, default=131072, help="MALLOC_MMAP_THRESHOLD_ for children; 0: unset"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        method, n = args.child.split(":")
        result = run_one(method, int(n), args.vocab, args.hidden, args.beta, args.repeats, args.warmup, args.threads)
        print(json.dumps(result))
        return

    rows = []
    for n in args.n:
        for method in args.methods:
            cmd = [sys.executable, __file__, "--child", f"{method}:{n}", "--vocab", str(args.vocab)]
            cmd += ["--hidden", str(args.hidden), "--beta", str(args.beta), "--repeats", str(args.repeats)]
            cmd += ["--warmup", str(args.warmup), "--threads", str(args.threads)]
            env = dict(os.environ)
            if args.mmap_threshold:
                env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
            result = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
            rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
            print(f"done {method} N={n}", file=sys.stderr, flush=True)

    print(
        f"V={args.vocab}, H={args.hidden}, beta={args.beta}, fp32, one forward + backward (hidden and LM-head "
        f"gradients), {args.threads} torch thread(s), MALLOC_MMAP_THRESHOLD_={args.mmap_threshold or 'glibc default'}\n"
    )
    print("| N | method | wall (s) | CPU (s) | peak memory above inputs (MB) | loss / token |")
    print("|---:|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['n']} | {r['method']} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | {r['peak_mb']:.0f} "
            f"| {r['loss_per_token']:.5f} |"
        )


if __name__ == "__main__":
    main()
