"""Multi-crop HE encoder f (METHOD.md §2): 16 micro, 4 meso and 1 macro crop per tile.

All 21 crops of a batch go through the backbone in one call, so a tile costs one batched forward.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

GRIDS = (("micro", 4), ("meso", 2), ("macro", 1))
N_CROPS = sum(n * n for _, n in GRIDS)


def multi_crop(images: jax.Array, size: int) -> jax.Array:
    """(B, m, m, 3) -> (B, 21, size, size, 3): each grid's crops resized to the backbone input."""
    b, m = images.shape[:2]
    crops = []
    for _, n in GRIDS:
        c = m // n
        x = images.reshape(b, n, c, n, c, 3).transpose(0, 1, 3, 2, 4, 5).reshape(b, n * n, c, c, 3)
        # Anti-aliased when shrinking (tiny demo backbones), bilinear when enlarging (UNI: 64 -> 224).
        crops.append(jax.image.resize(x, (b, n * n, size, size, 3), "linear"))
    return jnp.concatenate(crops, 1)


class HEEncoder(nn.Module):
    backbone: nn.Module
    frozen: bool = False

    @nn.compact
    def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
        """uint8 (B, m, m, 3) -> {scale: (B, D)} mean-pooled backbone embeddings per grid."""
        b = images.shape[0]
        size = self.backbone.img_size
        crops = multi_crop(images.astype(jnp.float32) / 255.0, size)
        emb = self.backbone(crops.reshape(b * N_CROPS, size, size, 3)).reshape(b, N_CROPS, -1)
        if self.frozen:
            emb = jax.lax.stop_gradient(emb)
        out, start = {}, 0
        for name, n in GRIDS:
            out[name] = emb[:, start : start + n * n].mean(1)
            start += n * n
        return out
