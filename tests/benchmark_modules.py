"""`load_benchmark(name)`: a `benchmarks/<name>.py` script imported as a module, for the tests of the benchmarks'
helpers (the scripts are not a package). This folder is on `sys.path` under pytest."""

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
