"""Tissue microenvironments in the cell embeddings (the paper's Fig. 4), with scanpy.

Per scale, the cells' SIGMMA embeddings (`obsm["sigmma_<scale>"]` of cells.h5ad) get a kNN graph
(`sc.pp.neighbors`) and Leiden clusters (`leiden_<scale>` in obs). The reference is the same on the
cells' own expression (library-size normalised, log1p, 50 principal components: `leiden_expression`).
Where the cells carry ground-truth domains (`analysis.domain_key`), the adjusted Rand index of each
clustering with them is reported, and each scale's agreement with the expression clusters too.
Marker genes per cluster: `sc.tl.rank_genes_groups` (Wilcoxon) on the log-normalised expression.
"""

from __future__ import annotations

import pathlib

import ml_collections
import numpy as np
import pandas as pd
import scipy.sparse as sp

from sigmma_jax import atomic
from sigmma_jax.scales import SCALES

EXPRESSION = "expression"
FILE = "clusters.json"


def log_expression(cells):
    """A copy of `cells` with X library-size normalised (to the median) and log1p'd."""
    import scanpy as sc

    log = cells.copy()
    sc.pp.normalize_total(log)
    sc.pp.log1p(log)
    return log


def representations(cells) -> dict[str, str]:
    """{clustering name: obsm key}: each scale's embedding present, then the expression's PCs."""
    reps = {s: f"sigmma_{s}" for s in SCALES if f"sigmma_{s}" in cells.obsm}
    reps[EXPRESSION] = "X_expression_pca"
    return reps


def knn_transformer(n_obs: int, n_neighbors: int, seed: int):
    """scanpy's own choice of kNN search (exact below 4,096 cells: None), else pynndescent with
    UMAP's settings as scanpy sets them, whose answer is handed over as a csr_matrix: with
    scipy >= 1.17 pynndescent returns a csr_array, whose `getnnz` scanpy 1.11 still calls."""
    if n_obs < 4096:
        return None
    from pynndescent import PyNNDescentTransformer

    class Transformer(PyNNDescentTransformer):
        def fit_transform(self, X, y=None, **kw):
            return sp.csr_matrix(super().fit_transform(X, y, **kw))

        def transform(self, X):
            return sp.csr_matrix(super().transform(X))

    return Transformer(
        n_neighbors=n_neighbors,
        metric="euclidean",
        random_state=seed,
        n_trees=min(64, 5 + round(n_obs**0.5 / 20.0)),
        n_iters=max(5, round(np.log2(n_obs))),
    )


def leiden(cells, config: ml_collections.ConfigDict) -> dict[str, str]:
    """Leiden labels `leiden_<name>` in `cells.obs` for every representation; returns
    {name: obs key}. The neighbour graphs are dropped afterwards (large, and cheap to rebuild)."""
    import scanpy as sc

    a = config.analysis
    if "X_expression_pca" not in cells.obsm:
        log = log_expression(cells)
        n_pcs = min(50, cells.n_vars - 1, cells.n_obs - 1)
        sc.pp.pca(log, n_comps=n_pcs, random_state=a.seed)
        cells.obsm["X_expression_pca"] = log.obsm["X_pca"].astype(np.float32)
    keys = {}
    for name, rep in representations(cells).items():
        nn = f"nn_{name}"
        sc.pp.neighbors(
            cells,
            n_neighbors=a.n_neighbors,
            use_rep=rep,
            key_added=nn,
            random_state=a.seed,
            transformer=knn_transformer(cells.n_obs, a.n_neighbors, a.seed),
        )
        keys[name] = f"leiden_{name}"
        sc.tl.leiden(
            cells,
            resolution=a.resolution,
            key_added=keys[name],
            neighbors_key=nn,
            flavor="igraph",
            n_iterations=2,
            directed=False,
            random_state=a.seed,
        )
        del cells.uns[nn], cells.obsp[f"{nn}_distances"], cells.obsp[f"{nn}_connectivities"]
        del cells.uns[keys[name]]
    return keys


def agreement(cells, keys: dict[str, str], domain_key: str) -> dict:
    """Adjusted Rand index of each clustering with the ground-truth domains (cells that have one)
    and with the expression clusters."""
    from sklearn.metrics import adjusted_rand_score

    out: dict = {"n_clusters": {n: int(cells.obs[k].nunique()) for n, k in keys.items()}}
    if domain_key and domain_key in cells.obs:
        known = cells.obs[domain_key].notna().to_numpy()
        truth = cells.obs[domain_key].to_numpy()[known]
        out["ari_domain"] = {
            n: float(adjusted_rand_score(truth, cells.obs[k].to_numpy()[known]))
            for n, k in keys.items()
        }
        out["domain_key"] = domain_key
        out["n_domains"] = int(pd.Series(truth).nunique())
    ref = cells.obs[keys[EXPRESSION]].to_numpy()
    out["ari_expression"] = {
        n: float(adjusted_rand_score(ref, cells.obs[k].to_numpy()))
        for n, k in keys.items()
        if n != EXPRESSION
    }
    return out


def markers(log, key: str) -> pd.DataFrame:
    """Wilcoxon marker genes of each cluster of `key` (one vs rest) on log-normalised expression."""
    import scanpy as sc

    sc.tl.rank_genes_groups(log, groupby=key, method="wilcoxon", key_added=f"rank_{key}")
    df = sc.get.rank_genes_groups_df(log, group=None, key=f"rank_{key}")
    del log.uns[f"rank_{key}"]
    return df.rename(columns={"group": "cluster", "names": "gene"})


def run(out: str | pathlib.Path, config: ml_collections.ConfigDict) -> dict:
    """Clusters OUT/cells.h5ad at every scale and on expression: labels into its obs (rewritten
    atomically), marker genes into OUT/markers_<name>.csv, the agreement into OUT/clusters.json."""
    import anndata

    out = pathlib.Path(out)
    cells = anndata.read_h5ad(out / "cells.h5ad")
    keys = leiden(cells, config)
    result = dict(
        agreement(cells, keys, config.analysis.domain_key),
        n_cells=cells.n_obs,
        resolution=config.analysis.resolution,
        n_neighbors=config.analysis.n_neighbors,
    )
    log = log_expression(cells)
    for name, key in keys.items():
        df = markers(log, key)
        with atomic.open_atomic(out / f"markers_{name}.csv", "w") as f:
            df.to_csv(f, index=False)
    with atomic.atomic_path(out / "cells.h5ad") as tmp:
        cells.write_h5ad(tmp)
    atomic.write_json(out / FILE, result, indent=1)
    return result
