import jax.numpy as jnp
import numpy as np

from sigmma_jax import losses
from sigmma_jax.scales import SCALES


def _numpy_info_nce(a, b, t):
    logits = a @ b.T / t

    def ce(lg):  # cross-entropy with the diagonal as labels, via a stable log-softmax
        lg = lg - lg.max(1, keepdims=True)
        return -(np.diag(lg) - np.log(np.exp(lg).sum(1))).mean()

    return 0.5 * (ce(logits) + ce(logits.T))


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_info_nce_matches_numpy():
    rng = np.random.default_rng(0)
    for n, d, t in [(4, 8, 0.07), (16, 32, 0.5), (33, 5, 1.0)]:
        a, b = _unit(rng.normal(size=(n, d))), _unit(rng.normal(size=(n, d)))
        got = float(losses.info_nce(jnp.asarray(a), jnp.asarray(b), t))
        np.testing.assert_allclose(got, _numpy_info_nce(a, b, t), rtol=1e-5)


def test_info_nce_is_low_for_aligned_pairs_and_symmetric():
    rng = np.random.default_rng(1)
    a = _unit(rng.normal(size=(8, 16)))
    b = _unit(rng.normal(size=(8, 16)))
    aligned = float(losses.info_nce(jnp.asarray(a), jnp.asarray(a), 0.05))
    random = float(losses.info_nce(jnp.asarray(a), jnp.asarray(b), 0.05))
    assert aligned < 0.01 < np.log(8) * 0.5 < random
    np.testing.assert_allclose(
        float(losses.info_nce(jnp.asarray(b), jnp.asarray(a), 0.05)), random, rtol=1e-6
    )


def test_multiscale_loss_sums_weighted_scales():
    rng = np.random.default_rng(2)
    z = {s: jnp.asarray(_unit(rng.normal(size=(6, 4)))) for s in SCALES}
    w = {s: jnp.asarray(_unit(rng.normal(size=(6, 4)))) for s in SCALES}
    out = dict(he=z, st=w, temperature=jnp.float32(0.1))
    total, per = losses.LOSSES["info_nce"](out, dict(micro=1.0, meso=0.5, macro=2.0))
    for s in SCALES:
        np.testing.assert_allclose(
            float(per[s]), _numpy_info_nce(np.asarray(z[s]), np.asarray(w[s]), 0.1), rtol=1e-5
        )
    np.testing.assert_allclose(
        float(total), float(per["micro"] + 0.5 * per["meso"] + 2.0 * per["macro"]), rtol=1e-6
    )
    # A single-scale model's output has one scale, and the loss is that scale's term.
    one = dict(he={"macro": z["macro"]}, st={"macro": w["macro"]}, temperature=jnp.float32(0.1))
    total, per = losses.LOSSES["info_nce"](one, dict(micro=1.0, meso=1.0, macro=1.0))
    assert set(per) == {"macro"}
    np.testing.assert_allclose(float(total), float(per["macro"]), rtol=1e-6)


def _numpy_bleep(img, st, t):
    # BLEEP's models.py in numpy: soft targets from the mean intra-modal similarity (times τ).
    def log_softmax(x):
        x = x - x.max(1, keepdims=True)
        return x - np.log(np.exp(x).sum(1, keepdims=True))

    logits = st @ img.T / t
    sim = (img @ img.T + st @ st.T) / 2 * t
    targets = np.exp(log_softmax(sim))
    st_loss = -(targets * log_softmax(logits)).sum(1)
    img_loss = -(targets.T * log_softmax(logits.T)).sum(1)
    return ((st_loss + img_loss) / 2).mean()


def test_bleep_loss_matches_numpy():
    rng = np.random.default_rng(3)
    for n, d, t in [(4, 8, 1.0), (16, 32, 1.0), (9, 5, 0.5)]:
        # BLEEP's embeddings are LayerNorm outputs, not unit vectors: norms of about sqrt(d).
        img, st = rng.normal(size=(n, d)), rng.normal(size=(n, d))
        got = float(losses.soft_target_clip(jnp.asarray(img), jnp.asarray(st), t))
        np.testing.assert_allclose(got, _numpy_bleep(img, st, t), rtol=1e-5)
    out = dict(he={"macro": jnp.asarray(img)}, st={"macro": jnp.asarray(st)}, temperature=0.5)
    total, per = losses.LOSSES["bleep"](out, dict(micro=0.0, meso=0.0, macro=1.0))
    assert set(per) == {"macro"}
    np.testing.assert_allclose(float(total), _numpy_bleep(img, st, 0.5), rtol=1e-5)
    # Identical modalities with distinct items: the targets are the soft self-similarity, and the
    # loss is the entropy-like floor, below the loss of shuffled pairs.
    a = _unit(rng.normal(size=(8, 16))) * 4
    aligned = float(losses.soft_target_clip(jnp.asarray(a), jnp.asarray(a), 1.0))
    shuffled = float(losses.soft_target_clip(jnp.asarray(a), jnp.asarray(a[::-1]), 1.0))
    assert aligned < shuffled
