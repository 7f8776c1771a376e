"""Every shipped recipe parses into valid configs, and every key in it is a documented field."""

import glob
import os

import pytest
import yaml

RECIPES = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "recipes", "*.yaml")))
#: Recipes that name a model to train or evaluate (rubrics_* configure `trl-rubric rubrics`, authoring).
MODEL_RECIPES = [p for p in RECIPES if not os.path.basename(p).startswith("rubrics")]
ACCELERATE = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "recipes", "accelerate", "*.yaml")))


def _parser_for(name):
    from trl_rubric.scripts import grpo, rgsd

    if name.startswith("rgsd") or name == "toy.yaml":
        return rgsd.make_parser()
    if name.startswith("grpo"):
        return grpo.make_parser()
    if name.startswith("rubrics"):
        from trl_rubric.scripts import rubrics

        return rubrics.make_parser()
    if name.startswith("gap"):
        from trl_rubric.scripts import gap

        return gap.make_parser()
    from trl_rubric.scripts import eval as eval_script

    return eval_script.make_parser()


def test_recipes_exist():
    names = {os.path.basename(p) for p in RECIPES}
    assert {"toy.yaml", "eval_healthbench.yaml"} <= names
    assert sum(n.startswith("rgsd_") for n in names) >= 8
    assert sum(n.startswith("grpo_judge_") for n in names) >= 3
    assert {os.path.basename(p) for p in ACCELERATE} == {
        "single_gpu.yaml",
        "multi_gpu.yaml",
        "zero2.yaml",
        "zero3.yaml",
        "fsdp2.yaml",
    }


@pytest.mark.parametrize("path", RECIPES, ids=os.path.basename)
def test_recipe_parses_with_every_key_consumed(path):
    name = os.path.basename(path)
    with open(path) as f:
        text = f.read()
    header = text.split("\n\n", 1)[0]
    for topic in ("Reproduces", "Hardware"):
        assert topic in header, f"{name}: header comment must state {topic}"
    assert "LoRA" in text or "lora" in text
    # GPU recipes ask for bf16, which a CPU machine refuses; the override is only for parsing here.
    overrides = [] if "use_cpu: true" in text or name.startswith(("eval", "gap", "rubrics")) else ["--bf16", "false"]
    *configs, remaining = _parser_for(name).parse_args_and_config(
        ["--config", path, *overrides], return_remaining_strings=True
    )
    assert remaining == [], f"{name}: unknown keys {remaining}"
    values = yaml.safe_load(text)
    parsed = {}
    for config in configs:
        parsed.update(vars(config))
    for key, value in values.items():
        if key in ("bf16", "report_to"):  # normalised by TrainingArguments (report_to "none" -> [])
            continue
        got = parsed[key]
        if isinstance(value, list) and isinstance(got, str):
            got = got.split(",")
        assert got == value or str(got) == str(value), f"{name}: {key} = {got!r}, recipe says {value!r}"


@pytest.mark.parametrize("path", ACCELERATE, ids=os.path.basename)
def test_accelerate_configs_are_valid_yaml_with_a_comment(path):
    with open(path) as f:
        text = f.read()
    assert text.startswith("#")
    config = yaml.safe_load(text)
    assert config["distributed_type"] in {"NO", "MULTI_GPU", "DEEPSPEED", "FSDP"}


def test_toy_recipe_trains_on_cpu(tmp_path):
    from trl_rubric.cli import main

    recipe = os.path.join(os.path.dirname(__file__), "..", "recipes", "toy.yaml")
    out = tmp_path / "toy"
    assert main(["rgsd", "--config", recipe, "--output_dir", str(out), "--max_steps", "2"]) == 0
    assert (out / "model.safetensors").exists()
    card = (out / "README.md").read_text()
    assert "Rubric-Guided Self-Distillation" in card and "| train judge calls | 0 |" in card


@pytest.mark.parametrize("command", ["eval", "gap"])
@pytest.mark.parametrize("path", MODEL_RECIPES, ids=os.path.basename)
def test_eval_and_gap_read_every_recipe_with_shared_fields_carried_over(path, command):
    from trl_rubric.scripts import eval as eval_script
    from trl_rubric.scripts import gap as gap_script

    make_parser = eval_script.make_parser if command == "eval" else gap_script.make_parser
    args, judge_args = eval_script.parse_command_args(command, make_parser, ["--config", path])
    with open(path) as f:
        values = yaml.safe_load(f)
    # A concept has one name in every command, so what the recipe says about it reaches eval and gap as is.
    for key in ("model_name_or_path", "dataset_name", "max_completion_length", "temperature", "judge_model"):
        if key in values:
            assert getattr(args if hasattr(args, key) else judge_args, key) == values[key], (key, command)


@pytest.mark.parametrize("path", RECIPES, ids=os.path.basename)
def test_loading_a_recipe_warns_of_nothing_deprecated(path, caplog):
    import logging
    import warnings

    from trl_rubric.scripts import eval as eval_script

    name = os.path.basename(path)
    with open(path) as f:
        text = f.read()
    overrides = [] if "use_cpu: true" in text or name.startswith(("eval", "gap", "rubrics")) else ["--bf16", "false"]
    caplog.set_level(logging.WARNING)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if name.startswith(("eval", "gap")):
            command = name.split("_", 1)[0]
            eval_script.parse_command_args(command, lambda: _parser_for(name), ["--config", path])
        else:
            _parser_for(name).parse_args_and_config(["--config", path, *overrides], return_remaining_strings=True)
    deprecated = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
    assert [str(w.message) for w in caught if issubclass(w.category, deprecated)] == [], name
    assert "deprecated" not in caplog.text, name


def test_step_times_are_stated_once_in_docs_recipes_md_not_in_recipe_headers():
    import re

    step_time = re.compile(r"(second|minute|\b\d+(\.\d+)?\s?s\b)[^\n]{0,20}\b(per|a) step", re.IGNORECASE)
    for path in RECIPES:
        with open(path) as f:
            header = f.read().split("\n\n", 1)[0]
        assert not step_time.search(header), f"{os.path.basename(path)}: state the step time in docs/recipes.md"
    docs = open(os.path.join(os.path.dirname(__file__), "..", "docs", "recipes.md")).read()
    row = next(line for line in docs.splitlines() if "`rgsd_smollm2.yaml`" in line)
    assert step_time.search(row)
