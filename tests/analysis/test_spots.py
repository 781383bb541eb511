"""A trained ST-Align run applied to Visium slides in HEST-1k's layout (`python -m sigmma_jax.embed`
on an ST-Align run): spots.h5ad checked against the input slides, the run's own embeddings, its
expression predictor and the domains' definition; a rerun reuses the output."""

import anndata
import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score
from support.configs import tiny_st_align_config

from sigmma_jax import sharding
from sigmma_jax.analysis import spots
from sigmma_jax.data import shards
from sigmma_jax.errors import InputError
from sigmma_jax.evaluation import inference, predictors
from sigmma_jax.families.st_align import FAMILY
from sigmma_jax.train import checkpoints, loop, run_info

SAMPLES = ("SYN01", "SYN03")  # a held-out slice and a training one


def _slides_config(run_config, samples=SAMPLES):
    c = tiny_st_align_config()
    slides = run_config.data.synthetic_visium.dir
    c.data.update(
        source="hest",
        hest_dir=slides,
        sample_ids=samples,
        labels=f"{slides}/barcode_level_layer_map.tsv",  # spatialLIBD's layout
    )
    return c


@pytest.fixture(scope="module")
def embedded(tiny_spot_run, tmp_path_factory):
    run, config, _ = tiny_spot_run
    out = tmp_path_factory.mktemp("spots_out")
    done = spots.embed_spots(run, _slides_config(config), out)
    return run, config, out, done, anndata.read_h5ad(out / spots.SPOTS)


def test_every_spot_of_the_input_is_there_with_its_counts_and_place(embedded):
    run, config, _, done, adata = embedded
    _, manifest = run_info.read(run)
    assert list(adata.var_names) == manifest["genes"]
    assert done["spots"] == adata.n_obs and adata.obs_names.is_unique
    slides = config.data.synthetic_visium.dir
    for sid in SAMPLES:
        inp = anndata.read_h5ad(f"{slides}/st/{sid}.h5ad")
        inp = inp[inp.obs["in_tissue"].astype(bool)]
        mine = adata[adata.obs["slide"] == sid]
        assert sorted(mine.obs["barcode"]) == sorted(inp.obs_names)
        same = inp[list(mine.obs["barcode"])]
        np.testing.assert_array_equal(mine.X.toarray(), same[:, manifest["genes"]].X.toarray())
        np.testing.assert_allclose(mine.obsm["spatial"], same.obsm["spatial"], rtol=1e-6)


def test_embeddings_are_the_runs_own(embedded):
    """The held-out slice's fused and image embeddings equal those the run computed on its own
    shards with the same checkpoint (same crops, same expression, same model)."""
    run, config, _, _, adata = embedded
    run_config, manifest = run_info.read(run)
    mesh = sharding.make_mesh(run_config)
    model, abstract, mngr = loop.saved_model(run_config, run, manifest, mesh)
    params, _ = checkpoints.restore_params(mngr, abstract)
    mngr.close()
    apply = inference.make_embed_fn(FAMILY, model, mesh)
    got = inference.embed_split(
        FAMILY, apply, params, config.data.shard_dir, manifest, "test", run_config, mesh
    )
    items = shards.items(manifest)
    keys = [f"{items[i]['slide']}/{items[i]['barcode']}" for i in got["index"]]
    rows = [k for k in keys if k.startswith("SYN01/")]
    assert len(rows) > 0
    mine = adata[rows]
    sel = np.array([k.startswith("SYN01/") for k in keys])
    for name in ("fused_spot", "image", "niche_gene"):
        np.testing.assert_allclose(
            mine.obsm[spots.OBSM[name]], got["emb"][name][sel], atol=2e-5, err_msg=name
        )


def test_predicted_expression_is_the_runs_probe_on_the_image_embedding(embedded):
    run, _, _, _, adata = embedded
    probe, genes, key = predictors.load_probe(run / predictors.FILE)
    assert list(genes) == list(adata.var_names)
    want = probe.predict(np.asarray(adata.obsm[spots.OBSM[key]]))
    np.testing.assert_allclose(adata.layers["predicted"], want, rtol=1e-5, atol=1e-5)


def test_domains_are_k_means_with_k_the_layers_and_their_ari_is_recorded(embedded):
    _, _, out, done, adata = embedded
    for sid in SAMPLES:
        mine = adata.obs[adata.obs["slide"] == sid]
        assert mine["domain"].nunique() == mine["layer"].nunique() > 1
        ari = adjusted_rand_score(mine["layer"].astype(str), mine["domain"].astype(str))
        assert done["domain_ari"][sid] == pytest.approx(ari)
        assert adata.uns["st_align"]["domain_ari"][sid] == pytest.approx(ari)
        assert (out / "figures" / f"domains_{sid}.png").stat().st_size > 0


def test_a_rerun_reuses_the_output_and_a_missing_sample_is_one_line(embedded, tmp_path):
    run, config, out, done, _ = embedded
    before = (out / spots.SPOTS).stat().st_mtime_ns
    assert spots.embed_spots(run, _slides_config(config), out) == done
    assert (out / spots.SPOTS).stat().st_mtime_ns == before
    with pytest.raises(InputError, match=r"metadata/SYN99\.json: missing"):
        spots.embed_spots(run, _slides_config(config, ("SYN99",)), tmp_path / "o")
    assert not (tmp_path / "o" / spots.DONE).exists()


def test_spots_go_into_a_spatialdata_store_one_system_per_slice(embedded, tmp_path):
    """Each slice gets its own coordinate system holding its H&E and its spots as 55 µm circles;
    one table annotates both slices' circles, with the domains; a figure per slice."""
    pytest.importorskip("spatialdata")
    import spatialdata as sd

    from sigmma_jax.analysis import spatialdata_out

    _, config, out, _, adata = embedded
    c = _slides_config(config)
    done = spatialdata_out.write_store(out, tmp_path / "spots.zarr", c)
    s = sd.read_zarr(tmp_path / "spots.zarr")
    assert set(s.images) == {f"{sid}_he" for sid in SAMPLES}
    assert set(s.shapes) == {f"sigmma_spots_{sid}" for sid in SAMPLES}
    assert set(s.coordinate_systems) == set(SAMPLES)
    t = s.tables["sigmma_cell_table"]
    assert t.n_obs == adata.n_obs and "domain" in t.obs
    assert sorted(np.atleast_1d(t.uns["spatialdata_attrs"]["region"])) == sorted(s.shapes)
    circles = s[f"sigmma_spots_{SAMPLES[0]}"]
    rows = adata[(adata.obs["slide"] == SAMPLES[0]).to_numpy()]
    at = circles.loc[rows.obs["barcode"]]
    np.testing.assert_allclose(np.c_[at.geometry.x, at.geometry.y], rows.obsm["spatial"], atol=1e-6)
    px = config.data.synthetic_visium.pixel_size_um
    assert 2 * at["radius"].iloc[0] == pytest.approx(55.0 / px, rel=0.02)
    assert len(done["figures"]) == len(SAMPLES)
