"""`trl-rubric env`: versions of everything that matters, for bug reports."""

from __future__ import annotations

import importlib.metadata
import platform
import sys


def collect() -> dict[str, str]:
    """Library versions, Python, platform and accelerator, as strings."""
    from .. import __version__

    info = {"trl-rubric": __version__, "python": sys.version.split()[0], "platform": platform.platform()}
    for package in ("trl", "transformers", "torch", "peft", "accelerate", "datasets", "openai", "vllm", "deepspeed"):
        try:
            info[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            info[package] = "not installed"
    try:
        import torch

        info["cuda"] = torch.version.cuda or "none (CPU build)"
        info["gpus"] = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) or "none"
    except ImportError:
        info["cuda"] = "unknown (torch not installed)"
    return info


def main(argv: list[str] | None = None) -> int:
    if argv:
        print(f"trl-rubric env: error: takes no options, got {argv}", file=sys.stderr)
        return 2
    for key, value in collect().items():
        print(f"- {key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
