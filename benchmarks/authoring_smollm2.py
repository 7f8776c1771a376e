"""Evidence for `trl-rubric rubrics` (issue 20): SmolLM2-135M-Instruct authors rubrics offline, then `gap` measures them.

    nice -n 5 .venv/bin/python benchmarks/authoring_smollm2.py --output_dir outputs/authoring-smollm2

1. 12 held-out questions of the real-model world (`smollm2://heldout`) get short reference answers written for this
   benchmark (below); SmolLM2 authors a `reference`-mode rubric for each with the local transformers backend.
2. `trl-rubric gap` runs on the authored rubrics and on the world's hand-written rubrics of the same questions, both
   graded by the same SmolLM2 judge (an LLM judge is the only one that can read authored criteria), and the
   hand-written ones also by the exact rule judge for calibration.
One torch thread; the numbers land in docs/benchmarks.md and docs/authoring.md.
"""

from __future__ import annotations

import argparse
import json
import os
import time

#: Questions of smollm2://heldout (by prompt text) and the short reference answers written for them.
REFERENCES = {
    "How can I reduce hay fever symptoms in spring?": "Keep windows closed on high pollen days, shower after being "
    "outside, and take an antihistamine. See a doctor if symptoms persist for weeks.",
    "What helps itchy eyes from allergies?": "Rinse the eyes with cool water, avoid rubbing them, and use "
    "antihistamine eye drops. See a doctor if the eyes become painful or vision changes.",
    "How do I clean a small cut on my finger?": "Rinse the cut under clean running water, wash around it with soap, "
    "pat it dry and cover it with a clean bandage.",
    "How can I stop a small cut from bleeding?": "Press firmly on the cut with a clean cloth for several minutes and "
    "raise the hand above the heart. Get help if bleeding does not stop after ten minutes.",
    "How do I know if a cut is infected?": "Signs of infection are growing redness, swelling, warmth, pus and pain "
    "that gets worse after a day or two. Fever or red streaks need a doctor quickly.",
    "What are the signs of heat exhaustion?": "Heavy sweating, dizziness, headache, nausea, weakness and cool clammy "
    "skin. Move to a cool place and drink water; confusion or fainting needs emergency care.",
    "How can I stay cool during a heat wave?": "Stay in the shade or indoors during the hottest hours, drink water "
    "often, wear light loose clothes and take cool showers.",
    "Does exercise help with stress?": "Yes. A daily walk or other exercise lowers stress hormones and releases "
    "endorphins, which improves mood and sleep.",
    "Why does stress make it hard to sleep?": "Stress raises cortisol and adrenaline, which keep the body alert and "
    "the mind racing, so falling asleep takes longer.",
    "How do plants make their food?": "Plants make food by photosynthesis: leaves use sunlight to turn water and "
    "carbon dioxide into sugar, releasing oxygen.",
    "Why do leaves change colour in autumn?": "In autumn trees stop making chlorophyll, the green pigment fades, and "
    "yellow and orange pigments already in the leaf show through.",
    "Why does iron rust?": "Iron rusts when it reacts with oxygen and water, forming iron oxide. Salt speeds it up; "
    "paint or oil keeps water away.",
}


def _last_user(prompt):
    return prompt[-1]["content"] if isinstance(prompt, list) else prompt


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--output_dir", default="outputs/authoring-smollm2")
    parser.add_argument("--skip_authoring", action="store_true", help="reuse rubrics.jsonl from an earlier run")
    parser.add_argument("--max_new_tokens", type=int, default=96)
    opts = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from trl_rubric.cli import main as cli
    from trl_rubric.scripts._common import real_dataset

    out = opts.output_dir
    os.makedirs(out, exist_ok=True)
    heldout = [r for r in real_dataset("smollm2://heldout") if _last_user(r["prompt"]) in REFERENCES]
    assert len(heldout) == len(REFERENCES), len(heldout)
    questions = os.path.join(out, "questions.jsonl")
    hand = os.path.join(out, "hand_written.jsonl")
    with open(questions, "w") as f, open(hand, "w") as g:
        for r in heldout:
            q = _last_user(r["prompt"])
            f.write(json.dumps({"prompt": q, "reference": REFERENCES[q], "topic": r["topic"]}) + "\n")
            g.write(json.dumps({"prompt": q, "rubric": r["rubric"], "topic": r["topic"]}) + "\n")
    timings = {}
    authored_dir = os.path.join(out, "authored")
    if not opts.skip_authoring:
        start = time.process_time()
        rc = cli(
            ["rubrics", "--dataset_name", questions, "--reference_column", "reference", "--mode", "reference",
             "--author_backend", "transformers", "--author_model", "smollm2://", "--author_max_tokens", "384",
             "--author_max_retries", "1", "--author_max_concurrency", "12", "--author_temperature", "0.7",
             "--min_criteria", "2", "--max_criteria", "20", "--output_dir", authored_dir]
        )  # fmt: skip
        timings["author_cpu_s"] = time.process_time() - start
        assert rc == 0
    common = ["--model_name_or_path", "smollm2://", "--temperature", "0.7", "--max_new_tokens",
              str(opts.max_new_tokens), "--batch_size", "12", "--seed", "0", "--dtype", "float32", "--device", "cpu",
              "--n_token_views", "0", "--plots", "false", "--progress", "false"]  # fmt: skip
    from trl_rubric.real.model import resolve_model_alias

    # `gap` resolves smollm2:// for the policy, not for a transformers judge: give the judge the converted folder.
    judge_path = resolve_model_alias("smollm2://")
    llm_judge = ["--judge_backend", "transformers", "--judge_model", judge_path, "--judge_max_tokens", "256",
                 "--judge_max_retries", "0", "--judge_max_concurrency", "12"]  # fmt: skip
    runs = {
        "authored_llm_judge": [os.path.join(authored_dir, "rubrics.jsonl"), llm_judge],
        "hand_written_llm_judge": [hand, llm_judge],
        "hand_written_rule_judge": [hand, ["--judge_backend", "rule"]],
    }
    for name, (data, judge) in runs.items():
        start = time.process_time()
        rc = cli(["gap", "--dataset_name", data, *common, *judge, "--output_dir", os.path.join(out, name)])
        timings[f"{name}_cpu_s"] = time.process_time() - start
        assert rc == 0, name
    with open(os.path.join(out, "timings.json"), "w") as f:
        json.dump(timings, f, indent=2)
    print(json.dumps(timings, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
