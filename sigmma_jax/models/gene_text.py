"""ST tower of a vision-language model's own row (CLIP, PLIP, OmiCLIP's CoCa; `experiments.methods.
text_tower`): its pretrained text tower reading the tile's gene sentence as text, as Loki encodes
OmiCLIP's sentences. One scale, "macro".

The tokens are a host-side tile feature (`data.tile_features = ("gene_text",)`,
`sigmma_jax.data.features.gene_text`): the names of the tile's most expressed genes joined by spaces,
through the model's own tokenizer (so a gene name may take several tokens, and a long sentence is
cut at the tower's context length, EOT kept). The tower's weights and tokenizer come from the same
converted directory as the image tower's (`model.backbone_weights`, its text/ folder).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph

from sigmma_jax.models.expression_mlp import tile_feature
from sigmma_jax.models.text import TextTransformer


class GeneText(nn.Module):
    text: TextTransformer  # at params["st"]["text"], where `families.sigmma` puts the converted weights
    scales = ("macro",)

    @nn.compact
    def __call__(self, graph: jraph.GraphsTuple, train: bool = False) -> dict[str, jax.Array]:
        del train
        tokens = tile_feature(graph, "gene_text", "text").astype(jnp.int32)
        return {"macro": self.text(tokens)}
