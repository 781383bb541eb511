"""HE towers: uint8 tiles -> the backbone's embedding per scale (docs/method.md, "HE encoder").

`MultiCrop` is SIGMMA's encoder f (§5.1): the tile cut on each scale's grid (`scales.GRID`: 16 micro,
4 meso and 1 macro crop), every crop resized to the backbone input, all 21 crops of a batch in one
backbone call (a tile costs one batched forward), embeddings mean-pooled per grid. `WholeTile` is the
single-crop tower of the single-scale baselines: the tile resized to the backbone input, as
HEST-Benchmark embeds a patch; its one scale is "macro".

The backbone is passed in (built by the training code from the run config); the towers hold no
parameters of their own, so the backbone's parameters sit at `params["backbone"]` of the model.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from sigmma_jax.scales import GRID, N_CROPS, SCALES


def multi_crop(images: jax.Array, size: int, scales=SCALES) -> jax.Array:
    """(B, m, m, 3) -> (B, crops, size, size, 3): each scale's grid of crops resized to `size`."""
    b, m = images.shape[:2]
    crops = []
    for s in scales:
        n = GRID[s]
        c = m // n
        x = images.reshape(b, n, c, n, c, 3).transpose(0, 1, 3, 2, 4, 5).reshape(b, n * n, c, c, 3)
        # Anti-aliased when shrinking (tiny demo backbones), bilinear when enlarging (UNI: 64 -> 224).
        crops.append(jax.image.resize(x, (b, n * n, size, size, 3), "linear"))
    return jnp.concatenate(crops, 1)


def resize(images: jax.Array, size: int) -> jax.Array:
    """(B, H, W, C) -> (B, size, size, C), as `multi_crop` resizes a crop (antialiased linear)."""
    b, _, _, c = images.shape
    return jax.image.resize(images, (b, size, size, c), "linear")


class MultiCrop(nn.Module):
    backbone: nn.Module
    scales = SCALES

    @nn.compact
    def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
        """uint8 (B, m, m, 3) -> {scale: (B, D)} mean-pooled backbone embeddings per grid."""
        b = images.shape[0]
        size = self.backbone.img_size
        crops = multi_crop(images.astype(jnp.float32) / 255.0, size)
        emb = self.backbone(crops.reshape(b * N_CROPS, size, size, 3)).reshape(b, N_CROPS, -1)
        out, start = {}, 0
        for s in SCALES:
            n = GRID[s] ** 2
            out[s] = emb[:, start : start + n].mean(1)
            start += n
        return out


class WholeTile(nn.Module):
    backbone: nn.Module
    scales = ("macro",)

    @nn.compact
    def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
        """uint8 (B, m, m, 3) -> {"macro": (B, D)}: the backbone on the resized tile."""
        size = self.backbone.img_size
        x = multi_crop(images.astype(jnp.float32) / 255.0, size, ("macro",))[:, 0]
        return {"macro": self.backbone(x)}
