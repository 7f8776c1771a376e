"""Fails loudly when a private TRL seam that trl-rubric overrides or calls changes (pinned: trl>=1.16,<1.17)."""

import inspect

import pytest
import trl
from trl import GRPOConfig, GRPOTrainer
from trl.kernels.chunked_divergence import ChunkedDivergenceFunction

PRIVATE_SEAMS = {
    "_generate_and_score_completions": ["self", "inputs"],
    "_calculate_rewards": ["self", "inputs", "prompts", "completions", "completion_ids_list"],
    "_compute_loss": ["self", "model", "inputs"],
    "_tokenize_prompts": ["self", "prompts"],
    "_save_checkpoint": ["self", "model", "trial"],
    "_load_optimizer_and_scheduler": ["self", "checkpoint"],
    "_prepare_inputs": ["self", "generation_batch"],
    # RGSD returns (None, None, None) from it while GRPO scores old log-probs it never reads (pure mode)
    "_get_per_token_logps_and_entropies": [
        "self",
        "model",
        "input_ids",
        "attention_mask",
        "logits_to_keep",
        "batch_size",
        "compute_entropy",
        "compute_aux_loss",
        "pixel_values",
        "image_grid_thw",
        "num_images",
        "pixel_attention_mask",
        "spatial_shapes",
        "num_tiles",
        "image_sizes",
        "token_type_ids",
        "mm_token_type_ids",
        "image_position_ids",
    ],
}


def test_trl_version_is_the_pinned_series():
    major, minor = (int(x) for x in trl.__version__.split(".")[:2])
    assert (major, minor) == (1, 16), trl.__version__


@pytest.mark.parametrize("name,params", sorted(PRIVATE_SEAMS.items()))
def test_grpo_private_method_signatures(name, params):
    assert list(inspect.signature(getattr(GRPOTrainer, name)).parameters) == params


def test_grpo_config_rejects_one_generation_last():
    # RGSDConfig relies on the num_generations check being the last check but the vLLM IS ones, which it re-runs.
    source = inspect.getsource(GRPOConfig.__post_init__)
    tail = source[source.index("if self.num_generations < 2") :]
    assert "at least 2 generations" in tail
    checks_after = tail.count("raise ValueError")
    assert checks_after == 3, "GRPOConfig.__post_init__ gained checks after num_generations: update RGSDConfig"


def test_chunked_divergence_signature():
    params = list(inspect.signature(ChunkedDivergenceFunction.forward).parameters)
    assert params[:8] == [
        "ctx",
        "student_hidden",
        "student_weight",
        "student_bias",
        "teacher_hidden",
        "teacher_weight",
        "teacher_bias",
        "beta",
    ]


def test_helpers_we_import_exist():
    from trl.models import prepare_deepspeed, prepare_fsdp  # noqa: F401
    from trl.models.utils import _ForwardRedirection, disable_gradient_checkpointing  # noqa: F401
    from trl.trainer.utils import create_model_from_path, get_config_model_id, pad, use_adapter  # noqa: F401

    assert list(inspect.signature(use_adapter).parameters) == ["model", "adapter_name"]
