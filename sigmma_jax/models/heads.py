"""Projection heads: a tower's embedding -> the shared latent space (docs/method.md, "Heads")."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


class ProjectionHead(nn.Module):
    """BLEEP's head: Linear -> GELU -> Linear -> dropout, residual, LayerNorm; then L2-normalised
    (BLEEP itself keeps the LayerNorm output: `normalize=False`)."""

    dim: int
    dropout: float
    normalize: bool = True

    @nn.compact
    def __call__(self, x, train: bool):
        p = nn.Dense(self.dim, name="proj")(x)
        h = nn.Dense(self.dim, name="fc")(nn.gelu(p, approximate=False))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = nn.LayerNorm()(h + p)
        if not self.normalize:
            return h
        return h / jnp.linalg.norm(h, axis=-1, keepdims=True).clip(1e-6)
