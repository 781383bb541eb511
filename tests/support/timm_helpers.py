"""Test helpers for parity with timm: the import shim, random timm models and their state dicts.

The shim: the torchvision wheel that timm pulls in is built for another torch and fails to register
its C++ operators on the CPU torch 2.13 used here (`pip install torch==2.13.0`, then timm with
`-c constraints.txt`). timm imports torchvision; defining the two operator schemas it looks up first
lets the import succeed. Nothing in the tests uses torchvision's operators. Kept out of the library.
"""

from __future__ import annotations

import numpy as np

from sigmma_jax.models import backbones
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


def timm_model(arch: str, seed: int = 0, randomize: bool = True, **overrides):
    """A timm model of preset `arch` in eval mode; `overrides` go to timm (depth=2, layers=...).

    randomize: redraw every parameter and buffer with O(1)-scale values (`parity.randomize_`), so every
    weight shapes the output; timm's own init (LayerScale 1e-5) would hide the blocks from a parity check.
    """
    timm, torch = import_timm()
    name, kw = backbones.timm_kwargs(arch, **overrides)
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, **kw).eval()
    if randomize:
        parity.randomize_(model, seed + 1)
    return model


def state_dict(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def timm_embed(model, images_nhwc: np.ndarray, mean, std) -> np.ndarray:
    """timm's embedding of float RGB [0, 1] NHWC images, normalised as the Flax backbones do."""
    _, torch = import_timm()
    x = (np.asarray(images_nhwc, np.float32) - np.asarray(mean, np.float32)) / np.asarray(
        std, np.float32
    )
    with torch.inference_mode():
        return model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()


def compare(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(max abs difference, minimum row cosine)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    return float(np.abs(a - b).max()), float(cos.min())


if (
    __name__ == "__main__"
):  # `python -m sigmma_jax.bench encoder --timm_setup=tests/support/timm_helpers.py`
    import_timm()
