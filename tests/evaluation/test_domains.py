import json

import matplotlib.image
import ml_collections
import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from sigmma_jax.evaluation import domains

LAYERS = ["L1", "L2", "L3", "L4", "L5", "L6", "WM"]


def _grid(rows, cols, pitch=100.0):
    # Visium-like: rows along x, every other row shifted by half a pitch.
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    x = c * pitch + (r % 2) * pitch / 2
    y = r * pitch * np.sqrt(3) / 2
    return np.stack([x.ravel(), y.ravel()], 1).astype(np.float64)


def _slide(rows, cols, first_layer, n_layers, unannotated=0.1, rng=None):
    # Layers are horizontal bands; a fraction of spots is unannotated (-1).
    xy = _grid(rows, cols)
    band = np.minimum((xy[:, 1] / xy[:, 1].max() * n_layers).astype(int), n_layers - 1)
    label = first_layer + band
    label[rng.random(len(label)) < unannotated] = -1
    return xy, label


def _embeddings(seed=0, extra_slides=False):
    """Slide "a": 5 layers (L3..WM, as 151669-151672), slide "b": 7; optionally "empty" (no
    annotated spot) and "single" (one layer). Embeddings: one-hot layers + small noise, pure noise;
    unannotated spots sit far from every layer, so clustering them would cost ARI."""
    rng = np.random.default_rng(seed)
    parts = [_slide(18, 20, 2, 5, rng=rng), _slide(20, 22, 0, 7, rng=rng)]
    names = ["a", "b"]
    if extra_slides:
        xy, label = _slide(6, 8, 0, 3, rng=rng)
        parts.append((xy, np.full_like(label, -1)))
        xy, label = _slide(6, 8, 0, 3, rng=rng)
        parts.append((xy, np.where(label >= 0, 4, -1)))
        names += ["empty", "single"]
    xy = np.concatenate([p[0] for p in parts])
    label = np.concatenate([p[1] for p in parts])
    slide = np.concatenate([np.full(len(p[1]), i) for i, p in enumerate(parts)])
    n, d = len(label), 12
    onehot = np.zeros((n, d))
    onehot[label >= 0, label[label >= 0]] = 1.0
    onehot += 0.05 * rng.normal(size=(n, d))
    onehot[label < 0] = 20.0 + rng.normal(size=((label < 0).sum(), d))
    emb = {"onehot": onehot, "noise": rng.normal(size=(n, d))}
    return {
        "test": {
            "emb": emb,
            "slide": slide,
            "label": label,
            "xy": xy,
            "targets": np.zeros((n, 3)),
        },
        "slide_names": names,
        "label_names": LAYERS,
    }


def _config(**kw):
    return ml_collections.ConfigDict({"eval": dict(domains.DEFAULTS, **kw)})


@pytest.fixture(scope="module")
def scored():
    emb = _embeddings()
    return emb, domains.evaluate(emb, _config())


def test_k_is_each_slides_annotated_layer_count_and_unannotated_spots_are_left_out(scored):
    emb, result = scored
    test = emb["test"]
    assert result["slides"]["a"]["k"] == 5 and result["slides"]["b"]["k"] == 7
    assert result["slides"]["a"]["layers"] == LAYERS[2:]
    for i, name in enumerate(("a", "b")):
        rows = np.array(result["clusters"]["rows"][name])
        want = np.flatnonzero((test["slide"] == i) & (test["label"] >= 0))
        np.testing.assert_array_equal(rows, want)
        assert result["slides"][name]["n_annotated"] == len(want)
        assert result["embeddings"]["onehot"]["per_slide"][name]["n_spots"] == len(want)
        for method in ("kmeans", "gmm"):
            clusters = result["clusters"]["labels"]["onehot"][name][method]
            assert len(clusters) == len(want)
            assert len(set(clusters)) == result["slides"][name]["k"]


def test_one_hot_layers_give_ari_one_and_noise_ari_zero(scored):
    _, result = scored
    for method in ("kmeans", "gmm"):
        good = result["embeddings"]["onehot"]["overall"][method]
        # Were the far-away unannotated spots clustered, they would take a cluster of their own.
        assert good["ari_mean"] > 0.99 and good["nmi_mean"] > 0.99
        assert good["n_slides"] == 2
        noise = result["embeddings"]["noise"]["overall"][method]
        assert abs(noise["ari_mean"]) < 0.05
        for s in ("a", "b"):
            r = result["embeddings"]["noise"]["per_slide"][s][method]
            assert len(r["ari"]) == 5 and all(abs(a) < 0.05 for a in r["ari"])


def test_ari_and_nmi_are_sklearns_on_the_returned_clusters(scored):
    emb, result = scored
    label = emb["test"]["label"]
    for name in ("onehot", "noise"):
        for s in ("a", "b"):
            truth = label[result["clusters"]["rows"][s]]
            for method in ("kmeans", "gmm"):
                clusters = result["clusters"]["labels"][name][s][method]
                r = result["embeddings"][name]["per_slide"][s][method]
                assert r["ari"][0] == pytest.approx(adjusted_rand_score(truth, clusters), abs=1e-12)
                assert r["nmi"][0] == pytest.approx(
                    normalized_mutual_info_score(truth, clusters), abs=1e-12
                )


def test_summaries_are_mean_and_sd_over_seeds_then_over_slides(scored):
    _, result = scored
    res = result["embeddings"]["noise"]
    for method in ("kmeans", "gmm"):
        per = [res["per_slide"][s][method] for s in ("a", "b")]
        for r in per:
            assert r["ari_mean"] == pytest.approx(np.mean(r["ari"]))
            assert r["ari_sd"] == pytest.approx(np.std(r["ari"]))
        o = res["overall"][method]
        assert o["ari_mean"] == pytest.approx(np.mean([r["ari_mean"] for r in per]))
        assert o["ari_sd_slides"] == pytest.approx(np.std([r["ari_mean"] for r in per]))
        assert o["ari_sd_seeds"] == pytest.approx(np.mean([r["ari_sd"] for r in per]))
        # Different seeds give different clusterings of noise: the seeds are used.
        assert max(r["ari_sd"] for r in per) > 0


def test_deterministic_and_json(scored):
    emb, result = scored
    again = domains.evaluate(emb, _config())
    assert again == result
    assert json.loads(json.dumps(result, allow_nan=False)) == json.loads(json.dumps(again))


def test_settings_are_read_from_config():
    emb = _embeddings()
    result = domains.evaluate(
        emb,
        _config(
            domain_methods=("gmm",), domain_seeds=2, domain_pca=3, domain_embeddings=("noise",)
        ),
    )
    assert result["methods"] == ["gmm"] and result["seeds"] == 2
    assert list(result["embeddings"]) == ["noise"]
    r = result["embeddings"]["noise"]["per_slide"]["a"]
    assert r["n_components"] == 3 and len(r["gmm"]["ari"]) == 2 and "kmeans" not in r
    with pytest.raises(ValueError, match="domain_methods"):
        domains.evaluate(emb, _config(domain_methods=("leiden",)))


def test_skipped_cases_are_reported_with_the_reason():
    emb = _embeddings(extra_slides=True)
    test = emb["test"]
    n = len(test["label"])
    b = np.flatnonzero((test["slide"] == 1) & (test["label"] >= 0))
    nan = test["emb"]["noise"].copy()
    nan[b[3:]] = np.nan  # 3 finite annotated spots left on "b", k = 7
    test["emb"]["nan"] = nan
    test["emb"]["constant"] = np.ones((n, 4))
    result = domains.evaluate(
        emb, _config(domain_embeddings=("noise", "nan", "constant", "gone"), domain_seeds=1)
    )
    assert result["slides"]["empty"]["skipped"] == "no annotated spots"
    assert "single annotated layer" in result["slides"]["single"]["skipped"]
    assert "empty" not in result["clusters"]["rows"]
    for name in ("noise", "nan", "constant"):
        per = result["embeddings"][name]["per_slide"]
        assert per["empty"]["skipped"] == "no annotated spots"
        assert "single" in per["single"]["skipped"]
    per = result["embeddings"]["nan"]["per_slide"]
    assert "3 distinct usable spots" in per["b"]["skipped"] and "k = 7" in per["b"]["skipped"]
    assert per["a"]["n_nonfinite"] == 0 and "kmeans" in per["a"]
    assert result["embeddings"]["nan"]["overall"]["kmeans"]["n_slides"] == 1
    assert (
        "1 distinct usable spots" in result["embeddings"]["constant"]["per_slide"]["a"]["skipped"]
    )
    assert result["embeddings"]["constant"]["overall"]["gmm"]["ari_mean"] is None
    assert "no embedding 'gone'" in result["embeddings"]["gone"]["skipped"]
    assert any(s.startswith("nan on b:") for s in result["skipped"])
    assert any(s.startswith("gone:") for s in result["skipped"])
    # A slide skipped for every embedding is listed once.
    assert [s for s in result["skipped"] if "empty" in s] == ["slide empty: no annotated spots"]
    json.dumps(result, allow_nan=False)
    text = "\n".join(domains.result_markdown(result))
    assert "skipped" in text and "gone" in text


def test_nonfinite_spots_are_dropped_and_counted():
    emb = _embeddings()
    test = emb["test"]
    a = np.flatnonzero((test["slide"] == 0) & (test["label"] >= 0))
    test["emb"]["onehot"][a[:4], 0] = np.inf
    result = domains.evaluate(emb, _config(domain_embeddings=("onehot",), domain_seeds=1))
    r = result["embeddings"]["onehot"]["per_slide"]["a"]
    assert r["n_nonfinite"] == 4 and r["n_spots"] == len(a) - 4
    clusters = np.array(result["clusters"]["labels"]["onehot"]["a"]["kmeans"])
    assert (clusters[:4] == -1).all() and (clusters[4:] >= 0).all()
    assert r["kmeans"]["ari"][0] == pytest.approx(
        adjusted_rand_score(test["label"][a[4:]], clusters[4:])
    )


def test_markdown_rows_are_embeddings_and_columns_slides(scored):
    _, result = scored
    lines = domains.result_markdown(result)
    header = next(line for line in lines if line.startswith("| embedding | a (k=5)"))
    assert "b (k=7)" in header and "overall" in header
    rows = [line for line in lines if line.startswith("| onehot |")]
    assert len(rows) == 3  # k-means ARI, GMM ARI, NMI
    o = result["embeddings"]["onehot"]["overall"]["kmeans"]
    assert f"{o['ari_mean']:.4f} ± {o['ari_sd_slides']:.4f}" in rows[0]


def test_match_clusters_recovers_a_permutation():
    layers = np.repeat([3, 5, 6], 10)
    clusters = np.repeat([2, 0, 1], 10)
    clusters[0] = 0  # one stray spot does not change the assignment
    assert domains.match_clusters(clusters, layers) == {2: 3, 0: 5, 1: 6}


def test_draw_writes_a_png_of_the_expected_size(scored, tmp_path):
    emb, result = scored
    path = domains.draw(emb, result, tmp_path / "plots" / "domains.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    width, height = domains.figure_size(result)
    # 2 slides x (layers + 2 embeddings x 2 methods)
    assert (width, height) == (5 * 300, 2 * 300 + 60)
    assert image.shape[:2] == (height, width)
    # The layers' colours are drawn: many distinct colours, not a blank canvas.
    assert len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 10
    assert not list(tmp_path.glob("plots/.*"))  # no temp file left behind


def test_draw_handles_skipped_slides_and_embeddings(tmp_path):
    emb = _embeddings(extra_slides=True)
    emb["test"]["emb"]["constant"] = np.ones((len(emb["test"]["label"]), 4))
    result = domains.evaluate(
        emb, _config(domain_embeddings=("onehot", "constant"), domain_seeds=1)
    )
    path = domains.draw(emb, result, tmp_path / "d.png", methods=("kmeans",))
    image = matplotlib.image.imread(path)
    width, height = domains.figure_size(result, ("kmeans",))
    assert image.shape[:2] == (height, width) == (4 * 300 + 60, 3 * 300)
