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


def restore(mngr: ocp.CheckpointManager, abstract: TrainState, iterator) -> TrainState:
    """The latest checkpoint onto `abstract`'s shapes and shardings; `iterator` is moved to the
    batch after it."""
    restored = mngr.restore(
        mngr.latest_step(),
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract),
            data=grain.checkpoint.CheckpointRestore(iterator),
        ),
    )
    logging.info("resumed from step %d", int(restored["state"].step))
    return restored["state"]


def restore_params(mngr: ocp.CheckpointManager, abstract: TrainState) -> tuple[dict, int]:
    """(parameters, step) of the latest checkpoint onto `abstract`'s shapes and shardings, as
    `restore` does, without the optimizer state (twice the parameters under Adam) or the loader's:
    what inference needs."""
    part = dict(params=abstract.params, step=abstract.step)
    restored = mngr.restore(
        mngr.latest_step(),
        args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
                part,
                restore_args=ocp.checkpoint_utils.construct_restore_args(part),
                partial_restore=True,
            )
        ),
    )
    return restored["state"]["params"], int(restored["state"]["step"])
