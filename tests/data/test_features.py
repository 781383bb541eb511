import harmonypy
import numpy as np
import pandas as pd
import pytest
from sklearn.decomposition import PCA
from support.configs import preprocessing_only, tiny_config
from support.slides import pink_slide

from sigmma_jax.data import features, input_pipeline, readers, shards


def _manifest(slides, train, genes):
    return dict(
        genes=genes,
        tiles=[dict(slide=s) for s in slides],
        splits=dict(
            train=list(train), val=[], test=[i for i in range(len(slides)) if i not in train]
        ),
    )


def test_gene_sentence_is_the_tiles_top_genes_by_count():
    genes = ["A", "B.1", "C", "D-AS1", "E", "F", "G"]
    counts = np.array(
        [
            [5, 9, 5, 9, 0, 1, 7],  # B.1 and D-AS1 dropped (OmiCLIP); ties in panel order; E absent
            [0, 0, 0, 0, 0, 0, 0],  # nothing expressed: all padding
            [1, 2, 3, 4, 5, 6, 7],
        ],
        np.float32,
    )
    c = tiny_config()
    c.data.sentence_length = 4
    got = features.gene_sentence(counts, _manifest("xxx", [0], genes), c)

    def reference(row):
        kept = [i for i in range(len(genes)) if row[i] > 0 and not set(".-") & set(genes[i])]
        kept = sorted(kept, key=lambda i: (-row[i], i))[:4]
        return [i + 1 for i in kept] + [0] * (4 - len(kept))

    np.testing.assert_array_equal(got, [reference(r) for r in counts])
    np.testing.assert_array_equal(got[0], [7, 1, 3, 6])  # G, A, C, F
    c.data.sentence_length = 9  # longer than the panel: padded
    assert features.gene_sentence(counts, _manifest("xxx", [0], genes), c).shape == (3, 9)


def test_expression_pcs_fit_on_training_tiles_and_harmony_across_slides():
    rng = np.random.default_rng(0)
    counts = rng.poisson(rng.gamma(2.0, 3.0, (1, 30)), (60, 30)).astype(np.float32)
    counts[30:] *= 3  # a batch effect: the second slide is brighter
    slides = ["S1"] * 30 + ["S2"] * 30
    train = list(range(0, 60, 2))
    c = tiny_config()
    c.data.expression_pcs.update(n=5, target_sum=1e4)
    x = np.log1p(counts.astype(np.float64) / counts.sum(1, keepdims=True) * 1e4)
    pca = PCA(5, svd_solver="full").fit(x[train])
    pcs = pca.transform(x)
    one = features.expression_pcs(counts[:30], _manifest(slides[:30], range(0, 30, 2), []), c)
    pca1 = PCA(5, svd_solver="full").fit(x[:30][::2])
    np.testing.assert_allclose(np.abs(one), np.abs(pca1.transform(x[:30])), rtol=1e-4, atol=1e-5)
    two = features.expression_pcs(counts, _manifest(slides, train, []), c)
    h = harmonypy.run_harmony(
        pcs, pd.DataFrame({"slide": slides}), ["slide"], random_state=0, verbose=False
    )
    want = np.asarray(h.Z_corr)
    want = want if want.shape[0] == 60 else want.T
    np.testing.assert_allclose(two, want, rtol=1e-3, atol=1e-4)
    c.data.expression_pcs.harmony = False
    np.testing.assert_allclose(
        features.expression_pcs(counts, _manifest(slides, train, []), c),
        pcs,
        rtol=1e-4,
        atol=1e-5,
    )


@pytest.fixture
def embedded_slide(tmp_path):
    """A generic slide whose cells file holds per-cell embeddings in obsm['emb']."""
    import anndata

    wsi, cells, xy, counts, genes = pink_slide(tmp_path, side_px=1400, n_cells=700)
    a = anndata.read_h5ad(cells)
    # A cell's embedding is its counts of G0..G5 plus 0.5: checkable against the batch's counts.
    a.obsm["emb"] = (np.asarray(a[:, [f"G{i}" for i in range(6)]].X.todense()) + 0.5).astype(
        np.float32
    )
    a.write_h5ad(cells)
    c = tiny_config(tmp_path / "shards")
    c.data.update(source="generic", cells=str(cells), wsi=str(wsi), cell_embedding_key="emb")
    c.data.split.update(block_tiles=1, test_fraction=0.3)
    return preprocessing_only(c), xy, np.asarray(a.obsm["emb"]), a


def _batch_nodes(config, manifest, split):
    batch = next(input_pipeline.eval_batches(config.data.shard_dir, manifest, split, 64))
    g = batch["graph"]
    return (
        g.nodes["xy"][g.nodes["mask"]],
        g.nodes["counts"][g.nodes["mask"]],
        g.nodes["features"][g.nodes["mask"]],
    )


def test_cell_embeddings_reach_the_batch_as_node_features(embedded_slide, tmp_path):
    c, xy, emb, _ = embedded_slide
    m = shards.preprocess(c, tmp_path)
    c.data.node_features = "embedding"
    run = features.prepare(c, m, c.data.shard_dir, tmp_path)
    assert run["features"]["node"] == "embedding" and run["features"]["node_dim"] == 6
    _, counts, got = _batch_nodes(c, run, "train")
    cols = [m["genes"].index(f"G{i}") for i in range(6)]
    assert len(got) > 100
    np.testing.assert_array_equal(got, counts[:, cols] + 0.5)
    zeros = input_pipeline.zeros_batch(run, 2)
    assert zeros["graph"].nodes["features"].shape == (2 * m["budgets"]["nodes"], 6)


def test_node_pca_is_fitted_on_the_training_cells(embedded_slide, tmp_path):
    c, *_ = embedded_slide
    m = shards.preprocess(c, tmp_path)
    c.data.node_features, c.data.node_pca = "pca", 4
    run = features.prepare(c, m, c.data.shard_dir, tmp_path)
    train_counts = [
        r["counts"]
        for i, r in enumerate(features.read_records(c.data.shard_dir, m))
        if i in set(m["splits"]["train"])
    ]
    x = np.log1p(
        np.concatenate(train_counts)
        / np.concatenate(train_counts).sum(1, keepdims=True)
        * c.model.st.target_sum
    )
    pca = PCA(4, svd_solver="full").fit(x)
    _, counts, got = _batch_nodes(c, run, "test")
    want = pca.transform(
        np.log1p(counts / counts.sum(1, keepdims=True).clip(1) * c.model.st.target_sum)
    )
    np.testing.assert_allclose(np.abs(got), np.abs(want), rtol=1e-3, atol=1e-4)
    # Written once: the same settings and split read the file back; another split makes another.
    path = run["features"]["file"]
    assert features.prepare(c, m, c.data.shard_dir, tmp_path)["features"]["file"] == path
    c.data.split.seed = 1
    other = features.prepare(c, shards.with_split(m, c.data.split), c.data.shard_dir, tmp_path)
    assert other["features"]["file"] != path


def test_missing_cell_embeddings_name_the_file(embedded_slide, tmp_path):
    c, xy, emb, a = embedded_slide
    a[:-3].copy().write_h5ad(tmp_path / "partial.h5ad")
    c.data.cell_embeddings = str(tmp_path / "partial.h5ad")
    with pytest.raises(readers.InputError, match=r"partial.h5ad: 3 of 700 cells have no embedding"):
        shards.preprocess(c, tmp_path)
    c.data.cell_embeddings, c.data.cell_embedding_key = "", "scgpt"
    with pytest.raises(readers.InputError, match=r"cells.h5ad: no obsm\['scgpt'\]"):
        shards.preprocess(c, tmp_path)
    c.data.cell_embedding_key, c.data.node_features = "", "embedding"
    m = shards.preprocess(c, tmp_path)
    with pytest.raises(ValueError, match="hold no cell embeddings"):
        features.prepare(c, m, c.data.shard_dir, tmp_path)
