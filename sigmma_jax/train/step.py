"""The train step: one jitted function with explicit shardings (pjit-style), compiled once per run.

It knows the model family only through its loss (`Family.loss_fn`) and random streams
(`Family.rng_streams`): every family trains through the same step, NaN guard and metrics.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import traverse_util
from jax.sharding import Mesh

from sigmma_jax import sharding
from sigmma_jax.train import health
from sigmma_jax.train.state import TrainState

Loss = Callable[[dict], tuple[jax.Array, dict]]


def loss_fn(
    params, model, batch: dict, rng: jax.Array, loss: Loss, streams: Sequence[str] = ("dropout",)
):
    """Total loss and (per-term losses, temperature, stats) of one training batch; `rng` is split
    into one key per random stream, in `streams` order."""
    keys = jax.random.split(rng, len(streams))
    return model_loss(params, model, batch, dict(zip(streams, keys)), loss)


def model_loss(params, model, batch: dict, rngs: dict | None, loss: Loss, train: bool = True):
    """`loss_fn` with the random streams given by name; `train=False` is the deterministic
    evaluation pass (SIGMMA: expected edges; no dropout; `rngs` unused)."""
    out, state = model.apply(
        {"params": params}, batch, train=train, rngs=rngs if train else None, mutable=["stats"]
    )
    total, per = loss(out)
    # What the towers report (sown into "stats"): e.g. the ST graph's sampled fraction and degree.
    stats = {k[-1]: v[0] for k, v in traverse_util.flatten_dict(state.get("stats", {})).items()}
    return total, (per, out["temperature"], stats)


def module_norms(tree, prefix: str) -> dict[str, jax.Array]:
    """Global norm per top-level module ("grad_norm/backbone", "grad_norm/st", ...): where the
    gradient sits is what tells a loss swing from the edge sampler apart from one in the HE tower."""
    return {f"{prefix}/{k}": optax.global_norm(v) for k, v in tree.items()}


def make_train_step(
    model, tx, config: ml_collections.ConfigDict, mesh: Mesh, state_shardings, family
):
    loss, streams = family.loss_fn(config), family.rng_streams

    def step(state: TrainState, batch):
        rng = jax.random.fold_in(state.rng, state.step)
        (total, (per, temp, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, model, batch, rng, loss, streams
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        grad_norm = optax.global_norm(grads)
        # A non-finite step is not applied; the loop stops at it (train.health).
        finite = jnp.isfinite(total) & jnp.isfinite(grad_norm) & health.all_finite(params)
        new = state.replace(
            step=state.step + 1,
            params=health.guard(finite, params, state.params),
            opt_state=health.guard(finite, opt_state, state.opt_state),
        )
        metrics = dict(
            loss=total,
            finite=finite,
            temperature=temp,
            grad_norm=grad_norm,
            **module_norms(grads, "grad_norm"),
            **{f"loss_{s}": v for s, v in per.items()},
            **stats,
        )
        return new, metrics

    return jax.jit(
        step,
        in_shardings=(state_shardings, sharding.data_parallel(mesh)),
        out_shardings=(state_shardings, sharding.replicated(mesh)),
        donate_argnums=0,
    )
