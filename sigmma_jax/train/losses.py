"""Contrastive losses by name (docs/method.md, "Loss"; SIGMMA §5.3).

Called on global arrays inside the jitted step: with the batch sharded over devices, XLA gathers the
embeddings, so every device's tiles are negatives for every other's. A loss takes the model's output
({"he": {scale: (B, E)}, "st": ..., "temperature": ()}) and the per-scale weights, and returns the
total and each scale's term.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax


def info_nce(a: jax.Array, b: jax.Array, temperature: jax.Array) -> jax.Array:
    """Symmetric InfoNCE of L2-normalised (B, E) embeddings; pair i of a matches pair i of b."""
    logits = (a @ b.T) / temperature
    labels = jnp.arange(a.shape[0])
    return 0.5 * (
        optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        + optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean()
    )


def multiscale_info_nce(
    out: dict, weights: dict[str, float]
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """L = Σ_s w_s InfoNCE(z_he^s, z_st^s) over the model's scales."""
    per = {s: info_nce(out["he"][s], out["st"][s], out["temperature"]) for s in out["he"]}
    total = sum(weights[s] * per[s] for s in per)
    return total, per


LOSSES: dict[str, Callable] = {"info_nce": multiscale_info_nce}
