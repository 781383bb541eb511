"""Test helpers for parity with timm: the import shim, random timm models and their state dicts.

The shim: the torchvision wheel that timm pulls in is built for another torch and fails to register
its C++ operators on the CPU torch 2.13 used here (`pip install torch==2.13.0`, then timm with
`-c constraints.txt`). timm imports torchvision; defining the two operator schemas it looks up first
lets the import succeed. Nothing in the tests uses torchvision's operators. Kept out of the library.
"""

from __future__ import annotations

import numpy as np

from sigmma_jax.tools import references
from sigmma_jax.tools.bench import parity

_TORCHVISION_OPS = ("nms", "qnms")


def import_timm():
    """(timm, torch), importing timm behind the torchvision operator shim."""
    import torch

    for op in _TORCHVISION_OPS:
        try:
            torch.library.define(
                f"torchvision::{op}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
            )
        except RuntimeError:  # already defined (a working torchvision, or a second call)
            pass
    import timm

    return timm, torch


def reference_model(arch: str, seed: int = 0, randomize: bool = True, **overrides):
    """The PyTorch reference of preset `arch` (`sigmma_jax.tools.references`) in eval mode;
    `overrides` as in `backbones.config` (depth=2; for timm presets any timm kwarg, layers=...).

    randomize: redraw every parameter and buffer with O(1)-scale values (`parity.randomize_`), so every
    weight shapes the output; timm's own init (LayerScale 1e-5) would hide the blocks from a parity check.
    """
    _, torch = import_timm()
    torch.manual_seed(seed)
    model = references.build(arch, **overrides)
    if randomize:
        parity.randomize_(model, seed + 1)
    return model


timm_model = reference_model  # the timm presets' references are timm models


def state_dict(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def reference_embed(model, images_nhwc: np.ndarray, mean, std, arch: str = "uni") -> np.ndarray:
    """The reference's embedding of float RGB [0, 1] NHWC images, normalised as the Flax backbones
    do (`arch` picks how the reference is read: a timm model's output, Virchow2's token mean, ...)."""
    import_timm()
    import torch

    x = (np.asarray(images_nhwc, np.float32) - np.asarray(mean, np.float32)) / np.asarray(
        std, np.float32
    )
    return references.embed(arch, model, torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()


timm_embed = reference_embed


def compare(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(max abs difference, minimum row cosine)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    return float(np.abs(a - b).max()), float(cos.min())


if (
    __name__ == "__main__"
):  # `python -m sigmma_jax.bench encoder --timm_setup=tests/support/timm_helpers.py`
    import_timm()
