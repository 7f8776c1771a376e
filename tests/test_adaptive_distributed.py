"""AdaptiveRubricCallback under `torchrun --nproc_per_node 2` on CPU (gloo): the main process alone asks the author
and writes the memory, and every process grades with the same revised rubrics.

One launch runs `tests/adaptive_worker.py` in two processes against a FakeAuthorServer living in this test process.
"""

import json
import shutil
from pathlib import Path

from _torchrun import torchrun

from trl_rubric.adaptive import EvaluationMemory
from trl_rubric.testing import make_tiny_model
from trl_rubric.testing.author_server import FakeAuthorServer

WORKER = Path(__file__).with_name("adaptive_worker.py")


def test_every_process_grades_with_the_revisions_the_main_process_applied(tmp_path):
    model = make_tiny_model(tmp_path / "tiny")
    out = tmp_path / "out"
    out.mkdir()
    with FakeAuthorServer() as server:

        def fresh():  # a relaunch (tests/_torchrun.py) starts from an empty memory and request count
            server.reset_counters()
            shutil.rmtree(out)
            out.mkdir()

        torchrun(WORKER, model, out, server.url, env_extra={"OPENAI_API_KEY": "test-key"}, before_retry=fresh)
        requests = server.requests
    r0, r1 = (json.loads((out / f"rank{r}.json").read_text()) for r in range(2))
    assert r0["versions"] and r0["versions"] == r1["versions"]  # the same rubrics on every process
    assert r1["stats"]["requests"] == 0 and r0["stats"]["requests"] == requests  # only the main process asks
    updates = EvaluationMemory(out / "adaptive_memory.jsonl").records("update")
    assert {u["key"]: u["new_version"] for u in updates} == {k: v[0] for k, v in r0["versions"].items()}
    assert any(t.startswith("The answer mentions") for t in r0["seen"] + r1["seen"])
    # Summaries cover both processes' groups: 2 groups a step (one per process) for 4 steps.
    summaries = EvaluationMemory(out / "adaptive_memory.jsonl").records("summary")
    assert len(summaries) == 8
