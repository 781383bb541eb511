"""Embeddings of a split's tiles with given parameters: the one place evaluation (and the embedding of
new slides, `sigmma_jax.analysis.embed`) runs the model.

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
from sigmma_jax.evaluation import expression
from sigmma_jax.scales import SCALES


def make_embed_fn(model, mesh: Mesh, mode: str = "tiles"):
    """Jitted inference (params, batch) -> outputs, replicated, with the batch's `valid` flags and
    `tile_counts` (so they come back in the outputs' order, whatever the device order).

    mode "tiles": the model's outputs; "cells": those and "nodes", {scale: (B, N, hidden)} each
    cell slot's state after that stage of the graph ST tower (padded slots included); "he": the HE
    tower alone on batch["image"] ({"he", "he_backbone"}; a slide without cells).
    """

    def tiles(p, b):
        return model.apply({"params": p}, b, train=False)

    def cells(p, b):
        out, state = model.apply({"params": p}, b, train=False, mutable=["intermediates"])
        sown = state["intermediates"]["st"]
        return dict(out, nodes={s: sown[f"nodes_{s}"][0] for s in SCALES})

    def he(p, b):
        return model.apply({"params": p}, b["image"], method="encode_he")

    fn = dict(tiles=tiles, cells=cells, he=he)[mode]

    def embed(params, batch):
        out = fn(params, batch)
        return dict(out, **batch["graph"].globals) if "graph" in batch else out

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
    """{"he", "st", "he_backbone": {scale: (N, D)}, "targets": (N, genes) tile expression targets
    (eval.target)}."""
    parts = []
    batches = input_pipeline.eval_batches(shard_dir, manifest, split, config.eval.batch, mesh)
    for batch in batches:
        out = jax.device_get(apply(params, input_pipeline.to_device(batch, mesh)))
        keep = np.asarray(out["valid"])
        parts.append(
            dict(
                **{k: {s: v[keep] for s, v in out[k].items()} for k in ("he", "st", "he_backbone")},
                targets=expression.tile_targets(
                    np.asarray(out["tile_counts"])[keep], config.eval.target, config.eval.target_sum
                ),
            )
        )
    return jax.tree.map(lambda *xs: np.concatenate(xs), *parts)
