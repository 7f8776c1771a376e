"""Drop-in gaps against GRPOTrainer: the MoE router loss in pure RGSD, the entropy bonus, and environments."""

import pytest
import torch
from datasets import Dataset

from trl_rubric.testing import make_rubric_rows, make_tokenizer
from trl_rubric.trainers.rgsd import RGSDConfig, RGSDTrainer
from trl_rubric.trainers.rubric_grpo import RubricGRPOConfig, RubricGRPOTrainer

COMMON = dict(use_cpu=True, bf16=False, report_to="none", save_strategy="no", seed=0)


def tiny_moe(coef=0.5):
    """A random two-layer Qwen3-MoE (4 experts, top 2) with our offline tokenizer."""
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    tokenizer = make_tokenizer()
    config = Qwen3MoeConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, moe_intermediate_size=32,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_experts=4,
        num_experts_per_tok=2, router_aux_loss_coef=coef, max_position_embeddings=256, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    return Qwen3MoeForCausalLM(config), tokenizer


def test_pure_rgsd_adds_and_logs_the_moe_router_loss(tmp_path):
    model, tokenizer = tiny_moe(coef=0.5)
    args = RGSDConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, max_completion_length=6, max_steps=1,
                      logging_steps=1, learning_rate=1e-3, **COMMON)  # fmt: skip
    rows = Dataset.from_list(make_rubric_rows(4))
    trainer = RGSDTrainer(model, args=args, train_dataset=rows, processing_class=tokenizer)
    assert trainer.aux_loss_enabled and not trainer._rgsd_hybrid
    seen = []
    original = trainer._rgsd_loss

    def spy(unwrapped, inputs, teacher):
        loss, stats = original(unwrapped, inputs, teacher)
        ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():  # reference: the model's own causal-LM forward, as GRPOTrainer's hybrid path uses it
            ref = unwrapped(input_ids=ids, attention_mask=mask, position_ids=positions, output_router_logits=True)
        seen.append((loss.detach(), stats[6], trainer._rgsd_aux_loss, ref.aux_loss))
        return loss, stats

    trainer._rgsd_loss = spy
    trainer.train()
    loss, distill, aux, ref = seen[0]
    torch.testing.assert_close(aux, ref, atol=1e-6, rtol=1e-5)
    assert ref > 0
    # The loss is the distillation loss plus router_aux_loss_coef times the router loss (no accumulation here).
    torch.testing.assert_close(loss - distill, 0.5 * ref, atol=1e-6, rtol=1e-5)
    logged = [h for h in trainer.state.log_history if "aux_loss" in h]
    assert logged and logged[0]["aux_loss"] == pytest.approx(ref.item(), rel=1e-5)


def test_pure_rgsd_refuses_the_entropy_bonus_and_hybrid_keeps_it(tmp_path):
    for kwargs in ({"entropy_coef": 0.01}, {"use_adaptive_entropy": True}):
        with pytest.raises(ValueError, match="pure RGSD"):
            RGSDConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, **kwargs, **COMMON)
    cfg = RGSDConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, num_generations=2,
                     distillation_weight=0.5, entropy_coef=0.01, **COMMON)  # fmt: skip
    assert cfg.entropy_coef == 0.01


class _Env:
    def reset(self, **kwargs):
        return None

    def get_reward(self):
        return 1.0


def test_both_trainers_refuse_environments_before_loading_anything(tmp_path):
    rows = Dataset.from_list(make_rubric_rows(4))
    missing = str(tmp_path / "no-model-here")  # never loaded: the refusal comes first
    args = RGSDConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, **COMMON)
    with pytest.raises(ValueError, match="RGSDTrainer does not take an environment_factory"):
        RGSDTrainer(missing, args=args, train_dataset=rows, environment_factory=_Env)
    args = RubricGRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, num_generations=2,
                            judge_backend="rule", **COMMON)  # fmt: skip
    with pytest.raises(ValueError, match="RubricGRPOTrainer does not take an environment_factory"):
        RubricGRPOTrainer(missing, args=args, train_dataset=rows, environment_factory=_Env)
