"""Vision Transformer laid out like timm's `VisionTransformer`, so PyTorch weights map name by name.

Covers UNI (timm `vit_large_patch16_224`, LayerScale `init_values=1e-5`, class token, final norm,
`dynamic_img_size=True`): the embedding is the class token after the final LayerNorm.
Normalisation by the backbone's mean/std happens inside, so callers pass RGB in [0, 1].
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

LN_EPS = 1e-6  # timm's ViT LayerNorm epsilon


def gelu(x):
  return nn.gelu(x, approximate=False)  # timm uses exact GELU; Flax defaults to tanh


class Attention(nn.Module):
  num_heads: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, n, d = x.shape
    qkv = nn.Dense(3 * d, dtype=self.dtype, name="qkv")(x)
    # timm packs qkv as (3, heads, head_dim) along the last axis.
    q, k, v = jnp.moveaxis(qkv.reshape(b, n, 3, self.num_heads, d // self.num_heads), 2, 0)
    out = jax.nn.dot_product_attention(q, k, v)
    return nn.Dense(d, dtype=self.dtype, name="proj")(out.reshape(b, n, d))


class LayerScale(nn.Module):
  init_values: float

  @nn.compact
  def __call__(self, x):
    gamma = self.param("gamma", nn.initializers.constant(self.init_values), (x.shape[-1],))
    return x * gamma.astype(x.dtype)


class Block(nn.Module):
  num_heads: int
  mlp_ratio: float
  init_values: float | None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    ls = (lambda name: LayerScale(self.init_values, name=name)) if self.init_values else (
        lambda name: (lambda y: y))
    y = nn.LayerNorm(LN_EPS, dtype=self.dtype, name="norm1")(x)
    x = x + ls("ls1")(Attention(self.num_heads, self.dtype, name="attn")(y))
    y = nn.LayerNorm(LN_EPS, dtype=self.dtype, name="norm2")(x)
    y = nn.Dense(int(d * self.mlp_ratio), dtype=self.dtype, name="fc1")(y)
    y = nn.Dense(d, dtype=self.dtype, name="fc2")(gelu(y))
    return x + ls("ls2")(y)


def resample_pos_embed(pos: jax.Array, grid: tuple[int, int]) -> jax.Array:
  """Bicubic resize of the patch position grid (the class token's entry is kept), as timm does."""
  cls, patches = pos[:, :1], pos[:, 1:]
  side = int(round(patches.shape[1] ** 0.5))
  if (side, side) == tuple(grid):
    return pos
  patches = patches.reshape(1, side, side, -1)
  patches = jax.image.resize(patches, (1, *grid, patches.shape[-1]), "cubic", antialias=False)
  return jnp.concatenate([cls, patches.reshape(1, grid[0] * grid[1], -1)], 1)


class VisionTransformer(nn.Module):
  img_size: int = 224
  patch_size: int = 16
  width: int = 1024
  depth: int = 24
  num_heads: int = 16
  mlp_ratio: float = 4.0
  init_values: float | None = 1e-5
  mean: Sequence[float] = (0.485, 0.456, 0.406)
  std: Sequence[float] = (0.229, 0.224, 0.225)
  dtype: jnp.dtype = jnp.float32
  remat: bool = False

  @property
  def embed_dim(self) -> int:
    return self.width

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    """(B, H, W, 3) float RGB in [0, 1] -> (B, width) class-token embedding."""
    x = (images - jnp.asarray(self.mean)) / jnp.asarray(self.std)
    x = nn.Conv(self.width, (self.patch_size,) * 2, strides=self.patch_size, padding="VALID",
                dtype=self.dtype, name="patch_embed")(x.astype(self.dtype))
    b, gh, gw, d = x.shape
    x = x.reshape(b, gh * gw, d)
    n = (self.img_size // self.patch_size) ** 2
    cls = self.param("cls_token", nn.initializers.zeros, (1, 1, d))
    pos = self.param("pos_embed", nn.initializers.normal(0.02), (1, n + 1, d))
    pos = resample_pos_embed(pos, (gh, gw))  # dynamic_img_size
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, d)).astype(x.dtype), x], 1)
    x = x + pos.astype(x.dtype)
    block = nn.remat(Block) if self.remat else Block
    for i in range(self.depth):
      x = block(self.num_heads, self.mlp_ratio, self.init_values, self.dtype, name=f"blocks_{i}")(x)
    x = nn.LayerNorm(LN_EPS, dtype=self.dtype, name="norm")(x)
    return x[:, 0].astype(jnp.float32)
