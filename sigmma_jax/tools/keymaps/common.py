"""What every key map is made of: torch name -> (Flax path, transform of the torch array)."""

from __future__ import annotations

from typing import Callable

import numpy as np

Transform = Callable[[np.ndarray], np.ndarray]
KeyMap = dict[str, tuple[tuple[str, ...], Transform]]

IDENTITY: Transform = lambda a: a
LINEAR: Transform = lambda a: a.T  # (out, in) -> (in, out)
CONV: Transform = lambda a: a.transpose(2, 3, 1, 0)  # OIHW -> HWIO


def linear(m: KeyMap, torch_name: str, flax_path: tuple[str, ...], bias: bool = True) -> None:
    """A torch nn.Linear at `torch_name` as a Flax Dense at `flax_path`."""
    m[torch_name + ".weight"] = ((*flax_path, "kernel"), LINEAR)
    if bias:
        m[torch_name + ".bias"] = ((*flax_path, "bias"), IDENTITY)


def norm(m: KeyMap, torch_name: str, flax_path: tuple[str, ...]) -> None:
    """A torch LayerNorm at `torch_name` as a Flax LayerNorm at `flax_path`."""
    m[torch_name + ".weight"] = ((*flax_path, "scale"), IDENTITY)
    m[torch_name + ".bias"] = ((*flax_path, "bias"), IDENTITY)
