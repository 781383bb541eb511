import ml_collections
import numpy as np

from sigmma_jax.evaluation import retrieval_train
from sigmma_jax.evaluation.retrieval import recall_at_percent
from sigmma_jax.scales import SCALES


def _split(n, rng, noise):
    he = {s: rng.normal(size=(n, 8)) for s in SCALES}
    st = {s: v + noise * rng.normal(size=v.shape) for s, v in he.items()}
    return dict(he=he, st=st, targets=np.zeros((n, 3)))


def _config(seed=0):
    c = ml_collections.ConfigDict()
    c.data = ml_collections.ConfigDict(dict(split=dict(seed=seed)))
    return c


def test_the_sample_is_as_large_as_the_test_split_seeded_and_sorted():
    a, b = retrieval_train.sample(100, 30, 0), retrieval_train.sample(100, 30, 0)
    assert len(a) == 30 == len(np.unique(a)) and np.array_equal(a, b)
    assert np.all(np.diff(a) > 0) and a.max() < 100
    assert not np.array_equal(a, retrieval_train.sample(100, 30, 1))
    assert np.array_equal(retrieval_train.sample(20, 30, 0), np.arange(20))  # fewer training tiles


def test_recall_on_training_tiles_is_the_formula_on_the_sample():
    rng = np.random.default_rng(0)
    # Training pairs nearly identical (a memorised set), held-out pairs mostly noise.
    emb = dict(train=_split(120, rng, 0.05), test=_split(40, rng, 3.0))
    got = retrieval_train.evaluate(emb, _config())
    idx = retrieval_train.sample(120, 40, 0)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = sum(unit(emb["train"]["he"][s][idx]) @ unit(emb["train"]["st"][s][idx]).T for s in SCALES)
    assert got["n_tiles"] == 40
    assert got["he_to_st"]["combined"] == recall_at_percent(sim)
    assert got["st_to_he"]["combined"] == recall_at_percent(sim.T)
    assert got["he_to_st"]["combined"]["R@5"] == 1.0  # memorised: every partner ranks first
