import numpy as np
import pytest
from support.slides import pink_slide, write_cells, write_tiff

from sigmma_jax.data import readers


def test_generic_reader_reads_pixel_size_and_drops_controls(tmp_path):
    wsi, cells, xy, counts, genes = pink_slide(tmp_path)
    s = readers.read_generic(cells, wsi)
    assert s.pixel_size_um == pytest.approx(0.2737)
    assert s.image_shape == (1200, 1200)
    assert list(s.genes) == genes[:-2] and s.dropped_controls == 2
    np.testing.assert_array_equal(s.counts.toarray(), counts[:, :-2])
    np.testing.assert_allclose(s.xy, xy)


def test_pixel_size_from_resolution_tags_and_override(tmp_path):
    img = np.zeros((300, 300, 3), np.uint8)
    path = write_tiff(tmp_path / "plain.tif", img, resolution_cm=40000.0)  # 0.25 µm/px
    with readers.WSI(path) as w:
        assert w.pixel_size_um() == pytest.approx(0.25)
    bare = write_tiff(tmp_path / "bare.tif", img)
    cells = write_cells(tmp_path / "c.h5ad", [[10, 10]], [[1]], ["A"])
    with pytest.raises(readers.InputError, match=r"bare\.tif: no pixel size.*pixel_size_um"):
        readers.read_generic(cells, bare)
    assert readers.read_generic(cells, bare, pixel_size_um=0.5).pixel_size_um == 0.5


def test_region_reads_pad_outside_with_white(tmp_path):
    img = np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    with readers.WSI(write_tiff(tmp_path / "a.tif", img, 0.5)) as w:
        np.testing.assert_array_equal(w.read(10, 60, 20, 90), img[10:60, 20:90])
        r = w.read(-5, 10, 390, 410)
        np.testing.assert_array_equal(r[5:, :10], img[:10, 390:400])
        assert (r[:5] == 255).all() and (r[:, 10:] == 255).all()


@pytest.mark.parametrize(
    "case,pattern",
    [
        ("missing_cells", r"nope\.h5ad: cells file not found"),
        ("missing_wsi", r"nope\.tif: WSI file not found"),
        ("truncated_tiff", r"he\.ome\.tif: truncated or damaged TIFF: its image data runs to byte"),
        ("outside", r"cells\.h5ad: 1 of 3 cells lie outside the 1200x1200 px image"),
        ("negative", r"cells\.h5ad: counts contain negative values"),
        ("nan", r"cells\.h5ad: counts contain NaN"),
        ("duplicate", r"cells\.h5ad: duplicated cell ids, e\.g\. \['a'\]"),
    ],
)
def test_bad_input_names_the_file_and_the_problem(tmp_path, case, pattern):
    wsi, cells, *_ = pink_slide(tmp_path)
    xy, counts, ids = [[10, 10], [20, 20], [30, 30]], np.ones((3, 2)), ["a", "b", "c"]
    if case == "missing_cells":
        cells = tmp_path / "nope.h5ad"
    elif case == "missing_wsi":
        wsi = tmp_path / "nope.tif"
    elif case == "truncated_tiff":
        data = wsi.read_bytes()
        wsi.write_bytes(data[: len(data) // 3])
    elif case == "outside":
        xy[2] = [1250, 5]
    elif case == "negative":
        counts[1, 1] = -1
    elif case == "nan":
        counts[0, 0] = np.nan
    elif case == "duplicate":
        ids = ["a", "a", "c"]
    if case in ("outside", "negative", "nan", "duplicate"):
        write_cells(cells, xy, counts, ["A", "B"], ids)
    with pytest.raises(readers.InputError, match=pattern):
        # (a truncated file loses its OME metadata too: give the pixel size to reach the pixels)
        s = readers.read_generic(cells, wsi, 0.2737 if case == "truncated_tiff" else 0.0)
        with readers.WSI(s.wsi_path) as w:  # a truncated file may only fail when pixels are read
            w.read(0, 1200, 0, 1200)


def _cells(tmp_path, counts, genes, xy=((10, 10), (20, 20), (30, 30))):
    return write_cells(tmp_path / "cells.h5ad", list(xy), np.asarray(counts), genes)


def test_non_integer_counts_are_refused_unless_allowed(tmp_path):
    wsi, *_ = pink_slide(tmp_path)
    logged = np.log1p(np.array([[1.0, 0.0], [2.0, 1.0], [0.0, 3.0]]))  # what log1p data look like
    cells = _cells(tmp_path, logged, ["A", "B"])
    with pytest.raises(readers.InputError) as e:
        readers.read_generic(cells, wsi)
    assert str(e.value) == (
        f"{cells}: X holds non-integer values (e.g. 0.6931); raw counts are required (normalised "
        "or log-transformed data cannot be used as counts); "
        "--config.data.allow_non_integer_counts=True takes them as they are"
    )
    s = readers.read_generic(cells, wsi, allow_non_integer=True)
    np.testing.assert_allclose(s.counts.toarray(), logged, rtol=1e-6)


def test_duplicate_gene_names_are_refused_by_name(tmp_path):
    wsi, *_ = pink_slide(tmp_path)
    cells = _cells(tmp_path, np.ones((3, 4)), ["A", "B", "A", "BLANK_1"])
    with pytest.raises(readers.InputError) as e:
        readers.read_generic(cells, wsi)
    assert str(e.value) == f"{cells}: duplicated gene names, e.g. ['A']"


def test_integer_var_names_take_the_gene_names_from_var(tmp_path):
    import anndata
    import pandas as pd

    wsi, *_ = pink_slide(tmp_path)
    names = ["EPCAM", "BLANK_0001", "NegControlProbe_3", "CD3E"]
    a = anndata.AnnData(
        X=np.arange(12, dtype=np.float32).reshape(3, 4),
        obs=pd.DataFrame(index=["a", "b", "c"]),
        var=pd.DataFrame({"feature_name": names}, index=[str(i) for i in range(4)]),
    )
    a.obsm["spatial"] = np.array([[10.0, 10], [20, 20], [30, 30]])
    a.write_h5ad(tmp_path / "int.h5ad")
    s = readers.read_generic(tmp_path / "int.h5ad", wsi)
    assert list(s.genes) == ["EPCAM", "CD3E"] and s.dropped_controls == 2
    np.testing.assert_array_equal(s.counts.toarray(), a.X[:, [0, 3]])
    assert s.report["gene_names_from"] == "var['feature_name']"
    del a.var["feature_name"]
    a.write_h5ad(tmp_path / "bare.h5ad")
    with pytest.raises(readers.InputError) as e:
        readers.read_generic(tmp_path / "bare.h5ad", wsi)
    assert str(e.value) == (
        f"{tmp_path / 'bare.h5ad'}: var_names are integers (0, 1, 2, ...) and no var column holds "
        "gene names; put the gene names in var_names"
    )


@pytest.mark.parametrize("kind", ["float01", "float255", "uint16_12bit", "uint16_8bit"])
def test_float_and_16_bit_slides_are_read_by_their_range(tmp_path, kind):
    rgb = np.random.default_rng(0).integers(0, 256, (300, 400, 3)).astype(np.uint8)
    rgb[:40] = 255  # glass, as around any tissue
    stored = {
        "float01": rgb.astype(np.float32) / 255,
        "float255": rgb.astype(np.float32),
        "uint16_12bit": ((rgb.astype(np.int64) * 4095 + 127) // 255).astype(np.uint16),
        "uint16_8bit": rgb.astype(np.uint16),
    }[kind]
    with readers.WSI(write_tiff(tmp_path / "x.tif", stored, 0.25)) as w:
        got = w.read(0, 300, 0, 400)
        thumb, scale = w.thumbnail(max_side=200)
    assert np.abs(got.astype(int) - rgb).max() <= 1  # not black: the range is the slide's own
    assert thumb.shape == (150, 200, 3) and scale == (2.0, 2.0)
    np.testing.assert_array_equal(thumb, got[::2, ::2])


@pytest.mark.parametrize(
    "stored,message",
    [
        (np.full((64, 64, 3), 300.0, np.float32), "float pixels range over [300, 300]"),
        (np.full((64, 64, 3), -1.0, np.float32), "float pixels range over [-1, -1]"),
    ],
)
def test_float_slides_out_of_range_are_refused(tmp_path, stored, message):
    with readers.WSI(write_tiff(tmp_path / "x.tif", stored, 0.25)) as w:
        with pytest.raises(readers.InputError) as e:
            w.read(0, 10, 0, 10)
    assert str(e.value) == (
        f"{tmp_path / 'x.tif'}: {message}; expected [0, 1] or [0, 255]: save the H&E as 8-bit RGB"
    )


@pytest.mark.parametrize("given", [0.0, 5.0, 0.01])
def test_pixel_size_outside_what_scanners_produce_is_refused(tmp_path, given):
    img = np.full((300, 300, 3), 200, np.uint8)
    wsi = write_tiff(tmp_path / "he.tif", img, 5.0)  # the file says 5 µm/px
    cells = _cells(tmp_path, np.ones((3, 2)), ["A", "B"])
    with pytest.raises(readers.InputError) as e:
        readers.read_generic(cells, wsi, given)
    assert str(e.value) == (
        f"{wsi}: pixel size {given or 5.0:g} µm/px is outside what H&E scanners produce "
        "(0.08–2.0 µm/px; 40x ≈ 0.25, 20x ≈ 0.5): fix the slide's metadata or pass "
        "--config.data.pixel_size_um=<µm per level-0 pixel>"
    )
    assert readers.read_generic(cells, wsi, 0.5).pixel_size_um == 0.5


def test_negative_pixel_size_and_truncated_tiff_say_what_they_are(tmp_path):
    wsi, cells, *_ = pink_slide(tmp_path)
    with pytest.raises(readers.InputError) as e:
        readers.read_generic(cells, wsi, -1.0)
    assert str(e.value) == f"pixel size -1.0 µm/px: must be > 0 (or 0 to read it from {wsi})"
    wsi.write_bytes(wsi.read_bytes()[:4000])  # the OME metadata is lost with the tail
    with pytest.raises(readers.InputError, match="truncated or damaged TIFF") as e:
        readers.read_generic(cells, wsi)  # not "no pixel size in the metadata"
    assert "pixel size" not in str(e.value)


def test_a_table_of_cells_is_named_as_such(tmp_path):
    wsi, *_ = pink_slide(tmp_path)
    (tmp_path / "cells.csv").write_text("x,y,EPCAM\n1,2,3\n")
    with pytest.raises(readers.InputError) as e:
        readers.read_generic(tmp_path / "cells.csv", wsi)
    assert str(e.value).startswith(
        f"{tmp_path / 'cells.csv'}: a table, not an AnnData .h5ad; the generic format is an "
        "AnnData .h5ad of cells (raw counts in X, centroids in level-0 px of the H&E in "
        "obsm['spatial'])"
    )


@pytest.mark.parametrize("mistake", ["swapped", "um_at_2"])
def test_cells_outside_say_what_would_put_them_inside(tmp_path, mistake):
    img = np.full((300, 900, 3), 200, np.uint8)  # wide: (y, x) columns fall outside
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 290, (50, 2)) * [3, 1]  # inside, x up to 870
    ps = 2.0 if mistake == "um_at_2" else 0.5
    wsi = write_tiff(tmp_path / "he.tif", img, ps)
    given = xy[:, ::-1] if mistake == "swapped" else xy * ps
    cells = write_cells(tmp_path / "cells.h5ad", given, np.ones((50, 2)), ["A", "B"])
    with pytest.raises(readers.InputError) as e:
        readers.read_generic(cells, wsi)
    n = int((~((given[:, 0] < 900) & (given[:, 1] < 300))).sum())
    head = (
        f"{cells}: {n} of 50 cells lie outside the 900x300 px image he.tif; are the coordinates "
        "in level-0 pixels?"
    )
    assert str(e.value) == head + (
        " With x and y exchanged all would lie inside: obsm['spatial'] holds (x, y)."
        if mistake == "swapped"
        else " Divided by the pixel size (2 µm/px) all would lie inside: are they in µm?"
    )
