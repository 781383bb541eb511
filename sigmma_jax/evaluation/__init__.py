"""Evaluators by name: `config.evals` lists what runs at the end of training (and every
`config.eval_every` steps when set); results are keyed by evaluator.

A new evaluator is one module with `SPLITS` (the splits whose embeddings it needs) and
`evaluate(embeddings, config) -> dict`, plus its line in `EVALUATORS`; `embeddings` holds each
split's embeddings and targets, and "genes", the panel indices Task 1 scores. The model runs once per
split (`inference.embed_split`), whatever the number of evaluators.
"""

from __future__ import annotations

import logging
import pathlib
import time

import ml_collections
import numpy as np

from sigmma_jax.evaluation import genes as genes_lib
from sigmma_jax.evaluation import knn_expression, probe, retrieval, retrieval_train

EVALUATORS = {
    "retrieval": retrieval,
    "retrieval_train": retrieval_train,
    "probe": probe,
    "knn_expression": knn_expression,
}


def check(names) -> None:
    unknown = [n for n in names if n not in EVALUATORS]
    if unknown:
        raise ValueError(
            f"unknown evaluator(s) {unknown} in config.evals; known: {sorted(EVALUATORS)}"
        )


def splits(names) -> list[str]:
    """The splits whose embeddings the evaluators `names` need."""
    check(names)
    return [s for s in ("test", "train", "val") if any(s in EVALUATORS[n].SPLITS for n in names)]


def embed(
    apply,
    params,
    shard_dir: str | pathlib.Path,
    manifest: dict,
    config: ml_collections.ConfigDict,
    mesh,
    names: list[str],
) -> dict:
    """{split: its embeddings (`inference.embed_split`)} for the splits `names`."""
    # Imported here: the evaluators are numpy only, and importing one should not pull in JAX.
    from sigmma_jax.evaluation import inference

    return {
        s: inference.embed_split(apply, params, shard_dir, manifest, s, config, mesh) for s in names
    }


def evaluate(
    apply,
    params,
    shard_dir: str | pathlib.Path,
    manifest: dict,
    config: ml_collections.ConfigDict,
    mesh,
    embeddings: dict | None = None,
    genes: np.ndarray | None = None,
) -> dict:
    """{evaluator name: its results} for `params`, with `apply` from `inference.make_embed_fn`;
    `embeddings` (from `embed`, holding at least the splits needed) saves running the model. Task 1
    scores `genes` (panel indices; None: `genes.select` chooses them)."""
    if genes is None:
        genes = genes_lib.select(config, manifest, shard_dir)
    t0 = time.time()
    need = splits(config.evals)
    if embeddings is None:
        embeddings = embed(apply, params, shard_dir, manifest, config, mesh, need)
    results = {
        n: EVALUATORS[n].evaluate(dict(embeddings, genes=genes), config) for n in config.evals
    }
    sizes = ", ".join(f"{len(embeddings[s]['targets'])} {s}" for s in need)
    logging.info(
        "evaluated %s on %s tiles in %.1fs", "/".join(config.evals), sizes, time.time() - t0
    )
    return results
