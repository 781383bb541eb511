"""Contrastive losses (docs/method.md, "Loss"): SIGMMA's by name (§5.3), ST-Align's (§3.4).

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


# ---------------------------------------------------------------------------------------------------
# ST-Align (§3.4): InfoNCE with optional negatives (the authors' one per other cluster), one-way
# for the spot-niche term.


def one_per_cluster(cluster: jax.Array, pick: jax.Array) -> jax.Array:
    """(B, B) bool: for anchor i, its partner i and, from each other cluster present in the batch,
    the one member j with the largest pick[i, j] (uniform draws: a random member). The authors'
    code contrasts a spot with one spot of each other pre-cluster instead of the whole batch."""
    b = cluster.shape[0]
    _, dense = jnp.unique(cluster, size=b, fill_value=-1, return_inverse=True)
    dense = dense.reshape(b)
    best = jax.vmap(lambda u: jax.ops.segment_max(u, dense, num_segments=b))(pick)  # (B, B)
    chosen = pick >= jnp.take_along_axis(best, jnp.broadcast_to(dense, (b, b)), axis=1)
    other = cluster[:, None] != cluster[None, :]
    return (chosen & other) | jnp.eye(b, dtype=bool)


def _masked_ce(logits: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Mean cross-entropy of row i against column i, over the columns `mask` keeps (all: None)."""
    if mask is not None:
        logits = jnp.where(mask, logits, -jnp.inf)
    labels = jnp.arange(logits.shape[0])
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def contrastive(
    a: jax.Array,
    b: jax.Array,
    temperature: jax.Array,
    mask_ab: jax.Array | None = None,
    mask_ba: jax.Array | None = None,
) -> jax.Array:
    """Symmetric InfoNCE (ST-Align Eq. 10) of unit (B, E) embeddings, each direction over its own
    negatives (all of the batch when the masks are None; then it equals `info_nce`)."""
    logits = (a @ b.T) / temperature
    return 0.5 * (_masked_ce(logits, mask_ab) + _masked_ce(logits.T, mask_ba))


def one_way(
    a: jax.Array, b: jax.Array, temperature: jax.Array, mask: jax.Array | None = None
) -> jax.Array:
    """InfoNCE from a to b only (ST-Align Eq. 11, L_NS: the fused spot finds its fused niche)."""
    return _masked_ce((a @ b.T) / temperature, mask)


def _negative_masks(out: dict) -> tuple[jax.Array | None, jax.Array | None]:
    neg = out.get("negatives")
    if neg is None:
        return None, None
    return one_per_cluster(neg["cluster"], neg["pick"][0]), one_per_cluster(
        neg["cluster"], neg["pick"][1]
    )


def st_align(out: dict, lambdas: tuple[float, float]) -> tuple[jax.Array, dict[str, jax.Array]]:
    """L = λ1 L_spot + λ2 L_niche + (1 − λ1 − λ2) L_NS (ST-Align Eq. 12); returns each term."""
    t = out["temperature"]
    ab, ba = _negative_masks(out)
    per = {
        "spot": contrastive(out["spot_image"], out["spot_gene"], t, ab, ba),
        "niche": contrastive(out["niche_image"], out["niche_gene"], t, ab, ba),
        "ns": one_way(out["fused_spot"], out["fused_niche"], t, ab),
    }
    l1, l2 = lambdas
    return l1 * per["spot"] + l2 * per["niche"] + (1 - l1 - l2) * per["ns"], per


def clip(out: dict) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The CLIP / PLIP baseline: one symmetric InfoNCE, spot image vs spot expression."""
    ab, ba = _negative_masks(out)
    loss = contrastive(out["image"], out["expression"], out["temperature"], ab, ba)
    return loss, {"clip": loss}


LOSSES: dict[str, Callable] = {
    "info_nce": multiscale(info_nce),  # SIGMMA and the CLIP-style baselines
    "bleep": multiscale(soft_target_clip),
}
