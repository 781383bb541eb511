"""Embeddings of a split's tiles with given parameters: the one place evaluation runs the model.

The jitted function is compiled once per run and returns replicated outputs, so every host can read
the global batch; `valid` marks the real tiles of the last, padded batch.
"""

from __future__ import annotations

import pathlib

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from sigmma_jax import sharding
from sigmma_jax.data import input_pipeline
from sigmma_jax.evaluation import expression


def make_embed_fn(model, mesh: Mesh):
    """Jitted inference (params, batch) -> the model's outputs, replicated."""
    return jax.jit(
        lambda p, b: model.apply({"params": p}, b, train=False),
        out_shardings=sharding.replicated(mesh),
    )


def embed_split(
    apply,
    params,
    shard_dir: str | pathlib.Path,
    manifest: dict,
    split: str,
    config: ml_collections.ConfigDict,
    mesh: Mesh,
) -> dict:
    """{"he", "st", "he_backbone": {scale: (N, D)}, "targets": (N, genes) tile expression targets
    (eval.target)}."""
    parts = []
    for batch in input_pipeline.eval_batches(shard_dir, manifest, split, config.eval.batch):
        out = jax.device_get(apply(params, input_pipeline.to_device(batch, mesh)))
        # Multi-host: `valid` is this host's part; the replicated output is the global batch.
        keep = np.asarray(
            multihost_utils.process_allgather(batch["graph"].globals["valid"], tiled=True)
        )
        counts = multihost_utils.process_allgather(
            batch["graph"].globals["tile_counts"], tiled=True
        )
        parts.append(
            dict(
                **{k: {s: v[keep] for s, v in out[k].items()} for k in ("he", "st", "he_backbone")},
                targets=expression.tile_targets(
                    np.asarray(counts)[keep], config.eval.target, config.eval.target_sum
                ),
            )
        )
    return jax.tree.map(lambda *xs: np.concatenate(xs), *parts)
