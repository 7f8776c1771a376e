"""Launching a test worker on CPU processes with torchrun, the same way in every multi-process test.

`--standalone` lets torchrun take a free port itself (its rendezvous binds localhost:0 and keeps it). A port chosen
by the test and closed again before torchrun binds it could be taken meanwhile by a test running in parallel
(`pytest -n 2`), which made a multi-process test fail now and then with "address already in use".
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def torchrun_command(script: Path, *args: str, nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            str(script), *map(str, args)]  # fmt: skip


def torchrun_env(**extra: str) -> dict[str, str]:
    """One thread a process, no GPU, and this checkout importable."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT), **extra}


def torchrun(script: Path, *args: str, nproc: int = 2, env_extra: dict | None = None, timeout: int = 300):
    """Run `script` on `nproc` processes and check that every one of them exited cleanly."""
    cmd = torchrun_command(script, *args, nproc=nproc)
    proc = subprocess.run(cmd, env=torchrun_env(**(env_extra or {})), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc
