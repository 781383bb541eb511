"""Evaluation metrics of SIGMMA (METHOD.md section 5), in numpy and scikit-learn only.

Kept free of JAX so that metrics can be recomputed from saved embeddings on any machine and
tested without an accelerator.

Task 1, gene expression prediction: HEST-Benchmark's linear probe (`linear_probe`) and a
BLEEP-style nearest-neighbour predictor (`knn_expression`).
Task 2, cross-modal retrieval: Recall@p% per scale and for the summed similarities
(`recall_at_percent`, `retrieval_metrics`).
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Mapping, Sequence

import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import Ridge
from sklearn.preprocessing import StandardScaler

SCALES = ("micro", "meso", "macro")
PERCENTS = (5, 10, 15)

# Ridge's lsqr iteration cap, as in HEST-Benchmark. The tolerance is tighter than sklearn's 1e-4
# (HEST's) so the probe returns the ridge optimum itself: at 1e-4 lsqr stops early enough to move
# per-tile PCC by ~1e-3 relative. PCA features have orthogonal columns, so this costs little.
_RIDGE_MAX_ITER = 1000
_RIDGE_TOL = 1e-8


# --------------------------------------------------------------------------- retrieval


def _top_k(percent: float, n: int) -> int:
    # Fraction(str(p)) keeps ceil exact: in floats 0.15 * 20 is 3.0000000000000004 -> 4, not 3.
    return math.ceil(Fraction(str(percent)) * n / 100)


def recall_at_percent(sim: np.ndarray, percents: Sequence[float] = PERCENTS) -> dict[str, float]:
    """Recall@p%: fraction of queries whose true partner is among the top ceil(p% * N) candidates.

    `sim[i, j]` is the similarity of query i with candidate j; query i's partner is candidate i.
    The partner's rank is the number of candidates with a strictly greater similarity, so ties
    are resolved in the query's favour (matters only for degenerate, e.g. constant, embeddings).
    """
    sim = np.asarray(sim, dtype=np.float64)
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1] or sim.shape[0] == 0:
        raise ValueError(f"sim must be a non-empty square matrix, got shape {sim.shape}")
    if not np.isfinite(sim).all():
        # NaN compares false with everything, which would score a diverged model as perfect.
        raise ValueError("sim has non-finite entries")
    n = sim.shape[0]
    rank = (sim > np.diag(sim)[:, None]).sum(axis=1)
    return {f"R@{p}": float(np.mean(rank < _top_k(p, n))) for p in percents}


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    # A zero row stays zero (similarity 0 with everything) instead of becoming NaN.
    return x / np.maximum(norm, 1e-12)


def retrieval_metrics(he: Mapping[str, np.ndarray], st: Mapping[str, np.ndarray]) -> dict:
    """Recall@5/10/15% for HE->ST and ST->HE, per scale and for the sum of the scales' similarities.

    `he[scale]` and `st[scale]` are (N, D) embeddings of the same N held-out tiles (row i = tile i).
    Scales are those of SCALES present in `he`; "combined" sums their cosine-similarity matrices,
    so a single-scale baseline gets "combined" equal to its one scale.
    """
    scales = [s for s in SCALES if s in he]
    if not scales:
        raise ValueError(f"he has none of the scales {SCALES}: {sorted(he)}")
    sims = {}
    for s in scales:
        if he[s].shape[0] != st[s].shape[0]:
            raise ValueError(f"{s}: {he[s].shape[0]} HE rows vs {st[s].shape[0]} ST rows")
        sims[s] = _l2_normalize(he[s]) @ _l2_normalize(st[s]).T
    sims["combined"] = sum(sims[s] for s in scales)
    return {
        "he_to_st": {name: recall_at_percent(m) for name, m in sims.items()},
        "st_to_he": {name: recall_at_percent(m.T) for name, m in sims.items()},
    }


# --------------------------------------------------------------------------- expression


def tile_targets(counts_sum: np.ndarray) -> np.ndarray:
    """Expression targets: log1p of each tile's summed raw cell counts, (tiles, genes)."""
    counts_sum = np.asarray(counts_sum, dtype=np.float64)
    if np.any(counts_sum < 0):
        raise ValueError("raw counts must be non-negative")
    return np.log1p(counts_sum)


def select_hvgs(train_targets: np.ndarray, n: int = 50) -> np.ndarray:
    """Indices of the `n` genes of highest variance over training tiles, most variable first.

    Ties go to the lower index (stable sort); with fewer than `n` genes all are returned.
    """
    var = np.asarray(train_targets, dtype=np.float64).var(axis=0)
    return np.argsort(-var, kind="stable")[:n]


def _rowwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # Pearson per row; a row where either side is exactly constant gets 0 (no association can
    # be measured there, and NaN would poison the mean).
    const = (np.ptp(a, axis=1) == 0) | (np.ptp(b, axis=1) == 0)
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    denom = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    out = np.zeros(a.shape[0])
    out[~const] = (a * b).sum(axis=1)[~const] / denom[~const]
    return out


def linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    *,
    n_components: int = 256,
    n_genes: int = 50,
    fit_intercept: bool = False,
    seed: int = 0,
) -> dict[str, float]:
    """HEST-Benchmark linear probe: StandardScaler -> PCA -> Ridge on the top HVGs of train_y.

    `train_y` / `test_y` are already log1p tile expression (see `tile_targets`). PCA is capped at
    min(n_train, n_features) components; alpha = 100 / (n_pca_features * n_genes), solver lsqr,
    no intercept, as in HEST-Benchmark. Two deliberate differences, both numerical: PCA is exact
    (full SVD; HEST's sklearn "auto" turns randomized and unseeded for 1024-d embeddings, which
    moved the metrics by ~1% in our checks), and lsqr runs to tol 1e-8 (see _RIDGE_TOL).

    Caveat of "no intercept": the PCA features are centred on the training tiles, so the probe
    predicts each gene's deviation from zero, not from its training mean. Per-gene PCC (HEST's
    metric) is blind to that, but per-tile PCC and MSE (SIGMMA's) are not: they pay for the
    missing gene means. `fit_intercept=True` adds the training mean back, all else equal.

    Returns per-tile Pearson (over the chosen genes) and per-tile MSE as mean and population sd
    (ddof=0) across test tiles, and per-gene Pearson (across test tiles) averaged over genes.
    A tile or gene whose true or predicted values are exactly constant counts as Pearson 0.
    """
    train_x, test_x = np.asarray(train_x, np.float64), np.asarray(test_x, np.float64)
    train_y, test_y = np.asarray(train_y, np.float64), np.asarray(test_y, np.float64)
    if train_x.shape[0] != train_y.shape[0] or test_x.shape[0] != test_y.shape[0]:
        raise ValueError("x and y must have the same number of tiles")
    if train_x.shape[1] != test_x.shape[1] or train_y.shape[1] != test_y.shape[1]:
        raise ValueError("train and test must have the same feature and gene dimensions")

    genes = select_hvgs(train_y, n_genes)
    y_tr, y_te = train_y[:, genes], test_y[:, genes]

    scaler = StandardScaler().fit(train_x)
    n_comp = min(n_components, *train_x.shape)
    x_tr = scaler.transform(train_x)
    pca = PCA(n_components=n_comp, svd_solver="full", random_state=seed).fit(x_tr)
    z_tr = pca.transform(x_tr)
    z_te = pca.transform(scaler.transform(test_x))

    alpha = 100.0 / (z_tr.shape[1] * y_tr.shape[1])
    ridge = Ridge(
        alpha=alpha,
        solver="lsqr",
        fit_intercept=fit_intercept,
        max_iter=_RIDGE_MAX_ITER,
        tol=_RIDGE_TOL,
        random_state=seed,
    )
    pred = ridge.fit(z_tr, y_tr).predict(z_te)

    pcc_tile = _rowwise_pearson(pred, y_te)
    mse_tile = ((pred - y_te) ** 2).mean(axis=1)
    pcc_gene = _rowwise_pearson(pred.T, y_te.T)
    return {
        "pcc_tile_mean": float(pcc_tile.mean()),
        "pcc_tile_sd": float(pcc_tile.std()),
        "mse_tile_mean": float(mse_tile.mean()),
        "mse_tile_sd": float(mse_tile.std()),
        "pcc_gene_mean": float(pcc_gene.mean()),
        "n_genes": int(len(genes)),
        "n_components": int(n_comp),
    }


def knn_expression(
    train_emb: np.ndarray,
    train_y: np.ndarray,
    query_emb: np.ndarray,
    k: int = 50,
    *,
    chunk: int = 1024,
) -> np.ndarray:
    """BLEEP-style prediction: mean target of the k training items nearest by cosine similarity.

    Queries are processed in chunks so memory stays O(chunk * n_train). `k` is capped at n_train.
    """
    train_y = np.asarray(train_y, dtype=np.float64)
    train_n = _l2_normalize(train_emb)
    query_n = _l2_normalize(query_emb)
    if train_n.shape[0] != train_y.shape[0]:
        raise ValueError("train_emb and train_y must have the same number of rows")
    k = min(k, train_n.shape[0])
    out = np.empty((query_n.shape[0], train_y.shape[1]))
    for start in range(0, query_n.shape[0], chunk):
        sim = query_n[start : start + chunk] @ train_n.T
        nearest = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        out[start : start + chunk] = train_y[nearest].mean(axis=1)
    return out
