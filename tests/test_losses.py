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


# --------------------------------------------------------------------------- ST-Align (§3.4)


def _numpy_masked_ce(logits, mask):
    """Row i against column i over the columns `mask` keeps, written out as a loop."""
    out = []
    for i in range(len(logits)):
        row = logits[i][mask[i]]
        out.append(-(logits[i, i] - row.max() - np.log(np.exp(row - row.max()).sum())))
    return float(np.mean(out))


def _numpy_one_per_cluster(cluster, pick):
    b = len(cluster)
    mask = np.eye(b, dtype=bool)
    for i in range(b):
        for c in set(cluster) - {cluster[i]}:
            members = np.flatnonzero(cluster == c)
            mask[i, members[np.argmax(pick[i, members])]] = True
    return mask


def test_one_per_cluster_keeps_the_partner_and_one_member_of_each_other_cluster():
    rng = np.random.default_rng(2)
    for b, n_clusters in [(12, 3), (16, 7), (9, 1), (8, 8)]:
        cluster = rng.integers(0, n_clusters, b) * 1024 + 5  # ids as the model makes them
        pick = rng.uniform(size=(b, b))
        got = np.asarray(losses.one_per_cluster(jnp.asarray(cluster), jnp.asarray(pick)))
        want = _numpy_one_per_cluster(cluster, pick)
        np.testing.assert_array_equal(got, want)
        # one negative per other cluster present: each row keeps 1 + (clusters present - 1)
        assert (got.sum(1) == len(set(cluster))).all()


def test_masked_contrastive_and_one_way_match_numpy():
    rng = np.random.default_rng(3)
    b, d, t = 10, 6, 0.1
    a, g = _unit(rng.normal(size=(b, d))), _unit(rng.normal(size=(b, d)))
    cluster = rng.integers(0, 3, b)
    m_ab = _numpy_one_per_cluster(cluster, rng.uniform(size=(b, b)))
    m_ba = _numpy_one_per_cluster(cluster, rng.uniform(size=(b, b)))
    logits = a @ g.T / t
    want = 0.5 * (_numpy_masked_ce(logits, m_ab) + _numpy_masked_ce(logits.T, m_ba))
    got = losses.contrastive(*map(jnp.asarray, (a, g)), t, jnp.asarray(m_ab), jnp.asarray(m_ba))
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    # without masks: the whole batch, i.e. SIGMMA's InfoNCE
    np.testing.assert_allclose(
        float(losses.contrastive(jnp.asarray(a), jnp.asarray(g), t)),
        _numpy_info_nce(a, g, t),
        rtol=1e-5,
    )
    full = np.ones((b, b), bool)
    np.testing.assert_allclose(
        float(losses.one_way(jnp.asarray(a), jnp.asarray(g), t)),
        _numpy_masked_ce(logits, full),
        rtol=1e-5,
    )
    # fewer negatives, an easier task: the masked loss is never above the full one
    assert float(losses.one_way(jnp.asarray(a), jnp.asarray(g), t, jnp.asarray(m_ab))) <= (
        _numpy_masked_ce(logits, full) + 1e-6
    )


def test_st_align_loss_weighs_its_three_terms_as_eq_12():
    rng = np.random.default_rng(4)
    b, d = 8, 5
    out = {
        k: jnp.asarray(_unit(rng.normal(size=(b, d))))
        for k in ("spot_image", "spot_gene", "niche_image", "niche_gene")
        + ("fused_spot", "fused_niche")
    }
    out["temperature"] = jnp.asarray(0.2)
    n = lambda k: np.asarray(out[k], np.float64)  # noqa: E731
    spot = _numpy_info_nce(n("spot_image"), n("spot_gene"), 0.2)
    niche = _numpy_info_nce(n("niche_image"), n("niche_gene"), 0.2)
    ns = _numpy_masked_ce(n("fused_spot") @ n("fused_niche").T / 0.2, np.ones((b, b), bool))
    for l1, l2 in [(0.3, 0.3), (0.5, 0.5), (0.2, 0.1)]:
        total, per = losses.st_align(out, (l1, l2))
        np.testing.assert_allclose(
            [float(per[k]) for k in ("spot", "niche", "ns")], [spot, niche, ns], rtol=1e-5
        )
        np.testing.assert_allclose(
            float(total), l1 * spot + l2 * niche + (1 - l1 - l2) * ns, rtol=1e-5
        )
    # with negatives: the same masks for the spot and niche terms, the first for L_NS
    cluster = jnp.asarray(rng.integers(0, 3, b))
    pick = jnp.asarray(rng.uniform(size=(2, b, b)))
    _, per = losses.st_align(dict(out, negatives=dict(cluster=cluster, pick=pick)), (0.3, 0.3))
    m0 = _numpy_one_per_cluster(np.asarray(cluster), np.asarray(pick[0]))
    m1 = _numpy_one_per_cluster(np.asarray(cluster), np.asarray(pick[1]))
    logits = n("spot_image") @ n("spot_gene").T / 0.2
    want = 0.5 * (_numpy_masked_ce(logits, m0) + _numpy_masked_ce(logits.T, m1))
    np.testing.assert_allclose(float(per["spot"]), want, rtol=1e-5)
    ns_masked = _numpy_masked_ce(n("fused_spot") @ n("fused_niche").T / 0.2, m0)
    np.testing.assert_allclose(float(per["ns"]), ns_masked, rtol=1e-5)
