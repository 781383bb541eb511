"""One record (a tile pair for SIGMMA, a spot with its niche for ST-Align), self-describing: what
preprocessing writes and the loader reads.

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


def _counts_small(a: np.ndarray) -> np.ndarray:
    """Counts are small integers: uint16 keeps records ~2x smaller than float32."""
    if a.size and a.max() < 65536 and np.all(a == np.round(a)):
        return a.astype(np.uint16)
    return a


def _pack(arrays: dict[str, np.ndarray]) -> dict[str, list]:
    return {k: [v.dtype.str, list(v.shape), v.tobytes()] for k, v in arrays.items()}


def _unpack(rec: dict, fields: dict[str, type]) -> dict[str, np.ndarray]:
    out = {}
    for k, dt in fields.items():
        dtype, shape, buf = rec[k]
        out[k] = np.frombuffer(buf, np.dtype(dtype)).reshape(shape).astype(dt)
    return out


def encode(tile: dict[str, Any]) -> bytes:
    rec = {k: np.ascontiguousarray(tile[k]) for k in FIELDS}
    rec.update({k: np.ascontiguousarray(tile[k]) for k in OPTIONAL if k in tile})
    rec["counts"] = _counts_small(rec["counts"])
    out = _pack(rec)
    # The input's id of each kept cell (row order of `xy` and `counts`): results join back on it.
    out["cell_ids"] = [str(i) for i in tile["cell_ids"]]
    out["meta"] = {k: tile["meta"][k] for k in sorted(tile["meta"])}
    return msgpack.packb(out, use_bin_type=True)


def decode(data: bytes) -> dict[str, Any]:
    rec = msgpack.unpackb(data, raw=False)
    out = _unpack(rec, {**FIELDS, **{k: v for k, v in OPTIONAL.items() if k in rec}})
    out["cell_ids"] = np.asarray(rec["cell_ids"], dtype=object)
    out["meta"] = rec["meta"]
    return out


# ---------------------------------------------------------------------------------------------------
# Spots (ST-Align): one Visium spot with its niche. Its own version: it enters the spot shard hash.
SPOT_VERSION = 1
SPOT_FIELDS = {
    "spot_image": np.uint8,  # (crop_px, crop_px, 3) RGB: the square of data.spots.crop_um around it
    "niche_image": np.uint8,  # (niche_px, niche_px, 3): data.spots.niche_um around the niche
    "counts": np.float32,  # (genes,) the spot's raw counts over the panel
    "niche_counts": np.float32,  # (genes,) mean raw counts of the niche's spots (ST-Align Eq. 2)
}


def encode_spot(spot: dict[str, Any]) -> bytes:
    rec = {k: np.ascontiguousarray(spot[k]) for k in SPOT_FIELDS}
    rec["counts"] = _counts_small(rec["counts"])
    out = _pack(rec)
    out["barcode"] = str(spot["barcode"])
    out["meta"] = {k: spot["meta"][k] for k in sorted(spot["meta"])}
    return msgpack.packb(out, use_bin_type=True)


def decode_spot(data: bytes) -> dict[str, Any]:
    rec = msgpack.unpackb(data, raw=False)
    out = _unpack(rec, SPOT_FIELDS)
    out["barcode"] = rec["barcode"]
    out["meta"] = rec["meta"]
    return out
