"""Both trainers write every logged metric to `<output_dir>/metrics.jsonl`, even with `report_to: none`."""

import json

from datasets import Dataset

from trl_rubric import RGSDConfig, RGSDTrainer, RubricGRPOConfig, RubricGRPOTrainer, RuleJudge
from trl_rubric.testing import make_rubric_rows


def _args(tmp_path, **kwargs):
    return dict(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, per_device_train_batch_size=4,
                max_completion_length=6, max_steps=2, logging_steps=1, report_to="none", save_strategy="no", **kwargs)  # fmt: skip


def _lines(tmp_path):
    return [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]


def test_rgsd_writes_each_log_to_metrics_jsonl_without_a_reporter_and_starts_afresh(tiny_model_path, tmp_path):
    dataset = Dataset.from_list(make_rubric_rows(4))
    for _ in range(2):  # a second run from step 0 into the same folder replaces the file
        trainer = RGSDTrainer(tiny_model_path, args=RGSDConfig(**_args(tmp_path)), train_dataset=dataset)
        trainer.train()
    rows = _lines(tmp_path)
    assert len(rows) == len(trainer.state.log_history) == 3  # steps 1 and 2, then the run summary
    for row, logged in zip(rows, trainer.state.log_history, strict=True):
        assert row["step"] == logged["step"]
        assert {k: v for k, v in row.items() if k != "step"} == {k: v for k, v in logged.items() if k != "step"}
    assert [r["step"] for r in rows] == [1, 2, 2] and any(k.startswith("rgsd/") for k in rows[0])


def test_rubric_grpo_writes_metrics_jsonl_too(tiny_model_path, tmp_path):
    rows = make_rubric_rows(4)
    for row in rows:
        for criterion in row["rubric"]:
            criterion["tags"] = ["rule:contains:" + criterion["text"].split()[-1]]
    args = RubricGRPOConfig(**_args(tmp_path, num_generations=2), judge_backend="rule")
    trainer = RubricGRPOTrainer(tiny_model_path, args=args, train_dataset=Dataset.from_list(rows), judge=RuleJudge())
    trainer.train()
    logged = _lines(tmp_path)
    assert [r["step"] for r in logged] == [1, 2, 2] and "reward" in logged[0]
