import json

import ml_collections
import numpy as np
import pytest

from sigmma_jax.evaluation import spot_expression as se

# Eight of Table 3's nine genes (NPY is left out of the panel) and two others.
PANEL = ["FABP7", "CCK", "PVALB", "PCP4", "MOBP", "SNAP25", "IGKC", "HBB", "GAPDH", "ACTB"]
NINE = ["FABP7", "CCK", "PVALB", "PCP4", "MOBP", "SNAP25", "IGKC", "HBB"]


def _grid(rows, cols, pitch=100.0):
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    x = c * pitch + (r % 2) * pitch / 2
    return np.stack([x.ravel(), (r * pitch * np.sqrt(3) / 2).ravel()], 1)


def _embeddings(seed=0, small_slide=False):
    """Slides "s1" (300 spots) and "s2" (360), optionally "tiny" (30). Targets are a linear function
    of the "linear" embedding plus a little noise; "noise" is independent of them."""
    rng = np.random.default_rng(seed)
    grids = [_grid(15, 20), _grid(18, 20)] + ([_grid(5, 6)] if small_slide else [])
    xy = np.concatenate(grids)
    slide = np.concatenate([np.full(len(g), i) for i, g in enumerate(grids)])
    n, d = len(xy), 6
    linear = rng.normal(size=(n, d))
    w = rng.normal(size=(d, len(PANEL))) / np.sqrt(d)
    targets = 2.0 + linear @ w + 0.05 * rng.normal(size=(n, len(PANEL)))
    return {
        "test": {
            "emb": {"linear": linear, "noise": rng.normal(size=(n, d))},
            "slide": slide,
            "label": np.zeros(n, np.int64),
            "xy": xy,
            "targets": targets,
        },
        "slide_names": ["s1", "s2", "tiny"][: len(grids)],
        "label_names": ["L1"],
        "gene_names": PANEL,
    }


def _config(**kw):
    settings = dict(
        se.DEFAULTS,
        gene_embeddings=("linear", "noise"),
        gene_mlp_hidden=(32,),
        gene_seeds=2,
    )
    return ml_collections.ConfigDict({"eval": dict(settings, **kw)})


@pytest.fixture(scope="module")
def scored():
    emb = _embeddings()
    return emb, se.evaluate(emb, _config())


def test_linear_targets_beat_the_floor_and_independent_ones_do_not(scored):
    _, result = scored
    floor = result[se.FLOOR]["summary"]
    lin = result["embeddings"]["linear"]["summary"]
    noise = result["embeddings"]["noise"]["summary"]
    for g in NINE:
        assert lin["mse"][g]["mean"] < 0.1 * floor["mse"][g]["mean"]
        assert lin["pcc"][g]["mean"] > 0.9
    ratio = noise["overall_mse"]["mean"] / floor["overall_mse"]["mean"]
    assert 0.9 < ratio < 1.1
    assert abs(noise["overall_pcc"]["mean"]) < 0.15
    # The whole panel, fitted separately, the same way.
    assert lin["panel"]["mse"]["mean"] < 0.1 * floor["panel"]["mse"]["mean"]
    assert 0.9 < noise["panel"]["mse"]["mean"] / floor["panel"]["mse"]["mean"] < 1.1
    assert result["panel_genes"] == len(PANEL)


def test_genes_found_missing_and_grouped(scored):
    _, result = scored
    assert result["genes"] == NINE
    assert result["missing"] == ["NPY"]
    assert result["groups"] == {
        "layer markers": ["FABP7", "CCK", "PVALB"],
        "laminar": ["PCP4", "MOBP", "SNAP25"],
        "non-laminar": ["IGKC", "HBB"],
    }


def test_group_and_overall_means_are_means_of_their_genes(scored):
    _, result = scored
    for res in [result[se.FLOOR], *result["embeddings"].values()]:
        for r in res["per_slide"].values():
            for g, genes in result["groups"].items():
                assert r["group_mse"][g] == pytest.approx(np.mean([r["mse"][n] for n in genes]))
            assert r["overall_mse"] == pytest.approx(np.mean([r["mse"][n] for n in NINE]))
        sm = res["summary"]
        per = [res["per_slide"][s] for s in ("s1", "s2")]
        for g, genes in result["groups"].items():
            assert sm["group_mse"][g]["mean"] == pytest.approx(
                np.mean([sm["mse"][n]["mean"] for n in genes])
            )
            assert sm["group_mse"][g]["sd"] == pytest.approx(
                np.std([r["group_mse"][g] for r in per])
            )
        assert sm["overall_mse"]["mean"] == pytest.approx(
            np.mean([sm["mse"][n]["mean"] for n in NINE])
        )
        assert sm["mse"]["CCK"]["sd"] == pytest.approx(np.std([r["mse"]["CCK"] for r in per]))


def test_the_floor_is_the_training_mean_on_each_slides_80_20_splits(scored):
    emb, result = scored
    test = emb["test"]
    y = test["targets"]
    for idx, name in enumerate(("s1", "s2")):
        here = np.flatnonzero(test["slide"] == idx)
        info = result["slides"][name]
        assert info["n_spots"] == len(here)
        assert info["n_train"] == round(0.8 * len(here))
        assert info["n_train"] + info["n_test"] == len(here)
        mse = []
        for i in range(2):
            tr, te = se.split(test["xy"][here], 0.8, (i, idx))
            tr, te = here[tr], here[te]
            mse.append(((y[te] - y[tr].mean(0)) ** 2).mean(0)[: len(NINE)])
        got = result[se.FLOOR]["per_slide"][name]["mse"]
        np.testing.assert_allclose([got[g] for g in NINE], np.mean(mse, 0), rtol=1e-12)


@pytest.mark.parametrize("kind", ["random", "space"])
def test_split_is_80_20_disjoint_and_seeded(kind):
    xy = _grid(15, 20)
    tr, te = se.split(xy, 0.8, 3, kind)
    assert len(tr) == 240 and len(te) == 60
    assert np.array_equal(np.sort(np.concatenate([tr, te])), np.arange(300))
    again = se.split(xy, 0.8, 3, kind)
    assert np.array_equal(tr, again[0]) and np.array_equal(te, again[1])
    assert not np.array_equal(te, se.split(xy, 0.8, 4, kind)[1])
    # "space" holds out a disc: some spot is at least as close to every test spot as to every
    # training spot; a random split has no such centre.
    d = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    disc = (d[:, te].max(1) <= d[:, tr].min(1)).any()
    assert disc == (kind == "space")


def test_space_split_is_used_when_configured():
    emb = _embeddings()
    result = se.evaluate(
        emb, _config(gene_split="space", gene_embeddings=("linear",), gene_panel="none")
    )
    assert result["split"] == "space" and result["panel_genes"] == 0
    lin = result["embeddings"]["linear"]["summary"]
    assert "panel" not in lin
    assert lin["overall_mse"]["mean"] < 0.1 * result[se.FLOOR]["summary"]["overall_mse"]["mean"]
    random = se.evaluate(emb, _config(gene_embeddings=(), gene_panel="none"))
    assert random[se.FLOOR]["per_slide"]["s1"] != result[se.FLOOR]["per_slide"]["s1"]


def test_deterministic_and_json(scored):
    emb, result = scored
    again = se.evaluate(emb, _config())
    assert again == result
    assert json.loads(json.dumps(result, allow_nan=False)) == json.loads(json.dumps(again))


def test_skipped_cases_are_reported_with_the_reason():
    emb = _embeddings(small_slide=True)
    test = emb["test"]
    bad = test["emb"]["noise"].copy()
    bad[np.flatnonzero(test["slide"] == 1)[5]] = np.nan
    test["emb"]["bad"] = bad
    result = se.evaluate(
        emb, _config(gene_embeddings=("bad", "gone"), gene_seeds=1, gene_panel="none")
    )
    assert result["slides"]["tiny"] == {"n_spots": 30, "skipped": "30 < 50 spots"}
    per = result["embeddings"]["bad"]["per_slide"]
    assert per["tiny"]["skipped"] == "30 < 50 spots"
    assert per["s2"]["skipped"] == "1 spots with non-finite embedding values"
    assert "mse" in per["s1"]
    assert result["embeddings"]["bad"]["summary"]["n_slides"] == 1
    assert result[se.FLOOR]["summary"]["n_slides"] == 2
    assert "no embedding 'gone'" in result["embeddings"]["gone"]["skipped"]
    assert result["skipped"] == [
        "slide tiny: 30 < 50 spots",
        "bad on s2: 1 spots with non-finite embedding values",
        f"gone: {result['embeddings']['gone']['skipped']}",
    ]
    json.dumps(result, allow_nan=False)
    text = "\n".join(se.result_markdown(result))
    assert "skipped" in text and "NPY" in text


def test_settings_are_checked():
    emb = _embeddings()
    with pytest.raises(ValueError, match="gene_split"):
        se.evaluate(emb, _config(gene_split="blocks"))
    with pytest.raises(ValueError, match="gene_train_fraction"):
        se.evaluate(emb, _config(gene_train_fraction=1.0))


def test_markdown_tables(scored):
    _, result = scored
    lines = se.result_markdown(result)
    header = next(line for line in lines if line.startswith("| embedding | FABP7"))
    assert "| layer markers | laminar | non-laminar | overall |" in header
    per_slide = next(line for line in lines if line.startswith("| embedding | s1 | s2 | overall"))
    assert per_slide
    floor_rows = [line for line in lines if line.startswith("| train_mean (floor) |")]
    assert len(floor_rows) == 3  # Table 3, per slide, whole panel
    o = result["embeddings"]["linear"]["summary"]["overall_mse"]
    rows = [line for line in lines if line.startswith("| linear |")]
    assert rows[0].endswith(f"{o['mean']:.4f} ± {o['sd']:.4f} |")
