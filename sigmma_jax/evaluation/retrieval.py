"""Task 2, cross-modal retrieval (docs/method.md, "Retrieval"): Recall@p% of held-out tiles, HE→ST
and ST→HE, per scale and for the sum of the scales' cosine similarities.

Evaluators (this module, `probe`, `knn_expression`) are numpy and scikit-learn only, so metrics can be
recomputed from saved embeddings on any machine. Each has `SPLITS` (the splits whose embeddings it
needs) and `evaluate(embeddings, config) -> dict`; `sigmma_jax.evaluation.EVALUATORS` names them.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Mapping, Sequence

import numpy as np

from sigmma_jax.evaluation import markdown as md
from sigmma_jax.scales import SCALES

PERCENTS = (5, 10, 15)
SPLITS = ("test",)
DEFAULTS: dict = {}  # nothing to set: Recall@PERCENTS of every scale and their sum


def top_k(percent: float, n: int) -> int:
    """ceil(p% of n): how many candidates count as a hit at Recall@p%."""
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
    return {f"R@{p}": float(np.mean(rank < top_k(p, n))) for p in percents}


def l2_normalize(x: np.ndarray) -> np.ndarray:
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
        sims[s] = l2_normalize(he[s]) @ l2_normalize(st[s]).T
    sims["combined"] = sum(sims[s] for s in scales)
    return {
        "he_to_st": {name: recall_at_percent(m) for name, m in sims.items()},
        "st_to_he": {name: recall_at_percent(m.T) for name, m in sims.items()},
    }


def evaluate(embeddings: dict, config) -> dict:
    """Recall@p% on the test tiles' projected embeddings."""
    del config
    test = embeddings["test"]
    return retrieval_metrics(test["he"], test["st"])


# --------------------------------------------------------------------------- results.md

RETRIEVAL_SCALES = (*SCALES, "combined")
DIRECTIONS = ("he_to_st", "st_to_he")


def recall_keys(by_model: Mapping[str, dict]) -> list[str]:
    """The "R@p" keys of the first result (every model of a run has the same)."""
    for result in by_model.values():
        for by_scale in result.values():
            if isinstance(by_scale, dict):
                for recalls in by_scale.values():
                    return list(recalls)
    return []


def markdown(by_model: dict, results: dict) -> list[str]:
    """One table: a row per direction and scale, a column per Recall@p% and model."""
    del results
    keys = recall_keys(by_model)
    header = ["direction", "scale"] + [f"{k}% {m}" for k in keys for m in by_model]
    rows = []
    for d in DIRECTIONS:
        for s in RETRIEVAL_SCALES:
            vals = [by_model[m].get(d, {}).get(s, {}).get(k) for k in keys for m in by_model]
            if any(v is not None for v in vals):
                rows.append([md.direction(d), s] + [md.fmt(v) for v in vals])
    return ["## Cross-modal retrieval (Recall@p%)", ""] + md.table(header, rows) + [""]
