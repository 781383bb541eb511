"""The 10x feature-barcode matrix HDF5 (`*_feature_bc_matrix.h5`; Xenium: `cell_feature_matrix.h5`).

One format for Cell Ranger, Space Ranger (Visium spots) and Xenium (cells): group `matrix/` holds
the counts as CSC with one column per barcode (`data`, `indices`, `indptr`, `shape` = (features,
barcodes)), `barcodes`, and `features/{id,name,feature_type,genome}`, all strings as fixed-length
bytes. Read the other way round, the CSC columns are CSR rows: one row per barcode, nothing copied.
Only `feature_type == "Gene Expression"` rows are genes; Xenium's control codewords and Visium's
antibody-capture features are dropped (and counted) here.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
import scipy.sparse as sp

from sigmma_jax import atomic
from sigmma_jax.data import readers
from sigmma_jax.errors import InputError

Path = pathlib.Path
GENE_EXPRESSION = b"Gene Expression"
_H5_KEYS = "barcodes data indices indptr shape features/name features/feature_type".split()


def decode_ids(values) -> np.ndarray:
    """Arrow/HDF5 ids (str, bytes or integers) -> numpy str."""
    a = np.asarray(values)
    if a.dtype.kind in "SO" and len(a) and isinstance(a.flat[0], bytes):
        return np.char.decode(a.astype("S"), "utf-8")
    return a.astype(str)


def read_matrix(path: Path) -> tuple[np.ndarray, sp.csr_matrix, np.ndarray, int]:
    """(barcodes, counts CSR (barcodes x genes), gene names, n non-gene features dropped)."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise InputError(f"{path}: cannot open as HDF5 ({e})") from e
    with f:
        missing = [f"matrix/{k}" for k in _H5_KEYS if f"matrix/{k}" not in f]
        if missing:
            raise InputError(f"{path}: not a 10x feature-barcode matrix, missing {missing}")
        g = f["matrix"]
        n_features, n_cells = (int(v) for v in g["shape"][:2])
        barcodes = decode_ids(g["barcodes"][:])
        names = decode_ids(g["features/name"][:])
        kinds = np.asarray(g["features/feature_type"][:]).astype("S")
        data, indices, indptr = g["data"][:], g["indices"][:], g["indptr"][:]
    problems = []
    if len(names) != n_features or len(kinds) != n_features:
        problems.append(f"shape says {n_features} features, features/ has {len(names)}")
    if len(barcodes) != n_cells or len(indptr) != n_cells + 1:
        problems.append(
            f"shape says {n_cells} cells, barcodes {len(barcodes)}, indptr {len(indptr)}"
        )
    if len(data) != len(indices) or (len(indptr) and indptr[-1] != len(data)):
        problems.append(f"data {len(data)} / indices {len(indices)} / indptr end disagree")
    if len(indices) and (indices.min() < 0 or indices.max() >= n_features):
        problems.append("feature indices out of range")
    if problems:
        raise InputError(f"{path}: inconsistent matrix: {'; '.join(problems)}")
    if len(data) and (not np.isfinite(data).all() or data.min() < 0):
        raise InputError(f"{path}: counts contain negative, NaN or inf values")
    readers.check_unique(barcodes, path, "barcodes in matrix/barcodes")
    # CSC with one column per cell is, read the other way round, CSR with one row per cell.
    counts = sp.csr_matrix((data.astype(np.float32), indices, indptr), shape=(n_cells, n_features))
    gex = np.flatnonzero(kinds == GENE_EXPRESSION)
    if not len(gex):
        raise InputError(f"{path}: no feature has feature_type 'Gene Expression'")
    return barcodes, counts[:, gex].tocsr(), names[gex], n_features - len(gex)


def _bytes(values) -> np.ndarray:
    """Fixed-length UTF-8 byte strings, as Cell Ranger writes every string dataset."""
    encoded = [str(v).encode() for v in values]
    return np.array(encoded, dtype=f"S{max([len(v) for v in encoded] + [1])}")


def write_matrix(
    path: str | os.PathLike,
    counts,
    barcodes,
    gene_names,
    gene_ids=None,
    feature_types=None,
    library_id: str = "library",
) -> pathlib.Path:
    """Writes `counts` (barcodes x genes, raw integer counts) as Cell Ranger / Space Ranger write a
    feature-barcode matrix: CSC with one column per barcode, int32 counts, int64 indices, byte
    strings. `gene_ids` default to the names (real files hold Ensembl ids there), `feature_types`
    to "Gene Expression". The file appears complete or not at all."""
    import h5py

    path = pathlib.Path(path)
    counts = sp.csr_matrix(counts)
    barcodes, gene_names = list(map(str, barcodes)), list(map(str, gene_names))
    gene_ids = list(map(str, gene_names if gene_ids is None else gene_ids))
    feature_types = list(
        map(str, ["Gene Expression"] * len(gene_names) if feature_types is None else feature_types)
    )
    n, g = counts.shape
    if n != len(barcodes) or not g == len(gene_names) == len(gene_ids) == len(feature_types):
        raise InputError(
            f"{path}: counts are {n} x {g} but there are {len(barcodes)} barcodes, "
            f"{len(gene_names)} names, {len(gene_ids)} ids, {len(feature_types)} feature types"
        )
    data = counts.data
    if len(data) and (
        not np.isfinite(data).all() or data.min() < 0 or (data != np.rint(data)).any()
    ):
        raise InputError(f"{path}: a feature-barcode matrix holds raw counts (integers >= 0)")
    if len(data) and data.max() > np.iinfo(np.int32).max:
        raise InputError(f"{path}: a count of {data.max():.0f} does not fit the format's int32")
    if len(set(barcodes)) != len(barcodes):
        raise InputError(f"{path}: barcodes are not unique")
    # (features x barcodes) CSC: the CSR of (barcodes x features) is exactly that, read transposed.
    csc = counts.T.tocsc()
    csc.sum_duplicates()
    csc.sort_indices()
    with atomic.atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["filetype"] = "matrix"
            f.attrs["version"] = 2
            f.attrs["library_ids"] = _bytes([library_id])
            f.attrs["original_gem_groups"] = np.array([1], np.int64)
            f.attrs["chemistry_description"] = "unknown"
            f.attrs["software_version"] = "sigmma_jax"
            m = f.create_group("matrix")
            m.create_dataset("barcodes", data=_bytes(barcodes))
            m.create_dataset("data", data=csc.data.astype(np.int32), compression="gzip")
            m.create_dataset("indices", data=csc.indices.astype(np.int64), compression="gzip")
            m.create_dataset("indptr", data=csc.indptr.astype(np.int64), compression="gzip")
            m.create_dataset("shape", data=np.array([g, n], np.int32))
            ft = m.create_group("features")
            ft.create_dataset("_all_tag_keys", data=_bytes(["genome"]))
            ft.create_dataset("id", data=_bytes(gene_ids))
            ft.create_dataset("name", data=_bytes(gene_names))
            ft.create_dataset("feature_type", data=_bytes(feature_types))
            ft.create_dataset("genome", data=_bytes(["unknown"] * g))
        with open(tmp, "rb+") as fh:  # results are what people keep: on disk before the rename
            os.fsync(fh.fileno())
    return path
