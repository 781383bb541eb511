"""Published state dicts -> Flax parameter trees, one module per model family.

A family module has `key_map(cfg) -> {torch name: (Flax path, transform)}` covering every parameter
of the Flax module built from `cfg`, and may have `adapt(sd, cfg) -> sd`, which brings a published
layout (Hugging Face, open_clip, an older timm) to the names its key map reads: renames, q/k/v
merged into one qkv, a prefix or a wrapper key dropped. `sigmma_jax.tools.convert` runs
`adapt`, then checks every key of the map against the state dict.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from sigmma_jax.tools.keymaps import coca, swin, timm_resnet, timm_vit
from sigmma_jax.tools.keymaps.common import CONV, IDENTITY, LINEAR, KeyMap, Transform

__all__ = ["CONV", "IDENTITY", "LINEAR", "KeyMap", "Transform", "adapt", "key_map"]

StateDict = dict[str, np.ndarray]

# kind (the backbone config's "kind") -> its family module
FAMILIES = {
    "vit": timm_vit,
    "resnet": timm_resnet,
    "coca": coca,
    "swin": swin,
}


def _family(cfg: dict[str, Any]):
    kind = cfg["kind"]
    if kind not in FAMILIES:
        raise ValueError(f"no key map for backbone kind {kind!r}; known: {sorted(FAMILIES)}")
    return FAMILIES[kind]


def key_map(cfg: dict[str, Any]) -> KeyMap:
    return _family(cfg).key_map(cfg)


def adapt(sd: StateDict, cfg: dict[str, Any]) -> StateDict:
    fn: Callable[[StateDict, dict], StateDict] | None = getattr(_family(cfg), "adapt", None)
    return fn(sd, cfg) if fn else sd
