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
        ("truncated_tiff", r"he\.ome\.tif: cannot"),
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
