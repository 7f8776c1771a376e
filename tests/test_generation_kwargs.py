"""Decoding with extra `model.generate` arguments in evaluation (`generation_kwargs`, `trl-rubric eval
--generation_kwargs`): a repetition constraint applied the same way to every model being compared."""

from __future__ import annotations

import json
import sys
import types

import pytest

from trl_rubric.evaluation import (
    EvaluationError,
    compare_eval_runs,
    evaluate,
    generate_responses,
    load_model_and_tokenizer,
)
from trl_rubric.evaluation.generation import VLLMGenerator, check_generation_kwargs
from trl_rubric.judges import RuleJudge

PROMPTS = ["hi", "explain the fever dose risk for the patient in detail", "why does the gene matter"]


def repeated_ngrams(ids: list[int], n: int) -> int:
    grams = [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]
    return len(grams) - len(set(grams))


def rows():
    rubric = [{"text": "mentions fever", "weight": 1.0, "category": "essential", "tags": ["rule:contains:fever"]}]
    return [{"prompt": p, "rubric": rubric} for p in PROMPTS]


def test_no_repeat_ngram_reaches_generate_and_removes_the_repeats_plain_decoding_makes(tiny):
    import torch

    model, tokenizer = tiny
    plain = generate_responses(model, tokenizer, PROMPTS, 40, 3, temperature=0, progress=False)
    constrained = generate_responses(
        model, tokenizer, PROMPTS, 40, 3, temperature=0, progress=False,
        generation_kwargs={"no_repeat_ngram_size": 2},
    )  # fmt: skip
    # Greedy decoding of a tiny random model loops: the constraint has something to remove.
    assert sum(repeated_ngrams(ids, 2) for ids in plain.token_ids) > 0
    for prompt, ids in zip(PROMPTS, constrained.token_ids, strict=True):
        # transformers bans a repeat over the whole sequence the model reads: prompt (chat template) and answer.
        from trl_rubric.evaluation.generation import _prompt_ids

        assert repeated_ngrams(_prompt_ids(tokenizer, prompt) + ids, 2) <= repeated_ngrams(
            _prompt_ids(tokenizer, prompt), 2
        )
    # Reference: the same prompt decoded by model.generate directly with the argument, one prompt, no padding.
    from trl_rubric.evaluation.generation import _prompt_ids

    ids = torch.tensor([_prompt_ids(tokenizer, PROMPTS[1])])
    direct = model.generate(ids, max_new_tokens=40, do_sample=False, no_repeat_ngram_size=2,
                            pad_token_id=tokenizer.pad_token_id or 0)[0, ids.shape[1] :].tolist()  # fmt: skip
    eos = tokenizer.eos_token_id
    direct = direct[: direct.index(eos)] if eos in direct else direct
    assert constrained.token_ids[1] == direct


@pytest.mark.parametrize("key", ["temperature", "max_new_tokens", "do_sample", "eos_token_id", "input_ids"])
def test_arguments_evaluation_sets_itself_are_refused_by_name(tiny, key):
    model, tokenizer = tiny
    with pytest.raises(EvaluationError, match=repr(key)):
        generate_responses(model, tokenizer, PROMPTS, 4, progress=False, generation_kwargs={key: 1})
    with pytest.raises(EvaluationError, match="argument names"):
        check_generation_kwargs({3: 1})
    assert check_generation_kwargs(None) == {} and check_generation_kwargs({"top_k": 5}) == {"top_k": 5}


def test_evaluate_records_the_arguments_and_refuses_them_beside_a_generate_fn(tiny):
    model, tokenizer = tiny
    kwargs = {"no_repeat_ngram_size": 2}
    result = evaluate(model, rows(), RuleJudge(), tokenizer=tokenizer, max_new_tokens=30, temperature=0,
                      progress=False, generation_kwargs=kwargs)  # fmt: skip
    assert result.config["generation_kwargs"] == kwargs
    expected = generate_responses(model, tokenizer, PROMPTS, 30, 8, temperature=0, progress=False,
                                  generation_kwargs=kwargs)  # fmt: skip
    assert [ex["response"] for ex in result.examples] == expected.texts
    plain = evaluate(model, rows(), RuleJudge(), tokenizer=tokenizer, max_new_tokens=30, temperature=0, progress=False)
    assert plain.config["generation_kwargs"] == {}
    assert [ex["response"] for ex in plain.examples] != expected.texts
    with pytest.raises(EvaluationError, match="generate_fn"):
        evaluate(None, rows(), RuleJudge(), generate_fn=lambda ps: ["x"] * len(ps), generation_kwargs=kwargs)


def _run(folder, generation_kwargs="absent"):
    folder.mkdir()
    (folder / "responses.jsonl").write_text(
        "".join(json.dumps({"prompt": p, "score": 0.5, "failed": False, "response": "x"}) + "\n" for p in PROMPTS)
    )
    config = {"seed": 0, "dataset_name": "d"}
    if generation_kwargs != "absent":
        config["generation_kwargs"] = generation_kwargs
    (folder / "results.json").write_text(json.dumps({"config": config}))
    return folder


def test_compare_flags_runs_decoded_differently_and_reads_older_runs_as_plain(tmp_path):
    old = _run(tmp_path / "old")  # written before the option existed
    plain = _run(tmp_path / "plain", {})
    ngram = _run(tmp_path / "ngram", {"no_repeat_ngram_size": 3})
    assert compare_eval_runs(old, plain).settings_differ == {}
    assert compare_eval_runs(plain, ngram).settings_differ == {"generation_kwargs": ({}, {"no_repeat_ngram_size": 3})}


def test_eval_cli_decodes_with_the_arguments_and_records_them(tiny_model_path, tmp_path, capsys):
    from trl_rubric.cli import main

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows()))
    common = ["--model_name_or_path", tiny_model_path, "--dataset_name", str(data), "--judge_backend", "rule",
              "--max_completion_length", "30", "--temperature", "0", "--bootstrap_samples", "20",
              "--plots", "false", "--progress", "false"]  # fmt: skip
    out = tmp_path / "eval"
    code = main(["eval", *common, "--output_dir", str(out), "--generation_kwargs", '{"no_repeat_ngram_size": 2}'])
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["generation_kwargs"] == {"no_repeat_ngram_size": 2}
    model, tokenizer = load_model_and_tokenizer(tiny_model_path, device="cpu")
    lines = [json.loads(line) for line in (out / "responses.jsonl").read_text().splitlines()]
    expected = generate_responses(model, tokenizer, [r["prompt"] for r in lines], 30, 8, temperature=0,
                                  progress=False, generation_kwargs={"no_repeat_ngram_size": 2})  # fmt: skip
    assert [r["response"] for r in lines] == expected.texts


@pytest.mark.parametrize(
    "value, message",
    [("{no json", "not JSON"), ("[4]", "expected a JSON object"), ('{"temperature": 0.1}', "'temperature'")],
)
def test_eval_cli_refuses_bad_generation_kwargs_before_loading_anything(tmp_path, capsys, value, message):
    from trl_rubric.cli import main

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows()))
    code = main(["eval", "--model_name_or_path", str(tmp_path / "no-model-needed"), "--dataset_name", str(data),
                 "--judge_backend", "rule", "--output_dir", str(tmp_path / "out"), "--generation_kwargs", value])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and err.startswith("trl-rubric eval: error: ")
    # The bad option is named even though the model path does not exist: it is checked first.
    assert message in err and "generation_kwargs" in err


class StrictSamplingParams:
    """Like `vllm.SamplingParams`: known fields only, an unknown keyword is a TypeError."""

    def __init__(self, max_tokens=16, temperature=1.0, top_p=1.0, seed=None, repetition_penalty=1.0):
        self.max_tokens, self.temperature, self.top_p, self.seed = max_tokens, temperature, top_p, seed
        self.repetition_penalty = repetition_penalty


def test_vllm_generator_passes_the_arguments_to_sampling_params_and_names_unknown_ones(monkeypatch):
    built = []
    fake = types.ModuleType("vllm")
    fake.SamplingParams = StrictSamplingParams
    fake.LLM = lambda **kwargs: built.append(kwargs)
    monkeypatch.setitem(sys.modules, "vllm", fake)
    generator = VLLMGenerator("model", tokenizer=None, sampling_kwargs={"repetition_penalty": 1.3}, seed=4)
    assert generator.sampling.repetition_penalty == 1.3 and generator.sampling.seed == 4 and len(built) == 1
    with pytest.raises(EvaluationError, match="no_repeat_ngram_size"):
        VLLMGenerator("model", tokenizer=None, sampling_kwargs={"no_repeat_ngram_size": 3})
    assert len(built) == 1  # refused before the engine is built


def test_a_recipe_gives_generation_kwargs_as_a_mapping(tiny_model_path, tmp_path, capsys):
    import yaml

    from trl_rubric.cli import main

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows()))
    recipe = tmp_path / "eval.yaml"
    recipe.write_text(yaml.safe_dump({
        "model_name_or_path": tiny_model_path, "dataset_name": str(data), "judge_backend": "rule",
        "max_completion_length": 12, "temperature": 0, "bootstrap_samples": 0, "plots": False, "progress": False,
        "output_dir": str(tmp_path / "out"), "generation_kwargs": {"no_repeat_ngram_size": 3},
    }))  # fmt: skip
    assert main(["eval", "--config", str(recipe)]) == 0, capsys.readouterr().err
    config = json.loads((tmp_path / "out" / "results.json").read_text())["config"]
    assert config["generation_kwargs"] == {"no_repeat_ngram_size": 3}
