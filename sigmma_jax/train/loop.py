"""The run: `train_and_evaluate(config, workdir)` preprocesses, trains and evaluates.

One jitted step with explicit shardings on a mesh: data sharded along 'data', parameters and
optimizer state replicated. The first state comes from the workdir's latest checkpoint if there is
one, else from initialisation and converted weights (`train.state`). The model at initialisation is
evaluated before the first step and its results kept in the workdir, so a resumed run never rebuilds
it (nor reads converted weights again).
"""

from __future__ import annotations

import json
import logging
import pathlib
import time
from typing import NamedTuple

import jax
import ml_collections
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from sigmma_jax import atomic, evaluation, sharding
from sigmma_jax.data import features, input_pipeline, shards
from sigmma_jax.evaluation import genes, inference, report
from sigmma_jax.models import backbones, sigmma
from sigmma_jax.scales import SCALES
from sigmma_jax.train import checkpoints, metrics, optimizer
from sigmma_jax.train import state as state_lib
from sigmma_jax.train import step as step_lib

INITIAL_RESULTS = "results_initial.json"


def build_model(config: ml_collections.ConfigDict, backbone_config: dict | None = None):
    """The run's model. The backbone is resolved here, once: from `backbone_config` (saved with a
    checkpoint) when given, else from the config (a converted backbone's metadata is read, its
    weights are not)."""
    cfg, kw = backbones.resolve(config.model, backbone_config)
    return sigmma.build(config, backbones.build(cfg, **kw)), cfg


class Evaluator:
    """Runs `config.evals` on given parameters; the inference function compiles once per run."""

    def __init__(self, model, config, workdir, manifest, mesh):
        self.apply = inference.make_embed_fn(model, mesh)
        shard_dir = shards.shard_dir(config, workdir)
        self.args = (shard_dir, manifest, config, mesh)
        self.genes = genes.select(config, manifest, shard_dir)  # Task 1's genes, chosen once

    def __call__(self, params) -> dict:
        return evaluation.evaluate(self.apply, params, *self.args, genes=self.genes)


class Trained(NamedTuple):
    model: sigmma.SIGMMA
    state: state_lib.TrainState
    evaluate: Evaluator
    initial: dict | None  # the initial model's results; None when this call resumed


def train(
    config: ml_collections.ConfigDict,
    workdir: str | pathlib.Path,
    manifest: dict,
    mesh: Mesh,
    stop_after: int | None = None,
) -> Trained:
    """Trains to config.train.steps (or `stop_after` steps, to simulate an interruption)."""
    workdir = pathlib.Path(workdir)
    evaluation.check(config.evals)
    mngr = checkpoints.manager(workdir, config)
    resumed = mngr.latest_step() is not None
    model, backbone_config = build_model(
        config, checkpoints.backbone_config(mngr) if resumed else None
    )
    tx = optimizer.make_optimizer(config)
    evaluate = Evaluator(model, config, workdir, manifest, mesh)
    it = input_pipeline.train_iterator(
        shards.shard_dir(config, workdir),
        manifest,
        config.train.global_batch,
        seed=config.seed,
        augment_tiles=config.data.augment,
        workers=config.data.loader_workers,
        prefetch=config.data.prefetch,
    )
    abstract, shardings = state_lib.abstract_state(model, tx, config, manifest, mesh)
    initial = None
    if resumed:
        state = checkpoints.restore(mngr, abstract, it)
    else:
        state = state_lib.initialise(model, tx, config, manifest, mesh, shardings)
        if config.eval.initial:
            initial = evaluate(state.params)
            if jax.process_index() == 0:
                atomic.write_json(workdir / INITIAL_RESULTS, initial, indent=2)
    step_fn = step_lib.make_train_step(model, tx, config, mesh, shardings)
    start = int(state.step)
    end = config.train.steps if stop_after is None else min(config.train.steps, start + stop_after)
    writer = metrics.MetricsWriter(workdir, start)
    lr = optimizer.lr_schedule(config)
    t_log, tiles = time.time(), 0
    t0 = t_log
    for step in range(start, end):
        batch = input_pipeline.to_device(next(it), mesh)
        state, m = step_fn(state, batch)
        tiles += config.train.global_batch
        done = step + 1
        if done % config.train.log_every == 0 or done == end:
            m = {k: float(v) for k, v in jax.device_get(m).items()}
            now = time.time()
            m.update(lr=float(lr(step)), tiles_per_s=tiles / (now - t_log))
            eta = (now - t0) / (done - start) * (end - done)
            per = " ".join(f"{s} {m[f'loss_{s}']:.3f}" for s in SCALES if f"loss_{s}" in m)
            logging.info(
                "step %d/%d  loss %.4f (%s)  tau %.4f  %.1f tiles/s  ETA %.0fs",
                done,
                config.train.steps,
                m["loss"],
                per,
                m["temperature"],
                m["tiles_per_s"],
                eta,
            )
            writer.write(done, m)
            t_log, tiles = now, 0
        if config.eval_every and done % config.eval_every == 0 and done < config.train.steps:
            writer.write_evals(done, evaluate(state.params))
        if done % config.train.checkpoint_every == 0 or done == end:
            checkpoints.save(mngr, done, state, it, config, backbone_config)
    mngr.wait_until_finished()
    mngr.close()
    writer.close()
    if hasattr(it, "close"):
        it.close()
    return Trained(model, state, evaluate, initial)


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str | pathlib.Path, manifest: dict | None = None
) -> dict:
    """Preprocess (if needed), train (resuming if possible), evaluate; write the results files.

    With `manifest` (runs sharing one shard set, `sigmma_jax.experiments`), nothing is
    preprocessed: the run trains and evaluates on that manifest's split of data.shard_dir.
    """
    workdir = pathlib.Path(workdir)
    fresh = not (workdir / "checkpoints").exists()
    if config.model.backbone_weights and fresh:  # fail now, not after an hour of preprocessing
        backbones.read_meta(config.model.backbone_weights)
    workdir.mkdir(parents=True, exist_ok=True)
    if manifest is None:
        if jax.process_index() == 0:
            shards.preprocess(config, workdir)
        multihost_utils.sync_global_devices("preprocessed")
        manifest = shards.read_manifest(shards.shard_dir(config, workdir))
    # Host-side inputs (BLEEP's PCs, gene sentences, node PCA) for this run's split, written once.
    if jax.process_index() == 0:
        features.prepare(config, manifest, shards.shard_dir(config, workdir), workdir)
    multihost_utils.sync_global_devices("features")
    manifest = features.prepare(config, manifest, shards.shard_dir(config, workdir), workdir)
    mesh = sharding.make_mesh(config)
    logging.info(
        "mesh %s; %d train / %d test tiles; budgets %s",
        dict(mesh.shape),
        len(manifest["splits"]["train"]),
        len(manifest["splits"]["test"]),
        manifest["budgets"],
    )
    run = train(config, workdir, manifest, mesh)
    t0 = time.time()
    trained = run.evaluate(run.state.params)
    initial = run.initial
    if initial is None and (workdir / INITIAL_RESULTS).exists():
        # resumed: the initial model was evaluated by the run that started it
        initial = json.loads((workdir / INITIAL_RESULTS).read_text())
    results = dict(
        trained=trained,
        **({"initial": initial} if initial is not None else {}),
        n_test_tiles=len(manifest["splits"]["test"]),
        n_train_tiles=len(manifest["splits"]["train"]),
        steps=int(run.state.step),
        eval_seconds=round(time.time() - t0, 1),
        preprocessing=manifest["report"],
    )
    if jax.process_index() == 0:
        history = workdir / "metrics.jsonl"  # absent when nothing was trained (train.steps=0)
        report.write_results(
            workdir, results, metrics.read_history(history) if history.exists() else None
        )
    return results
