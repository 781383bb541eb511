"""Precomputed per-cell embeddings (docs/method.md, "Node features"): what a user computed with an
ST foundation model (stemo, Novae, scGPT...) and stored in an AnnData's `obsm`, joined to a slide's
cells by cell id. Preprocessing stores them with each tile's cells (`records.OPTIONAL`), and the
graph tower can embed them instead of the counts (`data.node_features = "embedding"`).
"""

from __future__ import annotations

import pathlib

import ml_collections
import numpy as np

from sigmma_jax.data import readers


def source_path(d: ml_collections.ConfigDict, slide: str) -> pathlib.Path:
    """The .h5ad holding `slide`'s embeddings: data.cell_embeddings with "{slide}" replaced, or
    the generic format's cells file itself."""
    if d.cell_embeddings:
        return pathlib.Path(d.cell_embeddings.replace("{slide}", slide))
    if d.source == "generic" and d.cells:
        return pathlib.Path(d.cells)
    raise readers.InputError(
        f"data.cell_embedding_key={d.cell_embedding_key!r} needs --config.data.cell_embeddings="
        "FILE.h5ad (obs_names = cell ids; '{slide}' in the name is replaced by each slide's name)"
    )


def read(path: str | pathlib.Path, key: str, cell_ids: np.ndarray) -> np.ndarray:
    """(cells, d) float32 rows of obsm[key] in the order of `cell_ids`; every cell must have one."""
    import anndata

    path = pathlib.Path(path)
    if not path.exists():
        raise readers.InputError(f"{path}: cell embeddings file not found")
    try:
        adata = anndata.read_h5ad(path)
    except Exception as e:
        raise readers.InputError(f"{path}: cannot read as .h5ad ({type(e).__name__}: {e})") from e
    if key not in adata.obsm:
        raise readers.InputError(f"{path}: no obsm[{key!r}] (obsm holds {sorted(adata.obsm)})")
    emb = np.asarray(adata.obsm[key], np.float32)
    if emb.ndim != 2:
        raise readers.InputError(
            f"{path}: obsm[{key!r}] has shape {emb.shape}, expected (cells, d)"
        )
    ids = np.asarray(adata.obs_names, str)
    readers.check_unique(ids, path)
    out = emb[readers.positions(cell_ids, ids, path, f"cells have no embedding in obsm[{key!r}]")]
    if not np.isfinite(out).all():
        raise readers.InputError(f"{path}: obsm[{key!r}] holds NaN or inf")
    return out


def attach(slides: list[readers.Slide], d: ml_collections.ConfigDict) -> None:
    """Sets each slide's `embeddings` when data.cell_embedding_key names them."""
    if not d.cell_embedding_key:
        return
    for s in slides:
        s.embeddings = read(source_path(d, s.name), d.cell_embedding_key, s.cell_ids)
