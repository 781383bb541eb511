"""The train state and how a run gets its first one (docs/method.md, "Optimisation").

The order is big_vision's: a run that has a checkpoint restores it onto the abstract state's
shardings (`train.checkpoints.restore`) and never builds the initial state or reads converted
weights; otherwise the state is initialised from `config.seed` and the converted backbone weights
(if any) replace the backbone's random parameters (`initialise`).
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from sigmma_jax import families, sharding


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array  # raw uint32 key: step keys are fold_in(rng, step), so resuming repeats them


def _init_fn(model, tx: optax.GradientTransformation, config, manifest: dict, n_devices: int):
    dummy = families.get(config).zeros_batch(manifest, n_devices)

    def init(rng):
        params = model.init({"params": rng}, dummy, train=False)["params"]
        return TrainState(
            jnp.zeros((), jnp.int32), params, tx.init(params), jax.random.fold_in(rng, 1)
        )

    return init


def state_shapes(model, tx, config, manifest: dict, n_devices: int = 1) -> TrainState:
    """The state's ShapeDtypeStructs, without shardings: no compute, no device."""
    init = _init_fn(model, tx, config, manifest, n_devices)
    return jax.eval_shape(init, jax.random.PRNGKey(config.seed))


def abstract_state(model, tx, config, manifest, mesh) -> tuple[TrainState, Any]:
    """(ShapeDtypeStructs carrying their shardings, the shardings): the state's shape, no compute."""
    shapes = state_shapes(model, tx, config, manifest, mesh.devices.size)
    shardings = sharding.state_shardings(shapes, config, mesh)  # by config.sharding.rules
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings
    )
    return abstract, shardings


def initialise(
    model, tx, config: ml_collections.ConfigDict, manifest: dict, mesh: Mesh, shardings
) -> TrainState:
    """The initial state (a pure function of config.seed and the converted weights), laid out by
    `shardings`; the family puts its converted pretrained weights in (`Family.pretrained`)."""
    init = _init_fn(model, tx, config, manifest, mesh.devices.size)
    state = jax.jit(init, out_shardings=shardings)(jax.random.PRNGKey(config.seed))
    # Converted pretrained weights replace the random ones; the optimizer state stays zeros.
    return state.replace(params=families.get(config).pretrained(config, state.params))
