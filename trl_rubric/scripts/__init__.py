"""Entry points of the `trl-rubric` commands; each module has `main(argv) -> int`."""
