"""ST tower of the single-scale baselines: an MLP on the tile's expression (docs/method.md,
"Baselines"). It sees the tile's summed counts (the same log1p the evaluation predicts), no cells and
no graph; its one scale is "macro".
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph


class ExpressionMLP(nn.Module):
    hidden: int = 256
    layers: int = 2
    scales = ("macro",)

    @nn.compact
    def __call__(self, graph: jraph.GraphsTuple, train: bool = False) -> dict[str, jax.Array]:
        del train
        h = jnp.log1p(graph.globals["tile_counts"])
        for i in range(self.layers):
            h = nn.gelu(
                nn.LayerNorm()(nn.Dense(self.hidden, name=f"dense_{i}")(h)), approximate=False
            )
        return {"macro": h}
