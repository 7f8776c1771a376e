"""The offline rubric world: generator, rule judge and rubric formats agree; the toy model has a conditioning gap."""

import dataclasses
import json
import random
import statistics
from concurrent.futures import ThreadPoolExecutor

import pytest
from transformers import AutoTokenizer

from trl_rubric import Rubric
from trl_rubric.teacher import DEFAULT_TEACHER_PROMPT_TEMPLATE, build_teacher_prompt
from trl_rubric.toy import (
    TEACHER_PROMPT_TEMPLATE,
    TEACHER_RENDER_STYLE,
    ToyModelSettings,
    build_toy_tokenizer,
    encode_example,
    ignoring_response,
    make_world,
    measure_gap,
    minimal_response,
    prepare_toy_model,
    reference_response,
)
from trl_rubric.toy.world import CLOSING_WORD, HEDGE_WORD, LONGEST_RESPONSE, MAX_WORDS


@pytest.fixture(scope="module")
def world():
    return make_world(seed=0)


def test_same_seed_gives_the_same_world_and_another_seed_another(world):
    again = make_world(seed=0)
    assert again.train_rows == world.train_rows and again.heldout_rows == world.heldout_rows
    other = make_world(seed=1)
    assert other.train_rows != world.train_rows


def test_heldout_prompts_are_about_topics_no_train_prompt_mentions(world):
    assert set(world.train_topics).isdisjoint(world.heldout_topics)
    assert {r["topic"] for r in world.train_rows} <= set(world.train_topics)
    assert {r["topic"] for r in world.heldout_rows} <= set(world.heldout_topics)
    prompts = [r["prompt"][0]["content"] for r in world.train_rows]
    assert len(set(prompts)) == len(prompts)  # every train prompt is distinct, so a student can tell them apart


def test_rows_pass_load_rubric_dataset_unchanged_with_self_describing_rules(world):
    dataset = world.train_dataset()
    assert len(dataset) == len(world.train_rows) and len(world.heldout_dataset()) == len(world.heldout_rows)
    for row, raw in zip(dataset, world.train_rows, strict=True):
        assert row["prompt"] == raw["prompt"] and row["topic"] == raw["topic"]
        assert row["rubric"] == Rubric.from_any(raw["rubric"]).to_list()  # already in the normalised form
        assert 2 <= len(row["rubric"]) <= 5
        for criterion in row["rubric"]:
            assert sum(t.startswith("rule:") for t in criterion["tags"]) == 1
            assert ("scope:prompt" in criterion["tags"]) != ("scope:general" in criterion["tags"])
            assert (criterion["weight"] < 0) == (criterion["category"] == "pitfall")
            assert (criterion["weight"] < 0) == ("forbidden" in criterion["text"].split())
        assert any(c["title"] == "required word" for c in row["rubric"])


def test_required_words_vary_across_prompts_and_general_criteria_recur(world):
    rubrics = [r["rubric"] for r in world.train_rows]
    required = [c["text"] for rb in rubrics for c in rb if c["title"] == "required word"]
    assert len(set(required)) > len(required) // 3  # prompt-specific: many different words
    general = [c["text"] for rb in rubrics for c in rb if "scope:general" in c["tags"]]
    assert f"ends with the word {CLOSING_WORD}" in general and f"uses at most {MAX_WORDS} words" in general
    assert f"mentions the forbidden word {HEDGE_WORD}" in general


def test_reference_answers_score_one_and_ignoring_answers_score_far_lower(world):
    rng = random.Random(0)
    judge = world.judge()
    rows = world.train_rows + world.heldout_rows
    prompts = [r["prompt"] for r in rows]
    rubrics = [r["rubric"] for r in rows]
    references = [reference_response(rng, r["topic"], r["rubric"]) for r in rows]
    references += [minimal_response(r["rubric"]) for r in rows]
    prompts, rubrics = prompts * 2, rubrics * 2
    ignoring = [ignoring_response(rng, r["topic"]) for r in rows] * 2
    # Through the judge's public async path, as a trainer or evaluator would call it.
    reference_grades = judge.grade_many_sync(prompts, references, rubrics)
    ignoring_grades = judge.grade_many_sync(prompts, ignoring, rubrics)
    assert all(g.score == 1.0 and g.error is None for g in reference_grades)
    assert statistics.mean(g.score for g in ignoring_grades) < 0.3
    assert all(len(a.split()) <= LONGEST_RESPONSE for a in references + ignoring)


def test_each_criterion_kind_is_checked_by_its_rule(world):
    rubric = next(r["rubric"] for r in world.train_rows if len(r["rubric"]) == 5)
    kinds = {c["title"]: c for c in rubric}
    topic = next(r["topic"] for r in world.train_rows if r["rubric"] == rubric)
    good = reference_response(random.Random(1), topic, rubric)
    assert world.score(good, rubric) == 1.0
    required = kinds["required word"]["tags"][0].rsplit(":", 1)[1]
    broken = {
        "required word": " ".join(w for w in good.split() if w != required),
        "closing word": good + " bye" if "closing word" in kinds else None,
        "length": good + " and" * (MAX_WORDS + 1) if "length" in kinds else None,
        "hedge": good + f" {HEDGE_WORD}" if "hedge" in kinds else None,
    }
    for title, answer in broken.items():
        if answer is None:
            continue
        verdicts = world.judge().verdicts(answer, Rubric.from_any(rubric))
        met = {c["title"]: v for c, v in zip(rubric, verdicts, strict=True)}
        assert met[title] is (kinds[title]["weight"] < 0), (title, answer, met)
        assert world.score(answer, rubric) < 1.0


def test_teacher_view_words_are_single_tokens_after_reload(world, tmp_path):
    tokenizer = build_toy_tokenizer()
    tokenizer.save_pretrained(tmp_path)
    # AutoTokenizer needs the model config to pick Qwen2Tokenizer, as TRL's loading path does.
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    vocab = reloaded.get_vocab()
    pre_tokenize = reloaded.backend_tokenizer.pre_tokenizer.pre_tokenize_str
    for row in world.train_rows[:16] + world.heldout_rows[:16]:
        view = build_teacher_prompt(row["prompt"], row["rubric"], TEACHER_PROMPT_TEMPLATE, TEACHER_RENDER_STYLE)
        text = reloaded.apply_chat_template(view, tokenize=False, add_generation_prompt=True)
        for segment in text.replace("<|im_start|>", "\x00").replace("<|im_end|>", "\x00").split("\x00"):
            pieces = [p for p, _ in pre_tokenize(segment)]
            assert all(p in vocab for p in pieces), [p for p in pieces if p not in vocab]  # no byte-level fallback
        ids = reloaded.apply_chat_template(view, tokenize=True, add_generation_prompt=True, return_dict=True)
        assert ids["input_ids"] == tokenizer(text, add_special_tokens=False).input_ids
    assert TEACHER_PROMPT_TEMPLATE == DEFAULT_TEACHER_PROMPT_TEMPLATE and TEACHER_RENDER_STYLE == "numbered"


def test_training_examples_use_trl_prompt_layout_and_decode_to_the_answer(world):
    tokenizer = build_toy_tokenizer()
    row = world.train_rows[0]
    answer = reference_response(random.Random(0), row["topic"], row["rubric"])
    ids, start = encode_example(tokenizer, row["prompt"], answer)
    prompt = tokenizer.apply_chat_template(row["prompt"], tokenize=True, add_generation_prompt=True, return_dict=True)
    assert ids[:start] == list(prompt["input_ids"])
    assert ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids[start:], skip_special_tokens=True).strip() == answer
    assert len(ids) - start == len(answer.split()) + 1  # one token per word, plus <|im_end|>


@pytest.fixture(scope="module")
def quick_model(tmp_path_factory):
    cache = tmp_path_factory.mktemp("toy-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRL_RUBRIC_CACHE", str(cache))
        path = prepare_toy_model(seed=0, quick=True, progress=False)
        yield path, cache


def test_prepared_model_is_cached_by_settings_and_reused(quick_model):
    path, cache = quick_model
    assert path.startswith(str(cache))
    meta_file = f"{path}/toy_model.json"
    meta = json.loads(open(meta_file).read())
    assert meta["key"]["settings"] == json.loads(json.dumps(ToyModelSettings.quick().__dict__))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRL_RUBRIC_CACHE", str(cache))
        assert prepare_toy_model(seed=0, quick=True, progress=False) == path  # no retraining: same directory
        other = prepare_toy_model(
            seed=0, settings=dataclasses.replace(ToyModelSettings.quick(), steps=1), progress=False
        )
    assert other != path
    assert [p.name for p in cache.iterdir() if ".tmp-" in p.name] == []  # staging directories are gone


def test_quick_model_answers_better_with_the_rubric_in_context(quick_model, world):
    path, _ = quick_model
    report = measure_gap(path, world, n=2, seed=0)
    train = report["train"]
    assert train["num_samples"] == 2 * len(world.train_rows)
    assert train["gap"] == pytest.approx(train["score_with_rubric"] - train["score_without_rubric"])
    assert train["gap"] > 0.05, report
    assert report["heldout"]["gap"] > 0.0, report


def test_concurrent_preparations_share_one_complete_checkpoint(tmp_path):
    settings = dataclasses.replace(ToyModelSettings.quick(), steps=2, batch_size=2)
    with ThreadPoolExecutor(2) as pool:
        paths = list(
            pool.map(lambda _: prepare_toy_model(tmp_path / "toy", settings=settings, progress=False), [0, 1])
        )
    assert paths[0] == paths[1] == str(tmp_path / "toy")
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["toy"]
    meta = json.loads((tmp_path / "toy" / "toy_model.json").read_text())
    assert meta["key"]["settings"]["steps"] == 2
    assert AutoTokenizer.from_pretrained(paths[0]).eos_token == "<|im_end|>"
