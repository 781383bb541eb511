"""Tissue microenvironments in the cell embeddings (the paper's Fig. 4), with scanpy.

Per scale, the cells' SIGMMA embeddings (`obsm["sigmma_<scale>"]` of cells.h5ad) get a kNN graph
(`sc.pp.neighbors`) and Leiden clusters (`leiden_<scale>` in obs). The reference is the same on the
cells' own expression (library-size normalised, log1p, 50 principal components: `leiden_expression`).
Where the cells carry ground-truth domains (`analysis.domain_key`), the adjusted Rand index of each
clustering with them is reported, and each scale's agreement with the expression clusters too.
Marker genes per cluster: the Wilcoxon test of `sc.tl.rank_genes_groups` (one cluster against the
rest) on the log-normalised expression, computed here (`markers`) for every clustering at once.

Memory stays bounded at a whole slide (0.45 M cells: docs/benchmarks.md): one representation's kNN
graph at a time; Leiden's igraph graph gets its edges from the graph's CSR arrays (scanpy's
`get_igraph_from_adjacency` makes a Python tuple per edge: +2.0 GB at 10.9 M edges, against +0.6
GB); the marker test ranks a few genes at a time and sums the ranks per cluster with a sparse
indicator, where scanpy holds a dense clusters x cells mask and copies the other cells once per
cluster (11.7 GB and an hour per clustering for the 26,183 clusters of 444,986 cells that a mosaic of
one slide makes: the OOM of issue 10). Labels and marker tables equal scanpy's (tested).
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
# Values of a dense block of ranks per chunk of genes (scanpy's own chunk size, _CONST_MAX_SIZE).
_RANK_BLOCK = 10_000_000


def log_expression(cells):
    """A copy of `cells`'s X library-size normalised (to the median) and log1p'd, with its obs and
    var (not obsm, obsp or layers: the embeddings need no second copy)."""
    import anndata
    import scanpy as sc

    log = anndata.AnnData(X=cells.X.copy(), obs=cells.obs.copy(), var=cells.var.copy())
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


def connectivities(cells, rep: str, n_neighbors: int, seed: int) -> sp.csr_matrix:
    """scanpy's kNN graph (UMAP's fuzzy connectivities) of `obsm[rep]`; nothing is left in
    `cells` (the graph is large, and one representation's is enough at a time)."""
    import scanpy as sc

    key = "_nn"
    sc.pp.neighbors(
        cells,
        n_neighbors=n_neighbors,
        use_rep=rep,
        key_added=key,
        random_state=seed,
        transformer=knn_transformer(cells.n_obs, n_neighbors, seed),
    )
    graph = cells.obsp[f"{key}_connectivities"]
    del cells.uns[key], cells.obsp[f"{key}_distances"], cells.obsp[f"{key}_connectivities"]
    return sp.csr_matrix(graph)


class _IgraphRNG:
    """scanpy 1.11's `_RNGIgraph`: igraph draws from a seeded numpy RandomState, so the labels are
    the ones `sc.tl.leiden(flavor="igraph", random_state=seed)` gives (tested)."""

    def __init__(self, seed: int):
        self._rng = np.random.RandomState(seed)

    def getrandbits(self, k: int) -> int:
        return self._rng.tomaxint() & ((1 << k) - 1)

    def randint(self, a: int, b: int) -> int:
        return self._rng.randint(a, b + 1)

    def __getattr__(self, attr: str):
        return getattr(self._rng, "normal" if attr == "gauss" else attr)


def leiden_labels(graph: sp.csr_matrix, resolution: float, seed: int) -> pd.Categorical:
    """igraph's Leiden (modularity, 2 iterations) on a symmetric weighted graph: what
    `sc.tl.leiden(flavor="igraph", n_iterations=2, directed=False)` computes, on the same graph
    (each edge in both directions, as scanpy adds them: one direction alone changes the random
    path Leiden takes), built from the CSR arrays rather than a Python tuple per edge."""
    import random

    import igraph

    graph = sp.csr_matrix(graph)
    # scanpy's `adjacency.nonzero()`: the stored entries in their order, explicit zeros left out
    # (igraph's result depends on the order of the edges).
    stored = graph.data != 0
    rows = np.repeat(np.arange(graph.shape[0], dtype=np.int64), np.diff(graph.indptr))
    edges = np.column_stack([rows[stored], graph.indices[stored].astype(np.int64)])
    weights = graph.data[stored].astype(np.float64)
    del rows, stored
    g = igraph.Graph(n=graph.shape[0], directed=False)
    # add_edges reads the array's buffer (+0.6 GB at 10.9 M edges); Graph(edges=array) iterates it
    # in Python (+1.8 GB) and scanpy's tuples take +2.0 GB.
    g.add_edges(edges)
    del edges
    igraph.set_random_number_generator(_IgraphRNG(seed))
    try:
        part = g.community_leiden(
            objective_function="modularity",
            weights=weights,
            resolution=resolution,
            n_iterations=2,
        )
    finally:
        igraph.set_random_number_generator(random)
    groups = np.asarray(part.membership)
    # igraph numbers communities 0..k-1: scanpy's labels, as strings in numeric order.
    return pd.Categorical(groups.astype("U"), categories=[str(i) for i in range(groups.max() + 1)])


def expression_pca(log, seed: int) -> np.ndarray:
    """50 principal components (fewer for a small panel) of the log-normalised expression."""
    import scanpy as sc

    n_pcs = min(50, log.n_vars - 1, log.n_obs - 1)
    return sc.pp.pca(log.X, n_comps=n_pcs, random_state=seed).astype(np.float32)


def leiden(cells, config: ml_collections.ConfigDict, log=None) -> dict[str, str]:
    """Leiden labels `leiden_<name>` in `cells.obs` for every representation, one at a time;
    returns {name: obs key}. `log`: `log_expression(cells)` if already made (for the PCs)."""
    a = config.analysis
    if "X_expression_pca" not in cells.obsm:
        cells.obsm["X_expression_pca"] = expression_pca(
            log if log is not None else log_expression(cells), a.seed
        )
    keys = {}
    for name, rep in representations(cells).items():
        graph = connectivities(cells, rep, a.n_neighbors, a.seed)
        keys[name] = f"leiden_{name}"
        cells.obs[keys[name]] = leiden_labels(graph, a.resolution, a.seed)
        del graph
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


def _indicator(labels: pd.Categorical) -> sp.csr_matrix:
    """clusters x cells, 1 where the cell is in the cluster (cells without a label: no row)."""
    codes = np.asarray(labels.codes)
    cells = np.flatnonzero(codes >= 0)
    return sp.csr_matrix(
        (np.ones(len(cells)), (codes[cells], cells)), shape=(len(labels.categories), len(codes))
    )


def _rank_sums(X, indicators: list[sp.csr_matrix]) -> list[np.ndarray]:
    """Per clustering, clusters x genes sums of each gene's ranks over all cells (average ranks
    of ties; scanpy's `rankdata`). Ranks are halves of integers below 2^53: the sums are exact in
    any order, so they equal scanpy's. A chunk of genes at a time, dense: cells x chunk."""
    from scipy.stats import rankdata

    n, g = X.shape
    chunk = max(_RANK_BLOCK // n, 1)
    X = sp.csc_matrix(X) if sp.issparse(X) else np.asarray(X)
    sums = [np.zeros((ind.shape[0], g)) for ind in indicators]
    for left in range(0, g, chunk):
        right = min(left + chunk, g)
        block = X[:, left:right]
        block = block.toarray() if sp.issparse(block) else block
        ranks = rankdata(block, axis=0)
        del block
        for s, ind in zip(sums, indicators):
            s[:, left:right] = ind @ ranks
    return sums


def _select_top_n(scores: np.ndarray, n_top: int) -> np.ndarray:
    """scanpy 1.11's order of a cluster's genes (argpartition, then argsort of the scores,
    reversed), so that ties fall as in its tables."""
    partition = np.argpartition(scores, -n_top)[-n_top:]
    return partition[np.argsort(scores[partition])[::-1]]


def _table(name: str, z, mean_in, mean_out, genes: np.ndarray) -> pd.DataFrame:
    """One cluster's rows of `rank_genes_groups_df`: genes by score, z, log2 fold change of the
    expm1 means, p-values and their Benjamini-Hochberg adjustment over the cluster's genes."""
    from scipy import stats
    from statsmodels.stats.multitest import multipletests

    z = np.where(np.isnan(z), 0.0, z)
    pvals = 2 * stats.distributions.norm.sf(np.abs(z))
    _, pvals_adj, _, _ = multipletests(pvals, alpha=0.05, method="fdr_bh")
    fold = (np.expm1(mean_in) + 1e-9) / (np.expm1(mean_out) + 1e-9)
    order = _select_top_n(z, len(z))
    return pd.DataFrame(
        {
            "cluster": name,
            "gene": genes[order],
            "scores": z[order].astype(np.float32),
            "logfoldchanges": np.log2(fold[order]).astype(np.float32),
            "pvals": pvals[order],
            "pvals_adj": pvals_adj[order],
        }
    )


def markers(log, labelings: dict[str, pd.Categorical]) -> dict[str, pd.DataFrame]:
    """Wilcoxon marker genes of each cluster (one vs rest, no tie correction) of every labeling,
    on the log-normalised expression `log` (AnnData): {name: table with columns cluster, gene,
    scores, logfoldchanges, pvals, pvals_adj}, each cluster's genes by decreasing score, as
    `sc.tl.rank_genes_groups(method="wilcoxon")` + `sc.get.rank_genes_groups_df` give them (the
    same z-scores; means as differences of sums, so fold changes agree to float rounding).

    The genes are ranked once for all labelings. Memory: the ranks of a chunk of genes (10 M
    values) and clusters x genes per labeling, however many clusters: scanpy holds a clusters x
    cells boolean mask and copies the rest of the cells once per cluster."""
    X = log.X
    n = X.shape[0]
    genes = np.asarray(log.var_names, dtype=object)
    inds = [_indicator(pd.Categorical(v)) for v in labelings.values()]
    rank_sums = _rank_sums(X, inds)
    Xd = X.astype(np.float64) if sp.issparse(X) else np.asarray(X, np.float64)
    total = np.asarray(Xd.sum(0)).ravel()
    out = {}
    for (name, labels), ind, r in zip(labelings.items(), inds, rank_sums):
        cats = [str(c) for c in pd.Categorical(labels).categories]
        size = np.diff(ind.indptr)
        sums = (ind @ Xd).toarray() if sp.issparse(Xd) else ind @ Xd
        tables = []
        for i, c in enumerate(cats):
            n_in = int(size[i])  # Python ints: n_in * n_out * (n + 1) exceeds 2^53 at 0.5 M cells
            if not n_in:
                continue  # an unused category has no markers
            # scanpy's z-score, in its order of operations (the same float64 values).
            std = np.sqrt(n_in * (n - n_in) * (n + 1) / 12.0)
            z = (r[i] - (n_in * (n + 1) / 2.0)) / std
            mean_in = sums[i] / n_in
            mean_out = (total - sums[i]) / (n - n_in)
            tables.append(_table(c, z, mean_in, mean_out, genes))
        df = pd.concat(tables, ignore_index=True)
        df["cluster"] = pd.Categorical(df["cluster"], categories=cats)
        out[name] = df
    return out


def run(out: str | pathlib.Path, config: ml_collections.ConfigDict) -> dict:
    """Clusters OUT/cells.h5ad at every scale and on expression: labels into its obs (rewritten
    atomically), marker genes into OUT/markers_<name>.csv, the agreement into OUT/clusters.json."""
    import anndata

    out = pathlib.Path(out)
    cells = anndata.read_h5ad(out / "cells.h5ad")
    log = log_expression(cells)
    keys = leiden(cells, config, log)
    result = dict(
        agreement(cells, keys, config.analysis.domain_key),
        n_cells=cells.n_obs,
        resolution=config.analysis.resolution,
        n_neighbors=config.analysis.n_neighbors,
    )
    tables = markers(log, {name: cells.obs[key] for name, key in keys.items()})
    del log
    for name, df in tables.items():
        with atomic.open_atomic(out / f"markers_{name}.csv", "w") as f:
            df.to_csv(f, index=False)
    with atomic.atomic_path(out / "cells.h5ad") as tmp:
        cells.write_h5ad(tmp)
    atomic.write_json(out / FILE, result, indent=1)
    return result
