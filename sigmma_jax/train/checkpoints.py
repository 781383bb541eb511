"""Orbax checkpoints of the train state and the Grain iterator, so a restarted run continues from
exactly the next batch with the same random keys. Saves are asynchronous; only complete checkpoints
are ever restored (Orbax finalises a step directory by an atomic rename)."""

from __future__ import annotations

import logging
import pathlib

import grain
import ml_collections
import orbax.checkpoint as ocp

from sigmma_jax import atomic
from sigmma_jax.train.state import TrainState


def manager(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        (pathlib.Path(workdir) / "checkpoints").absolute(),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=config.train.keep_checkpoints, enable_async_checkpointing=True
        ),
        item_names=("state", "meta", "data"),
    )


def save(
    mngr: ocp.CheckpointManager, step: int, state: TrainState, iterator, config, backbone: dict
) -> None:
    """Saves asynchronously; `backbone` is the backbone's resolved config, so that a resume builds
    the model without the converted weights' directory."""
    logging.info("saving checkpoint %d", step)
    meta = dict(step=step, config=config.to_json(), backbone=backbone)
    mngr.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            meta=ocp.args.JsonSave(atomic.jsonable(meta)),
            data=grain.checkpoint.CheckpointSave(iterator),
        ),
    )


def backbone_config(mngr: ocp.CheckpointManager) -> dict:
    """The backbone config saved with the latest checkpoint."""
    meta = mngr.restore(mngr.latest_step(), args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return meta["meta"]["backbone"]


def restore(
    mngr: ocp.CheckpointManager, abstract: TrainState, iterator=None, step: int | None = None
) -> TrainState:
    """The latest checkpoint (or `step`'s) onto `abstract`'s shapes and shardings; `iterator` (if
    given) is moved to the batch after it."""
    items = dict(state=ocp.args.StandardRestore(abstract))
    if iterator is not None:
        items["data"] = grain.checkpoint.CheckpointRestore(iterator)
    step = mngr.latest_step() if step is None else step
    restored = mngr.restore(step, args=ocp.args.Composite(**items))
    logging.info("resumed from step %d", int(restored["state"].step))
    return restored["state"]
