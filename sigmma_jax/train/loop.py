"""The run: `train_and_evaluate(config, workdir)` preprocesses, trains and evaluates.

Any model family (`sigmma_jax.families`, `config.model.family`) runs through it: the family gives
the records, batches, model, loss and what evaluation keeps; everything here is shared. One jitted
step with explicit shardings on a mesh: data sharded along 'data', parameters and optimizer state
replicated. The first state comes from the workdir's latest checkpoint if there is one, else from
initialisation and converted weights (`train.state`). The model at initialisation is evaluated
before the first step and its results kept in the workdir, so a resumed run never rebuilds it (nor
reads converted weights again). A run leaves what using the model on other slides needs:
`run.json` (config and manifest, `train.run_info`) and what its family's `finish` writes (SIGMMA:
`predictors.npz`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import pathlib
import time
from typing import Any, NamedTuple

import jax
import ml_collections
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from sigmma_jax import atomic, evaluation, families, sharding
from sigmma_jax.data import shards
from sigmma_jax.evaluation import inference
from sigmma_jax.train import checkpoints, health, metrics, optimizer, run_info
from sigmma_jax.train import state as state_lib
from sigmma_jax.train import step as step_lib
from sigmma_jax.workdir import lock as lock_dir

INITIAL_RESULTS = "results_initial.json"


def build_model(
    config: ml_collections.ConfigDict, manifest: dict | None = None, resolved: dict | None = None
):
    """The run's model and its resolved configuration (`Family.build_model`; SIGMMA: the
    backbone's), which every checkpoint saves."""
    return families.get(config).build_model(config, manifest, resolved)


def train_batches(config: ml_collections.ConfigDict, workdir, manifest: dict, mesh: Mesh):
    """The run's training batches: the checkpointable Grain iterator of its shard set."""
    family = families.get(config)
    return family.train_iterator(config, shards.shard_dir(config, workdir), manifest, mesh)


def saved_model(config: ml_collections.ConfigDict, workdir, manifest: dict, mesh: Mesh):
    """(model, abstract train state, checkpoint manager) of a workdir with checkpoints: the model
    as the run built it (the backbone config saved with the checkpoint), for restoring."""
    mngr = checkpoints.manager(pathlib.Path(workdir), config)
    if mngr.latest_step() is None:
        raise FileNotFoundError(f"{pathlib.Path(workdir) / 'checkpoints'}: no checkpoint")
    model, _ = build_model(config, manifest, checkpoints.backbone_config(mngr))
    tx = optimizer.make_optimizer(config)
    abstract, _ = state_lib.abstract_state(model, tx, config, manifest, mesh)
    return model, abstract, mngr


class Evaluator:
    """Runs `config.evals` on given parameters; the inference function compiles once per run."""

    def __init__(self, model, config, workdir, manifest, mesh):
        evaluation.check(config.evals)
        self.family = families.get(config)
        self.apply = inference.make_embed_fn(self.family, model, mesh)
        self.shard_dir = shards.shard_dir(config, workdir)
        self.config, self.manifest, self.mesh = config, manifest, mesh
        # What the evaluators read besides the embeddings (SIGMMA: Task 1's genes), chosen once.
        self.context = self.family.context(config, manifest, self.shard_dir)

    def embed(self, params, splits) -> dict:
        """{split: embeddings} of `params` (`inference.embed_split`)."""
        return {
            s: inference.embed_split(
                self.family,
                self.apply,
                params,
                self.shard_dir,
                self.manifest,
                s,
                self.config,
                self.mesh,
            )
            for s in splits
        }

    def __call__(self, params, embeddings: dict | None = None) -> dict:
        """{evaluator: results} of `params`; `embeddings` (from `embed`, holding at least the
        splits the evaluators need) saves running the model."""
        names = self.config.evals
        logging.info("evaluating %s", "/".join(names))
        if embeddings is None:
            embeddings = self.embed(params, evaluation.splits(names))
        return evaluation.evaluate(embeddings, self.config, self.context)


class Trained(NamedTuple):
    model: Any  # the family's model
    state: state_lib.TrainState
    evaluate: Evaluator
    initial: dict | None  # the initial model's results; None when this call resumed
    preempted: bool = False  # stopped by SIGTERM / SIGINT after saving a checkpoint


def train(
    config: ml_collections.ConfigDict,
    workdir: str | pathlib.Path,
    manifest: dict,
    mesh: Mesh,
    stop_after: int | None = None,
) -> Trained:
    """Trains to config.train.steps (or `stop_after` steps, to simulate an interruption).

    Stops early, after saving a checkpoint, on SIGTERM or SIGINT (`Trained.preempted`); raises
    `health.NonFinite` at the first step with a non-finite loss, gradient or parameter.
    """
    workdir = pathlib.Path(workdir)
    mngr = checkpoints.manager(workdir, config)
    resumed = mngr.latest_step() is not None
    model, backbone_config = build_model(
        config, manifest, checkpoints.backbone_config(mngr) if resumed else None
    )
    tx = optimizer.make_optimizer(config)
    evaluate = Evaluator(model, config, workdir, manifest, mesh)
    it = train_batches(config, workdir, manifest, mesh)
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
    health.log_param_counts(state.params)
    step_fn = step_lib.make_train_step(model, tx, config, mesh, shardings, families.get(config))
    start = int(state.step)
    end = config.train.steps if stop_after is None else min(config.train.steps, start + stop_after)
    log = _Progress(
        metrics.MetricsWriter(workdir, start),
        optimizer.lr_schedule(config),
        config,
        shards.unit(manifest),
        families.get(config).loss_terms,
    )
    saved, preempted = mngr.latest_step(), False
    saving = None  # the step whose checkpoint is being written

    def save(done):
        nonlocal saved, saving
        if saved != done:
            if saving is not None:
                checkpoints.wait(mngr, saving)
            checkpoints.save(mngr, done, state, it, config, backbone_config)
            saved = saving = done

    try:
        with health.Preemption() as preemption:
            for step in range(start, end):
                if preemption.requested(step):
                    save(step)
                    preempted = True
                    break
                batch = sharding.to_device(next(it), mesh)
                state, m = step_fn(state, batch)
                done = step + 1
                health.check(done, m)
                log.step(done, m, last=done == end)
                if (
                    config.eval_every
                    and done % config.eval_every == 0
                    and done < config.train.steps
                ):
                    log.writer.write_evals(done, evaluate(state.params))
                if saving is not None and checkpoints.finished(mngr, saving):
                    saving = None  # a failed save stops the run here, naming its path
                if done % config.train.checkpoint_every == 0 or done == end:
                    save(done)
            else:  # a signal during the last step: its checkpoint is saved, skip the evaluation
                preempted = start < end and preemption.requested(end)
    finally:  # a save in flight completes, whatever stopped the loop
        try:
            checkpoints.wait(mngr, saving)
        finally:
            mngr.close()
            log.writer.close()
            if hasattr(it, "close"):
                it.close()
    if preempted:
        logging.warning("stopped at step %d with a checkpoint; rerun to continue", saved)
    return Trained(model, state, evaluate, initial, preempted)


class _Progress:
    """Every `log_every` steps: a log line, metrics.jsonl and TensorBoard (with items/s and ETA)."""

    def __init__(
        self,
        writer: metrics.MetricsWriter,
        lr,
        config: ml_collections.ConfigDict,
        unit: str,
        terms: tuple[str, ...] = (),
    ):
        self.writer, self.lr, self.config, self.unit = writer, lr, config, unit
        self.order = {t: i for i, t in enumerate(terms)}
        self.t0 = self.t = time.time()
        self.first, self.items = None, 0

    def step(self, done: int, m: dict, last: bool) -> None:
        t = self.config.train
        self.first = done if self.first is None else self.first
        self.items += t.global_batch
        if done % t.log_every and not last:
            return
        m = {k: float(v) for k, v in jax.device_get(m).items() if k != "finite"}
        now = time.time()
        rate = f"{self.unit}_per_s"
        m.update({"lr": float(self.lr(done - 1)), rate: self.items / (now - self.t)})
        eta = (now - self.t0) / (done - self.first + 1) * (t.steps - done)
        terms = sorted(
            (k[5:] for k in m if k.startswith("loss_")),
            key=lambda k: (self.order.get(k, len(self.order)), k),
        )
        per = " ".join(f"{k} {m['loss_' + k]:.3f}" for k in terms)
        logging.info(
            "step %d/%d  loss %.4f (%s)  tau %.4f  grad norm %.3g  %.1f %s/s  ETA %.0fs",
            done,
            t.steps,
            m["loss"],
            per,
            m["temperature"],
            m["grad_norm"],
            m[rate],
            self.unit,
            eta,
        )
        self.writer.write(done, m)
        self.t, self.items = now, 0


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str | pathlib.Path, manifest: dict | None = None
) -> dict:
    """Preprocess (if needed), train (resuming if possible), evaluate; write the results files.

    The config is checked by the command that starts the run (`sigmma_jax.config_check`). With
    `manifest` (runs sharing one shard set, `sigmma_jax.experiments`), nothing is preprocessed: the
    run trains and evaluates on that manifest's split of data.shard_dir. Process 0 holds the
    workdir's lock for the whole run (`sigmma_jax.workdir`).
    """
    workdir = pathlib.Path(workdir)
    fresh = not (workdir / "checkpoints").exists()
    if fresh:  # fail now, not after an hour of preprocessing
        families.get(config).check_weights(config)
    primary = jax.process_index() == 0
    with lock_dir(workdir) if primary else contextlib.nullcontext():
        return _train_and_evaluate(config, workdir, manifest)


def _train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: pathlib.Path, manifest: dict | None
) -> dict:
    family = families.get(config)
    mesh = sharding.make_mesh(config)
    shard_dir = shards.shard_dir(config, workdir)
    if manifest is None:
        if jax.process_index() == 0:
            family.preprocess(config, workdir)
        multihost_utils.sync_global_devices("preprocessed")
        manifest = shards.read_manifest(shard_dir)
    # Host-side inputs (SIGMMA: BLEEP's PCs, gene sentences, node PCA) for this run's split,
    # written once.
    if jax.process_index() == 0:
        family.prepare(config, manifest, shard_dir, workdir)
    multihost_utils.sync_global_devices("features")
    manifest = family.prepare(config, manifest, shard_dir, workdir)
    if jax.process_index() == 0:
        run_info.write(workdir, config, manifest)
    unit = shards.unit(manifest)
    logging.info(
        "mesh %s; %d train / %d test %s; budgets %s",
        dict(mesh.shape),
        len(manifest["splits"]["train"]),
        len(manifest["splits"]["test"]),
        unit,
        manifest.get("budgets"),
    )
    run = train(config, workdir, manifest, mesh)
    if run.preempted:
        return {}
    t0 = time.time()
    logging.info(
        "evaluating the trained model (%s) on %d test %s",
        ", ".join(config.evals),
        len(manifest["splits"]["test"]),
        unit,
    )
    # The training split is embedded whatever the evaluators: what the run leaves (SIGMMA's
    # predictors) is fitted on it.
    need = list(dict.fromkeys([*evaluation.splits(config.evals), "train"]))
    embeddings = run.evaluate.embed(run.state.params, need)
    trained = run.evaluate(run.state.params, embeddings)
    initial = run.initial
    if initial is None and (workdir / INITIAL_RESULTS).exists():
        # resumed: the initial model was evaluated by the run that started it
        initial = json.loads((workdir / INITIAL_RESULTS).read_text())
    results = {
        "trained": trained,
        **({"initial": initial} if initial is not None else {}),
        f"n_test_{unit}": len(manifest["splits"]["test"]),
        f"n_train_{unit}": len(manifest["splits"]["train"]),
        "steps": int(run.state.step),
        "eval_seconds": round(time.time() - t0, 1),
        "preprocessing": manifest["report"],
    }
    log = workdir / "metrics.jsonl"  # absent when nothing was trained (train.steps=0)
    history = metrics.read_history(log) if log.exists() else None
    if graph := metrics.graph_density(history or []):
        results["graph"] = graph
    files = family.finish(workdir, config, manifest, embeddings, run.evaluate.context, results)
    if jax.process_index() == 0:
        report = family.write_report(workdir, results, history)
        logging.info("results: %s", ", ".join(map(str, report + files)))
    return results
