"""Strict completion reaches `trl-rubric gap`'s printout and report and the model card's training rows."""

import json

from datasets import Dataset

from trl_rubric.model_card import STRICT_METRIC, build_model_card
from trl_rubric.testing import make_rubric_rows
from trl_rubric.trainers.rubric_grpo import RubricGRPOConfig, RubricGRPOTrainer


def _rows():
    def crit(text, weight, rule):
        return {"text": text, "weight": weight, "category": None, "title": None, "tags": [rule]}

    return [
        {
            "prompt": f"question {i}: say something",
            "rubric": [crit("answers at all", 1.0, "rule:regex:\\S"), crit("says zqxj", -1.0, "rule:contains:zqxj")],
        }
        for i in range(3)
    ]


def test_gap_prints_and_reports_strict_completion_of_both_views(tiny_model_path, tmp_path, capsys):
    from trl_rubric.cli import main

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    out = tmp_path / "gap"
    code = main(
        ["gap", "--model_name_or_path", tiny_model_path, "--dataset_name", str(data), "--judge_backend", "rule",
         "--max_completion_length", "4", "--n_samples", "3", "--bootstrap_samples", "20", "--progress", "false",
         "--n_token_views", "0", "--output_dir", str(out)]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    without, with_ = results["without_rubric"]["strict_completion"], results["with_rubric"]["strict_completion"]
    assert without is not None and with_ is not None
    pct = lambda x: f"{100 * x:.1f}%"  # noqa: E731
    printed = capsys.readouterr().out
    assert (
        f"strict completion (every criterion met, no penalty) without rubric {pct(without)}, with rubric {pct(with_)}"
        in printed
    )
    report = (out / "report.md").read_text()
    assert "| strict completion without / with rubric |" in report


def test_grpo_model_card_states_training_strict_completion(tiny_model_path, tmp_path):
    rows = make_rubric_rows(4, seed=1)
    for row in rows:
        for criterion in row["rubric"]:
            criterion["tags"] = [f"rule:contains:{criterion['text'].split()[-1]}"]
    args = RubricGRPOConfig(
        output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, report_to="none", max_completion_length=8,
        per_device_train_batch_size=4, num_generations=2, max_steps=2, logging_steps=1, save_strategy="no",
        judge_backend="rule", judge_probe=False, seed=0,
    )  # fmt: skip
    trainer = RubricGRPOTrainer(tiny_model_path, args=args, train_dataset=Dataset.from_list(rows))
    trainer.train()
    logged = [e[STRICT_METRIC] for e in trainer.state.log_history if STRICT_METRIC in e]
    assert len(logged) == 2
    card = str(build_model_card(trainer))
    assert f"| {STRICT_METRIC} (training, first log) | {logged[0]:.4g} |" in card
    assert f"| {STRICT_METRIC} (training, last log) | {logged[-1]:.4g} |" in card
