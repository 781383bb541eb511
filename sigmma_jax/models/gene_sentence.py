"""ST tower of the gene-sentence baseline (OmiCLIP / Loki; docs/method.md, "Baselines"): a tile's
expression written as the names of its most expressed genes, in descending order, read by a small
transformer trained from scratch. Its one scale is "macro".

The sentence is a host-side tile feature (`data.tile_features = ("gene_sentence",)`,
`sigmma_jax.data.features.gene_sentence`): token t > 0 is gene t - 1 of the panel, 0 pads a tile
with fewer expressed genes. Each gene is one token (a gene name is one word of the sentence); the
rank is a learned position embedding; a class token, pre-LayerNorm blocks, the class token's final
state is the tile's embedding. The paper's CLIP and PLIP rows fine-tune pretrained text towers on
such sentences; this tower, trained from scratch beside our HE backbone, stands in for them.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph

from sigmma_jax.models.expression_mlp import tile_feature


class GeneSentence(nn.Module):
    width: int = 256
    depth: int = 4
    num_heads: int = 8
    mlp_ratio: float = 4.0
    scales = ("macro",)

    @nn.compact
    def __call__(self, graph: jraph.GraphsTuple, train: bool = False) -> dict[str, jax.Array]:
        del train
        tokens = tile_feature(graph, "gene_sentence", "gene_sentence").astype(jnp.int32)
        b, length = tokens.shape
        vocab = graph.globals["tile_counts"].shape[-1] + 1  # the panel and the padding token
        x = nn.Embed(vocab, self.width, name="token_embed")(tokens)
        cls = self.param("cls_token", nn.initializers.zeros, (1, 1, self.width))
        pos = self.param("pos_embed", nn.initializers.normal(0.02), (1, length + 1, self.width))
        x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, self.width)), x], 1) + pos
        real = jnp.concatenate([jnp.ones((b, 1), bool), tokens > 0], 1)
        mask = nn.make_attention_mask(real, real)
        for i in range(self.depth):
            y = nn.LayerNorm(name=f"norm1_{i}")(x)
            x = x + nn.MultiHeadDotProductAttention(self.num_heads, name=f"attn_{i}")(
                y, y, mask=mask
            )
            y = nn.LayerNorm(name=f"norm2_{i}")(x)
            y = nn.Dense(int(self.width * self.mlp_ratio), name=f"fc1_{i}")(y)
            x = x + nn.Dense(self.width, name=f"fc2_{i}")(nn.gelu(y, approximate=False))
        return {"macro": nn.LayerNorm(name="norm")(x[:, 0])}
