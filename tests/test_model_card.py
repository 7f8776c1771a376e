"""Model cards: what they state for each method, offline, and what a (mocked) Hub push uploads."""

import json
from types import SimpleNamespace

import transformers.trainer
from datasets import Dataset

from trl_rubric import RGSDConfig, RGSDTrainer, RubricGRPOConfig, RubricGRPOTrainer, RuleJudge
from trl_rubric.model_card import build_model_card
from trl_rubric.testing import make_rubric_rows


def _common(tmp_path, **kwargs):
    return dict(
        output_dir=str(tmp_path / "out"),
        use_cpu=True,
        bf16=False,
        per_device_train_batch_size=4,
        max_completion_length=8,
        max_steps=1,
        report_to="none",
        save_strategy="no",
        **kwargs,
    )


def test_rgsd_card_states_method_teacher_divergence_and_zero_judge_calls(tiny_model_path, tmp_path):
    dataset = Dataset.from_list(make_rubric_rows(4))
    trainer = RGSDTrainer(tiny_model_path, args=RGSDConfig(**_common(tmp_path)), train_dataset=dataset)
    trainer.train()
    (tmp_path / "out" / "eval").mkdir(parents=True)
    (tmp_path / "out" / "eval" / "results.json").write_text(json.dumps({"weighted_score": 0.625, "n_examples": 8}))
    card = str(build_model_card(trainer, model_name="tiny-rgsd", dataset_name="org/rubrics"))
    for expected in (
        "Rubric-Guided Self-Distillation",
        "| method | RGSD |",
        f"| base model | {tiny_model_path} |",
        "| teacher | base (the policy's own initial weights) |",
        "| divergence | full |",
        "| beta | 0.5 |",
        "| token clip | none |",
        "| teacher penalties | omit |",
        "| rollouts per prompt | 1 |",
        "| train judge calls | 0 |",
        "Dataset: `org/rubrics`",
        "| rubric_eval/weighted_score | 0.625 |",
        "arXiv:2606.12507",
        "TRL: Transformers Reinforcement Learning",
    ):
        assert expected in card, expected
    header = card.split("---")[1]
    for tag in ("- trl\n", "- trl-rubric\n", "- rgsd\n"):
        assert tag in header


def test_grpo_card_states_judge_model_calls_and_public_endpoint_only(tiny_model_path, tmp_path):
    rows = make_rubric_rows(4)
    for row in rows:
        for criterion in row["rubric"]:
            criterion["tags"] = ["rule:contains:" + criterion["text"].split()[-1]]
    args = RubricGRPOConfig(
        **_common(tmp_path, num_generations=2),
        judge_backend="rule",
        judge_model="rule-checks",
        judge_base_url="http://user:pass@judge.internal:8000/v1?token=abc",
    )
    trainer = RubricGRPOTrainer(tiny_model_path, args=args, train_dataset=Dataset.from_list(rows), judge=RuleJudge())
    trainer.train()
    card = str(build_model_card(trainer, model_name="tiny-grpo"))
    assert "| method | GRPO + judge |" in card
    assert "| judge model | rule-checks |" in card
    assert "| train judge calls | 4 |" in card  # 2 prompts x 2 rollouts, one batched call each
    assert "- rubric-grpo\n" in card.split("---")[1]
    assert "pass" not in card and "token=abc" not in card  # endpoints lose credentials and query strings


def test_push_to_hub_uploads_our_card(tiny_model_path, tmp_path, monkeypatch):
    uploads = []

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            return SimpleNamespace(repo_id=repo_id)

        def upload_folder(self, repo_id, folder_path, **kwargs):
            uploads.append(
                (
                    repo_id,
                    (tmp_path / "out" / "README.md").read_text(),
                    sorted(p.name for p in (tmp_path / "out").iterdir()),
                )
            )
            return SimpleNamespace(commit_url="https://hub.example/commit/1")

    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: FakeApi())
    dataset = Dataset.from_list(make_rubric_rows(4))
    args = RGSDConfig(**_common(tmp_path), push_to_hub=True, hub_model_id="someone/tiny-rgsd")
    trainer = RGSDTrainer(tiny_model_path, args=args, train_dataset=dataset)
    trainer.train()
    trainer.push_to_hub(dataset_name="someone/rubrics")
    repo_id, card, files = uploads[-1]
    assert repo_id == "someone/tiny-rgsd"
    assert "Rubric-Guided Self-Distillation" in card and "Dataset: `someone/rubrics`" in card
    assert "model.safetensors" in files and "README.md" in files


def test_lora_card_names_the_source_model_not_the_local_folder_and_says_lora(tiny_model_path, tmp_path):
    import shutil

    from peft import LoraConfig

    local = tmp_path / "cache" / "converted-model"  # a local copy that names its Hub source, as smollm2:// does
    shutil.copytree(tiny_model_path, local)
    (local / "README.md").write_text("---\nbase_model: org/source-model\n---\n\nA local copy.\n")
    dataset = Dataset.from_list(make_rubric_rows(4))
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = RGSDTrainer(str(local), args=RGSDConfig(**_common(tmp_path)), train_dataset=dataset, peft_config=lora)
    card = str(build_model_card(trainer, model_name="tiny-lora"))
    assert "| base model | org/source-model |" in card and str(local) not in card
    assert "| adapter | LoRA (PEFT), r=4, alpha=8, on q_proj, v_proj |" in card
    header = card.split("---")[1]
    assert "base_model: org/source-model" in header and "library_name: peft" in header and "- lora\n" in header


def test_smollm2_folder_names_its_hub_source(tmp_path):
    from trl_rubric.model_card import named_source
    from trl_rubric.real import model as real_model

    real_model._write_source_card(tmp_path)
    assert named_source(str(tmp_path)) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert named_source(str(tmp_path / "absent")) is None
