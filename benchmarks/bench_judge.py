"""Judge throughput against a fixed-latency judge: does `OpenAIJudge` overlap requests up to its concurrency limit?

Starts the fake OpenAI-compatible server (`trl_rubric.testing.judge_server.FakeJudgeServer`) on 127.0.0.1 in a child
process, with a fixed delay per answer, then grades batches of responses with `OpenAIJudge` over real HTTP at several `max_concurrency` limits.
With latency L and limit c, a judge that does not serialise reaches about c / L requests per second, until the CPU
(client and server share the machine) becomes the bottleneck.

    python benchmarks/bench_judge.py                       # 50 ms latency, limits 1..32
    python benchmarks/bench_judge.py --latency 0.1 --concurrency 1,4,16 --requests-per-slot 4

Prints a Markdown table. "client CPU ms/request" is the judge process's CPU time per request: when the limit is high
enough, that (plus the server's share of the same cores) is what caps throughput, not the judge serialising.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import platform
import time

from trl_rubric.judges import OpenAIJudge
from trl_rubric.testing import make_rubric_rows
from trl_rubric.testing.judge_server import FakeJudgeServer


def _serve(latency: float, conn) -> None:
    """Run the fake server in its own process (so it does not share the client's GIL) and answer count queries."""
    with FakeJudgeServer(delay=latency) as server:
        conn.send(server.port)
        while True:
            command = conn.recv()
            if command == "stop":
                return
            if command == "reset":
                server.reset_counters()
                conn.send(None)
            elif command == "counts":
                conn.send((server.requests, server.max_in_flight))


class ServerProcess:
    """A `FakeJudgeServer` in a child process, with the counters the benchmark reads."""

    def __init__(self, latency: float):
        self._conn, child = multiprocessing.Pipe()
        self._proc = multiprocessing.get_context("fork").Process(target=_serve, args=(latency, child), daemon=True)
        self._proc.start()
        self.url = f"http://127.0.0.1:{self._conn.recv()}/v1"

    def reset_counters(self) -> None:
        self._conn.send("reset")
        self._conn.recv()

    def counts(self) -> tuple[int, int]:
        self._conn.send("counts")
        return self._conn.recv()

    def stop(self) -> None:
        self._conn.send("stop")
        self._proc.join(10)


def measure(server: ServerProcess, concurrency: int, num_requests: int, mode: str) -> dict:
    """Grade `num_requests` responses at `concurrency` and return timings and server-side counts."""
    rows = make_rubric_rows(num_requests, seed=concurrency)
    prompts = [r["prompt"] for r in rows]
    rubrics = [r["rubric"] for r in rows]
    responses = [" ".join(c["text"].split()[-1] for c in r["rubric"][::2]) for r in rows]
    judge = OpenAIJudge("fake-judge", base_url=server.url, mode=mode, max_concurrency=concurrency, max_retries=0)

    async def run():
        # One event loop for warm-up and measurement, as in training (TRL keeps one background loop), so the timed
        # part excludes client creation.
        await judge.grade_many(prompts[:1], responses[:1], rubrics[:1])
        server.reset_counters()
        start, cpu_start = time.perf_counter(), time.process_time()
        grades = await judge.grade_many(prompts, responses, rubrics)
        return grades, time.perf_counter() - start, time.process_time() - cpu_start

    grades, wall, cpu = asyncio.run(run())
    requests, max_in_flight = server.counts()
    return {
        "concurrency": concurrency,
        "requests": requests,
        "wall_s": wall,
        "rps": requests / wall,
        "client_cpu_ms": 1000 * cpu / max(1, requests),
        "max_in_flight": max_in_flight,
        "failed": sum(g.failed for g in grades),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.05, help="Seconds the server holds each answer.")
    parser.add_argument("--concurrency", default="1,2,4,8,16,32", help="Comma-separated max_concurrency values.")
    parser.add_argument(
        "--requests-per-slot", type=int, default=8, help="Requests per concurrency slot (at least 32 in all)."
    )
    parser.add_argument(
        "--mode", default="batched", choices=["batched", "implicit"], help="Judge mode (1 request/grade)."
    )
    args = parser.parse_args(argv)

    levels = [int(c) for c in args.concurrency.split(",")]
    server = ServerProcess(args.latency)
    try:
        results = [measure(server, c, max(32, args.requests_per_slot * c), args.mode) for c in levels]
    finally:
        server.stop()

    print(
        f"Judge throughput, fake server latency {args.latency * 1000:.0f} ms, mode {args.mode}, {platform.platform()}"
    )
    print()
    print(
        "| max_concurrency | requests | wall (s) | requests/s | ideal c/L | efficiency | max in flight "
        "| client CPU ms/request | failed |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        ideal = r["concurrency"] / args.latency
        print(
            f"| {r['concurrency']} | {r['requests']} | {r['wall_s']:.2f} | {r['rps']:.1f} | {ideal:.0f} | "
            f"{r['rps'] / ideal:.0%} | {r['max_in_flight']} | {r['client_cpu_ms']:.1f} | {r['failed']} |"
        )


if __name__ == "__main__":
    main()
