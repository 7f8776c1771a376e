"""The second phase of a two-phase run in the RGSD tuning benchmarks: `rgsd_sweep.py` `init_from=` (a saved student
merged into a start folder that the new adapter names) and `teacher=base`, and `decode_rescore.py` loading such a
student as it was trained."""

import json
import os

import pytest
from benchmark_modules import load_benchmark  # this folder is on sys.path

sweep = load_benchmark("rgsd_sweep")


def _trained_adapter(base, folder, seed=0):
    """A LoRA adapter on `base` (a folder, or a model in memory) with random non-zero weights (B is zero at init,
    which would hide a lost adapter), saved to `folder`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base) if isinstance(base, (str, os.PathLike)) else base
    student = get_peft_model(model, LoraConfig(r=4, lora_alpha=8))
    with torch.no_grad():
        for name, p in student.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)
    student.save_pretrained(folder)
    return str(folder)


def _logits_of(model):
    import torch
    from transformers import AutoModelForCausalLM

    if isinstance(model, (str, os.PathLike)):
        model = AutoModelForCausalLM.from_pretrained(model)
    with torch.no_grad():
        return model(torch.tensor([[1, 5, 9, 3, 7]])).logits


def test_sweep_init_from_starts_at_a_saved_student_merged_into_the_base(tiny_model_path, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    assert sweep.starting_model(tiny_model_path, {}) == tiny_model_path  # no init_from: the base folder, as before
    adapter = _trained_adapter(tiny_model_path, tmp_path / "student")
    want = _logits_of(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_path), adapter))
    got = sweep.starting_model(tiny_model_path, {"init_from": adapter}, str(tmp_path / "run" / "_start_model"))
    assert got == str(tmp_path / "run" / "_start_model")  # a folder: the run's own adapter will name it
    assert not os.path.exists(os.path.join(got, "adapter_config.json"))  # merged: the new LoRA goes on a plain model
    assert torch.allclose(_logits_of(got), want, atol=1e-4)
    assert not torch.allclose(want, _logits_of(tiny_model_path), atol=1e-3)
    AutoModelForCausalLM.from_pretrained(got).save_pretrained(tmp_path / "full")
    assert sweep.starting_model(tiny_model_path, {"init_from": str(tmp_path / "full")}) == str(tmp_path / "full")
    with pytest.raises(ValueError, match="start_dir"):
        sweep.starting_model(tiny_model_path, {"init_from": adapter})
    with pytest.raises(SystemExit, match="init_from='/nowhere'"):
        sweep.starting_model(tiny_model_path, {"init_from": "/nowhere"})
    assert sweep.config_overrides({"init_from": "x", "learning_rate": "1e-3"}) == {"learning_rate": 1e-3}
    with pytest.raises(SystemExit):  # refused when the arguments are read, before the base model is scored
        sweep.parse_args(["--settings", "two:init_from=/nowhere"])
    assert sweep.parse_args(["--settings", f"two:init_from={adapter}"]).parsed[0][1]["init_from"]


def test_a_second_phase_student_saved_by_the_sweep_loads_as_the_model_it_trained(tiny_model_path, tmp_path):
    # A second phase's saved adapter must name the merged first phase as its base: one trained on a start merged in
    # memory named the plain base, and loaded (decode_rescore.py, trl-rubric eval) without the first phase.
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer

    from trl_rubric import RGSDConfig, RGSDTrainer
    from trl_rubric.evaluation import load_model_and_tokenizer
    from trl_rubric.testing import make_rubric_rows

    pairs = {"init_from": _trained_adapter(tiny_model_path, tmp_path / "phase1"), "learning_rate": "1e-3"}
    args = sweep.parse_args(["--settings", "two:" + ",".join(f"{k}={v}" for k, v in pairs.items()), "--steps", "1",
                             "--prompts_per_step", "2", "--output_dir", str(tmp_path / "sweep")])  # fmt: skip
    config = RGSDConfig(**{**sweep.setting_kwargs(args, "two", args.parsed[0][1]), "max_completion_length": 4})
    start = sweep.starting_model(tiny_model_path, pairs, str(tmp_path / "sweep" / "two" / sweep.START_MODEL_DIR))
    trainer = RGSDTrainer(start, args=config, processing_class=AutoTokenizer.from_pretrained(tiny_model_path),
                          train_dataset=Dataset.from_list(make_rubric_rows(2)), peft_config=LoraConfig(r=4, lora_alpha=8))  # fmt: skip
    with torch.no_grad():  # as if trained: the second phase's own adapter moves the outputs
        for name, p in trainer.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)
    trainer.save_model(str(tmp_path / "sweep" / "two" / "student"))
    loaded, _ = load_model_and_tokenizer(str(tmp_path / "sweep" / "two" / "student"), dtype="float32", device="cpu")
    trained = _logits_of(trainer.model)
    assert torch.allclose(_logits_of(loaded), trained, atol=1e-4)
    with trainer.model.disable_adapter():  # the first phase is in the loaded student, not only the second
        assert not torch.allclose(_logits_of(trainer.model), _logits_of(tiny_model_path), atol=1e-3)


def test_decode_rescore_puts_an_older_second_phase_adapter_on_its_first_phase(tiny_model_path, tmp_path):
    # Saved before the sweep merged its start into a folder: the adapter names the plain base, but was trained on the
    # first phase merged in memory; decode_rescore must load it on that model, as it was trained.
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from trl_rubric.evaluation import load_model_and_tokenizer

    rescore = load_benchmark("decode_rescore")
    phase1 = _trained_adapter(tiny_model_path, tmp_path / "phase1", seed=1)
    merged = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_path), phase1
    ).merge_and_unload()
    old = _trained_adapter(merged, tmp_path / "old", seed=2)  # names tiny_model_path
    trained = _logits_of(PeftModel.from_pretrained(merged, old))
    wrong = _logits_of(load_model_and_tokenizer(old, dtype="float32", device="cpu")[0])
    assert not torch.allclose(wrong, trained, atol=1e-3)  # the trap: loaded plainly, the first phase is lost
    assert torch.allclose(_logits_of(rescore.load_student(old, init_from=phase1)), trained, atol=1e-4)
    start = sweep.starting_model(tiny_model_path, {"init_from": phase1}, str(tmp_path / "run" / "_start_model"))
    new = _trained_adapter(start, tmp_path / "new", seed=2)  # names the merged folder: loaded as it is
    want = _logits_of(load_model_and_tokenizer(new, dtype="float32", device="cpu")[0])
    assert torch.allclose(_logits_of(rescore.load_student(new, init_from=phase1)), want, atol=1e-5)
    assert torch.allclose(want, trained, atol=1e-4)  # the same weights, merged in a folder or in memory
    settings = {"world": "health", "seed": 1, "eval_prompts": 1, "heldout_prompts": 1, "eval_samples": 1,
                "max_completion_length": 8, "temperature": 0.7, "settings": [f"two:init_from={phase1},seed=1", "one:"]}  # fmt: skip
    (tmp_path / "results.json").write_text(json.dumps({"settings": settings, "gap_train": 0.2}))
    assert rescore.sweep_setup(str(tmp_path), "two")["init_from"] == phase1
    assert rescore.sweep_setup(str(tmp_path), "one")["init_from"] is None


def test_sweep_teacher_base_makes_smollm2_the_teacher_of_a_second_phase(tiny_model_path, tmp_path):
    # teacher=base: the run starts at the saved student but its frozen teacher is the base model, a separate model
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_rubric import RGSDConfig, RGSDTrainer
    from trl_rubric.testing import make_rubric_rows

    torch.manual_seed(0)
    student = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_path), LoraConfig(r=4, lora_alpha=8))
    with torch.no_grad():
        for name, p in student.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)
    student.save_pretrained(tmp_path / "student")
    pairs = {"init_from": str(tmp_path / "student"), "teacher": "base", "learning_rate": "1e-3"}
    args = sweep.parse_args(["--settings", "two:" + ",".join(f"{k}={v}" for k, v in pairs.items()), "--steps", "1",
                             "--prompts_per_step", "2", "--output_dir", str(tmp_path / "sweep")])  # fmt: skip
    kwargs = sweep.setting_kwargs(args, "two", args.parsed[0][1], base_path=tiny_model_path)
    assert kwargs["teacher_model_name_or_path"] == tiny_model_path
    assert "teacher_model_name_or_path" not in sweep.setting_kwargs(args, "two", {"init_from": "x"}, tiny_model_path)
    config = RGSDConfig(**{**kwargs, "max_completion_length": 4})
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    trainer = RGSDTrainer(sweep.starting_model(tiny_model_path, pairs, str(tmp_path / "start")), args=config, processing_class=tokenizer,
                          train_dataset=Dataset.from_list(make_rubric_rows(2)), peft_config=LoraConfig(r=4, lora_alpha=8))  # fmt: skip
    ids = torch.tensor([[1, 5, 9, 3, 7]])
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    teacher = trainer.accelerator.unwrap_model(trainer.teacher_model)
    with torch.no_grad():
        assert torch.allclose(teacher(ids).logits, base(ids).logits, atol=1e-5)  # the base, not the student
        assert not torch.allclose(trainer.model(ids).logits, base(ids).logits, atol=1e-3)
    for bad in ("two:teacher=base", f"two:teacher=student,init_from={tmp_path / 'student'}"):
        with pytest.raises(SystemExit):  # without init_from the teacher already is the base; no other value
            sweep.parse_args(["--settings", bad])
