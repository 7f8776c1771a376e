"""The real-model rubric worlds by name: `health` (health and science questions) and `instructions` (everyday
instructions). The dataset names `smollm2://<world>/train|heldout`, the demo's and the benchmarks' `--world` read it."""

from __future__ import annotations

from collections.abc import Callable

from .instruction_world import make_instruction_world
from .world import RealWorld, make_real_world

#: World name -> its builder (`seed` -> world). `health` is the first world and the default everywhere.
WORLDS: dict[str, Callable[..., RealWorld]] = {"health": make_real_world, "instructions": make_instruction_world}
DEFAULT_WORLD = "health"


def make_named_world(name: str = DEFAULT_WORLD, seed: int = 0) -> RealWorld:
    """The real-model world called `name` (one of [`WORLDS`]), built with `seed`."""
    if name not in WORLDS:
        raise ValueError(f"world is {name!r}; expected one of {sorted(WORLDS)}")
    return WORLDS[name](seed=seed)
