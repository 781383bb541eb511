import numpy as np
import pytest

from sigmma_jax.evaluation.retrieval import PERCENTS, recall_at_percent, retrieval_metrics
from sigmma_jax.scales import SCALES


def _recall_bruteforce(sim, percents=PERCENTS):
    # Independent route: sort each row (best first) and find where the partner lands. Continuous
    # random similarities have no ties, so position == number of strictly greater candidates.
    n = sim.shape[0]
    pos = np.array([int(np.where(np.argsort(-sim[i], kind="stable") == i)[0][0]) for i in range(n)])
    out = {}
    for p in percents:
        k = (p * n + 99) // 100  # integer ceil(p * n / 100)
        out[f"R@{p}"] = sum(int(q < k) for q in pos) / n
    return out


@pytest.mark.parametrize("n", [1, 7, 20, 33, 101, 250])
def test_recall_matches_bruteforce(n):
    sim = np.random.default_rng(n).normal(size=(n, n))
    sim[np.arange(n), np.arange(n)] += 1.0  # some signal so recalls are not all ~p%
    got = recall_at_percent(sim)
    want = _recall_bruteforce(sim)
    assert got.keys() == want.keys() == {"R@5", "R@10", "R@15"}
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-12)


def test_recall_ceil_is_exact_for_round_products():
    # N = 20: 15% of 20 is exactly 3 (float 0.15 * 20 would ceil to 4). Partner ranks 0..19,
    # one query each, so Recall@p% = k / N with k = 1, 2, 3.
    n = 20
    sim = np.zeros((n, n))
    for i in range(n):
        others = [j for j in range(n) if j != i]
        sim[i, others[:i]] = 2.0  # i candidates beat the partner
        sim[i, i] = 1.0
    assert recall_at_percent(sim) == {"R@5": 1 / 20, "R@10": 2 / 20, "R@15": 3 / 20}


def test_recall_hand_made():
    # N = 4 -> k = ceil(0.2) = ceil(0.4) = ceil(0.6) = 1 for every p: only rank 0 counts.
    sim = np.array(
        [
            [0.9, 0.1, 0.2, 0.3],  # partner best -> hit
            [0.8, 0.5, 0.1, 0.0],  # one better -> miss
            [0.0, 0.0, 0.7, 0.7],  # tie with a candidate: rank 0 (strictly greater only) -> hit
            [0.9, 0.8, 0.7, 0.1],  # worst -> miss
        ]
    )
    assert recall_at_percent(sim) == {"R@5": 0.5, "R@10": 0.5, "R@15": 0.5}
    # N = 30 -> k = 2, 3, 5: put query 0's partner at rank 2.
    sim = np.eye(30)
    sim[0, 1] = sim[0, 2] = 5.0
    r = recall_at_percent(sim, percents=(5, 10, 15, 2.5))
    assert r == {"R@5": 29 / 30, "R@10": 1.0, "R@15": 1.0, "R@2.5": 29 / 30}


def test_recall_identity_is_one():
    assert recall_at_percent(np.eye(57)) == {"R@5": 1.0, "R@10": 1.0, "R@15": 1.0}


def test_recall_rejects_non_square_and_nan():
    with pytest.raises(ValueError):
        recall_at_percent(np.zeros((3, 4)))
    sim = np.eye(5)
    sim[2, 2] = np.nan
    with pytest.raises(ValueError):
        recall_at_percent(sim)


def _embeddings(rng, n, d, noise):
    he, st = {}, {}
    for s in SCALES:
        base = rng.normal(size=(n, d))
        he[s] = base * rng.uniform(0.5, 2.0, size=(n, 1))  # row scale must not matter
        st[s] = base + noise * rng.normal(size=(n, d))
    return he, st


def test_retrieval_metrics_structure_and_values():
    rng = np.random.default_rng(0)
    n = 83
    he, st = _embeddings(rng, n, 16, noise=2.0)
    res = retrieval_metrics(he, st)
    assert set(res) == {"he_to_st", "st_to_he"}
    sims = {}
    for s in SCALES:
        a = he[s] / np.linalg.norm(he[s], axis=1, keepdims=True)
        b = st[s] / np.linalg.norm(st[s], axis=1, keepdims=True)
        sims[s] = a @ b.T
    sims["combined"] = sims["micro"] + sims["meso"] + sims["macro"]
    for name, m in sims.items():
        assert res["he_to_st"][name] == pytest.approx(_recall_bruteforce(m))
        assert res["st_to_he"][name] == pytest.approx(_recall_bruteforce(m.T))
    # Combining three noisy views should help, and it must differ from any single scale here.
    assert res["he_to_st"]["combined"]["R@5"] >= max(res["he_to_st"][s]["R@5"] for s in SCALES)


def test_retrieval_metrics_perfect_and_single_scale():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 8))
    res = retrieval_metrics({"macro": x}, {"macro": 3 * x})
    assert set(res["he_to_st"]) == {"macro", "combined"}
    for direction in res.values():
        for rec in direction.values():
            assert rec == {"R@5": 1.0, "R@10": 1.0, "R@15": 1.0}
