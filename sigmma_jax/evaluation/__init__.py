"""Evaluators by name: `config.evals` lists what runs at the end of training (and every
`config.eval_every` steps when set); results are keyed by evaluator.

A new evaluator is one module with `SPLITS` (the splits whose embeddings it needs), `DEFAULTS`
(its `config.eval` settings and their defaults, which the config schema takes from it),
`evaluate(embeddings, config) -> dict` and `markdown(by_model, results) -> list[str]` (its
sections of results.md, `sigmma_jax.evaluation.markdown`), plus its line in `EVALUATORS` and in its
family's `evaluators`; `embeddings` holds each split's embeddings and targets (what the family's inference
keeps) and the family's context (SIGMMA: "genes", the panel indices Task 1 scores). The model runs
once per split (`inference.embed_split`), whatever the number of evaluators.
"""

from __future__ import annotations

import logging
import time

import ml_collections

from sigmma_jax.evaluation import (
    domains,
    knn_expression,
    probe,
    retrieval,
    retrieval_train,
    spot_expression,
)

EVALUATORS = {
    # SIGMMA's Task 2 and Task 1
    "retrieval": retrieval,
    "retrieval_train": retrieval_train,
    "probe": probe,
    "knn_expression": knn_expression,
    # ST-Align's zero-shot spatial domains and gene prediction
    "domains": domains,
    "spot_expression": spot_expression,
}


def check(names) -> None:
    unknown = [n for n in names if n not in EVALUATORS]
    if unknown:
        raise ValueError(
            f"unknown evaluator(s) {unknown} in config.evals; known: {sorted(EVALUATORS)}"
        )


def defaults(names) -> dict:
    """The `config.eval` settings of the evaluators `names` (each module's DEFAULTS), merged; two
    evaluators that read one setting must agree on its default."""
    check(names)
    out: dict = {}
    for n in names:
        for k, v in EVALUATORS[n].DEFAULTS.items():
            if k in out and out[k] != v:
                raise ValueError(
                    f"eval.{k}: {n} defaults to {v!r}, another evaluator to {out[k]!r}"
                )
            out[k] = v
    return out


def splits(names) -> list[str]:
    """The splits whose embeddings the evaluators `names` need."""
    check(names)
    return [s for s in ("test", "train", "val") if any(s in EVALUATORS[n].SPLITS for n in names)]


def evaluate(embeddings: dict, config: ml_collections.ConfigDict, context: dict) -> dict:
    """{evaluator name: its results} of `config.evals` on `embeddings` ({split: what the family's
    inference keeps}, holding at least the splits the evaluators need) and the family's `context`
    (SIGMMA: "genes", the panel indices Task 1 scores)."""
    t0 = time.time()
    need = splits(config.evals)
    results = {n: EVALUATORS[n].evaluate({**embeddings, **context}, config) for n in config.evals}
    sizes = ", ".join(f"{len(embeddings[s]['targets'])} {s}" for s in need)
    logging.info("evaluated %s on %s in %.1fs", "/".join(config.evals), sizes, time.time() - t0)
    return results
