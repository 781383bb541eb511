"""Task 1 targets, inputs and scores shared by the expression evaluators (`probe`,
`knn_expression`): tile expression targets, the tile embedding a probe reads, and Pearson / MSE per
tile and per gene (docs/method.md, "Gene expression prediction"). The genes scored are chosen in
`sigmma_jax.evaluation.genes`."""

from __future__ import annotations

import numpy as np

from sigmma_jax.data.features import normalized_log1p
from sigmma_jax.evaluation import markdown as md
from sigmma_jax.scales import SCALES

TARGETS = ("log1p", "log1p_normalized")
# The settings of Task 1's targets and scores (config.eval), read by every expression evaluator.
DEFAULTS = {
    # "log1p": log1p of raw counts (HEST-Bench) | "log1p_normalized": counts scaled to
    # eval.target_sum per tile, then log1p
    "target": "log1p",
    "target_sum": 1e4,
    "target_scale": "minmax",  # TARGET_SCALES, below
}
# eval.target_scale: the units scores are computed in. "minmax": each gene mapped to [0, 1] by its
# range over the training tiles, which puts MSE on the scale the SIGMMA paper reports (0.004-0.118;
# the paper does not say how it scales, and log1p counts give MSEs near 15); "none": log1p units.
TARGET_SCALES = ("none", "minmax")
# eval.probe_scales: what of a model's scales the probe reads. "mean": the mean of the scales'
# embeddings (a single-scale model's one scale), as wide as one scale; "concat": the scales side
# by side (as wide as all of them: the default before 2026-12-03); or one scale by name.
SCALE_READS = ("mean", "concat", *SCALES)


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


def target_range(train_y: np.ndarray, how: str = "none") -> tuple[np.ndarray, np.ndarray]:
    """(offset, span) per gene that `scores` maps targets and predictions by, (y - offset) / span:
    "minmax" the training tiles' minimum and range (a constant gene keeps span 1), "none" (0, 1)."""
    train_y = np.asarray(train_y, np.float64)
    if how == "none":
        return np.zeros(train_y.shape[1]), np.ones(train_y.shape[1])
    if how == "minmax":
        lo, span = train_y.min(0), np.ptp(train_y, axis=0)
        return lo, np.where(span > 0, span, 1.0)
    raise ValueError(f"unknown eval.target_scale {how!r}; expected one of {TARGET_SCALES}")


def scores(
    pred: np.ndarray, true: np.ndarray, units: tuple[np.ndarray, np.ndarray] | None = None
) -> dict[str, float]:
    """Per-tile Pearson (over genes) and per-tile MSE as mean and population sd (ddof=0) across
    tiles, and per-gene Pearson (across tiles) averaged over genes. A tile or gene whose true or
    predicted values are exactly constant counts as Pearson 0. `units` (`target_range`) maps both
    sides per gene first; per-gene Pearson does not depend on it."""
    if units is not None:
        lo, span = units
        pred, true = (pred - lo) / span, (true - lo) / span
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


def features(split: dict, key: str, scales: str = "concat") -> np.ndarray:
    """A split's tile embeddings `key` ("he", "st", "he_backbone") read as `scales` (SCALE_READS)
    over the scales the model has."""
    present = [split[key][s] for s in SCALES if s in split[key]]
    if scales == "concat":
        return np.concatenate(present, 1)
    if scales == "mean":
        return np.mean(np.stack(present), 0)
    if scales not in split[key]:
        raise ValueError(f"the model has no {scales!r} scale to probe; it has {list(split[key])}")
    return np.asarray(split[key][scales])


# --------------------------------------------------------------------------- results.md

ROWS = (
    ("PCC per tile", "pcc_tile_mean", "pcc_tile_sd"),
    ("MSE per tile", "mse_tile_mean", "mse_tile_sd"),
    ("PCC per gene", "pcc_gene_mean", None),
    ("genes", "n_genes", None),
    ("PCA components", "n_components", None),
    ("neighbours", "k", None),
    ("units", "target_scale", None),
    ("probe input", "input", None),
)


def table(by_model: dict, rows=ROWS) -> list[str]:
    """A metric per row (mean ± sd across test tiles where there is an sd), a model per column."""
    lines = []
    for label, mean_key, sd_key in rows:
        if all(r.get(mean_key) is None for r in by_model.values()):
            continue
        cells = []
        for r in by_model.values():
            cell = md.fmt(r.get(mean_key))
            if sd_key and r.get(sd_key) is not None:
                cell += f" ± {md.fmt(r[sd_key])}"
            cells.append(cell)
        lines.append([label] + cells)
    return md.table(["metric", *by_model], lines)
