"""Hierarchical cell-graph ST encoder g (docs/method.md, "ST encoder"; SIGMMA §4 and §5.2).

micro: GraphSAGE on the kNN graph inside micro blocks -> attention pool -> z_micro.
meso / macro: candidate pairs, by the paper's neighbour-patch constraint two cells of the coarser
block in sub-blocks that share a side (`candidate_mask`), that are not yet edges are scored by an
MLP, sampled as relaxed Bernoulli edges (Gumbel-softmax), added to the graph with their sample as
weight, and GraphSAGE continues from the previous node states -> z_meso, z_macro.

Tiles are viewed densely, (B, N, ...) nodes and (B, N, N) adjacency: with N <= 512 the O(N^2)
candidate matrices are cheap and dense matmuls suit accelerators better than scatters.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph

from sigmma_jax.scales import GRID, MICRO_PER_SIDE, SCALES, block_ids

NEG = -1e9


def gelu(x):
    return nn.gelu(x, approximate=False)


class SAGE(nn.Module):
    """h' = LN(h + gelu(W [h_v ; Σ_u w_uv h_u / max(Σ_u w_uv, 1)])): SIGMMA eq. 1, weighted mean.

    The denominator is the node's total edge weight, but never below one edge (docs/method.md,
    "Nodes with no neighbours"). With hard 0/1 weights (micro edges, straight-through samples) this
    is the mean over neighbours, and a node without any aggregates zero. Its gradient stays bounded:
    a node whose candidates were all rejected in the forward pass still receives the relaxed
    samples' gradients, and dividing those by a vanishing degree (as max(deg, 1e-6) did) multiplied
    them by up to 10^6.

    The residual and LayerNorm are our addition: they keep node states on one scale as layers stack
    across the three graph scales.
    """

    dim: int

    @nn.compact
    def __call__(self, h, adj):
        deg = adj.sum(-1, keepdims=True)
        agg = jnp.einsum("bvu,bud->bvd", adj, h) / jnp.maximum(deg, 1.0)
        out = gelu(nn.Dense(self.dim)(jnp.concatenate([h, agg], -1)))
        return nn.LayerNorm()(h + out)


class AttentionPool(nn.Module):
    """Global attention pooling (Li et al. 2015): z = Σ softmax(gate(h))_v φ(h_v); padding weight 0."""

    dim: int

    @nn.compact
    def __call__(self, h, mask):
        gate = jnp.where(mask, nn.Dense(1, name="gate")(h)[..., 0], NEG)
        alpha = jax.nn.softmax(gate, -1) * mask  # an all-padding tile gives zeros, not NaN
        return jnp.einsum("bn,bnd->bd", alpha, nn.Dense(self.dim, name="phi")(h))


EDGE_SAMPLING = ("gumbel", "full", "none")  # model.st.edge_sampling
EVAL_EDGES = ("expectation", "threshold")  # model.st.eval_edges
CANDIDATES = ("adjacent", "block")  # model.st.candidates


def candidate_mask(blocks, scale: str, rule: str = "adjacent"):
    """(B, N, N) pairs of cells that may be joined at `scale` ("meso" | "macro"), from their micro
    blocks (B, N, 2). "block": both in the same block of the scale. "adjacent" (SIGMMA §5.2, "we
    enforce a neighbor-patch constraint that allows edges to form only between nodes in adjacent
    patches"): besides, in different sub-blocks (the previous scale's blocks: micro inside a meso
    block, meso inside the tile) that share a side. A stage then links neighbouring patches of the
    stage before instead of re-linking cells of one patch, and never joins two cells that the
    previous stage's blocks already held together. Self pairs, padding and existing edges are left
    to the caller."""
    if rule not in CANDIDATES:
        raise ValueError(f"unknown model.st.candidates {rule!r}; use one of {CANDIDATES}")
    ids = block_ids(blocks, GRID[scale])
    same = ids[:, :, None] == ids[:, None, :]
    if rule == "block":
        return same
    finer = SCALES[SCALES.index(scale) - 1]
    sub = blocks.astype("int32") // (MICRO_PER_SIDE // GRID[finer])
    apart = jnp.abs(sub[:, :, None, :] - sub[:, None, :, :]).sum(-1)
    return same & (apart == 1)


class EdgeSampler(nn.Module):
    """Weights in [0, 1] for candidate pairs: s_uv = σ(MLP([h_u, h_v])), relaxed Bernoulli sample.

    The MLP's first layer is split as W_u h_u + W_v h_v so the (B, N, N, hidden) tensor is formed
    once, never a (B, N, N, 2D) concatenation. Scores and noise are symmetrised: edges are undirected.
    """

    hidden: int
    tau: float
    straight_through: bool
    mode: str  # "gumbel" | "full" | "none"
    eval_edges: str  # "expectation" | "threshold"
    prior: float = 0.5  # every candidate's probability at initialisation

    @nn.compact
    def __call__(self, h, candidates, train: bool):
        c = candidates.astype(jnp.float32)
        if self.mode == "none":
            return jnp.zeros_like(c)
        if self.mode == "full":  # ablation: fully connect each block
            return c
        z = nn.relu(
            nn.Dense(self.hidden, name="u")(h)[:, :, None]
            + nn.Dense(self.hidden, use_bias=False, name="v")(h)[:, None, :]
        )
        # The last layer starts at zero, so every candidate starts at probability `prior`.
        bias_init = nn.initializers.constant(jnp.log(self.prior) - jnp.log1p(-self.prior))
        logit = nn.Dense(1, kernel_init=nn.initializers.zeros, bias_init=bias_init, name="out")(z)
        logit = logit[..., 0]
        logit = 0.5 * (logit + logit.swapaxes(1, 2))
        if train:
            u = jax.random.uniform(
                self.make_rng("gumbel"), logit.shape, minval=1e-6, maxval=1 - 1e-6
            )
            u = jnp.triu(u, 1) + jnp.triu(u, 1).swapaxes(1, 2) + 0.5 * jnp.eye(u.shape[-1])
            y = jax.nn.sigmoid((logit + jnp.log(u) - jnp.log1p(-u)) / self.tau)
            if self.straight_through:  # hard 0/1 forward, relaxed gradient (Piao et al.)
                y = y + jax.lax.stop_gradient((y > 0.5).astype(y.dtype) - y)
        else:
            p = jax.nn.sigmoid(logit)
            y = p if self.eval_edges == "expectation" else (p > 0.5).astype(p.dtype)
        return y * c


def dense_tiles(graph: jraph.GraphsTuple):
    """Per-tile views of a fixed-slot batch: counts (B,N,G), mask (B,N), blocks (B,N,2), adj (B,N,N).

    Senders and receivers are local to their tile's slot (`data.input_pipeline.collate`), so a tile's
    graph does not depend on where the mesh puts it in the global batch.
    """
    b = graph.n_node.shape[0]
    n = graph.nodes["mask"].shape[0] // b
    e = graph.senders.shape[0] // b
    snd = graph.senders.reshape(b, e)
    rcv = graph.receivers.reshape(b, e)
    w = graph.edges["mask"].reshape(b, e).astype(jnp.float32)
    # Row = receiving cell, column = sending cell; padded edges carry weight 0.
    adj = jax.vmap(lambda s, r, w: jnp.zeros((n, n)).at[r, s].max(w))(snd, rcv, w)
    return (
        graph.nodes["counts"].reshape(b, n, -1),
        graph.nodes["mask"].reshape(b, n),
        graph.nodes["blocks"].reshape(b, n, 2),
        adj,
    )


class STEncoder(nn.Module):
    """The graph tower: a batch's GraphsTuple -> {scale: (B, hidden)} pooled node states."""

    hidden: int = 256
    layers_per_scale: int = 1
    target_sum: float = 100.0
    edge_hidden: int = 32
    edge_sampling: str = "gumbel"
    gumbel_tau: float = 0.5
    straight_through: bool = True
    eval_edges: str = "expectation"
    edge_prior: float = 0.5
    candidates: str = "adjacent"  # model.st.candidates (`candidate_mask`)
    scales = SCALES

    @nn.compact
    def __call__(self, graph: jraph.GraphsTuple, train: bool = False) -> dict[str, jax.Array]:
        counts, mask, blocks, adj = dense_tiles(graph)
        if "features" in graph.nodes:  # data.node_features: PCA of the counts, or precomputed
            x = graph.nodes["features"].reshape(*mask.shape, -1)
        else:  # library-size normalisation then log1p, the usual Xenium per-cell normalisation
            x = jnp.log1p(
                counts / jnp.maximum(counts.sum(-1, keepdims=True), 1.0) * self.target_sum
            )
        h = gelu(nn.LayerNorm()(nn.Dense(self.hidden, name="embed")(x)))

        n = mask.shape[1]
        pair = mask[:, :, None] & mask[:, None, :] & ~jnp.eye(n, dtype=bool)

        def layers(h, adj, scale):
            for i in range(self.layers_per_scale):
                h = SAGE(self.hidden, name=f"sage_{scale}_{i}")(h, adj)
            return h

        out = {}
        h = layers(h, adj, "micro")
        # Each cell's state after each stage, read by inference (`mutable=["intermediates"]`) as
        # the cell-level multi-scale embeddings; padded rows are dropped there by the node mask.
        self.sow("intermediates", "nodes_micro", h)
        out["micro"] = AttentionPool(self.hidden, name="pool_micro")(h, mask)
        real = mask.sum()
        self.sow("stats", "graph_micro_degree", (adj.sum(-1) * mask).sum() / jnp.maximum(real, 1))
        # Pairs that are edges for sure: not candidates again. With expectation weights at
        # evaluation no added edge is sure, so under candidates="block" a meso candidate is a
        # candidate again at macro (neighbour-patch candidates of the two stages are disjoint).
        existing = adj > 0
        expectation = not train and self.eval_edges == "expectation"
        for scale in SCALES[1:]:
            allowed = candidate_mask(blocks, scale, self.candidates)
            cand = jax.lax.stop_gradient(pair & allowed & ~existing)
            y = EdgeSampler(
                self.edge_hidden,
                self.gumbel_tau,
                self.straight_through,
                self.edge_sampling,
                self.eval_edges,
                self.edge_prior,
                name=f"edges_{scale}",
            )(h, cand, train)
            # The edge's weight is the probability that it is present after this stage: a pair
            # considered at meso and again at macro gets 1 - (1 - p_meso)(1 - p_macro), never > 1.
            # Hard samples give the same 0/1 weights as adding them.
            adj = adj + (1.0 - adj) * y
            if not expectation:
                existing = existing | (jax.lax.stop_gradient(y) > 0.5)
            self.sow("intermediates", f"weights_{scale}", y)
            self.sow(
                "stats", f"graph_{scale}_sampled", (y * cand).sum() / jnp.maximum(cand.sum(), 1)
            )
            self.sow(
                "stats", f"graph_{scale}_degree", (adj.sum(-1) * mask).sum() / jnp.maximum(real, 1)
            )
            h = layers(h, adj, scale)
            self.sow("intermediates", f"nodes_{scale}", h)
            out[scale] = AttentionPool(self.hidden, name=f"pool_{scale}")(h, mask)
        self.sow("intermediates", "adjacency", adj)
        return out
