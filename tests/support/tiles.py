"""Synthetic tile records, as preprocessing makes them, for pipeline and model tests."""

import numpy as np

from sigmma_jax.data import graphs


def tile(n=60, m=256, seed=0, genes=7):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, m, (n, 2)).astype(np.float32)
    blocks = graphs.micro_blocks(xy, m)
    s, r = graphs.build_micro_graph(xy, blocks)
    counts = rng.poisson(2.0, (n, genes)).astype(np.float32)
    return dict(
        image=rng.integers(0, 256, (m, m, 3), dtype=np.uint8),
        xy=xy,
        blocks=blocks,
        counts=counts,
        senders=s,
        receivers=r,
        tile_counts=counts.sum(0),
        cell_ids=np.array([f"c{seed}_{i}" for i in range(n)], dtype=object),
        meta=dict(slide="s", row=0, col=0, n_cells=n),
    )
