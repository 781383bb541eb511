"""The device mesh of a run and where every array lives on it (launch/README.md, "Data parallel or
FSDP").

The mesh has two axes, ('data', 'fsdp'), sized by config.mesh. Batches are split along both: every
device computes on its own rows. Parameters, gradients and optimizer state follow
config.sharding.rules, the way big_vision and MaxText declare them: a list of (regex, strategy)
matched in order against each state leaf's path (`params/backbone/blocks_3/attn/qkv/kernel`,
`opt_state/1/0/mu/backbone/...`); the first match decides. A strategy is

  "replicate"   a whole copy on every device;
  "fsdp"        split along the 'fsdp' axis on the leaf's largest dimension that divides by the
                axis's size (replicated if none does, or if the leaf is under
                config.sharding.min_fsdp_bytes: splitting a bias costs more in messages than it
                saves);
  a tuple       an explicit PartitionSpec, e.g. (None, "fsdp").

With mesh.fsdp = 1 (the default) every strategy is a replica: plain data parallelism. The state's
shardings are made here once (`state_shardings`) and used both to initialise and to restore it, so
a checkpoint written under one layout restores under another (Orbax reshards on read).

Which rows of a global batch a process supplies follows from where its devices sit in the mesh
(`process_rows`), never from its process index: on a pod or a cluster the mesh need not list each
process's devices as consecutive rows.
"""

from __future__ import annotations

import math
import re
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from sigmma_jax.errors import ConfigError

AXES = ("data", "fsdp")
BATCH = P(AXES)  # the leading (batch) axis split over every device of the mesh


def mesh_shape(config: ml_collections.ConfigDict, n_devices: int) -> tuple[int, int]:
    """(data, fsdp) sizes: -1 on an axis takes the devices the other leaves."""
    data, fsdp = config.mesh.data, config.mesh.get("fsdp", 1)
    if data == -1 and fsdp == -1:
        raise ConfigError("config.mesh.data and config.mesh.fsdp cannot both be -1")
    if fsdp == -1:
        fsdp = n_devices // data
    if data == -1:
        data = n_devices // fsdp
    if data < 1 or fsdp < 1 or data * fsdp > n_devices:
        raise ConfigError(
            f"config.mesh data={config.mesh.data} x fsdp={config.mesh.get('fsdp', 1)} needs more "
            f"than the {n_devices} devices there are"
        )
    return data, fsdp


def make_mesh(config: ml_collections.ConfigDict, devices=None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    data, fsdp = mesh_shape(config, len(devices))
    n = data * fsdp
    if config.train.global_batch % n or config.eval.batch % n:
        raise ConfigError(
            f"config.train.global_batch = {config.train.global_batch} and config.eval.batch = "
            f"{config.eval.batch} must both divide by the mesh's {n} devices (data {data} x "
            f"fsdp {fsdp}): every device takes its own rows"
        )
    # 'fsdp' is the inner axis: consecutive devices (one host's, on the fastest links) gather each
    # other's parameter shards; data-parallel replicas span hosts, which only all-reduce gradients.
    return Mesh(np.asarray(devices[:n]).reshape(data, fsdp), AXES)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_parallel(mesh: Mesh) -> NamedSharding:
    """The leading (batch) axis split over every device of the mesh ('data' and 'fsdp')."""
    return NamedSharding(mesh, BATCH)


def leaf_path(path) -> str:
    """A pytree key path as 'params/backbone/blocks_0/attn/qkv/kernel'."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def fsdp_spec(shape: tuple[int, ...], nbytes: int, fsdp: int, min_bytes: int) -> P:
    """The leaf's largest dimension that divides by `fsdp` split over 'fsdp' (big_vision's
    strategy: the largest dimension spreads the leaf most evenly); replicated if none does."""
    if fsdp == 1 or nbytes < min_bytes:
        return P()
    for d in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[d] % fsdp == 0:
            return P(*[("fsdp" if i == d else None) for i in range(len(shape))])
    return P()


def leaf_spec(path: str, shape, nbytes: int, rules, fsdp: int, min_bytes: int) -> P:
    """The PartitionSpec the first rule matching `path` gives a leaf of `shape` (replicated when no
    rule matches)."""
    for pattern, strategy in rules:
        if not re.fullmatch(pattern, path):
            continue
        if strategy == "replicate":
            return P()
        if strategy == "fsdp":
            return fsdp_spec(tuple(shape), nbytes, fsdp, min_bytes)
        return P(*strategy)
    return P()


def state_specs(tree: Any, config: ml_collections.ConfigDict, fsdp: int) -> Any:
    """A PartitionSpec for every leaf of `tree` (arrays or ShapeDtypeStructs) by config.sharding;
    needs no devices, so memory can be sized for meshes this machine does not have."""
    # A run saved before config.sharding existed was data-parallel: every leaf a replica.
    s = config.get("sharding") or ml_collections.ConfigDict(dict(rules=(), min_fsdp_bytes=0))
    rules = [tuple(r) for r in s.rules]

    def spec(path, x):
        nbytes = math.prod(x.shape) * np.dtype(x.dtype).itemsize
        return leaf_spec(leaf_path(path), x.shape, nbytes, rules, fsdp, s.min_fsdp_bytes)

    return jax.tree_util.tree_map_with_path(spec, tree)


def state_shardings(tree: Any, config: ml_collections.ConfigDict, mesh: Mesh) -> Any:
    """NamedShardings of the state on `mesh`, by config.sharding.rules."""
    specs = state_specs(tree, config, mesh.shape["fsdp"])
    return jax.tree.map(lambda p: NamedSharding(mesh, p), specs, is_leaf=lambda x: isinstance(x, P))


def shard_bytes(shape, dtype, spec: P, axis_sizes: dict[str, int]) -> int:
    """Bytes one device holds of an array of `shape` laid out by `spec` on axes of `axis_sizes`."""
    per = list(shape)
    for d, names in enumerate(tuple(spec)):
        for name in (names,) if isinstance(names, str) else names or ():
            per[d] = -(-per[d] // axis_sizes[name])
    return math.prod(per) * np.dtype(dtype).itemsize


def process_rows(mesh: Mesh, n: int) -> np.ndarray:
    """The rows of an n-row batch split along the mesh that this process's devices hold, in the
    order `jax.make_array_from_process_local_data` reads them from the process's local batch."""
    split = data_parallel(mesh)
    rows = set()
    for index in split.addressable_devices_indices_map((n,)).values():
        rows.update(range(*index[0].indices(n)))
    return np.asarray(sorted(rows), np.int64)


def to_device(batch: dict, mesh: Mesh) -> dict:
    """Host-local numpy batch -> global jax.Arrays split along the mesh."""
    split = data_parallel(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(split, x), batch)
