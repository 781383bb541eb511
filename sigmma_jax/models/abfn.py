"""ST-Align's fusion of an image embedding with an expression embedding (§3.3): the Attention-Based
Fusion Network, and the concatenation it is ablated against (Table 2).

ABFN, as the paper's Eqs. 7-9 write it and the authors' code builds it:
- each embedding f ∈ R^d is mapped by a learned matrix to s tokens of width l (f -> f' ∈ R^{s×l};
  the code: s = 8, l = 512);
- the image branch: image tokens attend to gene tokens (queries from LayerNorm(image tokens), keys
  and values from LayerNorm(gene tokens); the code's LayerNorm on q and kv), multi-head (8 heads of
  l/8), softmax over the s tokens of the other modality. The printed Eq. 7 sums the softmax over
  samples j, which would mix the batch's spots; the code attends over tokens, and so does this.
  No residual (the code has none: Z^I is the other modality's context alone);
- the gene branch the same, genes querying the image;
- each branch through an FFN l -> 64 -> GELU -> l/2: the code's form of the paper's W_I, W_G ∈
  R^{l × l/2} (Eq. 9);
- the two concatenated per token -> (s, l), flattened to s·l, LayerNorm, then a head s·l ->
  hidden (2048) -> ReLU -> out_dim (1024): "mapped back to R^d".
Dropout (0.1, the code's) on the attention probabilities and after each FFN, in training only
(Flax's "dropout" stream).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def gelu(x: jax.Array) -> jax.Array:
    return nn.gelu(x, approximate=False)  # torch's default GELU, the code's


class ABFN(nn.Module):
    tokens: int = 8  # s
    width: int = 512  # l
    heads: int = 8
    ffn_hidden: int = 64
    hidden: int = 2048
    out_dim: int = 1024
    dropout: float = 0.1
    dtype: jnp.dtype = jnp.float32

    def _branch(self, queries: jax.Array, context: jax.Array, name: str, train: bool) -> jax.Array:
        """One modality's tokens attending to the other's, then its FFN: (B, s, l) -> (B, s, l/2)."""
        q = nn.LayerNorm(name=f"{name}_norm_q")(queries)
        kv = nn.LayerNorm(name=f"{name}_norm_kv")(context)
        z = nn.MultiHeadDotProductAttention(
            self.heads,
            dtype=self.dtype,
            dropout_rate=self.dropout,
            deterministic=not train,
            name=f"{name}_attention",
        )(q, kv)
        h = gelu(nn.Dense(self.ffn_hidden, dtype=self.dtype, name=f"{name}_ffn_in")(z))
        h = nn.Dense(self.width // 2, dtype=self.dtype, name=f"{name}_ffn_out")(h)
        return nn.Dropout(self.dropout, deterministic=not train)(h)

    @nn.compact
    def __call__(self, image: jax.Array, gene: jax.Array, train: bool = False) -> jax.Array:
        """(B, d_i), (B, d_g) -> (B, out_dim)."""
        if self.width % 2 or self.width % self.heads:
            raise ValueError(f"ABFN width {self.width} must be even and divisible by the heads")
        b, s, w = image.shape[0], self.tokens, self.width
        zi = nn.Dense(s * w, dtype=self.dtype, name="image_tokens")(image).reshape(b, s, w)
        zg = nn.Dense(s * w, dtype=self.dtype, name="gene_tokens")(gene).reshape(b, s, w)
        fused = jnp.concatenate(
            [self._branch(zi, zg, "image", train), self._branch(zg, zi, "gene", train)], -1
        )
        f = nn.LayerNorm(name="norm")(fused.reshape(b, s * w))
        f = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name="head_in")(f))
        return nn.Dense(self.out_dim, dtype=self.dtype, name="head_out")(f).astype(jnp.float32)


class Concatenate(nn.Module):
    """The ablation: [f_I ; f_G] -> a learned linear map to out_dim (so that L_NS still trains it)."""

    out_dim: int = 1024
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, image: jax.Array, gene: jax.Array, train: bool = False) -> jax.Array:
        del train
        x = jnp.concatenate([image, gene], -1)
        return nn.Dense(self.out_dim, dtype=self.dtype, name="proj")(x).astype(jnp.float32)
