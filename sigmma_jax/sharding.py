"""The device mesh of a run: a 1-D ('data',) mesh; batches are split along it, parameters replicated."""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from sigmma_jax.config_check import ConfigError


def make_mesh(config: ml_collections.ConfigDict, devices=None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    n = config.mesh.data if config.mesh.data > 0 else len(devices)
    if config.train.global_batch % n or config.eval.batch % n:
        raise ConfigError(
            f"config.train.global_batch = {config.train.global_batch} and config.eval.batch = "
            f"{config.eval.batch} must both divide by the {n} devices of the data axis"
        )
    return Mesh(np.asarray(devices[:n]), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_parallel(mesh: Mesh) -> NamedSharding:
    """The leading (batch) axis split over the mesh's data axis."""
    return NamedSharding(mesh, P("data"))
