"""Training on from a first phase's adapter: `merge_adapter`, the trainers' refusal of adapter folders, and the
command line's merge into `output_dir/_start_model` (whose RGSD teacher is the adapter's model, not its base)."""

import json
import os

import pytest
import torch

from trl_rubric.evaluation import EvaluationError, adapter_base, merge_adapter
from trl_rubric.evaluation.loading import MERGED_FROM_FILE
from trl_rubric.testing import make_rubric_rows

IDS = torch.tensor([[5, 6, 7, 8, 9, 10]])


def _save_adapter(base_path, folder, seed):
    """A LoRA adapter with random non-zero weights (so it changes the outputs), saved to `folder`."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_path), config)
    model.save_pretrained(folder)
    return str(folder)


def _peft_logits(base_path, adapter):
    """The plain reference: the base with the adapter applied through PEFT, unmerged."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), adapter)
    with torch.no_grad():
        return model(input_ids=IDS).logits


def _logits(path):
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        return AutoModelForCausalLM.from_pretrained(path)(input_ids=IDS).logits


def test_merge_adapter_writes_the_adapters_model_and_tokenizer(tiny_model_path, tmp_path):
    from transformers import AutoTokenizer

    adapter = _save_adapter(tiny_model_path, tmp_path / "adapter", seed=1)
    assert adapter_base(adapter) == tiny_model_path and adapter_base(tiny_model_path) is None
    out = merge_adapter(adapter, tmp_path / "merged")
    assert out == str(tmp_path / "merged")
    merged, reference = _logits(out), _peft_logits(tiny_model_path, adapter)
    assert torch.allclose(merged, reference, atol=1e-5)
    assert not torch.allclose(merged, _logits(tiny_model_path), atol=1e-3)  # the adapter's weights, not the base's
    assert (
        AutoTokenizer.from_pretrained(out).chat_template
        == AutoTokenizer.from_pretrained(tiny_model_path).chat_template
    )
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".merging-")]  # staging folder renamed


def test_merge_adapter_reuses_the_same_adapter_and_redoes_another(tiny_model_path, tmp_path):
    first = _save_adapter(tiny_model_path, tmp_path / "first", seed=1)
    second = _save_adapter(tiny_model_path, tmp_path / "second", seed=2)
    out = merge_adapter(first, tmp_path / "merged")
    weights = os.path.join(out, "model.safetensors")
    os.utime(weights, (1, 1))
    merge_adapter(first, out)  # a resumed run, or a second process: reused as it is
    assert os.stat(weights).st_mtime == 1
    merge_adapter(second, out)  # another adapter: merged again
    assert os.stat(weights).st_mtime != 1
    assert torch.allclose(_logits(out), _peft_logits(tiny_model_path, second), atol=1e-5)
    with open(os.path.join(out, MERGED_FROM_FILE)) as f:
        assert json.load(f)["adapter"] == os.path.abspath(second)


def test_merge_adapter_refuses_a_foreign_folder_and_a_non_adapter(tiny_model_path, tmp_path):
    adapter = _save_adapter(tiny_model_path, tmp_path / "adapter", seed=1)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(EvaluationError, match="was not written by merge_adapter"):
        merge_adapter(adapter, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    with pytest.raises(EvaluationError, match="not a PEFT adapter folder"):
        merge_adapter(tiny_model_path, tmp_path / "out")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = None
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(EvaluationError, match="names no base_model_name_or_path"):
        merge_adapter(adapter, tmp_path / "out")


def _rows():
    from datasets import Dataset

    return Dataset.from_list(make_rubric_rows(4))


def test_trainers_refuse_an_adapter_folder_with_the_fix(tiny_model_path, tmp_path):
    from trl_rubric import RGSDConfig, RGSDTrainer, RubricGRPOConfig, RubricGRPOTrainer

    adapter = _save_adapter(tiny_model_path, tmp_path / "adapter", seed=1)
    args = RGSDConfig(str(tmp_path / "out"), use_cpu=True, bf16=False, report_to="none")
    with pytest.raises(ValueError, match=r"model .*adapter.* is a PEFT adapter folder.*merge_adapter"):
        RGSDTrainer(adapter, args=args, train_dataset=_rows())
    with pytest.raises(ValueError, match=r"teacher_model .* is a PEFT adapter folder"):
        RGSDTrainer(tiny_model_path, args=args, train_dataset=_rows(), teacher_model=adapter)
    grpo_args = RubricGRPOConfig(
        str(tmp_path / "grpo"), use_cpu=True, bf16=False, report_to="none", judge_backend="rule", num_generations=2
    )
    with pytest.raises(ValueError, match="RubricGRPOTrainer: model .* is a PEFT adapter folder"):
        RubricGRPOTrainer(adapter, args=grpo_args, train_dataset=_rows())


def test_rgsd_command_starts_from_an_adapter_merged_and_its_teacher_is_that_model(
    tiny_model_path, tmp_path, monkeypatch
):
    """`trl-rubric rgsd --model_name_or_path <adapter>` trains on from the adapter: the policy starts at the adapter's
    weights, and the frozen teacher (the LoRA policy with its adapters disabled) is the adapter's model, not the base
    the adapter was trained on."""
    from trl_rubric.scripts import _common, rgsd

    adapter = _save_adapter(tiny_model_path, tmp_path / "phase1", seed=1)
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in make_rubric_rows(4)))
    out = tmp_path / "phase2"
    monkeypatch.chdir(tmp_path)  # a relative output_dir: the adapters saved later name the merged folder absolutely
    argv = [
        "--model_name_or_path", adapter, "--dataset_name", str(rows), "--output_dir", "phase2", "--use_cpu",
        "--bf16", "false", "--report_to", "none", "--max_completion_length", "8", "--per_device_train_batch_size", "2",
        "--use_peft", "--lora_r", "4", "--lora_target_modules", "q_proj", "v_proj",
    ]  # fmt: skip
    *parsed, _ = rgsd.make_parser().parse_args_and_config(argv, return_remaining_strings=True)
    trainer = rgsd.build_trainer(*parsed)
    start = str(out / _common.START_MODEL_DIR)
    assert parsed[3].model_name_or_path == start
    reference = _peft_logits(tiny_model_path, adapter)
    model = trainer.model
    with torch.no_grad():
        policy = model(input_ids=IDS).logits
        with model.disable_adapter():
            teacher = model(input_ids=IDS).logits
    assert torch.allclose(policy, reference, atol=1e-5)  # a fresh LoRA starts at zero
    assert torch.allclose(teacher, reference, atol=1e-5)
    assert not torch.allclose(teacher, _logits(tiny_model_path), atol=1e-3)
    assert _common.START_MODEL_DIR.startswith("_")  # Trainer.push_to_hub skips "_*": the merged copy stays local


def test_command_line_refuses_a_bad_adapter_in_one_line(tiny_model_path, tmp_path, capsys):
    from trl_rubric.scripts import rgsd

    adapter = _save_adapter(tiny_model_path, tmp_path / "phase1", seed=1)
    (tmp_path / "phase2" / "_start_model").mkdir(parents=True)
    (tmp_path / "phase2" / "_start_model" / "x").write_text("not ours")
    argv = ["--model_name_or_path", adapter, "--dataset_name", "toy://train", "--output_dir", str(tmp_path / "phase2")]
    assert rgsd.main([*argv, "--use_cpu", "--bf16", "false"]) == 2
    err = capsys.readouterr().err
    assert "model_name_or_path" in err and "was not written by merge_adapter" in err


def test_merged_folder_names_the_root_model_for_model_cards(tiny_model_path, tmp_path):
    """A card of a run that starts from the merged folder names the model the base came from (its README's
    `base_model`, as `smollm2://` writes it), not the local merged folder."""
    import shutil

    from trl_rubric.evaluation.loading import named_source

    base = tmp_path / "base"
    shutil.copytree(tiny_model_path, base)
    (base / "README.md").write_text("---\nbase_model: HuggingFaceTB/SmolLM2-135M-Instruct\n---\n\nA copy.\n")
    adapter = _save_adapter(str(base), tmp_path / "adapter", seed=1)
    out = merge_adapter(adapter, tmp_path / "merged")
    assert named_source(out) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    plain = merge_adapter(_save_adapter(tiny_model_path, tmp_path / "plain", seed=1), tmp_path / "merged_plain")
    assert named_source(plain) == tiny_model_path  # no name to carry: the base folder itself
