"""RGSDConfig.rollout_degeneration_guard: rollouts sampled through the degeneration guard equal `model.generate`
called with a fresh guard, the model's own `generate` comes back afterwards, the config refuses what cannot run it, and
training logs the bans."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from transformers import LogitsProcessorList

from trl_rubric.evaluation import DegenerationGuard
from trl_rubric.testing import make_rubric_rows, rgsd_test_config
from trl_rubric.trainers.rollout_guard import guarded_generate


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"rollout_degeneration_guard": -1}, "rollout_degeneration_guard is -1"),
        ({"rollout_degeneration_guard": True}, "rollout_degeneration_guard is True"),
        ({"rollout_degeneration_guard": 3, "use_vllm": True}, "vLLM and continuous batching"),
    ],
)
def test_config_refuses_what_the_guard_cannot_run(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        rgsd_test_config(tmp_path, **overrides)


def _trainer(tiny_model_path, tmp_path, guard, length=24, rows=4):
    from trl_rubric.trainers.rgsd import RGSDTrainer

    args = rgsd_test_config(
        tmp_path / "out", rollout_degeneration_guard=guard, max_completion_length=length,
        generation_kwargs={"do_sample": False},
    )  # fmt: skip
    data = make_rubric_rows(rows)
    return RGSDTrainer(tiny_model_path, args=args, train_dataset=Dataset.from_list(data)), data


def _greedy(model, prompt_ids, n, eos, processors=None):
    ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                             logits_processor=processors)  # fmt: skip
    completion = out[0, len(prompt_ids) :].tolist()
    ends = [i for i, tok in enumerate(completion) if tok in eos]
    return completion[: ends[0] + 1] if ends else completion


def test_rollouts_equal_generate_with_a_fresh_guard_and_differ_from_plain_ones(tiny_model_path, tmp_path):
    trainer, rows = _trainer(tiny_model_path, tmp_path, guard=2)
    trainer.model.train()
    batch = trainer._generate_and_score_completions(rows)
    policy = trainer.accelerator.unwrap_model(trainer.model)
    assert "generate" not in vars(policy)  # the wrapper is gone after the rollout
    tokenizer = trainer.processing_class
    prompt_ids, _, _ = trainer._tokenize_prompts([r["prompt"] for r in rows])
    eos = set(trainer.eos_token_ids)
    changed = 0
    for i in range(len(rows)):
        got = batch["completion_ids"][i][batch["completion_mask"][i].bool()].tolist()
        fresh = DegenerationGuard(tokenizer, no_repeat_ngram_size=2, eos_token_ids=sorted(eos))
        assert got == _greedy(policy, prompt_ids[i], 24, eos, LogitsProcessorList([fresh]))
        changed += got != _greedy(policy, prompt_ids[i], 24, eos)
        # What the guard forbids never happens in a guarded rollout: each next token was allowed where it was sampled.
        assert all(got[t] not in fresh.bans(got[:t]) for t in range(len(got)))
    assert changed >= 1  # the tiny model's plain greedy answers repeat, so the guard had something to forbid
    bans = trainer._metrics["train"]["rgsd/rollout_guard_mass"]
    assert len(bans) == 1 and bans[0] > 0


def test_without_the_guard_rollouts_are_plain_generate(tiny_model_path, tmp_path):
    trainer, rows = _trainer(tiny_model_path, tmp_path, guard=None, rows=2)
    trainer.model.train()
    batch = trainer._generate_and_score_completions(rows)
    policy = trainer.accelerator.unwrap_model(trainer.model)
    prompt_ids, _, _ = trainer._tokenize_prompts([r["prompt"] for r in rows])
    for i in range(len(rows)):
        got = batch["completion_ids"][i][batch["completion_mask"][i].bool()].tolist()
        assert got == _greedy(policy, prompt_ids[i], 24, set(trainer.eos_token_ids))
    assert "rgsd/rollout_guard_mass" not in trainer._metrics["train"]


class _Model:
    def generate(self, *args, **kwargs):
        return kwargs.get("logits_processor")


def test_guarded_generate_appends_resets_and_restores_even_after_an_error():
    class Guard:
        resets = 0

        def reset(self):
            self.resets += 1

    model, guard, other = _Model(), Guard(), object()
    with guarded_generate(model, guard):
        assert list(model.generate()) == [guard]
        assert list(model.generate(logits_processor=[other])) == [other, guard]
    assert guard.resets == 2
    assert "generate" not in vars(model) and model.generate() is None
    with pytest.raises(RuntimeError), guarded_generate(model, guard):
        raise RuntimeError("generation failed")
    assert "generate" not in vars(model)
    # A generate already shadowed on the instance (another wrapper) is put back as it was.
    model.generate = marker = lambda *a, **k: "theirs"
    with guarded_generate(model, guard):
        assert model.generate() == "theirs"
    assert model.generate is marker


def test_training_with_the_guard_runs_and_logs_its_bans(tiny_model_path, tmp_path):
    from trl_rubric.trainers.rgsd import RGSDTrainer

    args = rgsd_test_config(tmp_path / "out", rollout_degeneration_guard=2, max_completion_length=16)
    trainer = RGSDTrainer(tiny_model_path, args=args, train_dataset=Dataset.from_list(make_rubric_rows(8)))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    logs = [e for e in trainer.state.log_history if "rgsd/rollout_guard_mass" in e]
    assert logs and all(e["rgsd/rollout_guard_mass"] >= 0 for e in logs)
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())


def test_model_card_states_the_rollout_guard_and_the_teacher_guard(tiny_model_path, tmp_path):
    from trl_rubric.model_card import build_model_card, training_facts
    from trl_rubric.trainers.rgsd import RGSDTrainer

    data = Dataset.from_list(make_rubric_rows(4))
    plain = RGSDTrainer(tiny_model_path, args=rgsd_test_config(tmp_path / "a"), train_dataset=data)
    assert training_facts(plain)["rollouts_sampled_under"] is None
    args = rgsd_test_config(tmp_path / "b", rollout_degeneration_guard=3, teacher_guard=True)
    facts = training_facts(RGSDTrainer(tiny_model_path, args=args, train_dataset=data))
    assert facts["rollouts_sampled_under"] == "DegenerationGuard, n-gram 3, every ban on"
    assert facts["teacher_shaping"] == "the rollout guard's bans (logit -10)"
    card = str(build_model_card(RGSDTrainer(tiny_model_path, args=args, train_dataset=data)))
    assert "| rollouts sampled under | DegenerationGuard, n-gram 3, every ban on |" in card


def test_the_rgsd_cli_reads_both_guard_fields_and_refuses_a_bad_one(tmp_path):
    from trl_rubric.scripts import rgsd

    parser = rgsd.make_parser()
    common = ["--dataset_name", "rows.jsonl", "--output_dir", str(tmp_path), "--model_name_or_path", "m",
              "--use_cpu", "true", "--bf16", "false"]  # fmt: skip
    _, _, config, _ = parser.parse_args_and_config(
        [*common, "--rollout_degeneration_guard", "3", "--teacher_guard", "true"]
    )
    assert config.rollout_degeneration_guard == 3 and config.teacher_guard is True
    _, _, config, _ = parser.parse_args_and_config(common)
    assert config.rollout_degeneration_guard is None and config.teacher_guard is False
    with pytest.raises(ValueError, match="rollout_degeneration_guard is None"):
        parser.parse_args_and_config([*common, "--teacher_guard", "true"])


def test_the_smollm2_demo_guards_its_rollouts_by_default_and_not_with_vllm(tmp_path):
    from types import SimpleNamespace

    from trl_rubric.demo_report import demo_rgsd_config
    from trl_rubric.real.demo import DEMO_ROLLOUT_GUARD, rollout_guard_fields

    def args(**kw):
        base = dict(rollout_guard=None, use_vllm=False, output_dir=str(tmp_path), seed=0, token_clip=None,
                    distillation_beta=0.5)  # fmt: skip
        return SimpleNamespace(**{**base, **kw})

    assert rollout_guard_fields(args()) == {"rollout_degeneration_guard": DEMO_ROLLOUT_GUARD, "teacher_guard": True}
    assert rollout_guard_fields(args(use_vllm=True)) == {}  # vLLM takes no per-row guard: off unless asked for
    assert rollout_guard_fields(args(rollout_guard=0)) == {}
    assert rollout_guard_fields(args(rollout_guard=4)) == {"rollout_degeneration_guard": 4, "teacher_guard": True}
    config = demo_rgsd_config(args(), max_steps=1, **rollout_guard_fields(args()))
    assert (config.rollout_degeneration_guard, config.teacher_guard) == (DEMO_ROLLOUT_GUARD, True)
    with pytest.raises(ValueError, match="vLLM"):  # asked for with vLLM: the config says why not
        demo_rgsd_config(
            args(use_vllm=True), max_steps=1, **rollout_guard_fields(args(rollout_guard=3, use_vllm=True))
        )


def test_the_smollm2_recipe_trains_as_the_demo_does():
    import os

    import yaml

    from trl_rubric.real.demo import DEMO_ROLLOUT_GUARD

    with open(os.path.join(os.path.dirname(__file__), "..", "recipes", "rgsd_smollm2.yaml")) as f:
        settings = yaml.safe_load(f)
    assert settings["rollout_degeneration_guard"] == DEMO_ROLLOUT_GUARD and settings["teacher_guard"] is True


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--rollout_guard", "3"], "--rollout_guard needs --model smollm2"),
        (["--model", "smollm2", "--rollout_guard", "-1"], "rollout_guard is -1"),
        (["--model", "smollm2", "--rollout_guard", "3", "--use_vllm"], "vLLM samples without a per-row guard"),
    ],
)
def test_the_demo_refuses_a_rollout_guard_it_cannot_use(argv, message, capsys, monkeypatch):
    from trl_rubric.real import model as real_model
    from trl_rubric.scripts import demo

    monkeypatch.setattr(real_model, "gguf_path", lambda: "unused")  # no wheel needed to reach the check
    assert demo.main(argv) == 2
    assert message in capsys.readouterr().err
