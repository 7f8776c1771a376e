"""Token-level losses for Rubric-Guided Self-Distillation (RGSD, arXiv 2606.12507): divergences, clipping, masks.

The student sees the prompt, the teacher sees the prompt plus the rubric, and both score the student's sampled
completion. [`token_divergence`] turns their last hidden states and LM heads into one divergence per completion token
without ever holding `[N, V]` logits. One job a module:

- `divergence.py`: pure math on log-probabilities (generalized JSD, top-k tail bucket, sampled-token reverse KL, the
  logit transform);
- `chunked_head.py`: the `ChunkedHeadDivergence` autograd function (token chunks, one fp32 LM-head gradient buffer)
  and the per-chunk math it runs;
- `head_divergence.py`: [`token_divergence`], the entry point: input checks and support dispatch;
- `clip.py`: per-token clipping; `masks.py`: thinking-block, skip-first-tokens and non-finite masks;
- `reduce.py`: GRPO-style reduction to a scalar; `moe.py`: the MoE router load-balancing loss.

Beta follows TRL and the RGSD paper: `beta=0` is the forward KL(teacher‖student), `beta=1` the reverse
KL(student‖teacher), and `0 < beta < 1` the generalized JSD with mixture `m = (1 - beta) p_student + beta p_teacher`.
Every name is re-exported here; import from `trl_rubric.losses`.
"""

from .chunked_head import ChunkedHeadDivergence
from .clip import CLIP_MODES, ClipMode, clip_token_divergence
from .divergence import (
    DEFAULT_TEACHER_TOP_K_FLOOR,
    SUPPORTS,
    TOP_K_SOURCES,
    Support,
    TokenDivergence,
    TopKSource,
    add_tail_bucket,
    generalized_jsd,
    logit_processing,
    per_entry_divergence,
    renormalize,
    sampled_token_reverse_kl,
    teacher_top_k_logps,
    top_k_member,
    transform_logits,
)
from .head_divergence import full_lm_head, token_divergence
from .masks import completion_thinking_mask, finite_token_mask, sanitize_hidden, skip_first_tokens_mask, thinking_mask
from .moe import moe_load_balancing_fn, router_load_balancing_loss
from .reduce import LOSS_TYPES, POLICY_ONLY_LOSS_TYPES, reduce_token_loss

__all__ = [
    "CLIP_MODES",
    "DEFAULT_TEACHER_TOP_K_FLOOR",
    "LOSS_TYPES",
    "POLICY_ONLY_LOSS_TYPES",
    "SUPPORTS",
    "TOP_K_SOURCES",
    "ChunkedHeadDivergence",
    "ClipMode",
    "Support",
    "TokenDivergence",
    "TopKSource",
    "add_tail_bucket",
    "clip_token_divergence",
    "completion_thinking_mask",
    "finite_token_mask",
    "full_lm_head",
    "generalized_jsd",
    "logit_processing",
    "moe_load_balancing_fn",
    "per_entry_divergence",
    "reduce_token_loss",
    "renormalize",
    "router_load_balancing_loss",
    "sampled_token_reverse_kl",
    "sanitize_hidden",
    "skip_first_tokens_mask",
    "teacher_top_k_logps",
    "thinking_mask",
    "token_divergence",
    "top_k_member",
    "transform_logits",
]
