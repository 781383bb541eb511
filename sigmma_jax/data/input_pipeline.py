"""SIGMMA's batches: decoded tiles -> augmented -> padded to budgets -> Jraph batches (`loader`).

Padding is per tile: every tile occupies a fixed slot of `nodes` nodes and `edges` edges in the
batched GraphsTuple (real ones first, a mask marks them). Fixed slots mean (1) one compile per run,
(2) a data-parallel shard of the batch holds whole tiles, (3) the model can view nodes as (B, N, ...)
without a scatter, which the dense per-block candidate matrices of the hierarchy need.
"""

from __future__ import annotations

import pathlib
from typing import Any, Iterator

import grain
import jax
import jraph
import numpy as np
from jax.sharding import Mesh

from sigmma_jax import scales
from sigmma_jax.data import features, loader, records
from sigmma_jax.data.loader import ShardSource


class TileSource(grain.sources.RandomAccessDataSource):
    """Decoded tiles of one split, with the run's host-side features attached (`data.features`)."""

    def __init__(self, shard_dir: str | pathlib.Path, manifest: dict, split: str):
        self._records = ShardSource(shard_dir, manifest, split)
        self._features = features.load(manifest)

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, i: int) -> dict:
        tile = records.decode(self._records[i])
        if self._features is not None:
            tile = self._features.attach(tile, self._records.record(i))
        return tile

    def __repr__(self) -> str:
        return f"TileSource({self._records!r}, features={self._features is not None})"


def augment(tile: dict, rng: np.random.Generator) -> dict:
    """One of the 8 dihedral transforms, applied to pixels, cell coordinates and blocks together.

    With pixel p covering [p, p+1), mirroring maps x to m - x and pixel p to m-1-p; blocks are
    mirrored as integers rather than recomputed so a cell on a block border never changes block
    (its edges were built inside that block).
    """
    m = tile["image"].shape[0]
    nb = scales.MICRO_PER_SIDE - 1
    xy, blocks = tile["xy"].copy(), tile["blocks"].copy()
    k = int(rng.integers(8))
    if k & 1:  # transpose
        xy, blocks = xy[:, ::-1].copy(), blocks[:, ::-1].copy()
    if k & 2:  # mirror x
        xy[:, 0], blocks[:, 0] = m - xy[:, 0], nb - blocks[:, 0]
    if k & 4:  # mirror y
        xy[:, 1], blocks[:, 1] = m - xy[:, 1], nb - blocks[:, 1]
    return dict(tile, image=loader.dihedral(tile["image"], k), xy=xy, blocks=blocks)


def pad_tile(tile: dict, nodes: int, edges: int) -> dict:
    """Fixed-size arrays for one tile; padded edges are self loops on node 0 with mask False."""
    n, e = len(tile["xy"]), len(tile["senders"])
    if n > nodes or e > edges:
        raise ValueError(
            f"tile {tile['meta']} has {n} cells / {e} edges, over the budget "
            f"{nodes} / {edges} recorded in the manifest"
        )

    def pad(x, size):
        out = np.zeros((size,) + x.shape[1:], x.dtype)
        out[: len(x)] = x
        return out

    out = dict(
        image=tile["image"],
        tile_counts=tile["tile_counts"],
        counts=pad(tile["counts"], nodes),
        xy=pad(tile["xy"], nodes),
        blocks=pad(tile["blocks"].astype(np.int32), nodes),
        node_mask=np.arange(nodes) < n,
        senders=pad(tile["senders"], edges),
        receivers=pad(tile["receivers"], edges),
        edge_mask=np.arange(edges) < e,
        valid=np.bool_(True),
        features=dict(tile.get("features", {})),
    )
    if "node_features" in tile:
        out["node_features"] = pad(tile["node_features"], nodes)
    return out


def empty_tile(like: dict) -> dict:
    """A padded tile of zeros marked invalid: fills the last evaluation batch."""
    out = jax.tree.map(np.zeros_like, like)
    out["valid"] = np.bool_(False)
    return out


def zeros_batch(manifest: dict, batch: int) -> dict[str, Any]:
    """A batch of empty tiles with the manifest's shapes: for initialisation and shape inference."""
    g, m = len(manifest["genes"]), manifest["settings"]["tile_px"]
    none = dict(
        image=np.zeros((m, m, 3), np.uint8),
        xy=np.zeros((0, 2), np.float32),
        blocks=np.zeros((0, 2), np.int8),
        counts=np.zeros((0, g), np.float32),
        senders=np.zeros(0, np.int32),
        receivers=np.zeros(0, np.int32),
        tile_counts=np.zeros(g, np.float32),
        meta={},
    )
    if (feats := features.load(manifest)) is not None:
        none.update(feats.empty())
    tile = empty_tile(pad_tile(none, manifest["budgets"]["nodes"], manifest["budgets"]["edges"]))
    return collate([tile] * batch)


def collate(tiles: list[dict]) -> dict[str, Any]:
    """Stacks padded tiles into {'image': (B, m, m, 3), 'graph': GraphsTuple with B graphs}.

    Senders and receivers are local to each tile's slot (0 <= i < nodes), not offsets into a
    batch-wide node array as in a plain jraph batch: where a tile lands in the global batch depends
    on the mesh (which devices a process has, in what order), and a tile's graph must not. The model
    reads tile b's edges from slot b (`models.st_encoder.dense_tiles`).
    """
    b = len(tiles)
    cat = lambda k: np.concatenate([t[k] for t in tiles])
    nodes, edges = len(tiles[0]["xy"]), len(tiles[0]["senders"])
    node_arrays = dict(
        counts=cat("counts"), xy=cat("xy"), blocks=cat("blocks"), mask=cat("node_mask")
    )
    if "node_features" in tiles[0]:
        node_arrays["features"] = cat("node_features")
    graph = jraph.GraphsTuple(
        nodes=node_arrays,
        edges=dict(mask=cat("edge_mask")),
        senders=cat("senders"),
        receivers=cat("receivers"),
        n_node=np.full(b, nodes, np.int32),
        n_edge=np.full(b, edges, np.int32),
        globals=dict(
            tile_counts=np.stack([t["tile_counts"] for t in tiles]),
            valid=np.stack([t["valid"] for t in tiles]),
            **{k: np.stack([t["features"][k] for t in tiles]) for k in tiles[0]["features"]},
        ),
    )
    return dict(image=np.stack([t["image"] for t in tiles]), graph=graph)


def train_iterator(
    shard_dir: str | pathlib.Path,
    manifest: dict,
    global_batch: int,
    *,
    seed: int,
    mesh: Mesh | None = None,
    augment_tiles: bool = True,
    workers: int = 0,
    prefetch: int = 2,
) -> grain.DatasetIterator:
    """Endless shuffled batches of padded tiles (`loader.shuffled_batches`)."""
    budgets = manifest["budgets"]
    return loader.shuffled_batches(
        TileSource(shard_dir, manifest, "train"),
        global_batch,
        seed=seed,
        mesh=mesh,
        augment=augment if augment_tiles else None,
        prepare=lambda t: pad_tile(t, budgets["nodes"], budgets["edges"]),
        collate=collate,
        workers=workers,
        prefetch=prefetch,
    )


def eval_batches(
    shard_dir: str | pathlib.Path,
    manifest: dict,
    split: str,
    global_batch: int,
    mesh: Mesh | None = None,
) -> Iterator[dict]:
    """Every tile of a split once, in manifest order (`loader.ordered_batches`); the last batch is
    filled with invalid empty tiles (graph.globals['valid'] is False for them)."""
    budgets = manifest["budgets"]
    return loader.ordered_batches(
        TileSource(shard_dir, manifest, split),
        global_batch,
        mesh,
        prepare=lambda t: pad_tile(t, budgets["nodes"], budgets["edges"]),
        empty=empty_tile,
        collate=collate,
    )
