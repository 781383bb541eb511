"""ST tower of the single-scale baselines: an MLP on the tile's expression (docs/method.md,
"Baselines"). It sees no cells and no graph, only the tile: by default its summed counts
library-size normalised to `target_sum` then log1p, as the graph tower normalises its cells
(`input="log1p_normalized"`; "log1p_counts", the raw log1p, is what Task 1 predicts and was the
default before 2026-12-03); for BLEEP a host-side tile feature, the batch-corrected principal
components of the tile's expression (`input="expression_pcs"`, `data.features`). Its one scale is
"macro".
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph


def tile_feature(graph: jraph.GraphsTuple, name: str, tower: str) -> jax.Array:
    """A host-side tile feature of the batch, with the setting that provides it named if absent."""
    if name not in graph.globals:
        raise ValueError(
            f"the {tower} ST tower reads the tile feature {name!r}: add it to data.tile_features"
        )
    return graph.globals[name]


class ExpressionMLP(nn.Module):
    hidden: int = 256
    layers: int = 2
    input: str = "log1p_normalized"  # | "log1p_counts" | a tile feature, e.g. "expression_pcs"
    target_sum: float = 1e4  # of "log1p_normalized"
    scales = ("macro",)

    @nn.compact
    def __call__(self, graph: jraph.GraphsTuple, train: bool = False) -> dict[str, jax.Array]:
        del train
        if self.input == "log1p_counts":
            h = jnp.log1p(graph.globals["tile_counts"])
        elif self.input == "log1p_normalized":
            c = graph.globals["tile_counts"]
            h = jnp.log1p(c / jnp.maximum(c.sum(-1, keepdims=True), 1.0) * self.target_sum)
        else:
            h = tile_feature(graph, self.input, "mlp").astype(jnp.float32)
        for i in range(self.layers):
            h = nn.gelu(
                nn.LayerNorm()(nn.Dense(self.hidden, name=f"dense_{i}")(h)), approximate=False
            )
        return {"macro": h}
