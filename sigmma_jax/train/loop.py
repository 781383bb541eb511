"""Training and evaluation: `train_and_evaluate(config, workdir)` is the whole run.

One jitted step with explicit shardings on a mesh: data sharded along 'data', parameters and
optimizer state replicated. Orbax checkpoints hold the train state and the Grain iterator state, so a
restarted run continues from exactly the next batch with the same random keys.
"""

from __future__ import annotations

import json
import logging
import pathlib
import time
from typing import Any

import flax
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from sigmma_jax import atomic, evaluation, input_pipeline, losses, preprocess, report
from sigmma_jax.models import backbones
from sigmma_jax.models.sigmma import SCALES, SIGMMA


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array  # raw uint32 key: step keys are fold_in(rng, step), so resuming repeats them


def make_mesh(config: ml_collections.ConfigDict, devices=None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    n = config.mesh.data if config.mesh.data > 0 else len(devices)
    if config.train.global_batch % n or config.eval.batch % n:
        raise ValueError(
            f"batch sizes ({config.train.global_batch}, {config.eval.batch}) must divide "
            f"by the {n} devices of the data axis"
        )
    return Mesh(np.asarray(devices[:n]), ("data",))


def lr_schedule(config: ml_collections.ConfigDict, mult: float = 1.0) -> optax.Schedule:
    """Linear warmup then cosine decay to 1% of the peak."""
    t = config.train
    warmup = min(t.warmup_steps, t.steps - 1)  # short test runs may ask for fewer steps than warmup
    return optax.warmup_cosine_decay_schedule(
        0.0, t.lr * mult, warmup, t.steps, end_value=t.lr * mult * 0.01
    )


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """AdamW with `lr_schedule`; the backbone gets its own rate or, frozen, no state at all."""
    t = config.train

    def adamw(mult):
        # No decay on biases, norms, LayerScale and the temperature.
        decay_mask = lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)
        return optax.adamw(lr_schedule(config, mult), weight_decay=t.weight_decay, mask=decay_mask)

    # Frozen backbone leaves (all in "frozen" mode, those below the last k blocks in "last_k") get
    # set_to_zero: no optimizer state. Layer-wise decay scales the trained backbone leaves' updates.
    backbone = optax.chain(adamw(t.backbone_lr_mult), backbones.layer_decay(t.layer_decay))
    labels = lambda params: backbones.param_labels(
        params, config.model.backbone_mode, config.model.backbone_last_k
    )
    return optax.chain(
        optax.clip_by_global_norm(t.grad_clip),
        optax.multi_transform(
            {"backbone": backbone, "frozen": optax.set_to_zero(), "rest": adamw(1.0)}, labels
        ),
    )


def init_state(model: SIGMMA, tx, config, manifest, mesh: Mesh) -> tuple[TrainState, Any]:
    """The initial state (a pure function of config.seed), placed replicated on the mesh."""
    dummy = input_pipeline.zeros_batch(manifest, len(mesh.devices.flat))
    rep = NamedSharding(mesh, P())

    def init(rng):
        params = model.init({"params": rng}, dummy, train=False)["params"]
        return TrainState(
            jnp.zeros((), jnp.int32), params, tx.init(params), jax.random.fold_in(rng, 1)
        )

    abstract = jax.eval_shape(init, jax.random.PRNGKey(config.seed))
    shardings = jax.tree.map(lambda _: rep, abstract)
    state = jax.jit(init, out_shardings=shardings)(jax.random.PRNGKey(config.seed))
    if config.model.backbone_weights:  # converted pretrained weights (the optimizer state is zeros)
        state = state.replace(
            params=backbones.load_into(state.params, config.model.backbone_weights)
        )
    return state, shardings


def loss_fn(params, model: SIGMMA, batch: dict, rng: jax.Array, weights=(1.0, 1.0, 1.0)):
    """Total loss and (per-scale losses, temperature) of one training batch."""
    k_gumbel, k_drop = jax.random.split(rng)
    out = model.apply(
        {"params": params}, batch, train=True, rngs={"gumbel": k_gumbel, "dropout": k_drop}
    )
    total, per = losses.sigmma_loss(out, weights)
    return total, (per, out["temperature"])


def make_train_step(model: SIGMMA, tx, config, mesh: Mesh, state_shardings):
    weights = tuple(config.train.scale_weights)

    def step(state: TrainState, batch):
        rng = jax.random.fold_in(state.rng, state.step)
        (loss, (per, temp)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, model, batch, rng, weights
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new = state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            opt_state=opt_state,
        )
        metrics = dict(
            loss=loss,
            temperature=temp,
            grad_norm=optax.global_norm(grads),
            **{f"loss_{s}": per[s] for s in SCALES},
        )
        return new, metrics

    data = NamedSharding(mesh, P("data"))
    return jax.jit(
        step,
        in_shardings=(state_shardings, data),
        out_shardings=(state_shardings, NamedSharding(mesh, P())),
        donate_argnums=0,
    )


# ---------------------------------------------------------------------------------------------------
# Evaluation


def make_embed_fn(model: SIGMMA, mesh: Mesh):
    """Jitted inference returning replicated outputs (readable on every host)."""
    return jax.jit(
        lambda p, b: model.apply({"params": p}, b, train=False),
        out_shardings=NamedSharding(mesh, P()),
    )


def embed_split(apply, params, shard_dir, manifest, split: str, config, mesh) -> dict:
    """Embeddings of every tile of a split: he/st/he_backbone per scale and log1p tile targets."""
    parts = []
    for batch in input_pipeline.eval_batches(shard_dir, manifest, split, config.eval.batch):
        valid = batch["graph"].globals["valid"]
        out = jax.device_get(apply(params, input_pipeline.to_device(batch, mesh)))
        keep = np.asarray(valid)
        # Multi-host: `valid` is this host's part; the replicated output is the global batch.
        keep = np.asarray(multihost_utils.process_allgather(keep, tiled=True))
        counts = multihost_utils.process_allgather(
            batch["graph"].globals["tile_counts"], tiled=True
        )
        parts.append(
            dict(
                he={s: out["he"][s][keep] for s in SCALES},
                st={s: out["st"][s][keep] for s in SCALES},
                he_backbone={s: out["he_backbone"][s][keep] for s in SCALES},
                targets=np.log1p(np.asarray(counts)[keep]),
            )
        )
    return jax.tree.map(lambda *xs: np.concatenate(xs), *parts)


def evaluate(apply, params, shard_dir, manifest, config, mesh) -> dict:
    """Task 2 retrieval on test tiles and the Task 1 probe fit on train tiles (METHOD.md §5)."""
    test = embed_split(apply, params, shard_dir, manifest, "test", config, mesh)
    train = embed_split(apply, params, shard_dir, manifest, "train", config, mesh)
    key = "he" if config.eval.probe_embedding == "projected" else "he_backbone"
    feats = lambda e: np.concatenate([e[key][s] for s in SCALES], 1)
    probe = evaluation.linear_probe(
        feats(train),
        train["targets"],
        feats(test),
        test["targets"],
        n_components=config.eval.pca_components,
        n_genes=config.eval.n_genes,
    )
    return dict(retrieval=evaluation.retrieval_metrics(test["he"], test["st"]), probe=probe)


# ---------------------------------------------------------------------------------------------------
# The run


class MetricsWriter:
    """JSON lines + TensorBoard, written by process 0; a resumed run drops lines past its step."""

    def __init__(self, workdir: pathlib.Path, resume_step: int):
        self.path = workdir / "metrics.jsonl"
        self.enabled = jax.process_index() == 0
        self.tb = None
        if not self.enabled:
            return
        if self.path.exists():
            kept = [r for r in report.read_history(self.path) if r["step"] <= resume_step]
            atomic.write_bytes(self.path, "".join(json.dumps(r) + "\n" for r in kept).encode())
        from tensorboardX import SummaryWriter

        self.tb = SummaryWriter(str(workdir / "tensorboard"))

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        for k, v in metrics.items():
            self.tb.add_scalar(k, v, step)
        self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def checkpoint_manager(workdir: pathlib.Path, config) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        (workdir / "checkpoints").absolute(),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=config.train.keep_checkpoints, enable_async_checkpointing=True
        ),
        item_names=("state", "meta", "data"),
    )


def train(
    config: ml_collections.ConfigDict,
    workdir: str | pathlib.Path,
    manifest: dict,
    mesh: Mesh,
    stop_after: int | None = None,
) -> tuple[SIGMMA, TrainState]:
    """Trains to config.train.steps (or `stop_after` steps, to simulate an interruption)."""
    workdir = pathlib.Path(workdir)
    shard_dir = config.data.shard_dir or workdir / "shards"
    model, tx = SIGMMA(config.model), make_optimizer(config)
    state, shardings = init_state(model, tx, config, manifest, mesh)
    it = input_pipeline.train_iterator(
        shard_dir,
        manifest,
        config.train.global_batch,
        seed=config.seed,
        augment_tiles=config.data.augment,
        workers=config.data.loader_workers,
        prefetch=config.data.prefetch,
    )
    mngr = checkpoint_manager(workdir, config)
    if mngr.latest_step() is not None:
        abstract = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings
        )
        restored = mngr.restore(
            mngr.latest_step(),
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract),
                data=grain.checkpoint.CheckpointRestore(it),
            ),
        )
        state = restored["state"]
        logging.info("resumed from step %d", int(state.step))
    step_fn = make_train_step(model, tx, config, mesh, shardings)
    start = int(state.step)
    end = config.train.steps if stop_after is None else min(config.train.steps, start + stop_after)
    writer = MetricsWriter(workdir, start)
    lr = lr_schedule(config)
    t_log, tiles = time.time(), 0
    t0 = t_log
    for step in range(start, end):
        batch = input_pipeline.to_device(next(it), mesh)
        state, metrics = step_fn(state, batch)
        tiles += config.train.global_batch
        done = step + 1
        if done % config.train.log_every == 0 or done == end:
            m = {k: float(v) for k, v in jax.device_get(metrics).items()}
            now = time.time()
            m.update(lr=float(lr(step)), tiles_per_s=tiles / (now - t_log))
            eta = (now - t0) / (done - start) * (end - done)
            logging.info(
                "step %d/%d  loss %.4f (micro %.3f meso %.3f macro %.3f)  tau %.4f  "
                "%.1f tiles/s  ETA %.0fs",
                done,
                config.train.steps,
                m["loss"],
                m["loss_micro"],
                m["loss_meso"],
                m["loss_macro"],
                m["temperature"],
                m["tiles_per_s"],
                eta,
            )
            writer.write(done, m)
            t_log, tiles = now, 0
        if done % config.train.checkpoint_every == 0 or done == end:
            mngr.save(
                done,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state),
                    meta=ocp.args.JsonSave(dict(step=done, config=config.to_json())),
                    data=grain.checkpoint.CheckpointSave(it),
                ),
            )
    mngr.wait_until_finished()
    mngr.close()
    writer.close()
    if hasattr(it, "close"):
        it.close()
    return model, state


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict:
    """Preprocess (if needed), train (resuming if possible), evaluate trained and untrained models."""
    workdir = pathlib.Path(workdir)
    if config.model.backbone_weights:  # fail now, not after an hour of preprocessing
        backbones.read_meta(config.model.backbone_weights)
    workdir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        manifest = preprocess.preprocess(config, workdir)
    multihost_utils.sync_global_devices("preprocessed")
    shard_dir = pathlib.Path(config.data.shard_dir or workdir / "shards")
    manifest = json.loads((shard_dir / preprocess.MANIFEST).read_text())
    mesh = make_mesh(config)
    logging.info(
        "mesh %s; %d train / %d test tiles; budgets %s",
        dict(mesh.shape),
        len(manifest["splits"]["train"]),
        len(manifest["splits"]["test"]),
        manifest["budgets"],
    )
    model, state = train(config, workdir, manifest, mesh)
    t0 = time.time()
    apply = make_embed_fn(model, mesh)
    trained = evaluate(apply, state.params, shard_dir, manifest, config, mesh)
    init, _ = init_state(model, make_optimizer(config), config, manifest, mesh)
    untrained = evaluate(apply, init.params, shard_dir, manifest, config, mesh)
    results = dict(
        trained=trained,
        untrained=untrained,
        n_test_tiles=len(manifest["splits"]["test"]),
        n_train_tiles=len(manifest["splits"]["train"]),
        steps=int(state.step),
        eval_seconds=round(time.time() - t0, 1),
        preprocessing=manifest["report"],
    )
    if jax.process_index() == 0:
        report.write_results(workdir, results, report.read_history(workdir / "metrics.jsonl"))
    return results
