"""The package's shape: layers from the top down, imports only pointing down, no circles, no module over 800 lines.

`LAYERS` is the one layer table (docs/architecture.md mirrors it, and a test below checks the mirror). Every import
of a `trl_rubric` module counts, at module level or inside a function, absolute or relative. Within one layer imports
may go either way, but never in a circle.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "trl_rubric"
MAX_LINES = 800

#: Top layer first. A module belongs to the layer of the longest prefix that names it or a package above it, so a new
#: module under an existing package (`trl_rubric/real/new_world.py`, `trl_rubric/evaluation/x.py`) is classified
#: already. `trl_rubric` itself (the package's `__init__.py`) is matched exactly, never as a prefix.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("CLI", ("trl_rubric.cli", "trl_rubric.scripts")),
    ("public API", ("trl_rubric",)),
    (
        "worlds, demos and test kit",
        ("trl_rubric.toy", "trl_rubric.real", "trl_rubric.testing", "trl_rubric.demo_report"),
    ),
    ("trainers", ("trl_rubric.trainers", "trl_rubric.model_card", "trl_rubric.adaptive")),
    (
        "teacher contexts / rewards / evaluation",
        (
            "trl_rubric.teacher_context",
            "trl_rubric.criterion_views",
            "trl_rubric.teacher_focus",
            "trl_rubric.critique",
            "trl_rubric.rewards",
            "trl_rubric.async_reward",
            "trl_rubric.evaluation",
            "trl_rubric.authoring",
        ),
    ),
    (
        "judges / teacher / losses",
        (
            "trl_rubric.judges",
            "trl_rubric.teacher",
            "trl_rubric.losses",
            "trl_rubric.multi_teacher",
            "trl_rubric.criterion_diagnostics",
            "trl_rubric.reweighting",
        ),
    ),
    (
        "rubric",
        (
            "trl_rubric.rubric",
            "trl_rubric.data",
            "trl_rubric.interchange",
            "trl_rubric.rubric_dropout",
            "trl_rubric.judge_share",
        ),
    ),
]

#: Packages whose modules must never import the CLI.
NO_CLI_FROM = ("trl_rubric.real", "trl_rubric.toy")


# ---------------------------------------------------------------------------------------------------------------------
# The checker (pure functions on `{module: source}`, so the tests below can feed it synthetic packages)
# ---------------------------------------------------------------------------------------------------------------------


def package_sources(package_dir: Path = PACKAGE) -> dict[str, tuple[str, bool]]:
    """`{dotted module name: (source, is_package_init)}` for every `.py` file under `package_dir`."""
    out = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        is_init = parts[-1] == "__init__"
        if is_init:
            parts = parts[:-1]
        out[".".join(parts)] = (path.read_text(encoding="utf-8"), is_init)
    return out


def _resolve(target: str, modules) -> str | None:
    # `trl_rubric.a.b.name`: the longest prefix that is a module (a name imported from a module is not one)
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target or None


def import_graph(sources: dict[str, tuple[str, bool]], root: str = "trl_rubric") -> dict[str, set[str]]:
    """`{module: modules of the package it imports}`: every import statement, module level or inside a function."""
    graph: dict[str, set[str]] = {}
    for module, (source, is_init) in sources.items():
        package = module if is_init else module.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    if not base:
                        raise ValueError(f"{module}: relative import beyond the top-level package")
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                # `from pkg import sub` imports the submodule `pkg.sub` when there is one, else a name of `pkg`
                targets.update(f"{prefix}.{alias.name}" for alias in node.names)
        resolved = {_resolve(t, sources) for t in targets if t == root or t.startswith(root + ".")}
        graph[module] = {t for t in resolved if t is not None and t != module}
    return graph


def layer_of(module: str, layers=LAYERS, root: str = "trl_rubric") -> int | None:
    """Index of `module`'s layer in `layers` (0 = top), by the longest matching prefix; None if unclassified."""
    best, best_len = None, -1
    for i, (_, prefixes) in enumerate(layers):
        for prefix in prefixes:
            exact_only = prefix == root
            if module == prefix or (not exact_only and module.startswith(prefix + ".")):
                if len(prefix) > best_len:
                    best, best_len = i, len(prefix)
    return best


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted; a module importing itself too."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(cycles)


def unclassified(graph, layers=LAYERS) -> list[str]:
    return sorted(m for m in graph if layer_of(m, layers) is None)


def upward_imports(graph, layers=LAYERS) -> list[str]:
    """`"a (layer) imports b (higher layer)"` for every import pointing up the table."""
    problems = []
    for module, targets in sorted(graph.items()):
        mine = layer_of(module, layers)
        for target in sorted(targets):
            theirs = layer_of(target, layers)
            if mine is not None and theirs is not None and theirs < mine:
                problems.append(
                    f"{module} ({layers[mine][0]}) imports {target} ({layers[theirs][0]}), a layer above it"
                )
    return problems


def _where_to_add(module: str) -> str:
    return (
        f"{module} is in no layer: add its prefix ({module!r}, or the package above it) to one of the layers of "
        "LAYERS in tests/test_architecture.py, and to the same layer's row in docs/architecture.md"
    )


# ---------------------------------------------------------------------------------------------------------------------
# The package
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def graph():
    return import_graph(package_sources())


def test_every_module_has_a_layer(graph):
    missing = unclassified(graph)
    assert not missing, "\n".join(_where_to_add(m) for m in missing)


def test_no_import_circles(graph):
    cycles = find_cycles(graph)
    assert not cycles, "import circles (imports inside functions count):\n" + "\n".join(
        " <-> ".join(c) for c in cycles
    )


def test_imports_only_point_down(graph):
    problems = upward_imports(graph)
    assert not problems, "\n".join(problems)


def test_worlds_never_import_the_cli(graph):
    bad = [
        f"{m} imports {t}"
        for m, targets in sorted(graph.items())
        if layer_of(m) is not None and any(m == p or m.startswith(p + ".") for p in NO_CLI_FROM)
        for t in sorted(targets)
        if t == "trl_rubric.cli" or t.startswith("trl_rubric.scripts")
    ]
    assert not bad, "real/ and toy/ never import from scripts/ or cli.py; move what they share down:\n" + "\n".join(
        bad
    )


def test_no_module_over_800_lines():
    long = {
        str(path.relative_to(ROOT)): n
        for path in sorted(PACKAGE.rglob("*.py"))
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines (split them by job): {long}"


def test_architecture_doc_mirrors_the_layer_table():
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    rows = [line for line in doc.splitlines() if line.startswith("| ") and not line.startswith("| layer")]
    for name, prefixes in LAYERS:
        row = next((r for r in rows if f"| {name} |" in r), None)
        assert row is not None, f"docs/architecture.md has no table row for the layer {name!r}"
        for prefix in prefixes:
            shown = prefix.replace("trl_rubric.", "").replace(".", "/")
            assert re.search(rf"`{re.escape(shown)}(/|\.py)?`", row), f"layer {name!r}: `{shown}` missing from its row"


# ---------------------------------------------------------------------------------------------------------------------
# The checker itself catches what it is for (so the tests above cannot pass vacuously)
# ---------------------------------------------------------------------------------------------------------------------

TOY_LAYERS = [("top", ("pkg.cli",)), ("middle", ("pkg.mid",)), ("bottom", ("pkg.low",))]


def test_checker_finds_a_circle_through_an_import_inside_a_function():
    sources = {
        "pkg.mid.a": ("from .b import thing\n", False),
        "pkg.mid.b": ("def f():\n    from pkg.mid import c\n", False),
        "pkg.mid.c": ("import pkg.mid.a as a\n", False),
        "pkg.low.d": ("x = 1\n", False),
    }
    graph = import_graph(sources, root="pkg")
    assert graph["pkg.mid.b"] == {"pkg.mid.c"} and graph["pkg.mid.c"] == {"pkg.mid.a"}
    assert find_cycles(graph) == [["pkg.mid.a", "pkg.mid.b", "pkg.mid.c"]]
    del sources["pkg.mid.c"]
    assert find_cycles(import_graph(sources, root="pkg")) == []


def test_checker_finds_an_upward_arrow_and_allows_downward_ones():
    sources = {
        "pkg.cli": ("from .mid import a\n", False),
        "pkg.mid.a": ("from ..low import d\n", False),
        "pkg.low.d": ("def f():\n    from ..cli import main\n", False),
    }
    graph = import_graph(sources, root="pkg")
    assert upward_imports(graph, TOY_LAYERS) == ["pkg.low.d (bottom) imports pkg.cli (top), a layer above it"]
    sources["pkg.low.d"] = ("x = 1\n", False)
    assert upward_imports(import_graph(sources, root="pkg"), TOY_LAYERS) == []


def test_checker_classifies_by_package_prefix_and_names_where_to_add_the_rest():
    assert layer_of("trl_rubric.real.some_new_world") == layer_of("trl_rubric.real.world")
    assert layer_of("trl_rubric.authoring.anything") == layer_of("trl_rubric.evaluation")
    assert layer_of("trl_rubric.evaluation.judge_check") == layer_of("trl_rubric.evaluation.degeneration")
    assert layer_of("trl_rubric.interchange") == layer_of("trl_rubric.rubric")
    assert layer_of("trl_rubric.teacher_context") != layer_of("trl_rubric.teacher")  # prefixes end at a dot
    assert layer_of("trl_rubric.brand_new") is None  # the root matches itself only
    assert unclassified({"trl_rubric.brand_new": set(), "trl_rubric.rubric": set()}) == ["trl_rubric.brand_new"]
    message = _where_to_add("trl_rubric.brand_new")
    assert "LAYERS in tests/test_architecture.py" in message and "docs/architecture.md" in message
