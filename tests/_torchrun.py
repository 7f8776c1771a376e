"""Launching a test worker on CPU processes with torchrun, the same way in every multi-process test.

`--standalone` lets torchrun take a free port itself (its rendezvous binds localhost:0 and keeps it). A port chosen
by the test and closed again before torchrun binds it could be taken meanwhile by a test running in parallel
(`pytest -n 2`), which made a multi-process test fail now and then with "address already in use".
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).parents[1]


def torchrun_command(script: Path, *args: str, nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            str(script), *map(str, args)]  # fmt: skip


def torchrun_env(**extra: str) -> dict[str, str]:
    """One thread a process, no GPU, and this checkout importable."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT), **extra}


#: What a worker prints when a gloo thread is torn down while still running (SIGABRT at process exit). It still
#: happens now and then after a worker's `barrier()` and `destroy_process_group()` (once in about ten CI runs), so such
#: a run is launched once more; the callers check the workers' outputs, so a real failure still fails. A caller whose
#: workers leave state outside their rank files (a fake server's request count, an appended log) passes
#: `before_retry` to reset it, or the second launch would count on top of the first.
TEARDOWN_ABORT = "terminate called without an active exception"


def torchrun(
    script: Path,
    *args: str,
    nproc: int = 2,
    env_extra: dict | None = None,
    timeout: int = 300,
    before_retry: Callable[[], None] | None = None,
):
    """Run `script` on `nproc` processes and check that every one of them exited cleanly (one relaunch after a
    gloo teardown abort, see `TEARDOWN_ABORT`; `before_retry` runs before it)."""
    cmd = torchrun_command(script, *args, nproc=nproc)
    for attempt in range(2):
        if attempt and before_retry is not None:
            before_retry()
        proc = subprocess.run(
            cmd, env=torchrun_env(**(env_extra or {})), capture_output=True, text=True, timeout=timeout
        )
        if proc.returncode == 0 or TEARDOWN_ABORT not in proc.stderr:
            break
        print(f"torchrun: a worker aborted at teardown (attempt {attempt + 1}); launching again", file=sys.stderr)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc
