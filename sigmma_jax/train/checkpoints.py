"""Orbax checkpoints of the train state and the Grain iterator, so a restarted run continues from
exactly the next batch with the same random keys. Saves are asynchronous; only complete checkpoints
are ever restored (Orbax finalises a step directory by an atomic rename).

A save that fails (a full disk, a lost mount) stops the run at once with one OSError naming the
path and the cause. Orbax reports a failed background write only when the next save (or the end of
training) waits for it, after logging its traceback; the loop asks `finished` every step while a
save is in flight, so the run stops within a step of the failure.
"""

from __future__ import annotations

import errno
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
            max_to_keep=config.train.keep_checkpoints,
            enable_async_checkpointing=True,
            cleanup_tmp_directories=True,  # what a failed or killed save left
        ),
        item_names=("state", "meta", "data"),
    )


def save_error(mngr: ocp.CheckpointManager, step: int, e: BaseException) -> OSError:
    """One OSError for a failed save: the path and the cause (the first OSError of the chain)."""
    cause = e
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    where = str(pathlib.Path(mngr.directory) / str(step))
    if cause is None:
        return OSError(errno.EIO, f"cannot save the checkpoint of step {step}: {e}", where)
    return OSError(
        cause.errno,
        f"cannot save the checkpoint of step {step}: {cause.strerror or cause}",
        cause.filename or where,
    )


def save(
    mngr: ocp.CheckpointManager, step: int, state: TrainState, iterator, config, backbone: dict
) -> None:
    """Saves asynchronously; `backbone` is the backbone's resolved config, so that a resume builds
    the model without the converted weights' directory. Raises `save_error` when it cannot start
    (wait for the previous save first: Orbax waits for it here, and its failure would name this
    step)."""
    logging.info("saving checkpoint %d", step)
    meta = dict(step=step, config=config.to_json(), backbone=backbone)
    try:
        mngr.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                meta=ocp.args.JsonSave(atomic.jsonable(meta)),
                data=grain.checkpoint.CheckpointSave(iterator),
            ),
        )
    except Exception as e:
        raise save_error(mngr, step, e) from None


def finished(mngr: ocp.CheckpointManager, step: int) -> bool:
    """Whether the save of `step` is over; raises `save_error` if it failed."""
    if mngr.is_saving_in_progress():
        return False
    wait(mngr, step)
    return True


def wait(mngr: ocp.CheckpointManager, step: int | None) -> None:
    """Waits for the save of `step` (if any) to finish; raises `save_error` if it failed."""
    try:
        mngr.wait_until_finished()
    except Exception as e:
        raise save_error(mngr, step, e) from None


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
