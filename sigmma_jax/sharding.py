"""The device mesh of a run: a 1-D ('data',) mesh; batches are split along it, parameters replicated.

Which rows of a global batch a process supplies follows from where its devices sit in the mesh
(`process_rows`), never from its process index: on a pod or a cluster the mesh need not list each
process's devices as consecutive rows.
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from sigmma_jax.errors import ConfigError


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


def process_rows(mesh: Mesh, n: int) -> np.ndarray:
    """The rows of an n-row batch split along 'data' that this process's devices hold, in the order
    `jax.make_array_from_process_local_data` reads them from the process's local batch (ascending)."""
    split = data_parallel(mesh)
    rows = set()
    for index in split.addressable_devices_indices_map((n,)).values():
        rows.update(range(*index[0].indices(n)))
    return np.asarray(sorted(rows), np.int64)


def to_device(batch: dict, mesh: Mesh) -> dict:
    """Host-local numpy batch -> global jax.Arrays split along the mesh's data axis."""
    split = data_parallel(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(split, x), batch)
