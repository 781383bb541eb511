"""SIGMMA (arXiv 2511.15464) as a family: H&E tiles and their cell graphs, the multi-scale two-tower
model, its InfoNCE at every scale, and Task 1 / Task 2 (docs/method.md).

Records are tiles (`sigmma_jax.data.shards` with the tile kind), batches padded Jraph graphs
(`sigmma_jax.data.input_pipeline`); the model is `sigmma_jax.models.sigmma.SIGMMA` around a backbone
of the registry; inference keeps the projected HE and ST embeddings and the backbone's per scale,
with the tiles' expression targets; a trained run leaves its expression predictors
(`predictors.npz`).
"""

from __future__ import annotations

import pathlib

import jax
import ml_collections
import numpy as np

from sigmma_jax import losses
from sigmma_jax.data import features, input_pipeline, shards
from sigmma_jax.evaluation import expression, predictors
from sigmma_jax.evaluation import genes as genes_lib
from sigmma_jax.families.base import Family
from sigmma_jax.models import backbones, text
from sigmma_jax.models import sigmma as sigmma_model
from sigmma_jax.scales import SCALES


def scale_weights(config: ml_collections.ConfigDict) -> dict[str, float]:
    return dict(zip(SCALES, config.train.scale_weights))


def place_backbone_weights(config: ml_collections.ConfigDict, params: dict) -> dict:
    """`params` with the converted backbone (model.backbone_weights, if any) at params["backbone"],
    and with `model.st_tower = "text"` its text tower at params["st"]["text"], restored onto the
    initial parameters' shardings; the optimizer state stays zeros."""
    if not config.model.backbone_weights:
        return params
    _, weights = backbones.load(config.model.backbone_weights, like=params["backbone"])
    params = {**params, "backbone": weights}
    if config.model.get("st_tower") == "text":
        _, tower, _ = text.load(config.model.backbone_weights, like=params["st"]["text"])
        params = {**params, "st": {**params["st"], "text": tower}}
    return params


class SigmmaFamily(Family):
    name = "sigmma"
    rng_streams = ("gumbel", "dropout")  # the edge sampler's Gumbel noise, the heads' dropout
    evaluators = ("retrieval", "retrieval_train", "probe", "knn_expression")
    loss_terms = SCALES  # micro, meso, macro: the log line as before the seam

    def preprocess(self, config, workdir, *, slides=None, panel=None) -> dict:
        return shards.preprocess(config, workdir, slides=slides, panel=panel)

    def prepare(self, config, manifest, shard_dir, workdir) -> dict:
        return features.prepare(config, manifest, shard_dir, workdir)

    def train_iterator(self, config, shard_dir, manifest, mesh):
        return input_pipeline.train_iterator(
            shard_dir,
            manifest,
            config.train.global_batch,
            seed=config.seed,
            mesh=mesh,
            augment_tiles=config.data.augment,
            workers=config.data.loader_workers,
            prefetch=config.data.prefetch,
        )

    def eval_batches(self, config, shard_dir, manifest, split, mesh):
        return input_pipeline.eval_batches(shard_dir, manifest, split, config.eval.batch, mesh)

    def zeros_batch(self, manifest, batch):
        return input_pipeline.zeros_batch(manifest, batch)

    def build_model(self, config, manifest=None, resolved=None):
        """(model, the backbone's resolved config); SIGMMA's shapes need no manifest."""
        cfg, kw = backbones.resolve(config.model, resolved)
        return sigmma_model.build(config, backbones.build(cfg, **kw)), cfg

    def pretrained(self, config, params):
        return place_backbone_weights(config, params)

    def loss_fn(self, config):
        loss, weights = losses.LOSSES[config.train.loss], scale_weights(config)
        return lambda out: loss(out, weights)

    def inference_fn(self, model, mode: str = "tiles"):
        """mode "tiles": the model's outputs; "cells": those and "nodes", {scale: (B, N, hidden)}
        each cell slot's state after that stage of the graph ST tower (padded slots included);
        "he": the HE tower alone on batch["image"] ({"he", "he_backbone"}; a slide without cells).
        The batch's tile metadata (`graph.globals`: valid, tile_counts, ...) comes back with them."""

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

        return embed

    def keep(self, out, valid, config):
        """{"he", "st", "he_backbone": {scale: (n, D)}, "targets": (n, genes) tile expression
        targets (eval.target)}."""
        return dict(
            **{k: {s: v[valid] for s, v in out[k].items()} for k in ("he", "st", "he_backbone")},
            targets=expression.tile_targets(
                np.asarray(out["tile_counts"])[valid], config.eval.target, config.eval.target_sum
            ),
        )

    def context(self, config, manifest, shard_dir):
        return {"genes": genes_lib.select(config, manifest, shard_dir)}  # Task 1's genes

    def finish(self, workdir, config, manifest, embeddings, context, results):
        if jax.process_index() != 0:
            return []
        fitted = predictors.fit(
            embeddings["train"], manifest["genes"], config, eval_genes=context["genes"]
        )
        path = pathlib.Path(workdir) / predictors.FILE
        predictors.save(path, fitted)
        return [path]


FAMILY = SigmmaFamily()
