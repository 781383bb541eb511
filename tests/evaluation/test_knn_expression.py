import numpy as np

from sigmma_jax.evaluation.knn_expression import knn_expression


def test_knn_expression_matches_bruteforce():
    rng = np.random.default_rng(5)
    train_emb, query_emb = rng.normal(size=(120, 9)), rng.normal(size=(37, 9))
    train_y = rng.normal(size=(120, 6))
    want = np.empty((37, 6))
    for i, q in enumerate(query_emb):
        cos = [q @ t / (np.linalg.norm(q) * np.linalg.norm(t)) for t in train_emb]
        want[i] = train_y[np.argsort(cos)[::-1][:10]].mean(axis=0)
    np.testing.assert_allclose(knn_expression(train_emb, train_y, query_emb, k=10), want)
    np.testing.assert_allclose(knn_expression(train_emb, train_y, query_emb, k=10, chunk=8), want)
    # k above the training set size averages everything, to the same bits for every query: a
    # constant prediction, which a per-gene PCC scores 0, not the correlation of rounding noise.
    got = knn_expression(train_emb, train_y, query_emb, k=500)
    np.testing.assert_allclose(got, np.tile(train_y.mean(0), (37, 1)))
    assert (got == got[0]).all()
    from sigmma_jax.evaluation import expression

    assert expression.scores(got, rng.normal(size=got.shape))["pcc_gene_mean"] == 0.0
