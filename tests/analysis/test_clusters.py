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
