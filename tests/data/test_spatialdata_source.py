"""The spatialdata source: a SpatialData store gives the same slide, and the same shards, as the
project's own readers of the same data (generic, Xenium through spatialdata-io, Visium through
spatialdata-io); CosMx and MERSCOPE layouts land where their transformations put them; bad stores
are named in one line."""

import warnings

import numpy as np
import pytest
from support.configs import preprocessing_only, tiny_config, tiny_st_align_config
from support.slides import write_tiff
from support.spatialdata_stores import (
    cosmx_store,
    he_pixels,
    merscope_store,
    store_from_generic,
)
from support.visium import visium_spots, write_spaceranger
from support.xenium import rotation_affine, write_xenium_bundle, xenium_cell_ids

from sigmma_jax import families
from sigmma_jax.data import readers, records, shards, sources, spatialdata_source, synthetic, xenium
from sigmma_jax.data.loader import ShardSource
from sigmma_jax.train import loop

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
sio = pytest.importorskip("spatialdata_io")  # in the test extra: skipped only outside it

PX = 0.5  # µm per H&E pixel: exact in binary, so µm <-> px round trips are exact


def _raw_records(config, manifest) -> list[bytes]:
    return [
        src[i]
        for split in ("train", "test")
        for src in [ShardSource(config.data.shard_dir, manifest, split)]
        for i in range(len(src))
    ]


def _assert_same_records(a: list[bytes], b: list[bytes], decode=records.decode, atol=0.0):
    assert len(a) == len(b) > 0
    for ra, rb in zip(a, b):
        da, db = decode(ra), decode(rb)
        assert da.keys() == db.keys() and da["meta"] == db["meta"]
        for k in da:
            if k == "meta":
                continue
            x, y = np.asarray(da[k]), np.asarray(db[k])
            if x.dtype.kind == "f" and atol:
                np.testing.assert_allclose(x, y, rtol=0, atol=atol, err_msg=k)
            else:
                np.testing.assert_array_equal(x, y, err_msg=k)


@pytest.fixture(scope="module")
def generic_slide(tmp_path_factory):
    """The tiny synthetic slide at 0.5 µm/px in the generic format (one-level TIFF) and as a store
    named like the cells file, so that the slides share a name: (root, cells, wsi, store)."""
    root = tmp_path_factory.mktemp("sd_generic")
    out = synthetic.write_synthetic_slide(
        root / "slide", seed=0, size_um=1024.0, pixel_size_um=PX, n_genes=40, cell_density=1.0
    )
    wsi = write_tiff(root / "he.ome.tif", he_pixels(out.wsi), PX)
    store = store_from_generic(root / "cells.zarr", out.cells, wsi, PX)
    return root, out.cells, wsi, store


def _store_config(store, shard_dir):
    c = tiny_config(shard_dir)
    c.data.source = "spatialdata"
    c.data.spatialdata.store = str(store)
    return c


def test_a_store_gives_the_generic_sources_slide_and_shards(generic_slide):
    root, cells, wsi, store = generic_slide
    g = readers.read_generic(cells, wsi, name="cells")
    s = spatialdata_source.read_spatialdata(store)
    assert s.name == g.name == "cells" and s.wsi_path == store / "images" / "he"
    assert s.pixel_size_um == PX and s.image_shape == g.image_shape
    assert list(s.cell_ids) == list(g.cell_ids) and list(s.genes) == list(g.genes)
    np.testing.assert_allclose(s.xy, g.xy, rtol=0, atol=1e-9)  # through Scale and Translation
    assert (s.counts != g.counts).nnz == 0
    cg = preprocessing_only(tiny_config(root / "shards_generic"))
    cg.data.update(source="generic", cells=str(cells), wsi=str(wsi))
    cs = preprocessing_only(_store_config(store, root / "shards_store"))
    mg, ms = shards.preprocess(cg, root), shards.preprocess(cs, root)
    assert mg["tiles"] == ms["tiles"] and mg["genes"] == ms["genes"]
    assert _raw_records(cg, mg) == _raw_records(cs, ms)  # the same bytes


def test_counts_in_a_layer_are_the_raw_ones(generic_slide, tmp_path):
    _, cells, wsi, _ = generic_slide
    store = store_from_generic(tmp_path / "cells.zarr", cells, wsi, PX, counts_layer=True)
    s = spatialdata_source.read_spatialdata(store)
    assert (s.counts != readers.read_generic(cells, wsi).counts).nnz == 0


def test_trains_through_the_spatialdata_source(generic_slide, tmp_path):
    _, _, _, store = generic_slide
    c = _store_config(store, tmp_path / "shards")
    c.train.steps = 4
    result = loop.train_and_evaluate(c, tmp_path / "run")
    assert np.isfinite(result["trained"]["probe"]["pcc_tile_mean"])
    assert result["trained"]["retrieval"]
    assert len(sources.load_obs(c, tmp_path)[0]) == len(
        spatialdata_source.read_spatialdata(store).xy
    )


# ----------------------------------------------------------------------------- Xenium, Visium


def test_xenium_through_spatialdata_io_gives_the_xenium_readers_records(tmp_path):
    """spatialdata-io's Xenium reader and its aligned H&E (a rotation, a scale and a shift from the
    cells' µm) against the project's reader of the same bundle: the same cells, the same records."""
    rng = np.random.default_rng(3)
    side, n = 1024, 900
    xy = rng.uniform(5, side - 5, (n, 2))
    counts = rng.poisson(3.0, (n, 14))
    genes = [f"G{i}" for i in range(12)] + ["BLANK_0001", "NegControlProbe_7"]
    image = np.empty((side, side, 3), np.uint8)
    image[:] = (220, 140, 180)
    image[::7] = (120, 60, 140)  # stripes: tiles are not all one colour
    bundle, he, alignment = write_xenium_bundle(
        tmp_path / "x",
        xy,
        counts,
        genes,
        xenium_cell_ids(n),
        (side, side),
        PX,
        rotation_affine(PX),
        he_image=image,
        as_xoa=True,
    )
    sdata = sio.xenium(
        bundle,
        cells_boundaries=False,
        nucleus_boundaries=False,
        cells_as_circles=True,
        cells_labels=False,
        nucleus_labels=False,
        transcripts=False,
        morphology_mip=False,
        morphology_focus=False,
        aligned_images=False,
    )
    sdata["he"] = sio.xenium_aligned_image(he, alignment)
    sdata.write(tmp_path / "xenium.zarr")
    s = spatialdata_source.read_spatialdata(tmp_path / "xenium.zarr", image="he")
    r = xenium.read_xenium(bundle, he, alignment, name="xenium")
    assert s.pixel_size_um == pytest.approx(r.pixel_size_um, rel=1e-9)
    assert list(s.cell_ids) == list(r.cell_ids) and list(s.genes) == list(r.genes)
    np.testing.assert_allclose(s.xy, r.xy, rtol=0, atol=1e-9)
    assert (s.counts != r.counts).nnz == 0
    cr = preprocessing_only(tiny_config(tmp_path / "shards_x"))
    cr.data.update(source="xenium", xenium_dir=str(bundle), wsi=str(he), alignment=str(alignment))
    cs = preprocessing_only(_store_config(tmp_path / "xenium.zarr", tmp_path / "shards_s"))
    cs.data.spatialdata.image = "he"
    slides_r = sources.load_slides(cr, tmp_path)
    slides_r[0].name = "xenium"
    mr = shards.preprocess(cr, tmp_path, slides=slides_r)
    ms = shards.preprocess(cs, tmp_path)
    assert mr["tiles"] == ms["tiles"]
    _assert_same_records(_raw_records(cr, mr), _raw_records(cs, ms), atol=1e-4)


def test_visium_through_spatialdata_io_gives_the_space_ranger_readers_spots(tmp_path):
    spots = visium_spots()
    sr = write_spaceranger(tmp_path / "S1", spots)
    sdata = sio.visium(sr.outs, dataset_id="S1", fullres_image_file=sr.image)
    sdata.write(tmp_path / "S1.zarr")
    c = preprocessing_only(tiny_st_align_config(tmp_path / "shards_sd"))
    c.data.update(source="spatialdata", labels="")
    c.data.spatialdata.update(store=str(tmp_path / "S1.zarr"), image="S1_full_image")
    c.data.spots.n_hvg = 0
    c.data.split.by = "space"
    s = sources.load_slides(c, tmp_path)[0]
    r = sources.load_slides(_spaceranger_config(c, sr, tmp_path / "shards_sr"), tmp_path)[0]
    assert s.pixel_size_um == r.pixel_size_um and s.spot_diameter_um == r.spot_diameter_um == 55.0
    assert s.report["pixel_size_from"] == "array pitch (100 µm)"
    assert list(s.cell_ids) == list(r.cell_ids) and list(s.genes) == list(r.genes)
    np.testing.assert_array_equal(s.xy, r.xy)
    assert (s.counts != r.counts).nnz == 0
    s.name = r.name
    cr = _spaceranger_config(c, sr, tmp_path / "shards_sr")
    family = families.get(c)
    ms = family.preprocess(c, tmp_path, slides=[s])
    mr = family.preprocess(cr, tmp_path, slides=[r])
    _assert_same_records(_raw_records(c, ms), _raw_records(cr, mr), decode=records.decode_spot)


def _spaceranger_config(c, sr, shard_dir):
    cr = type(c)(c.to_dict())
    cr.data.update(source="spaceranger", spaceranger_dir=str(sr.outs), wsi=str(sr.image))
    cr.data.shard_dir = str(shard_dir)
    return cr


# ----------------------------------------------------------------------------- CosMx, MERSCOPE


def _he(shape=(900, 1000)):
    image = np.empty((*shape, 3), np.uint8)
    image[:] = (220, 140, 180)
    return image


def test_cosmx_labels_land_where_the_fov_offsets_put_them(tmp_path):
    """Two fields of view of labels (one element each, 0.12 µm px) under an H&E at 0.5 µm/px
    registered by an affine: centroids of the labels, in H&E px; the pixel size from um_per_unit."""
    rng = np.random.default_rng(0)
    fovs = [((0, 0), rng.uniform(20, 236, (6, 2))), ((256, 64), rng.uniform(20, 236, (5, 2)))]
    scale = 0.5 / 0.12028  # global (FOV) px per H&E px
    he_to_global = np.array([[scale, 0, -40.0], [0, scale, -25.0], [0, 0, 1]])
    counts = rng.poisson(4, (11, 5))
    store, true_he, ids = cosmx_store(
        tmp_path / "cosmx.zarr", _he(), he_to_global, fovs, counts, [f"G{i}" for i in range(5)]
    )
    s = spatialdata_source.read_spatialdata(store, um_per_unit=0.12028)
    assert s.pixel_size_um == pytest.approx(0.5, rel=1e-9)
    order = {k: i for i, k in enumerate(s.cell_ids)}
    at = [order[i] for i in ids]
    np.testing.assert_allclose(s.xy[at], true_he, atol=0.5 / scale + 1e-6)
    np.testing.assert_array_equal(s.counts.toarray()[at], counts)
    # ... or at the table's own global centroids (obsm['global']), through the image's transform
    g = spatialdata_source.read_spatialdata(store, centroids="global", um_per_unit=0.12028)
    np.testing.assert_allclose(g.xy[at], true_he, atol=1e-9)
    assert g.pixel_size_um == pytest.approx(0.5, rel=1e-9)
    with pytest.raises(readers.InputError, match=r"no obsm\['centre'\]"):
        spatialdata_source.read_spatialdata(store, centroids="centre")


def test_merscope_polygons_land_through_micron_to_mosaic(tmp_path):
    rng = np.random.default_rng(1)
    micron_to_mosaic = np.array([[9.259, 0, 120.0], [0, 9.259, -300.0], [0, 0, 1]])
    he_to_mosaic = np.array([[4.6295, 0.02, 90.0], [-0.02, 4.6295, -330.0], [0, 0, 1]])
    xy_um = rng.uniform(20, 380, (30, 2))
    counts = rng.poisson(4, (30, 5))
    store, true_he = merscope_store(
        tmp_path / "merscope.zarr",
        _he(),
        micron_to_mosaic,
        he_to_mosaic,
        xy_um,
        counts,
        [f"G{i}" for i in range(5)],
    )
    s = spatialdata_source.read_spatialdata(store)  # polygons in µm: um_per_unit 1
    np.testing.assert_allclose(s.xy, true_he, atol=1e-6)
    assert s.pixel_size_um == pytest.approx(4.6295 / 9.259, rel=1e-4)
    # The H&E added to a reader's store by `add_image` from a TIFF and the registration's CSV
    import spatialdata as sd

    bare = sd.read_zarr(store)
    del bare["he"]
    tif = write_tiff(tmp_path / "he.tif", _he(), None)
    np.savetxt(tmp_path / "he_to_mosaic.csv", he_to_mosaic, delimiter=",")
    spatialdata_source.add_image(bare, tif, tmp_path / "he_to_mosaic.csv").write(
        tmp_path / "m2.zarr"
    )
    a = spatialdata_source.read_spatialdata(tmp_path / "m2.zarr")
    np.testing.assert_allclose(a.xy, true_he, atol=1e-6)
    np.savetxt(tmp_path / "bad.csv", np.eye(2), delimiter=",")
    with pytest.raises(readers.InputError, match="invertible 3x3"):
        spatialdata_source.add_image(bare, tif, tmp_path / "bad.csv")


# ----------------------------------------------------------------------------- bad stores


def test_bad_stores_are_named_in_one_line(generic_slide, tmp_path):
    import spatialdata as sd
    from spatialdata.transformations import Identity, set_transformation

    _, cells, wsi, store = generic_slide

    def variant(name, edit):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            base = sd.read_zarr(store)  # fresh: edits change the elements in place
            s = sd.SpatialData(
                images=dict(base.images), shapes=dict(base.shapes), tables=dict(base.tables)
            )
            edit(s)
            s.write(tmp_path / name)
        return tmp_path / name

    def expect(path, text, **kw):
        with pytest.raises(readers.InputError, match=text) as e:
            spatialdata_source.read_spatialdata(path, **kw)
        assert "\n" not in str(e.value) and str(path.name) in str(e.value)

    expect(variant("noimage.zarr", lambda s: s.images.pop("he")), "no image element")
    expect(
        variant(
            "elsewhere.zarr",
            lambda s: set_transformation(s["he"], {"other": Identity()}, set_all=True),
        ),
        "share none",
    )

    def fractional(s):
        t = s.tables["table"]
        t.X = t.X * 0.5

    expect(variant("fractional.zarr", fractional), "non-integer")

    def shifted(s):
        set_transformation(
            s["cells"], sd.transformations.Translation([5000.0, 0], ("x", "y")), "global"
        )

    expect(variant("off.zarr", shifted), "outside the")
    expect(tmp_path / "missing.zarr", "not found")
    expect(store, "no image 'hne'", image="hne")
