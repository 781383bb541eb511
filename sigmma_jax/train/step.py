"""The train step: one jitted function with explicit shardings (pjit-style), compiled once per run."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import traverse_util
from jax.sharding import Mesh

from sigmma_jax import sharding
from sigmma_jax.models.sigmma import SIGMMA
from sigmma_jax.scales import SCALES
from sigmma_jax.train import health, losses
from sigmma_jax.train.state import TrainState


def loss_fn(
    params, model: SIGMMA, batch: dict, rng: jax.Array, weights: dict, loss: str = "info_nce"
):
    """Total loss and (per-scale losses, temperature, stats) of one training batch."""
    k_gumbel, k_drop = jax.random.split(rng)
    return model_loss(params, model, batch, {"gumbel": k_gumbel, "dropout": k_drop}, weights, loss)


def model_loss(
    params,
    model: SIGMMA,
    batch: dict,
    rngs: dict | None,
    weights: dict,
    loss: str = "info_nce",
    train: bool = True,
):
    """`loss_fn` with the random streams given by name ("gumbel", "dropout"); `train=False` is
    the deterministic evaluation pass (expected edges, no dropout, `rngs` unused)."""
    out, state = model.apply(
        {"params": params}, batch, train=train, rngs=rngs if train else None, mutable=["stats"]
    )
    total, per = losses.LOSSES[loss](out, weights)
    # What the towers report (sown into "stats"): e.g. the ST graph's sampled fraction and degree.
    stats = {k[-1]: v[0] for k, v in traverse_util.flatten_dict(state.get("stats", {})).items()}
    return total, (per, out["temperature"], stats)


def module_norms(tree, prefix: str) -> dict[str, jax.Array]:
    """Global norm per top-level module ("grad_norm/backbone", "grad_norm/st", ...): where the
    gradient sits is what tells a loss swing from the edge sampler apart from one in the HE tower."""
    return {f"{prefix}/{k}": optax.global_norm(v) for k, v in tree.items()}


def scale_weights(config: ml_collections.ConfigDict) -> dict[str, float]:
    return dict(zip(SCALES, config.train.scale_weights))


def make_train_step(
    model: SIGMMA, tx, config: ml_collections.ConfigDict, mesh: Mesh, state_shardings
):
    weights = scale_weights(config)

    def step(state: TrainState, batch):
        rng = jax.random.fold_in(state.rng, state.step)
        (loss, (per, temp, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, model, batch, rng, weights, config.train.loss
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        grad_norm = optax.global_norm(grads)
        # A non-finite step is not applied; the loop stops at it (train.health).
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & health.all_finite(params)
        new = state.replace(
            step=state.step + 1,
            params=health.guard(finite, params, state.params),
            opt_state=health.guard(finite, opt_state, state.opt_state),
        )
        metrics = dict(
            loss=loss,
            finite=finite,
            temperature=temp,
            grad_norm=grad_norm,
            **module_norms(grads, "grad_norm"),
            **{f"loss_{s}": v for s, v in per.items()},
            **{f"graph_{k}": v for k, v in stats.items()},
        )
        return new, metrics

    return jax.jit(
        step,
        in_shardings=(state_shardings, sharding.data_parallel(mesh)),
        out_shardings=(state_shardings, sharding.replicated(mesh)),
        donate_argnums=0,
    )
