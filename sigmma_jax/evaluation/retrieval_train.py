"""Cross-modal retrieval on training tiles: `retrieval`'s Recall@p% on a seeded sample of as many
training tiles as there are held-out ones, so that both figures rank among as many candidates.

The gap between this and the held-out figure is how much the model overfits; on a slide with few
training tiles it can be most of the story (docs/benchmarks.md, "The demo over seeds").
"""

from __future__ import annotations

import numpy as np

from sigmma_jax.evaluation import markdown as md
from sigmma_jax.evaluation import retrieval

SPLITS = ("train", "test")
DEFAULTS: dict = {}  # the sample's seed is the split's (data.split.seed)


def sample(n_train: int, n_test: int, seed: int) -> np.ndarray:
    """Sorted indices of min(n_train, n_test) training tiles, the same for every model of a run."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_train, size=min(n_train, n_test), replace=False))


def evaluate(embeddings: dict, config) -> dict:
    """`retrieval.retrieval_metrics` on the sample, and its size as "n_tiles"."""
    train = embeddings["train"]
    idx = sample(len(train["targets"]), len(embeddings["test"]["targets"]), config.data.split.seed)
    he, st = ({s: v[idx] for s, v in train[side].items()} for side in ("he", "st"))
    return dict(retrieval.retrieval_metrics(he, st), n_tiles=int(len(idx)))


def markdown(by_model: dict, results: dict) -> list[str]:
    """The combined recall on the training sample, per direction, beside nothing else: its gap to
    the held-out table above is the overfitting."""
    del results
    keys = retrieval.recall_keys(by_model)
    n = next(iter(by_model.values()))["n_tiles"]
    header = ["direction"] + [f"{k}% {m}" for k in keys for m in by_model]
    rows = [
        [md.direction(d)] + [md.fmt(by_model[m][d]["combined"][k]) for k in keys for m in by_model]
        for d in retrieval.DIRECTIONS
    ]
    title = (
        f"## Retrieval on {n} training tiles (combined; its gap to the held-out figure is "
        "overfitting)"
    )
    return [title, ""] + md.table(header, rows) + [""]
