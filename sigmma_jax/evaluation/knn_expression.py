"""Task 1 by BLEEP's predictor (docs/method.md, "Gene expression prediction"): a test tile's
expression is the mean expression of the k training tiles whose ST embeddings are nearest to its HE
embedding in the joint space. Scored on the probe's genes (`sigmma_jax.evaluation.genes`)."""

from __future__ import annotations

import numpy as np

from sigmma_jax.evaluation import expression, genes
from sigmma_jax.evaluation.retrieval import l2_normalize
from sigmma_jax.scales import SCALES

SPLITS = ("train", "test")
# knn_k: nearest training tiles averaged (BLEEP's predictor)
DEFAULTS = {**expression.DEFAULTS, **genes.DEFAULTS, "knn_k": 50}


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
    train_n = l2_normalize(train_emb)
    query_n = l2_normalize(query_emb)
    if train_n.shape[0] != train_y.shape[0]:
        raise ValueError("train_emb and train_y must have the same number of rows")
    k = min(k, train_n.shape[0])
    out = np.empty((query_n.shape[0], train_y.shape[1]))
    for start in range(0, query_n.shape[0], chunk):
        sim = query_n[start : start + chunk] @ train_n.T
        # Sorted: the same neighbours are summed in the same order, so equal sets give equal means
        # (with k = n_train every tile gets the training mean exactly, not rounding noise that a
        # per-gene PCC would score).
        nearest = np.sort(np.argpartition(-sim, k - 1, axis=1)[:, :k], axis=1)
        out[start : start + chunk] = train_y[nearest].mean(axis=1)
    return out


def joint(split: dict, key: str) -> np.ndarray:
    """A split's embeddings `key` ("he" or "st") in the joint space of all scales: the
    concatenation of each scale's unit vectors (cosine = the mean of the scales' cosines)."""
    return np.concatenate([l2_normalize(split[key][s]) for s in SCALES if s in split[key]], 1)


def evaluate(embeddings: dict, config) -> dict:
    """HE embeddings of test tiles against ST embeddings of training tiles, in the joint space."""
    train, test = embeddings["train"], embeddings["test"]
    genes = embeddings["genes"]
    pred = knn_expression(
        joint(train, "st"), train["targets"][:, genes], joint(test, "he"), config.eval.knn_k
    )
    true = np.asarray(test["targets"], np.float64)[:, genes]
    units = expression.target_range(train["targets"][:, genes], config.eval.target_scale)
    return {
        **expression.scores(pred, true, units),
        "k": min(config.eval.knn_k, len(train["targets"])),
        "target_scale": config.eval.target_scale,
    }


def markdown(by_model: dict, results: dict) -> list[str]:
    del results
    title = (
        "## Gene expression prediction: mean of the nearest training tiles in the joint space, "
        "BLEEP's predictor (mean ± sd over test tiles)"
    )
    return [title, ""] + expression.table(by_model) + [""]
