"""Three-scale symmetric InfoNCE (METHOD.md §4, SIGMMA §5.3).

Called on global arrays inside the jitted step: with the batch sharded over devices, XLA gathers the
embeddings, so every device's tiles are negatives for every other's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

SCALES = ("micro", "meso", "macro")


def info_nce(a: jax.Array, b: jax.Array, temperature: jax.Array) -> jax.Array:
    """Symmetric InfoNCE of L2-normalised (B, E) embeddings; pair i of a matches pair i of b."""
    logits = (a @ b.T) / temperature
    labels = jnp.arange(a.shape[0])
    return 0.5 * (
        optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        + optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean()
    )


def sigmma_loss(out: dict, weights=(1.0, 1.0, 1.0)) -> tuple[jax.Array, dict[str, jax.Array]]:
    """L = Σ_s w_s InfoNCE(z_he^s, z_st^s); returns the total and each scale's term."""
    per = {s: info_nce(out["he"][s], out["st"][s], out["temperature"]) for s in SCALES}
    total = sum(w * per[s] for w, s in zip(weights, SCALES))
    return total, per
