import ml_collections
import numpy as np

from sigmma_jax.evaluation import expression, knn_expression, predictors, probe
from sigmma_jax.scales import SCALES


def _splits(rng, sizes, genes=30, dim=12):
    """Splits whose embeddings and targets share a 4-d latent: the predictors have signal."""
    proj = {(k, s): rng.normal(size=(4, dim)) for k in ("he", "st", "he_backbone") for s in SCALES}
    w = rng.normal(size=(4, genes)) * 0.5
    out = []
    for n in sizes:
        z = rng.normal(size=(n, 4))
        split = {
            k: {s: z @ proj[k, s] + 0.5 * rng.normal(size=(n, dim)) for s in SCALES}
            for k in ("he", "st", "he_backbone")
        }
        split["targets"] = np.log1p(rng.poisson(np.exp(1 + z @ w)))
        out.append(split)
    return out


def _config():
    return ml_collections.ConfigDict(
        dict(
            model=dict(embed_dim=12),
            eval=dict(
                probe_embedding="projected",
                probe_scales="mean",
                equal_width=True,
                n_genes=10,
                pca_components=16,
                knn_k=7,
                target_scale="none",
            ),
        )
    )


def test_saved_predictors_reproduce_the_evaluated_probe_and_knn(tmp_path):
    """The run's predictors over the whole panel, saved and loaded without pickle: for the
    evaluation's genes the probe is the evaluated probe plus each gene's training mean (so the
    same per-gene PCC), and the kNN predictor is the evaluated one."""
    rng = np.random.default_rng(0)
    train, test = _splits(rng, (120, 40))
    config = _config()
    genes = [f"G{i}" for i in range(30)]
    hvg = np.array([3, 1, 4, 15, 9, 2, 6, 5, 8, 7])  # the genes Task 1 scored (any subset)
    predictors.save(tmp_path / "p.npz", predictors.fit(train, genes, config, eval_genes=hvg))
    with np.load(tmp_path / "p.npz", allow_pickle=False) as z:
        assert all(z[k].dtype != object for k in z.files)
    p = predictors.load(tmp_path / "p.npz")
    assert p.genes.tolist() == genes and (p.probe_embedding, p.probe_scales) == ("he", "mean")
    pred, knn = p.predict(test)
    assert pred.shape == knn.shape == (40, 30)
    np.testing.assert_array_equal(p.eval_genes, hvg)
    got = expression.scores(pred[:, hvg], test["targets"][:, hvg])
    args = [expression.features(train, "he", "mean"), train["targets"]]
    args += [expression.features(test, "he", "mean"), test["targets"]]
    for intercept in (True, False):  # equal width: the embedding's 12 components, not 16
        ref = probe.linear_probe(*args, genes=hvg, n_components=12, fit_intercept=intercept)
        assert ref["n_components"] == 12
        # With an intercept, all the same; without, the same per-gene PCC (an offset per gene).
        for k in ("pcc_gene_mean", "pcc_tile_mean", "mse_tile_mean")[: 3 if intercept else 1]:
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-5)
    assert got["pcc_gene_mean"] > 0.5
    # The intercept is the training mean: the predictions are expression levels.
    np.testing.assert_allclose(p.probe.intercept, train["targets"].mean(0), rtol=1e-6)
    ev = knn_expression.evaluate(
        dict(train=train, test=test, genes=hvg), ml_collections.ConfigDict(config)
    )
    np.testing.assert_allclose(
        expression.scores(knn[:, hvg], test["targets"][:, hvg])["pcc_gene_mean"],
        ev["pcc_gene_mean"],
        rtol=1e-5,
    )


def test_probe_arrays_predict_as_scikit_learn():
    from sklearn.decomposition import PCA
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(1)
    x, y, q = rng.normal(size=(80, 20)) * 3 + 1, rng.normal(size=(80, 5)), rng.normal(size=(9, 20))
    p = probe.fit(x, y, n_components=6, alpha_genes=50, fit_intercept=True)
    s = StandardScaler().fit(x)
    pca = PCA(6, svd_solver="full").fit(s.transform(x))
    ridge = Ridge(alpha=100 / (6 * 50), solver="lsqr", tol=1e-10).fit(
        pca.transform(s.transform(x)), y
    )
    np.testing.assert_allclose(
        p.predict(q), ridge.predict(pca.transform(s.transform(q))), rtol=1e-6, atol=1e-8
    )
