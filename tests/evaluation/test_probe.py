import math

import numpy as np
import pytest

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
