"""Fig. 4 on an embedded slide: Leiden per scale and on expression, the agreement it reports, marker
genes and the figures."""

import json
import shutil

import anndata
import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score

from sigmma_jax.analysis import figures
from sigmma_jax.data import synthetic


def test_clusters_markers_and_figures(tiny_embedding, tmp_path):
    _, config, embedded = tiny_embedding
    out = tmp_path / "out"
    shutil.copytree(embedded, out)
    paths = figures.write_all(out, config)
    names = {p.name for p in paths}
    assert names >= {
        "expression_synthetic.png",
        "clusters_synthetic.png",
        "composition.png",
        *(f"{k}_{n}.png" for k in ("markers", "violins") for n in ("micro", "meso", "macro")),
        "markers_expression.png",
    }
    assert all(p.stat().st_size > 10_000 for p in paths)
    cells = anndata.read_h5ad(out / "cells.h5ad")
    result = json.loads((out / "clusters.json").read_text())
    for name in ("micro", "meso", "macro", "expression"):
        labels = cells.obs[f"leiden_{name}"]
        assert isinstance(labels.dtype, pd.CategoricalDtype) and labels.nunique() > 1
        assert result["n_clusters"][name] == labels.nunique()
        want = adjusted_rand_score(cells.obs["domain"], labels)
        np.testing.assert_allclose(result["ari_domain"][name], want, rtol=1e-12)
        if name != "expression":
            ref = adjusted_rand_score(cells.obs["leiden_expression"], labels)
            np.testing.assert_allclose(result["ari_expression"][name], ref, rtol=1e-12)
    # The expression clusters find the cell types the slide was drawn with, and the top marker of
    # the cluster made of tumour cells is a tumour marker.
    assert adjusted_rand_score(cells.obs["cell_type"], cells.obs["leiden_expression"]) > 0.5
    markers = pd.read_csv(out / "markers_expression.csv", dtype={"cluster": str})
    frac = pd.crosstab(cells.obs["leiden_expression"], cells.obs["cell_type"], normalize="index")
    tumour = frac["tumour"].idxmax()
    assert frac.loc[tumour, "tumour"] > 0.8
    top = markers[markers["cluster"] == str(tumour)].iloc[0]["gene"]
    assert top in synthetic._MARKERS["tumour"].split()


def _blobs(n=1500, n_genes=30, seed=0):
    """Cells of 6 expression programmes with two embeddings that follow them: raw counts in X."""
    rng = np.random.default_rng(seed)
    kind = rng.integers(0, 6, n)
    rates = rng.gamma(1.0, 2.0, (6, n_genes))
    X = rng.poisson(rates[kind] * rng.lognormal(0, 0.3, (n, 1))).astype(np.float32)
    centres = rng.normal(0, 3, (6, 16))
    obsm = {
        f"sigmma_{s}": (centres[kind] + rng.normal(0, 1, (n, 16))).astype(np.float32)
        for s in ("micro", "macro")
    }
    import scipy.sparse as sp

    return anndata.AnnData(
        X=sp.csr_matrix(X),
        obs=pd.DataFrame(index=[f"c{i}" for i in range(n)]),
        var=pd.DataFrame(index=[f"G{j}" for j in range(n_genes)]),
        obsm=obsm,
    )


def test_leiden_and_markers_equal_scanpys(tmp_path):
    """The graph from CSR arrays gives sc.tl.leiden's labels exactly, and the Wilcoxon tables are
    sc.tl.rank_genes_groups + rank_genes_groups_df's (the markers CSV byte for byte)."""
    import scanpy as sc

    from sigmma_jax import config_base
    from sigmma_jax.analysis import clusters

    config = config_base.base_config()
    cells = _blobs()
    log = clusters.log_expression(cells)
    keys = clusters.leiden(cells, config, log)
    assert set(keys) == {"micro", "macro", "expression"}
    tables = clusters.markers(log, {n: cells.obs[k] for n, k in keys.items()})
    for name, rep in clusters.representations(cells).items():
        ref = cells.copy()
        sc.pp.neighbors(ref, n_neighbors=15, use_rep=rep, random_state=0)
        sc.tl.leiden(
            ref, resolution=0.5, flavor="igraph", n_iterations=2, directed=False, random_state=0
        )
        got = cells.obs[keys[name]]
        assert list(got.cat.categories) == list(ref.obs["leiden"].cat.categories)
        np.testing.assert_array_equal(got.to_numpy(), ref.obs["leiden"].to_numpy())
        want_log = log.copy()
        want_log.obs["k"] = got
        sc.tl.rank_genes_groups(want_log, groupby="k", method="wilcoxon")
        want = sc.get.rank_genes_groups_df(want_log, group=None)
        want = want.rename(columns={"group": "cluster", "names": "gene"})
        assert tables[name].to_csv(index=False) == want.to_csv(index=False)


def test_markers_of_hundreds_of_clusters_are_scanpys_one_vs_rest():
    """Exact duplicates (a mosaic of one slide) make Leiden find a cluster per clique of copies;
    the tables stay scanpy's one-vs-rest test, here against scanpy on two of 600 clusters (scanpy
    on all 600 would hold a clusters x cells mask)."""
    import scanpy as sc

    from sigmma_jax.analysis import clusters

    log = clusters.log_expression(_blobs(n=1200))
    log.obs["k"] = pd.Categorical((np.arange(log.n_obs) // 2).astype(str))  # 600 of 2 cells
    df = clusters.markers(log, {"m": log.obs["k"]})["m"]
    assert len(df) == 600 * log.n_vars and df["cluster"].nunique() == 600
    sc.tl.rank_genes_groups(log, groupby="k", groups=["7", "123"], method="wilcoxon")
    for c in ("7", "123"):
        want = sc.get.rank_genes_groups_df(log, group=c)
        got = df[df["cluster"] == c].drop(columns="cluster").reset_index(drop=True)
        assert got.to_csv(index=False) == want.rename(columns={"names": "gene"}).to_csv(index=False)


def test_figures_show_the_largest_clusters_of_many(tmp_path):
    from sigmma_jax.analysis import clusters

    cells = _blobs(n=900)
    labels = pd.Categorical((np.arange(cells.n_obs) % 90).astype(str))
    labels[:300] = "0"  # cluster 0 is the largest
    assert figures.largest_clusters(labels, 3)[0] == "0"
    assert len(figures.largest_clusters(labels)) == figures.SHOWN_CLUSTERS
    log = clusters.log_expression(cells)
    log.obs["k"] = labels
    path = figures.violins(log, "k", ["G0", "G1"], 0, tmp_path / "v.png")
    assert path.stat().st_size > 10_000
    assert len(figures._map_sample(10, 0)) == 10
    sample = figures._map_sample(figures.MAP_CELLS + 5, 0)
    assert len(sample) == figures.MAP_CELLS and (np.diff(sample) > 0).all()
