"""The Grain loader every record kind shares: shards -> this process's rows of each global batch.

A kind's source decodes records (`input_pipeline.TileSource`, `spot_pipeline.SpotSource`); here
they are shuffled, cut to whole global batches, augmented, prepared, split by process and batched
(`shuffled_batches`, for training: checkpointable and endless), or read once in order
(`ordered_batches`, for evaluation). Every process walks the same global order (same seed); the
global batch is a pure function of the seed and the step, and a process reads the rows its devices
hold in `mesh` (all of them without a mesh, in one process). Augmentation is drawn per position in
the global order, so the global batch is the same whatever the number of processes or the order of
devices.
"""

from __future__ import annotations

import pathlib
from typing import Callable, Iterator

import grain
import jax
import numpy as np
from jax.sharding import Mesh

from sigmma_jax import sharding


class ShardSource(grain.sources.RandomAccessDataSource):
    """One split of a shard set: the manifest's record indices into the concatenated shards."""

    def __init__(self, shard_dir: str | pathlib.Path, manifest: dict, split: str):
        self._dir = pathlib.Path(shard_dir)
        self._paths = [str(self._dir / s) for s in manifest["shards"]]
        self._indices = list(manifest["splits"][split])
        self._split = split
        self._source = None

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, i: int) -> bytes:
        if self._source is None:  # opened lazily so the object pickles cheaply into workers
            self._source = grain.sources.ArrayRecordDataSource(self._paths)
        return self._source[self._indices[i]]

    def __getstate__(self):
        return dict(self.__dict__, _source=None)

    def __repr__(self) -> str:  # stable: Grain compares it when restoring iterator state
        return f"ShardSource({self._dir}, split={self._split}, n={len(self)})"

    def record(self, i: int) -> int:
        """The manifest's record index of item i (what host-side features are indexed by)."""
        return self._indices[i]


class _Rows(grain.MapDataset):
    """Element i is row `rows[i % len(rows)]` of global batch `i // len(rows)` of the parent: the
    part of every global batch that this process's devices hold."""

    def __init__(self, parent: grain.MapDataset, batch: int, rows):
        super().__init__(parent)
        self._batch, self._rows = batch, [int(r) for r in rows]
        self._length = len(parent) // batch * len(self._rows)

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index):
        if isinstance(index, slice):
            return super().__getitem__(index)
        step, j = divmod(index, len(self._rows))
        return self._parent[step * self._batch + self._rows[j]]

    def __str__(self) -> str:
        return f"Rows(batch={self._batch}, rows={self._rows})"


def dihedral(image: np.ndarray, k: int) -> np.ndarray:
    """The k-th (0..7) of the 8 dihedral transforms of an (H, W, C) image: bit 0 transposes, bit 1
    mirrors x, bit 2 mirrors y (in that order). Both pipelines augment with it; SIGMMA's moves its
    cells' coordinates to match."""
    if k & 1:
        image = image.transpose(1, 0, 2)
    if k & 2:
        image = image[:, ::-1]
    if k & 4:
        image = image[::-1]
    return np.ascontiguousarray(image)


def process_rows(mesh: Mesh | None, global_batch: int) -> np.ndarray:
    """Rows of each global batch this process reads: those its devices hold in `mesh`."""
    if global_batch % max(jax.process_count(), 1):
        raise ValueError(
            f"global batch {global_batch} is not divisible by {jax.process_count()} hosts"
        )
    if mesh is None:
        if jax.process_count() > 1:
            raise ValueError("a multi-process loader needs the mesh to know its rows")
        return np.arange(global_batch)
    return sharding.process_rows(mesh, global_batch)


def shuffled_batches(
    source: grain.sources.RandomAccessDataSource,
    global_batch: int,
    *,
    seed: int,
    mesh: Mesh | None,
    augment: Callable | None,
    prepare: Callable,
    collate: Callable,
    workers: int = 0,
    prefetch: int = 2,
    unit: str = "tiles",
) -> grain.DatasetIterator:
    """Endless shuffled batches of this process's rows of each global batch; checkpointable state.
    `augment(record, rng)` (random, per position in the global order), then `prepare(record)`,
    then `collate(records)`."""
    rows = process_rows(mesh, global_batch)
    ds = grain.MapDataset.source(source)
    if len(ds) < global_batch:
        raise ValueError(f"{len(ds)} training {unit}, fewer than the global batch {global_batch}")
    # Each epoch is a new permutation cut to whole global batches: a batch that ran across the
    # end of an epoch could hold a record twice, a false negative for the contrastive loss (in the
    # SIGMMA demo, 26 of the first 400 batches did). The few cut differ from epoch to epoch.
    ds = ds.seed(seed).shuffle()[: len(ds) // global_batch * global_batch].repeat()
    if augment is not None:
        ds = ds.random_map(augment)
    ds = ds.map(prepare)
    ds = _Rows(ds, global_batch, rows)  # lazy: only these rows are read and decoded
    ds = ds.batch(len(rows), drop_remainder=True, batch_fn=collate)
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=prefetch))
    if workers > 0:
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    return iter(it)


def ordered_batches(
    source,
    global_batch: int,
    mesh: Mesh | None,
    prepare: Callable,
    empty: Callable,
    collate: Callable,
) -> Iterator[dict]:
    """Every record of `source` once, in order, without augmentation: this process's rows of each
    global batch (as in `shuffled_batches`). The last batch is filled with `empty(first)`, records
    marked invalid."""
    rows = process_rows(mesh, global_batch)
    n = len(source)
    first = prepare(source[0])
    for start in range(0, n, global_batch):
        yield collate([prepare(source[i]) if i < n else empty(first) for i in start + rows])
