import math

import numpy as np
import pytest

from sigmma_jax.evaluation import probe as probe_lib
from sigmma_jax.evaluation.expression import tile_targets
from sigmma_jax.evaluation.probe import linear_probe


def _pearson_rows(a, b):
    out = []
    for x, y in zip(a, b):
        if np.ptp(x) == 0 or np.ptp(y) == 0:
            out.append(0.0)
        else:
            out.append(np.corrcoef(x, y)[0, 1])
    return np.array(out)


def _top_variance(y, n):
    return np.argsort(-y.var(axis=0), kind="stable")[:n]


def _probe_reference(train_x, train_y, test_x, test_y, n_components, genes, intercept=False):
    mu, sd = train_x.mean(0), train_x.std(0)
    a, b = (train_x - mu) / sd, (test_x - mu) / sd
    centre = a.mean(0)
    _, _, vt = np.linalg.svd(a - centre, full_matrices=False)
    k = min(n_components, *train_x.shape)
    z_tr, z_te = (a - centre) @ vt[:k].T, (b - centre) @ vt[:k].T
    alpha = 100.0 / (k * len(genes))
    y_tr = train_y[:, genes]
    # z_tr is centred, so an unpenalised intercept is exactly the training mean of y.
    y_mean = y_tr.mean(0) if intercept else 0.0
    w = np.linalg.solve(z_tr.T @ z_tr + alpha * np.eye(k), z_tr.T @ (y_tr - y_mean))
    pred, y = z_te @ w + y_mean, test_y[:, genes]
    pcc_tile = _pearson_rows(pred, y)
    mse_tile = ((pred - y) ** 2).mean(axis=1)
    return {
        "pcc_tile_mean": pcc_tile.mean(),
        "pcc_tile_sd": pcc_tile.std(),
        "mse_tile_mean": mse_tile.mean(),
        "mse_tile_sd": mse_tile.std(),
        "pcc_gene_mean": _pearson_rows(pred.T, y.T).mean(),
    }


def _linear_data(rng, n_train, n_test, n_feat, n_genes, noise):
    scale = rng.uniform(0.2, 3.0, n_feat)
    offset = rng.normal(size=n_feat)
    w = rng.normal(size=(n_feat, n_genes))
    x_tr = rng.normal(size=(n_train, n_feat)) * scale + offset
    x_te = rng.normal(size=(n_test, n_feat)) * scale + offset
    y_tr = x_tr @ w + noise * rng.normal(size=(n_train, n_genes))
    y_te = x_te @ w + noise * rng.normal(size=(n_test, n_genes))
    return x_tr, y_tr, x_te, y_te


def test_tile_targets_log1p_and_normalized():
    counts = np.array([[0, 1, 9], [3, 0, 99]])
    np.testing.assert_allclose(tile_targets(counts), np.log1p(counts.astype(float)))
    np.testing.assert_allclose(
        tile_targets(counts, "log1p_normalized", 100.0),
        np.log1p(counts / counts.sum(1, keepdims=True) * 100.0),
    )
    with pytest.raises(ValueError):
        tile_targets(np.array([[-1.0]]))
    with pytest.raises(ValueError, match="eval.target"):
        tile_targets(counts, "zscore")


@pytest.mark.parametrize(
    "n_train,n_test,n_feat,n_genes_total,n_components,n_genes",
    [
        (150, 60, 40, 70, 256, 50),  # PCA capped by n_features
        (60, 30, 90, 20, 256, 50),  # capped by n_train; fewer genes than 50
        (200, 80, 64, 80, 16, 50),  # genuine reduction
    ],
)
def test_linear_probe_matches_numpy_reference(
    n_train, n_test, n_feat, n_genes_total, n_components, n_genes
):
    rng = np.random.default_rng(n_train + n_feat)
    x_tr, y_tr, x_te, y_te = _linear_data(rng, n_train, n_test, n_feat, n_genes_total, noise=3.0)
    genes = _top_variance(y_tr, n_genes)
    got = linear_probe(x_tr, y_tr, x_te, y_te, genes=genes, n_components=n_components)
    want = _probe_reference(x_tr, y_tr, x_te, y_te, n_components, genes)
    assert got["n_genes"] == min(n_genes, n_genes_total)
    assert got["n_components"] == min(n_components, n_train, n_feat)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-8), key
    got = linear_probe(
        x_tr, y_tr, x_te, y_te, genes=genes, n_components=n_components, fit_intercept=True
    )
    want = _probe_reference(x_tr, y_tr, x_te, y_te, n_components, genes, intercept=True)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-8), key


def test_linear_probe_exact_linear_and_random():
    rng = np.random.default_rng(3)
    x_tr, x_te = rng.normal(size=(300, 20)), rng.normal(size=(100, 20))
    w = rng.normal(size=(20, 60))
    y_tr, y_te = x_tr @ w, x_te @ w  # zero-mean features: no intercept needed
    exact = linear_probe(x_tr, y_tr, x_te, y_te)
    assert exact["pcc_tile_mean"] > 0.99
    assert exact["pcc_gene_mean"] > 0.99
    assert exact["mse_tile_mean"] < 1e-2 * y_te.var()

    y_tr, y_te = rng.normal(size=(300, 60)), rng.normal(size=(100, 60))
    rand = linear_probe(x_tr, y_tr, x_te, y_te)
    assert abs(rand["pcc_tile_mean"]) < 0.1
    assert abs(rand["pcc_gene_mean"]) < 0.1


def test_linear_probe_intercept_caveat():
    # Targets = exact linear function + per-gene offsets. Without an intercept (HEST) the probe
    # cannot produce the offsets: per-gene PCC is unaffected, per-tile MSE pays ~mean(offset^2).
    rng = np.random.default_rng(6)
    x_tr, x_te = rng.normal(size=(400, 20)), rng.normal(size=(150, 20))
    w, offset = rng.normal(size=(20, 50)), rng.uniform(2.0, 6.0, size=50)
    y_tr, y_te = x_tr @ w + offset, x_te @ w + offset
    hest = linear_probe(x_tr, y_tr, x_te, y_te)
    fixed = linear_probe(x_tr, y_tr, x_te, y_te, fit_intercept=True)
    assert hest["pcc_gene_mean"] > 0.99 and fixed["pcc_gene_mean"] > 0.99
    assert hest["mse_tile_mean"] == pytest.approx(np.mean(offset**2), rel=0.1)
    assert fixed["mse_tile_mean"] < 1e-2
    assert fixed["pcc_tile_mean"] > 0.99 > hest["pcc_tile_mean"]


def test_linear_probe_constant_tile_and_gene_count_as_zero():
    rng = np.random.default_rng(4)
    x_tr, y_tr, x_te, y_te = _linear_data(rng, 100, 20, 10, 5, noise=0.5)
    y_tr[:, 4] = 0.0  # constant gene: still selected since 5 < 50
    y_te[:, 4] = 0.0
    y_te[0, :] = 1.0  # constant tile
    got = linear_probe(x_tr, y_tr, x_te, y_te)
    want = _probe_reference(x_tr, y_tr, x_te, y_te, 256, np.arange(5))
    assert all(math.isfinite(v) for v in got.values())
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-8), key


def test_the_intercept_probe_scores_a_perfect_up_to_mean_predictor_at_one_per_tile():
    """Embeddings that hold each tile's expression less each gene's mean (a predictor right but
    for the means) on log1p tile counts: the headline probe (intercept, min-max units) scores 1.0
    per tile and MSE 0; HEST's no-intercept probe pays for the means it cannot add (here 0.2-0.6
    per tile, as on real tiles)."""
    rng = np.random.default_rng(11)
    rate = np.exp(rng.normal(1.0, 1.0, size=60))[None] * rng.gamma(4.0, 0.25, size=(260, 1))
    y = np.log1p(rng.poisson(rate * rng.lognormal(0, 0.3, size=rate.shape))).astype(np.float64)
    x = y - y[:200].mean(0)
    args = (x[:200], y[:200], x[200:], y[200:])
    head = linear_probe(*args, fit_intercept=True, target_scale="minmax")
    hest = linear_probe(*args)
    assert head["pcc_tile_mean"] > 0.999 and head["mse_tile_mean"] < 1e-5
    assert 0.0 < hest["pcc_tile_mean"] < 0.7
    assert hest["pcc_gene_mean"] == pytest.approx(head["pcc_gene_mean"], abs=1e-9)


def test_min_max_units_are_each_genes_training_range():
    rng = np.random.default_rng(12)
    x_tr, y_tr, x_te, y_te = _linear_data(rng, 120, 40, 10, 6, noise=1.0)
    y_tr, y_te = y_tr * np.arange(1, 7) + 5, y_te * np.arange(1, 7) + 5
    raw = linear_probe(x_tr, y_tr, x_te, y_te, fit_intercept=True)
    got = linear_probe(x_tr, y_tr, x_te, y_te, fit_intercept=True, target_scale="minmax")
    span = np.ptp(y_tr, axis=0)
    pred = probe_lib.fit(x_tr, y_tr, fit_intercept=True).predict(x_te)
    want = (((pred - y_te) / span) ** 2).mean(1)
    assert got["mse_tile_mean"] == pytest.approx(want.mean(), rel=1e-9)
    assert got["pcc_gene_mean"] == pytest.approx(raw["pcc_gene_mean"], rel=1e-12)
    assert got["pcc_tile_mean"] != pytest.approx(raw["pcc_tile_mean"], rel=1e-4)
    # the units need the training range only: a constant training gene keeps span 1
    y_tr[:, 0] = 3.0
    assert np.isfinite(linear_probe(x_tr, y_tr, x_te, y_te, target_scale="minmax")["mse_tile_mean"])


def _fake_run(rng, scales, he_dim, backbone_dim, n=(150, 50), genes=20):
    out = {}
    for split, k in zip(("train", "test"), n):
        z = rng.normal(size=(k, 5))
        out[split] = {
            "he": {s: z @ rng.normal(size=(5, he_dim)) for s in scales},
            "he_backbone": {s: z @ rng.normal(size=(5, backbone_dim)) for s in scales},
            "targets": np.log1p(np.exp(z @ rng.normal(size=(5, genes)) * 0.3 + 1)),
        }
    out["genes"] = np.arange(genes)
    return out


def test_every_methods_headline_probe_reads_the_same_width():
    """SIGMMA (three scales), a single-scale model and the frozen backbone (a wider embedding):
    the headline keeps embed_dim components for each; the old concatenation, as a labelled
    variant, three times as many."""
    from support.configs import tiny_config

    from sigmma_jax.experiments import methods

    rng = np.random.default_rng(13)
    base = tiny_config()
    base.eval.pca_components = 256
    runs = {
        "sigmma": _fake_run(rng, ("micro", "meso", "macro"), 32, 48),
        "single_scale_clip": _fake_run(rng, ("macro",), 32, 48),
        "frozen_backbone": _fake_run(rng, ("macro",), 32, 48),
    }
    widths = {}
    for method, emb in runs.items():
        c = methods.configure(base, method)
        res = probe_lib.evaluate(emb, c)
        widths[method] = res["n_components"]
        assert res["input"] == f"{c.eval.probe_embedding}/mean"
        assert res["fit_intercept"] and res["target_scale"] == "minmax"
        assert set(res["hest"]) == {"pcc_gene_mean", "pcc_tile_mean", "mse_tile_mean"}
    assert set(widths.values()) == {base.model.embed_dim}
    variants = probe_lib.evaluate(runs["sigmma"], methods.configure(base, "sigmma"))["variants"]
    assert set(variants) == {
        f"{e}/{s}"
        for e in ("projected", "backbone")
        for s in ("micro", "meso", "macro", "mean", "concat")
    }
    assert variants["projected/concat"]["n_components"] == 3 * 32
    assert variants["backbone/concat"]["n_components"] == 3 * 48
    assert variants["backbone/macro"]["n_components"] == base.model.embed_dim
    frozen = probe_lib.evaluate(runs["frozen_backbone"], methods.configure(base, "frozen_backbone"))
    assert set(frozen["variants"]) == {"backbone/macro"}  # untrained heads are not probed


def test_learning_curve_at_every_tile_is_the_evaluated_probe():
    """On all training tiles the curve's point is the evaluated variant's per-gene PCC (each draw
    is then every tile); on fewer, each draw is a seeded subset, the same for every input."""
    from support.configs import tiny_config

    from sigmma_jax.experiments import methods

    rng = np.random.default_rng(14)
    emb = _fake_run(rng, ("micro", "meso", "macro"), 32, 48)
    c = methods.configure(tiny_config(), "sigmma")
    c.eval.pca_components = 256
    reads = ["projected/mean", "projected/concat"]
    curve = probe_lib.learning_curve(emb, c, reads, [40, 10**6], repeats=2, seed=3)
    variants = probe_lib.evaluate(emb, c)["variants"]
    for read in reads:
        assert set(curve[read]) == {40, 150}
        mean, sd = curve[read][150]
        assert mean == pytest.approx(variants[read]["pcc_gene_mean"], rel=1e-12) and sd == 0.0
    again = probe_lib.learning_curve(emb, c, reads, [40], repeats=2, seed=3)
    assert again == {r: {40: curve[r][40]} for r in reads}  # seeded
    assert curve["projected/mean"][40][1] > 0  # two different subsets
