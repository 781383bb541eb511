"""Task 1 targets and scores shared by the expression evaluators (`probe`, `knn_expression`):
tile expression targets and Pearson / MSE per tile and per gene (docs/method.md, "Gene expression
prediction"). The genes scored are chosen in `sigmma_jax.evaluation.genes`."""

from __future__ import annotations

import numpy as np

from sigmma_jax.data.features import normalized_log1p
from sigmma_jax.scales import SCALES

TARGETS = ("log1p", "log1p_normalized")


def tile_targets(
    counts_sum: np.ndarray, target: str = "log1p", target_sum: float = 1e4
) -> np.ndarray:
    """Expression targets of tiles, (tiles, genes), from each tile's summed raw cell counts:
    "log1p" of the raw counts (HEST-Benchmark's target), or "log1p_normalized", log1p of the counts
    scaled to `target_sum` per tile (eval.target, eval.target_sum)."""
    counts_sum = np.asarray(counts_sum, dtype=np.float64)
    if np.any(counts_sum < 0):
        raise ValueError("raw counts must be non-negative")
    if target == "log1p":
        return np.log1p(counts_sum)
    if target == "log1p_normalized":
        return normalized_log1p(counts_sum, target_sum)
    raise ValueError(f"unknown eval.target {target!r}; expected one of {TARGETS}")


def pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # Pearson per row; a row where either side is exactly constant gets 0 (no association can
    # be measured there, and NaN would poison the mean).
    const = (np.ptp(a, axis=1) == 0) | (np.ptp(b, axis=1) == 0)
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    denom = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    out = np.zeros(a.shape[0])
    out[~const] = (a * b).sum(axis=1)[~const] / denom[~const]
    return out


def scores(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Per-tile Pearson (over genes) and per-tile MSE as mean and population sd (ddof=0) across
    tiles, and per-gene Pearson (across tiles) averaged over genes. A tile or gene whose true or
    predicted values are exactly constant counts as Pearson 0."""
    pcc_tile = pearson_rows(pred, true)
    mse_tile = ((pred - true) ** 2).mean(axis=1)
    pcc_gene = pearson_rows(pred.T, true.T)
    return {
        "pcc_tile_mean": float(pcc_tile.mean()),
        "pcc_tile_sd": float(pcc_tile.std()),
        "mse_tile_mean": float(mse_tile.mean()),
        "mse_tile_sd": float(mse_tile.std()),
        "pcc_gene_mean": float(pcc_gene.mean()),
        "n_genes": int(true.shape[1]),
    }


def features(split: dict, key: str) -> np.ndarray:
    """A split's embeddings `key` ("he", "st", "he_backbone") with the model's scales concatenated."""
    return np.concatenate([split[key][s] for s in SCALES if s in split[key]], 1)
