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


def soft_target_clip(img: jax.Array, st: jax.Array, temperature: jax.Array) -> jax.Array:
    """BLEEP's loss (Xie et al. 2023): CLIP with soft targets from the two intra-modal similarities.

    logits = st imgᵀ / τ, targets = softmax((img imgᵀ + st stᵀ) / 2 · τ) row-wise, and the mean of
    the row-wise cross-entropies of logits against targets and of logitsᵀ against targetsᵀ. BLEEP
    trains with τ = 1 on unnormalised head outputs (`model.l2_normalize=False`); the targets use
    τ as a factor, as BLEEP's code does (the same as a divisor at τ = 1).
    """
    logits = st @ img.T / temperature
    targets = jax.nn.softmax((img @ img.T + st @ st.T) / 2 * temperature, axis=-1)
    st_loss = optax.softmax_cross_entropy(logits, targets)
    img_loss = optax.softmax_cross_entropy(logits.T, targets.T)
    return 0.5 * (st_loss + img_loss).mean()


def multiscale(pair_loss: Callable) -> Callable:
    """L = Σ_s w_s pair_loss(z_he^s, z_st^s, τ) over the model's scales (SIGMMA eq. 10 for
    InfoNCE); returns the total and each scale's term."""

    def loss(out: dict, weights: dict[str, float]) -> tuple[jax.Array, dict[str, jax.Array]]:
        per = {s: pair_loss(out["he"][s], out["st"][s], out["temperature"]) for s in out["he"]}
        return sum(weights[s] * per[s] for s in per), per

    return loss


LOSSES: dict[str, Callable] = {
    "info_nce": multiscale(info_nce),  # SIGMMA and the CLIP-style baselines
    "bleep": multiscale(soft_target_clip),
}
