"""Every ```python and ```bash block in README.md and docs/*.md runs, unless its info string says `no-test: <reason>`.

A `no-test` without a reason fails. README.md's set-up command, between `<!-- test-command -->` markers, is the one
exception to the info-string rule: CI (`.ci/run`) extracts it by its exact ```bash fence, so the markers mark it.

Blocks of one page run in order, in one temporary working directory: Python blocks share one namespace, so a later
block can use names an earlier one defined, and a bash block can use files an earlier block wrote. Each block is its
own test, named after the page and the block's first line. A test first replays (in this process) any earlier block
of its page that has not run here yet, so the page still runs in order when pytest-xdist hands its blocks to
different workers.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import subprocess
import sys
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXECUTED_LANGUAGES = ("python", "bash")
BASH_TIMEOUT_S = 300
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_NO_TEST = re.compile(r"\bno-test\b(?P<colon>\s*:)?(?P<reason>.*)$")
# README.md's set-up command sits between these markers. `.ci/run` extracts it by its exact ```bash fence line, so it
# cannot carry an info string; the markers are its `no-test` reason.
_CI_BLOCK_START, _CI_BLOCK_END = "<!-- test-command -->", "<!-- /test-command -->"
CI_BLOCK_REASON = "the set-up command CI runs itself (.ci/run)"


@dataclass(frozen=True)
class Block:
    page: str  # path relative to the repository root
    index: int  # 0-based position among the page's executed-language blocks
    language: str
    code: str
    line: int  # 1-based line of the opening fence
    skip_reason: str | None  # the `no-test:` reason, "" when `no-test` is given without one

    @property
    def first_line(self) -> str:
        return next((line.strip() for line in self.code.splitlines() if line.strip()), "<empty>")

    @property
    def test_id(self) -> str:
        first = re.sub(r"\s+", " ", self.first_line)[:60]
        return f"{self.page}:{self.line}[{self.language}] {first}"


def doc_pages() -> list[Path]:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return [p for p in pages if p.is_file()]


def parse_blocks(text: str, page: str) -> list[Block]:
    """The fenced code blocks of a Markdown page in the executed languages, with their `no-test` reasons."""
    blocks: list[Block] = []
    lines = text.splitlines()
    in_ci_block = False
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            marker = lines[i].strip()
            if marker in (_CI_BLOCK_START, _CI_BLOCK_END):
                in_ci_block = marker == _CI_BLOCK_START
            i += 1
            continue
        fence, indent, info = opening["fence"], len(opening["indent"]), opening["info"].strip()
        body, j = [], i + 1
        while j < len(lines):
            closing = _FENCE.match(lines[j])
            if closing and closing["fence"][0] == fence[0] and len(closing["fence"]) >= len(fence):
                if not closing["info"].strip():
                    break
            body.append(lines[j][indent:] if lines[j][:indent].strip() == "" else lines[j])
            j += 1
        language = info.split()[0].lower() if info else ""
        if language in EXECUTED_LANGUAGES:
            skip = _NO_TEST.search(info)
            reason = None
            if skip:
                reason = skip["reason"].strip() if skip["colon"] else ""
            elif in_ci_block:
                reason = CI_BLOCK_REASON
            blocks.append(Block(page, len(blocks), language, "\n".join(body) + "\n", i + 1, reason))
        i = j + 1
    return blocks


def all_blocks() -> list[Block]:
    out = []
    for path in doc_pages():
        out += parse_blocks(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    return out


BLOCKS = all_blocks()


# ------------------------------------------------------------------------------------------------ running a page


def _doc_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        TRL_EXPERIMENTAL_SILENCE="1",
        TOKENIZERS_PARALLELISM="false",
        CUDA_VISIBLE_DEVICES="",
        # Tiny models run far faster single-threaded (tests/conftest.py does the same for in-process blocks).
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p),
    )
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    return env


class PageRun:
    """One page's shared state in this process: its working directory, its Python namespace, how far it got."""

    def __init__(self, page: str):
        self.page = page
        # Removed when the run is dropped or the process ends (a plain mkdtemp left one folder per block in /tmp).
        self._tmp = tempfile.TemporaryDirectory(prefix="trl-rubric-docs-")
        self.workdir = self._tmp.name
        self.namespace: dict = {"__name__": "__main__"}
        self.done = 0  # blocks of the page run so far, in order
        self.failed: Block | None = None

    def run(self, block: Block) -> None:
        if block.skip_reason is not None:
            return
        if block.language == "python":
            self._run_python(block)
        else:
            self._run_bash(block)

    @contextlib.contextmanager
    def _environment(self):
        saved_env, saved_cwd = dict(os.environ), os.getcwd()
        os.environ.clear()
        os.environ.update(_doc_env())
        os.chdir(self.workdir)
        try:
            yield
        finally:
            os.chdir(saved_cwd)
            os.environ.clear()
            os.environ.update(saved_env)

    def _run_python(self, block: Block) -> None:
        code = compile(block.code, f"{block.page}:{block.line}", "exec")
        with self._environment():
            exec(code, self.namespace)

    def _run_bash(self, block: Block) -> None:
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block.code],
            cwd=self.workdir,
            env=_doc_env(),
            capture_output=True,
            text=True,
            timeout=BASH_TIMEOUT_S,
        )
        sys.stdout.write(result.stdout)
        sys.stderr.write(result.stderr)
        if result.returncode != 0:
            raise AssertionError(
                f"bash block exited with {result.returncode}\n--- stdout (tail)\n{result.stdout[-3000:]}\n"
                f"--- stderr (tail)\n{result.stderr[-3000:]}"
            )


_RUNS: dict[str, PageRun] = {}


def _page_blocks(page: str) -> list[Block]:
    return [b for b in BLOCKS if b.page == page]


def _run_up_to(block: Block) -> None:
    """Run the page's blocks before `block` that have not run in this process, then `block` itself."""
    run = _RUNS.get(block.page)
    if run is None or block.index < run.done:  # a new page, or a re-run in one process (--count): start afresh
        run = _RUNS[block.page] = PageRun(block.page)
    blocks = _page_blocks(block.page)
    while run.done < block.index:
        earlier = blocks[run.done]
        if run.failed is None:
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    run.run(earlier)
            except BaseException:
                run.failed = earlier
                tb = traceback.format_exc(limit=-3)
                pytest.fail(f"earlier block {earlier.test_id} failed while replaying the page:\n{tb}")
        run.done += 1
    if run.failed is not None:
        pytest.skip(f"an earlier block of {block.page} failed: {run.failed.test_id}")
    run.done += 1
    try:
        run.run(block)
    except BaseException:
        run.failed = block
        raise


# ------------------------------------------------------------------------------------------------ tests


def test_docs_have_blocks():
    pages = {b.page for b in BLOCKS}
    assert "README.md" in pages
    assert any(p.startswith("docs/") for p in pages), "no executable block found under docs/"


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.skip_reason is not None], ids=lambda b: b.test_id)
def test_skipped_block_says_why(block):
    assert block.skip_reason, (
        f"{block.page}:{block.line}: a `no-test` block must give a reason, as in "
        f"```{block.language} no-test: needs a GPU```"
    )


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.skip_reason is None], ids=lambda b: b.test_id)
def test_doc_block_runs(block):
    _run_up_to(block)


def test_a_page_run_makes_one_working_folder_and_removes_it(monkeypatch):
    page = "docs/_folder_check.md"
    blocks = [Block(page, i, "python", f"x = {i}", 1 + 4 * i, None) for i in range(3)]
    monkeypatch.setattr(sys.modules[__name__], "BLOCKS", blocks)
    made = []
    monkeypatch.setattr(
        tempfile, "mkdtemp", lambda *a, _real=tempfile.mkdtemp, **k: made.append(_real(*a, **k)) or made[-1]
    )
    for block in blocks:
        _run_up_to(block)
    run = _RUNS.pop(page)
    assert len(made) == 1 and run.workdir == made[0] and run.namespace["x"] == 2
    run._tmp.cleanup()
    assert not os.path.exists(made[0])


def test_parser_reads_reasons_and_languages():
    text = "\n".join(
        [
            "```python",
            "x = 1",
            "```",
            "```bash no-test: needs a GPU",
            "vllm serve m",
            "```",
            "```bash no-test",
            "echo",
            "```",
            "```yaml",
            "a: 1",
            "```",
            "- item",
            "  ```python",
            "  y = x",
            "  ```",
            "<!-- test-command -->",
            "```bash",
            "pytest",
            "```",
            "<!-- /test-command -->",
        ]
    )
    blocks = parse_blocks(text, "page.md")
    assert [(b.language, b.skip_reason) for b in blocks] == [
        ("python", None),
        ("bash", "needs a GPU"),
        ("bash", ""),
        ("python", None),
        ("bash", CI_BLOCK_REASON),
    ]
    assert blocks[3].code == "y = x\n"


def test_every_recipe_is_documented():
    listed = (ROOT / "docs" / "recipes.md").read_text(encoding="utf-8")
    missing = [p.name for p in sorted((ROOT / "recipes").glob("*.yaml")) if f"`{p.name}`" not in listed]
    missing += [
        f"accelerate/{p.name}"
        for p in sorted((ROOT / "recipes" / "accelerate").glob("*.yaml"))
        if f"`{p.name}`" not in listed
    ]
    assert not missing, f"docs/recipes.md does not list {missing}"


def _anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    in_code = False
    for line in text.splitlines():
        if _FENCE.match(line):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            base = _anchor(line.lstrip("#"))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def test_links_between_pages_resolve():
    broken = []
    for path in doc_pages():
        text = path.read_text(encoding="utf-8")
        for target, anchor in re.findall(r"\]\(([\w./-]*\.md)?(?:#([\w-]+))?\)", text):
            if not target and not anchor:
                continue
            page = (path.parent / target) if target else path
            if target and not page.exists():
                broken.append(f"{path.name} -> {target}")
                continue
            if anchor and anchor not in _anchors(page.read_text(encoding="utf-8")):
                broken.append(f"{path.name} -> {target}#{anchor}")
    assert not broken, f"links to missing pages or headings: {broken}"


def test_api_reference_is_current():
    spec = importlib.util.spec_from_file_location("gen_api", ROOT / "docs" / "gen_api.py")
    gen_api = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen_api)
    committed = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    assert gen_api.render() == committed, "docs/api.md is stale: run `.venv/bin/python docs/gen_api.py`"


def test_images_referenced_by_pages_exist():
    missing = []
    for path in doc_pages():
        for target in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", path.read_text(encoding="utf-8")):
            if not (path.parent / target).exists():
                missing.append(f"{path.name} -> {target}")
    assert not missing, f"images that do not exist: {missing}"
