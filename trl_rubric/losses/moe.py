"""MoE router load-balancing loss, through the architecture's own transformers implementation."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor


def moe_load_balancing_fn(model):
    """The architecture's own transformers `load_balancing_loss_func` for an MoE causal LM (Qwen-MoE, Mixtral,
    GPT-OSS, ...), found next to its model class.

    Raises:
        ValueError: when the model has no such function or lacks `num_experts` / `num_experts_per_tok`.
    """
    import sys

    fn = getattr(sys.modules.get(type(model).__module__), "load_balancing_loss_func", None)
    if fn is None or not hasattr(model, "num_experts") or not hasattr(model, "num_experts_per_tok"):
        raise ValueError(
            f"{type(model).__name__} declares output_router_logits but its module has no load_balancing_loss_func "
            "(or the model no num_experts / num_experts_per_tok), so RGSD cannot add the router loss; set "
            "router_aux_loss_coef=0.0 to train without it"
        )
    return fn


def router_load_balancing_loss(model, router_logits: Sequence[Tensor], attention_mask: Tensor) -> Tensor:
    """MoE router load-balancing loss (Switch Transformer, arXiv 2101.03961) over a backbone pass, computed by the
    model's own transformers implementation, as its causal-LM forward would with `output_router_logits=True`."""
    fn = moe_load_balancing_fn(model)
    return fn(tuple(router_logits), model.num_experts, model.num_experts_per_tok, attention_mask)
