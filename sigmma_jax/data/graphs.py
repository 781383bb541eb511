"""Cell graphs of a tile: spatial-proximity edges kept only inside micro blocks (docs/method.md).

A tile of side m is cut into 4x4 micro blocks; a cell's meso (2x2) and macro (1x1) blocks follow from
its micro block (`sigmma_jax.scales`), so only the micro block coordinates are stored.
"""

from __future__ import annotations

import numpy as np
import scipy.spatial

from sigmma_jax.scales import MICRO_PER_SIDE, block_ids

METHODS = ("knn", "radius", "delaunay")  # data.graph


def micro_blocks(xy: np.ndarray, tile_px: int) -> np.ndarray:
    """(n, 2) int8 micro block (bx, by) of each cell, from tile-pixel coordinates."""
    b = np.floor(np.asarray(xy) / (tile_px / MICRO_PER_SIDE)).astype(np.int64)
    return np.clip(b, 0, MICRO_PER_SIDE - 1).astype(np.int8)


def _within(xy: np.ndarray, method: str, k: int, radius: float) -> np.ndarray:
    """Directed (i, j) pairs among the points of one block."""
    n = len(xy)
    if n < 2:
        return np.zeros((0, 2), np.int64)
    if method == "knn":
        kk = min(k, n - 1)
        # k+1 because every point is its own nearest neighbour.
        _, nbr = scipy.spatial.cKDTree(xy).query(xy, k=kk + 1)
        src = np.repeat(np.arange(n), kk + 1)
        pairs = np.stack([src, nbr.reshape(-1)], 1)
    elif method == "radius":
        pairs = scipy.spatial.cKDTree(xy).query_pairs(radius, output_type="ndarray")
    elif method == "delaunay":
        if n < 4:  # Delaunay needs 3 points not on a line; a tiny block is fully connected instead
            i, j = np.triu_indices(n, 1)
            pairs = np.stack([i, j], 1)
        else:
            try:
                tri = scipy.spatial.Delaunay(xy)
            except scipy.spatial.QhullError:  # collinear points
                i, j = np.triu_indices(n, 1)
                return np.stack([i, j], 1)
            s = tri.simplices
            pairs = np.concatenate([s[:, [0, 1]], s[:, [1, 2]], s[:, [0, 2]]])
    else:
        raise ValueError(f"unknown graph method {method!r}; use one of {METHODS}")
    return pairs


SCOPES = ("block", "tile")


def build_micro_graph(
    xy: np.ndarray,
    blocks: np.ndarray,
    method: str = "knn",
    k: int = 6,
    radius: float = 30.0,
    scope: str = "block",
) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric edges (senders, receivers), no self loops, both ends in the same micro block.

    scope "block": the graph is built inside each block, i.e. a cell's k neighbours are its k
    nearest cells of its own block (squidpy's generic kNN applied per block). scope "tile": the
    paper's E_micro ⊆ E, the graph built over the whole tile and only the edges inside a block kept,
    so a cell near a block border may keep fewer than k. Either is then symmetrised. (Radius graphs
    are the same under both; kNN and Delaunay graphs differ.)
    """
    if scope not in SCOPES:
        raise ValueError(f"unknown micro graph scope {scope!r}; use one of {SCOPES}")
    xy = np.asarray(xy, np.float64)
    ids = block_ids(np.asarray(blocks), MICRO_PER_SIDE)
    if scope == "tile":
        pairs = _within(xy, method, k, radius)
        pairs = pairs[ids[pairs[:, 0]] == ids[pairs[:, 1]]]
    else:
        all_pairs = [np.zeros((0, 2), np.int64)]
        for b in np.unique(ids):
            members = np.flatnonzero(ids == b)
            all_pairs.append(members[_within(xy[members], method, k, radius)])
        pairs = np.concatenate(all_pairs)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    pairs = np.concatenate([pairs, pairs[:, ::-1]])
    pairs = np.unique(pairs, axis=0)
    return pairs[:, 0].astype(np.int32), pairs[:, 1].astype(np.int32)
