"""RubricGRPOTrainer: config parsing, reward wiring, short CPU training runs with rule and HTTP judges, ungraded steps."""

import copy
import hashlib
import json
import logging
import os
import sys

import pytest
import torch
from datasets import Dataset
from transformers import TrainerCallback
from trl import GRPOConfig

from trl_rubric import RubricError
from trl_rubric.judges import JudgeUnavailableError, OpenAIJudge, RuleJudge
from trl_rubric.rewards import RubricReward
from trl_rubric.testing import make_rubric_rows
from trl_rubric.testing.judge_server import FakeJudgeServer
from trl_rubric.trainers.rubric_grpo import RubricGRPOConfig, RubricGRPOTrainer, _reward_weights

SECRET = "sk-live-9f8e7d6c5b4a-do-not-leak"


def tagged_rows(n=4):
    """Rubric rows whose criteria carry `rule:` tags, so the rule backend can grade them from the data alone."""
    rows = make_rubric_rows(n, seed=1)
    for row in rows:
        for criterion in row["rubric"]:
            criterion["tags"] = [f"rule:contains:{criterion['text'].split()[-1]}"]
    return rows


def train_args(tmp_path, **kwargs):
    defaults = dict(
        output_dir=str(tmp_path),
        use_cpu=True,
        bf16=False,
        report_to="none",
        max_completion_length=8,
        per_device_train_batch_size=4,
        num_generations=2,
        max_steps=2,
        logging_steps=1,
        save_strategy="no",
        learning_rate=1e-2,
        judge_probe=False,
        seed=0,
    )
    return RubricGRPOConfig(**{**defaults, **kwargs})


def plain_rows(n=4):
    return make_rubric_rows(n, seed=1)


def parity_judge(state=None):
    """Use with `plain_rows` (criteria without `rule:` tags, which would take precedence).

    A rule judge whose verdicts split random completions about evenly (a hash bit), so groups have signal.

    With `state["down"]` set, it knows no verdict at all, like a judge whose endpoint is gone.
    """
    state = state if state is not None else {}

    def resolver(criterion):
        def check(response):
            digest = hashlib.sha256(f"{criterion.text}|{response}".encode()).digest()
            return None if state.get("down") else digest[0] % 2 == 0

        return check

    return RuleJudge(resolver=resolver)


def params(model):
    return [p.detach().clone() for p in model.parameters()]


def changed(before, after):
    return any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


# --- config -------------------------------------------------------------------------------------------------------


def test_config_keeps_grpo_positional_output_dir_and_validates_fields(tmp_path):
    args = RubricGRPOConfig(str(tmp_path), use_cpu=True, bf16=False, judge_base_url=["http://a/v1", "http://b/v1"])
    assert args.output_dir == str(tmp_path) and args.judge_base_url == "http://a/v1,http://b/v1"
    assert isinstance(args, GRPOConfig)
    with pytest.raises(ValueError, match="reward_aggregation is 'sum'"):
        RubricGRPOConfig(str(tmp_path), use_cpu=True, bf16=False, reward_aggregation="sum")
    with pytest.raises(ValueError, match="reweighting_\\* fields: reweighting floor is 2"):
        RubricGRPOConfig(str(tmp_path), use_cpu=True, bf16=False, reweighting_floor=2)
    with pytest.raises(ValueError, match="at least 2 generations"):  # GRPOConfig's own checks still run
        RubricGRPOConfig(str(tmp_path), use_cpu=True, bf16=False, num_generations=1)


def test_saved_config_holds_only_the_key_variable_name(tmp_path, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", SECRET)
    args = train_args(tmp_path, judge_api_key_env="JUDGE_KEY", judge_model="m")
    dumped = json.dumps(args.to_dict())
    assert '"judge_api_key_env": "JUDGE_KEY"' in dumped and SECRET not in dumped
    torch.save(args, tmp_path / "training_args.bin")
    assert SECRET.encode() not in (tmp_path / "training_args.bin").read_bytes()


def test_reward_weights_are_extended_for_the_rubric_reward():
    assert _reward_weights(None, 2, 1.0) is None
    assert _reward_weights(None, 1, 0.5) == [0.5, 1.0]
    assert _reward_weights([2.0, 3.0], 2, 0.5) == [0.5, 2.0, 3.0]
    assert _reward_weights([1.0, 2.0, 3.0], 2, 0.5) == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="reward_weights has 4 entries for 2 reward_funcs"):
        _reward_weights([1, 2, 3, 4], 2, 1.0)


def test_bad_rubric_or_missing_column_fails_before_training(tmp_path, tiny_model_path):
    rows = tagged_rows(3)
    for criterion in rows[2]["rubric"]:
        criterion["weight"] = -1.0
    with pytest.raises(
        RubricError, match="train_dataset row 2: column 'rubric': rubric has no criterion with a positive"
    ):
        RubricGRPOTrainer(
            tiny_model_path, args=train_args(tmp_path, judge_backend="rule"), train_dataset=Dataset.from_list(rows)
        )
    no_rubric = Dataset.from_list([{"prompt": "q"}])
    with pytest.raises(ValueError, match="train_dataset has no 'rubric' column"):
        RubricGRPOTrainer(tiny_model_path, args=train_args(tmp_path, judge_backend="rule"), train_dataset=no_rubric)


def test_dead_judge_endpoint_fails_fast_before_the_model_loads(tmp_path):
    with FakeJudgeServer() as server:
        url = server.url
    args = train_args(tmp_path, judge_model="fake-judge", judge_base_url=url, judge_probe=True)
    # The model path does not exist: reaching the model load would raise something else.
    with pytest.raises(JudgeUnavailableError, match="did not answer the start-up probe"):
        RubricGRPOTrainer(str(tmp_path / "no-model"), args=args, train_dataset=Dataset.from_list(tagged_rows(2)))


# --- training -------------------------------------------------------------------------------------------------------


def test_training_with_rule_judge_updates_weights_and_logs_judge_metrics(tmp_path, tiny_model_path):
    def short(completions, **kwargs):
        return [-len(c) / 50 for c in completions]

    trainer = RubricGRPOTrainer(
        tiny_model_path,
        reward_funcs=short,
        args=train_args(tmp_path, reward_weights=[0.5]),
        train_dataset=Dataset.from_list(plain_rows(4)),
        judge=parity_judge(),
    )
    assert trainer.reward_func_names == ["rubric_judge", "short"]
    assert trainer.reward_weights.tolist() == [1.0, 0.5]
    assert isinstance(trainer.reward_funcs[0], RubricReward) and trainer.reward_funcs[0].num_generations == 2
    before = params(trainer.model)
    trainer.train()
    assert changed(before, params(trainer.model))
    logs = [entry for entry in trainer.state.log_history if "judge/calls" in entry]
    assert len(logs) == 2 and all(entry["judge/calls"] == 4 for entry in logs)
    assert all(entry["judge/all_unknown_steps"] == 0 for entry in logs)
    assert all(entry["rewards/rubric_judge/std"] > 0 for entry in logs), "the judge, not only `short`, gave signal"
    assert any(k.startswith("judge/frac_met/") for k in logs[0])
    assert trainer.judge.stats.grades == 8
    assert "rubric-grpo" in trainer._tag_names


def test_training_with_http_judge_grades_every_completion_without_leaking_the_key(
    tmp_path, tiny_model_path, monkeypatch
):
    monkeypatch.setenv("JUDGE_KEY", SECRET)
    rows = tagged_rows(4)
    rows[0]["rubric"].append({"text": "mentions the", "weight": 1.0})  # a word random completions may well contain
    with FakeJudgeServer() as server:
        args = train_args(
            tmp_path,
            judge_backend="openai",
            judge_model="fake-judge",
            judge_base_url=server.url,
            judge_api_key_env="JUDGE_KEY",
            judge_probe=True,
            judge_max_retries=0,
            log_completions=True,
        )
        trainer = RubricGRPOTrainer(tiny_model_path, args=args, train_dataset=Dataset.from_list(rows))
        assert isinstance(trainer.judge, OpenAIJudge)
        trainer.train()
        assert server.requests == 2 * 4, "one batched request per completion: 2 steps x 4 completions"
        assert set(server.auth_headers) == {f"Bearer {SECRET}"}
    # TRL keeps the last logging step's completions table: 4 rows.
    rewards = trainer._logs["rewards"]["rubric_judge"]
    assert len(rewards) == 4 and all(r == r for r in rewards), "every completion graded (no NaN)"
    assert len(trainer._logs["extra"]["judge_verdicts"]) == 4
    logs = [entry for entry in trainer.state.log_history if "judge/calls" in entry]
    assert len(logs) == 2 and logs[0]["judge/failures"] == 0 and logs[0]["judge/prompt_tokens"] > 0
    # The key must not end up anywhere we write or log.
    trainer.save_model()
    trainer.save_state()
    trainer.create_model_card()
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in json.dumps(trainer.state.log_history) + repr(trainer._logs)
    assert "rubric-grpo" in (tmp_path / "README.md").read_text()


def test_step_where_judge_grades_nothing_makes_no_update(tmp_path, tiny_model_path, caplog):
    """TRL 1.16 turns an all-None row into zero advantage, but Adam's momentum from earlier steps would still move the
    weights; the trainer must drop the step's gradients so that the weights stay exactly as they were."""
    state = {"down": False}
    snapshots = []

    class TakeJudgeDownAfterFirstStep(TrainerCallback):
        def on_step_end(self, args, train_state, control, model=None, **kwargs):
            snapshots.append(params(model))
            state["down"] = True

    trainer = RubricGRPOTrainer(
        tiny_model_path,
        # A length reward guarantees signal while the judge is up; once it is down, the rows it cannot grade are
        # dropped whole, so this reward alone must not keep training going either.
        reward_funcs=lambda completions, **kw: [len(c) / 50 for c in completions],
        args=train_args(tmp_path, max_steps=3),
        train_dataset=Dataset.from_list(plain_rows(6)),
        judge=parity_judge(state),
        callbacks=[TakeJudgeDownAfterFirstStep()],
    )
    before = params(trainer.model)
    with caplog.at_level(logging.WARNING, logger="trl_rubric.trainers.rubric_grpo"):
        trainer.train()
    assert changed(before, snapshots[0]), "step 1 had signal and moved the weights"
    assert not changed(snapshots[0], snapshots[1]) and not changed(snapshots[1], snapshots[2]), "ungraded: no update"
    logged = [entry["judge/all_unknown_steps"] for entry in trainer.state.log_history if "judge/calls" in entry]
    assert logged == [0.0, 1.0, 2.0]
    assert "graded none of the completions" in caplog.text and "no rule for criteria" in caplog.text


def test_ungraded_completion_is_dropped_even_next_to_other_rewards(tmp_path, tiny_model_path):
    trainer = RubricGRPOTrainer(
        tiny_model_path,
        reward_funcs=lambda completions, **kw: [1.0] * len(completions),
        args=train_args(tmp_path),
        train_dataset=Dataset.from_list(plain_rows(2)),
        judge=RuleJudge({}),  # no rules and no rule tags: every grade unknown
    )
    inputs = [{"prompt": "q", "rubric": plain_rows(1)[0]["rubric"]}] * 2
    rewards = trainer._calculate_rewards(inputs, ["q", "q"], ["a", "b"], [[1], [2]])
    assert torch.isnan(rewards).all(), "the other reward must not turn a missing judge verdict into a 0"
    assert trainer._generation_has_signal is False


# --- drop-in --------------------------------------------------------------------------------------------------------

GRPO_SCRIPT = """
from dataclasses import dataclass, field

from datasets import load_from_disk
from trl import TrlParser
from trl import GRPOConfig, GRPOTrainer


@dataclass
class ScriptArguments:
    dataset_path: str = field(default="", metadata={"help": "Dataset saved with save_to_disk."})
    model_name_or_path: str = field(default="", metadata={"help": "Model to train."})


def reward_len(completions, **kwargs):
    return [-abs(20 - len(c)) / 20 for c in completions]


def main(argv):
    parser = TrlParser((ScriptArguments, GRPOConfig))
    script_args, training_args = parser.parse_args_and_config(argv)
    dataset = load_from_disk(script_args.dataset_path)
    trainer = GRPOTrainer(
        model=script_args.model_name_or_path,
        reward_funcs=reward_len,
        args=training_args,
        train_dataset=dataset,
    )
    trainer.train()
    return trainer
"""


def test_grpo_script_runs_with_only_the_class_names_changed(tmp_path, tiny_model_path):
    source = GRPO_SCRIPT.replace(
        "from trl import GRPOConfig, GRPOTrainer",
        "from trl_rubric.trainers.rubric_grpo import RubricGRPOConfig, RubricGRPOTrainer",
    )
    source = source.replace("GRPOConfig)", "RubricGRPOConfig)").replace("= GRPOTrainer(", "= RubricGRPOTrainer(")
    assert source.count("Rubric") == 4 and len(source.splitlines()) == len(GRPO_SCRIPT.splitlines())
    dataset_path = tmp_path / "data"
    Dataset.from_list(tagged_rows(4)).save_to_disk(str(dataset_path))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"model_name_or_path: {tiny_model_path}\n"
        f"dataset_path: {dataset_path}\n"
        f"output_dir: {tmp_path / 'out'}\n"
        "use_cpu: true\nbf16: false\nreport_to: none\nmax_steps: 1\nsave_strategy: 'no'\n"
        "max_completion_length: 8\nper_device_train_batch_size: 4\nnum_generations: 2\n"
        "judge_backend: rule\n"
        "judge_base_url: [http://h1:8000/v1, http://h2:8000/v1]\n"
    )
    namespace = {"__name__": "grpo_script"}
    exec(compile(source, "grpo_script.py", "exec"), namespace)
    argv = ["--config", str(recipe), "--judge_mode", "per_criterion", "--reward_weights", "2.0"]
    old_argv = copy.copy(sys.argv)
    try:
        trainer = namespace["main"](argv)
    finally:
        sys.argv = old_argv
    assert type(trainer).__name__ == "RubricGRPOTrainer" and trainer.state.global_step == 1
    assert trainer.args.judge_mode == "per_criterion" and trainer.args.judge_base_url.count(",") == 1
    assert trainer.reward_func_names == ["rubric_judge", "reward_len"]
    assert trainer.reward_weights.tolist() == [1.0, 2.0]
    assert trainer.judge.stats.calls == 4 and os.path.isdir(tmp_path / "out")


def test_trl_methods_we_override_keep_their_signatures():
    """Fails loudly if a TRL upgrade changes the private seams RubricGRPOTrainer overrides."""
    import inspect

    from trl import GRPOTrainer

    expected = {
        "_calculate_rewards": ["self", "inputs", "prompts", "completions", "completion_ids_list"],
        "_generate_and_score_completions": ["self", "inputs"],
        "compute_loss": ["self", "model", "inputs", "return_outputs", "num_items_in_batch"],
        "log": ["self", "logs", "start_time"],
    }
    for name, params_ in expected.items():
        assert list(inspect.signature(getattr(GRPOTrainer, name)).parameters) == params_, name
    init = list(inspect.signature(GRPOTrainer.__init__).parameters)
    assert list(inspect.signature(RubricGRPOTrainer.__init__).parameters) == [*init, "judge"]
