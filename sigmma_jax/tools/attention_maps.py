"""Attention maps of the HE backbone's last block (paper Fig. 3): class token -> patches, per head
(the command: `python -m sigmma_jax.attention_maps`).

For each tile this writes `<name>_attention.png` (the tile, the mean over heads, and one panel per
head, each overlaid on the tile) and `<name>_attention.npy` ((heads, gh, gw) float32 maps).
The tile is resized to the backbone's input size as the HE encoder does for its macro crop.
From Python, `class_token_attention(model, params, images)` gives the maps of any ViT backbone,
e.g. a trained run's `params["backbone"]` with the module `backbones.build(cfg, **kw)`, where
`cfg, kw = backbones.resolve(config.model)`.
"""

from __future__ import annotations

import math
import pathlib
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sigmma_jax import atomic


def class_token_attention(model, params, images) -> np.ndarray:
    """(B, H, W, 3) float [0, 1] images at the model's input size -> (B, heads, gh, gw) float32:
    the last block's attention of the class token to each patch (softmax over all tokens, so the
    patch maps sum to at most 1; the rest went to the class and register tokens)."""
    if not hasattr(model, "num_prefix_tokens"):
        raise ValueError("attention maps need a ViT backbone")
    p = model.patch_size
    gh, gw = images.shape[1] // p, images.shape[2] // p
    _, attn = jax.jit(lambda prm, x: model.apply({"params": prm}, x, return_attention=True))(
        params, jnp.asarray(images, jnp.float32)
    )
    maps = attn[:, :, 0, model.num_prefix_tokens :]
    return np.asarray(maps.reshape(maps.shape[0], maps.shape[1], gh, gw), np.float32)


def prepare_tiles(tiles: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, m, m, 3) tiles -> float (N, size, size, 3) in [0, 1], resized like he_encoder."""
    x = jnp.asarray(tiles, jnp.float32) / 255.0
    n = x.shape[0]
    return np.asarray(jax.image.resize(x, (n, size, size, 3), "linear"))


def _panel(ax, tile: np.ndarray, name: str, a: np.ndarray | None, cells=None) -> None:
    """The tile, a map scaled to its maximum over it, cell centroids (tile px) as cyan rings."""
    m = tile.shape[0]
    ax.imshow(tile)
    if a is not None:
        ax.imshow(
            a / max(float(a.max()), 1e-12),
            cmap="inferno",
            alpha=0.6,
            extent=(-0.5, m - 0.5, m - 0.5, -0.5),
            interpolation="nearest",
        )
    if cells is not None and len(cells):
        ax.scatter(*np.asarray(cells).T - 0.5, s=6, facecolors="none", edgecolors="cyan", lw=0.6)
        ax.set_xlim(-0.5, m - 0.5)
        ax.set_ylim(m - 0.5, -0.5)
    ax.set_title(name, fontsize=8)


def save_figure(
    tile: np.ndarray, maps: np.ndarray, path: str | pathlib.Path, title: str = ""
) -> None:
    """One PNG: the tile, the head-mean map and each head's map overlaid on the tile."""
    import matplotlib  # pylint: disable=import-outside-toplevel

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

    heads = maps.shape[0]
    panels = [("tile", None), ("mean of heads", maps.mean(0))] + [
        (f"head {h}", maps[h]) for h in range(heads)
    ]
    cols = min(6, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.3 * rows), squeeze=False)
    for ax, (name, a) in zip(axes.flat, panels):
        _panel(ax, tile, name, a)
    for ax in axes.flat:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic.atomic_path(path) as tmp:  # the temp name has no .png: say the format
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def save_comparison(
    tile: np.ndarray,
    maps: dict[str, np.ndarray],
    path: str | pathlib.Path,
    cells: np.ndarray | None = None,
    title: str = "",
) -> None:
    """One PNG per tile for several models (e.g. the base backbone and the trained one): the tile,
    then each model's head-mean map, then each model's heads on a row; cell centroids (tile px)
    drawn on every panel."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    heads = max(a.shape[0] for a in maps.values())
    cols = max(1 + len(maps), min(heads, 8))
    rows = 1 + len(maps)
    fig = Figure(figsize=(2.3 * cols, 2.4 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    top = [("tile", None)] + [(f"{k}: mean of heads", a.mean(0)) for k, a in maps.items()]
    panels = [(axes[0, i], name, a) for i, (name, a) in enumerate(top)]
    for r, (k, a) in enumerate(maps.items(), start=1):
        panels += [(axes[r, h], f"{k}: head {h}", a[h]) for h in range(min(a.shape[0], cols))]
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, name, a in panels:
        _panel(ax, tile, name, a, cells)
    if title:
        fig.suptitle(title, fontsize=9)
    FigureCanvasAgg(fig)
    with atomic.open_atomic(path, "wb") as f:
        fig.savefig(f, dpi=100, format="png")


def save_attention_maps(
    model,
    params,
    tiles: np.ndarray,
    out_dir: str | pathlib.Path,
    names: Sequence[str],
    batch: int = 8,
) -> list[pathlib.Path]:
    """Writes `<name>_attention.png` and `.npy` per uint8 tile; returns the PNG paths."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(0, len(tiles), batch):
        chunk = np.asarray(tiles[i : i + batch])
        maps = class_token_attention(model, params, prepare_tiles(chunk, model.img_size))
        for tile, a, name in zip(chunk, maps, names[i : i + batch]):
            with atomic.atomic_path(out_dir / f"{name}_attention.npy") as tmp, open(tmp, "wb") as f:
                np.save(f, a)
            path = out_dir / f"{name}_attention.png"
            save_figure(tile, a, path, title=f"{name}: last block, class token -> patches")
            paths.append(path)
    return paths


def read_tile(path: str | pathlib.Path) -> np.ndarray:
    from PIL import Image  # pylint: disable=import-outside-toplevel

    return np.asarray(Image.open(path).convert("RGB"))
