"""One tile pair as a self-describing record: what preprocessing writes and the loader reads.

Plain msgpack (no JAX import) so preprocessing workers start fast.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

# What a record holds. Bumped whenever that changes: it enters the shard hash, so a shard set written
# by another version is refused rather than misread. 2: `cell_ids`.
VERSION = 2
# Every array a record holds, with its dtype after decoding.
FIELDS = {
    "image": np.uint8,  # (m, m, 3) RGB at target_mpp
    "xy": np.float32,  # (n, 2) cell centroids in tile pixels (x, y), pixel p covers [p, p+1)
    "blocks": np.int8,  # (n, 2) micro block (bx, by) per cell
    "counts": np.float32,  # (n, genes) raw counts of the kept cells
    "senders": np.int32,  # (e,) micro-graph edges, symmetric
    "receivers": np.int32,
    "tile_counts": np.float32,  # (genes,) summed raw counts of ALL cells of the tile (eval target)
}
# Keys a record holds only when preprocessing had them.
OPTIONAL = {
    "cell_embedding": np.float32,  # (n, d) precomputed embedding per kept cell (data.cell_embeddings)
}


def encode(tile: dict[str, Any]) -> bytes:
    rec = {k: np.ascontiguousarray(tile[k]) for k in FIELDS}
    rec.update({k: np.ascontiguousarray(tile[k]) for k in OPTIONAL if k in tile})
    # Counts are small integers: uint16 keeps records ~2x smaller than float32.
    counts = rec["counts"]
    if counts.size and counts.max() < 65536 and np.all(counts == np.round(counts)):
        rec["counts"] = counts.astype(np.uint16)
    out = {k: [v.dtype.str, list(v.shape), v.tobytes()] for k, v in rec.items()}
    # The input's id of each kept cell (row order of `xy` and `counts`): results join back on it.
    out["cell_ids"] = [str(i) for i in tile["cell_ids"]]
    out["meta"] = {k: tile["meta"][k] for k in sorted(tile["meta"])}
    return msgpack.packb(out, use_bin_type=True)


def decode(data: bytes) -> dict[str, Any]:
    rec = msgpack.unpackb(data, raw=False)
    out = {}
    for k, dt in {**FIELDS, **{k: v for k, v in OPTIONAL.items() if k in rec}}.items():
        dtype, shape, buf = rec[k]
        out[k] = np.frombuffer(buf, np.dtype(dtype)).reshape(shape).astype(dt)
    out["cell_ids"] = np.asarray(rec["cell_ids"], dtype=object)
    out["meta"] = rec["meta"]
    return out
