"""A model family's initial train state and its loss and gradients on a set of devices: what the
8-devices-equal-1 tests of both families compare."""

import jax

from sigmma_jax import families, sharding
from sigmma_jax.train import loop, optimizer
from sigmma_jax.train import state as state_lib
from sigmma_jax.train import step as step_lib


def initial_state(config, manifest, mesh):
    """(model, optimizer, state shardings, initialised state) as a run starts them."""
    model, _ = loop.build_model(config, manifest)
    tx = optimizer.make_optimizer(config)
    _, shardings = state_lib.abstract_state(model, tx, config, manifest, mesh)
    return model, tx, shardings, state_lib.initialise(model, tx, config, manifest, mesh, shardings)


def loss_and_grads(config, manifest, host_batch, devices, key, sharded_key: str):
    """(loss, {term: loss}, gradients) of the initial state on `host_batch` over a mesh of
    `devices`, the batch split along it (`sharded_key` is checked to span every device)."""
    family = families.get(config)
    mesh = sharding.make_mesh(config, devices)
    model, _, _, state = initial_state(config, manifest, mesh)
    batch = sharding.to_device(host_batch, mesh)
    assert len(batch[sharded_key].sharding.device_set) == len(devices)
    fn = jax.jit(
        jax.value_and_grad(
            lambda p, b, r: step_lib.loss_fn(
                p, model, b, r, family.loss_fn(config), family.rng_streams
            ),
            has_aux=True,
        )
    )
    (loss, (per, _, _)), grads = fn(state.params, batch, key)
    return float(loss), {k: float(v) for k, v in per.items()}, jax.device_get(grads)
