"""The `trl-rubric` console script."""

from __future__ import annotations

import argparse
import sys

from . import __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trl-rubric", description="Rubric-based post-training for TRL.")
    parser.add_argument("--version", action="version", version=f"trl-rubric {__version__}")
    parser.parse_args(argv)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
