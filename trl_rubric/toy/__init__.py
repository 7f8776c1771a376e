"""The offline rubric world: a synthetic rubric task, a tiny model pretrained on it, and a conditioning-gap meter.

It exists so that Rubric-Guided Self-Distillation (arXiv 2606.12507) can be shown to *learn* with no download and no
GPU: the toy model answers better when it sees the rubric, and RGSD can move the rubric-blind student toward that.

    from trl_rubric.toy import make_world, prepare_toy_model, measure_gap

    world = make_world(seed=0)
    path = prepare_toy_model()          # cached after the first call
    print(measure_gap(path, world))     # train / held-out scores without and with the rubric
"""

from .pretrain import (
    TEACHER_PENALTIES,
    TEACHER_PROMPT_TEMPLATE,
    TEACHER_RENDER_STYLE,
    ToyModelSettings,
    encode_example,
    measure_gap,
    prepare_toy_model,
    toy_cache_dir,
)
from .tokenizer import build_toy_tokenizer
from .world import ToyWorld, ignoring_response, make_world, minimal_response, reference_response, sample_rubric

__all__ = [
    "TEACHER_PROMPT_TEMPLATE",
    "TEACHER_PENALTIES",
    "TEACHER_RENDER_STYLE",
    "ToyModelSettings",
    "ToyWorld",
    "build_toy_tokenizer",
    "encode_example",
    "ignoring_response",
    "make_world",
    "measure_gap",
    "minimal_response",
    "prepare_toy_model",
    "reference_response",
    "sample_rubric",
    "toy_cache_dir",
]
