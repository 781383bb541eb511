"""Embeddings of a split with given parameters: the one place evaluation (and the embedding of new
slides, `sigmma_jax.analysis`) runs the model.

The family says what the model computes for evaluation (`Family.inference_fn`) and what of it is
kept (`Family.keep`); here it is jitted once per run with replicated outputs, so every host reads
the whole global batch. The batch's `valid` flags and per-row metadata come back from the same
function, in the same (global) order as the embeddings, whatever order the mesh gives the
processes' devices.
"""

from __future__ import annotations

import pathlib

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from sigmma_jax import sharding


def make_embed_fn(family, model, mesh: Mesh, mode: str | None = None):
    """The family's inference function (in `mode`, when it has several), jitted, replicated."""
    fn = family.inference_fn(model) if mode is None else family.inference_fn(model, mode)
    return jax.jit(fn, out_shardings=sharding.replicated(mesh))


def embed_split(
    family,
    apply,
    params,
    shard_dir: str | pathlib.Path,
    manifest: dict,
    split: str,
    config: ml_collections.ConfigDict,
    mesh: Mesh,
) -> dict:
    """The split's embeddings, as the family keeps them (`Family.keep`), in manifest order."""
    parts = []
    for batch in family.eval_batches(config, shard_dir, manifest, split, mesh):
        out = jax.device_get(apply(params, sharding.to_device(batch, mesh)))
        parts.append(family.keep(out, np.asarray(out["valid"]), config))
    return jax.tree.map(lambda *xs: np.concatenate(xs), *parts)
