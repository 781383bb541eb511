"""Embeddings of a split's tiles with given parameters: the one place evaluation runs the model.

The jitted function is compiled once per run and returns replicated outputs, so every host reads
the whole global batch. The batch's `valid` flags and targets come back from the same function, in
the same (global) order as the embeddings, whatever order the mesh gives the processes' devices.
"""

from __future__ import annotations

import pathlib

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from sigmma_jax import sharding
from sigmma_jax.data import input_pipeline


def make_embed_fn(model, mesh: Mesh):
    """Jitted inference (params, batch) -> the model's outputs with the batch's `valid` flags and
    `tile_counts`, replicated."""

    def embed(params, batch):
        out = model.apply({"params": params}, batch, train=False)
        return dict(out, **batch["graph"].globals)

    return jax.jit(embed, out_shardings=sharding.replicated(mesh))


def embed_split(
    apply,
    params,
    shard_dir: str | pathlib.Path,
    manifest: dict,
    split: str,
    config: ml_collections.ConfigDict,
    mesh: Mesh,
) -> dict:
    """{"he", "st", "he_backbone": {scale: (N, D)}, "targets": (N, genes) log1p tile counts}."""
    parts = []
    batches = input_pipeline.eval_batches(shard_dir, manifest, split, config.eval.batch, mesh)
    for batch in batches:
        out = jax.device_get(apply(params, input_pipeline.to_device(batch, mesh)))
        keep = np.asarray(out["valid"])
        parts.append(
            dict(
                **{k: {s: v[keep] for s, v in out[k].items()} for k in ("he", "st", "he_backbone")},
                targets=np.log1p(np.asarray(out["tile_counts"])[keep]),
            )
        )
    return jax.tree.map(lambda *xs: np.concatenate(xs), *parts)
