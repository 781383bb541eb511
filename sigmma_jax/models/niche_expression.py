"""AE-Gene, ST-Align's niche expression encoder (§3.2, §4.1: "a 6-layer Transformer encoder with an
8-head attention mechanism ... dropout 0.1").

The niche's expression (the mean raw counts of its spots, Eq. 2) is normalised per niche to
`target_sum` and log1p'd (scanpy's normalize_total + log1p), turned into `tokens` tokens by an MLP
(the authors' code: genes -> 1024 -> 512 -> 8 tokens), given a learned position embedding, and
read by `depth` pre-LayerNorm transformer blocks (multi-head attention and a GELU MLP of `mlp_dim`,
each residual, with dropout); the final LayerNorm's tokens are averaged into the niche's embedding.
The code's tokens are 548 wide; any width divisible by the heads serves, since the projection head
after the encoder maps it to the shared space (512 by default).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def normalized_log1p(counts: jax.Array, target_sum: float) -> jax.Array:
    """log1p of counts scaled to `target_sum` per row (scanpy's normalize_total + log1p); a row of
    zeros stays zero (`sigmma_jax.data.features.normalized_log1p` in numpy)."""
    counts = counts.astype(jnp.float32)
    total = jnp.maximum(counts.sum(-1, keepdims=True), 1.0)
    return jnp.log1p(counts / total * target_sum)


def gelu(x: jax.Array) -> jax.Array:
    return nn.gelu(x, approximate=False)


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + Attn(LN(x)), then x + MLP(LN(x)), dropout on both."""

    heads: int
    mlp_dim: int
    dropout: float

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        y = nn.LayerNorm(name="norm1")(x)
        y = nn.MultiHeadDotProductAttention(
            self.heads, dropout_rate=self.dropout, deterministic=not train, name="attention"
        )(y, y)
        x = x + nn.Dropout(self.dropout, deterministic=not train)(y)
        y = gelu(nn.Dense(self.mlp_dim, name="fc1")(nn.LayerNorm(name="norm2")(x)))
        y = nn.Dense(x.shape[-1], name="fc2")(nn.Dropout(self.dropout, deterministic=not train)(y))
        return x + nn.Dropout(self.dropout, deterministic=not train)(y)


class NicheExpressionEncoder(nn.Module):
    tokens: int = 8
    width: int = 512
    depth: int = 6
    heads: int = 8
    mlp_dim: int = 1024
    dropout: float = 0.1
    target_sum: float = 1e4
    mlp_hidden: Sequence[int] = (1024, 512)

    @nn.compact
    def __call__(self, counts: jax.Array, train: bool = False) -> jax.Array:
        """(B, genes) raw niche expression -> (B, width)."""
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by {self.heads} heads")
        x = normalized_log1p(counts, self.target_sum)
        for i, h in enumerate(self.mlp_hidden):
            x = gelu(nn.Dense(h, name=f"token_mlp_{i}")(x))
        b = x.shape[0]
        x = nn.Dense(self.tokens * self.width, name="token_out")(x).reshape(b, self.tokens, -1)
        pos = self.param("pos_embed", nn.initializers.normal(0.02), (1, self.tokens, self.width))
        x = nn.Dropout(self.dropout, deterministic=not train)(x + pos)
        for i in range(self.depth):
            x = Block(self.heads, self.mlp_dim, self.dropout, name=f"blocks_{i}")(x, train)
        return nn.LayerNorm(name="norm")(x).mean(1)
