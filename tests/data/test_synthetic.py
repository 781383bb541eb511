"""Tests for sigmma_jax.synthetic: file formats, determinism, biology, atomic writes."""

import os
import pathlib
import xml.etree.ElementTree as ET

import anndata
import numpy as np
import pytest
import tifffile
import zarr
from scipy import ndimage, sparse, spatial, stats

from sigmma_jax.data import synthetic
from sigmma_jax.data.synthetic import SyntheticSlide, write_synthetic_slide

SEED = 0
SIZE_UM = 512.0
PX = 0.2737
SIDE = round(SIZE_UM / PX)  # 1871 px -> levels 1871, 935


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> SyntheticSlide:
    return write_synthetic_slide(tmp_path_factory.mktemp("s0"), seed=SEED, size_um=SIZE_UM)


@pytest.fixture(scope="module")
def adata(slide) -> anndata.AnnData:
    return anndata.read_h5ad(slide.cells)


@pytest.fixture(scope="module")
def image(slide) -> np.ndarray:
    return tifffile.imread(slide.wsi)


def _od(rgb: np.ndarray) -> np.ndarray:
    """Optical density of the red channel: mostly hematoxylin (eosin barely absorbs red)."""
    return -np.log(np.maximum(rgb[..., 0].astype(float), 1) / 242.0)


def test_wsi_format(slide):
    assert slide.wsi == slide.wsi.parent / "slide.ome.tif" and slide.wsi.exists()
    with tifffile.TiffFile(slide.wsi) as tif:
        assert tif.is_ome and tif.is_bigtiff
        levels = tif.series[0].levels
        assert [lv.shape for lv in levels] == [(SIDE, SIDE, 3), (SIDE // 2, SIDE // 2, 3)]
        page = tif.pages[0]
        assert page.dtype == np.uint8 and (page.tilelength, page.tilewidth) == (256, 256)
        assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        pixels = ET.fromstring(tif.ome_metadata).find(".//{*}Pixels")
        assert float(pixels.get("PhysicalSizeX")) == PX
        assert float(pixels.get("PhysicalSizeY")) == PX
        full = levels[0].asarray()
        z = zarr.open(tif.series[0].aszarr(), mode="r")
        np.testing.assert_array_equal(z["0"][300:700, 1000:1500], full[300:700, 1000:1500])
        # level 1 is a 2x2 mean of level 0
        l1 = levels[1].asarray().astype(float)
        ref = full[: SIDE // 2 * 2, : SIDE // 2 * 2].reshape(SIDE // 2, 2, SIDE // 2, 2, 3)
        assert np.abs(ref.mean((1, 3)) - l1).max() <= 1.0


def test_cells_format(adata):
    n_genes = 120
    assert sparse.issparse(adata.X) and adata.X.format == "csr"
    assert adata.X.dtype == np.int32 and adata.X.min() >= 0
    assert adata.shape[1] == n_genes + len(synthetic.CONTROLS)
    assert adata.obs_names.is_unique and isinstance(adata.obs_names[0], str)
    for col in ("cell_type", "domain"):
        assert adata.obs[col].dtype == "category"
    xy = adata.obsm["spatial"]
    assert xy.dtype == np.float64 and xy.shape == (adata.n_obs, 2)
    assert xy.min() >= 0 and xy.max() < SIDE
    ft = adata.var["feature_type"].astype(str)
    assert (ft == "gene").sum() == n_genes and (ft == "control").sum() == len(synthetic.CONTROLS)
    assert {"EPCAM", "CD3E", "MS4A1", "CD68", "PECAM1", "COL1A1", "CXCL9", "FAP", "VEGFA"} <= set(
        adata.var_names
    )
    assert adata.uns["pixel_size_um"] == PX and int(adata.uns["seed"]) == SEED


def test_types_counts_and_controls(adata):
    types = adata.obs["cell_type"].value_counts()
    assert (types >= 10).sum() >= 5, types
    assert set(adata.obs["domain"].unique()) == {"stroma", "tumour", "immune_aggregate"}
    # ~1 cell per 150-250 µm² of tissue; 85 % of the slide is tissue
    area_per_cell = 0.85 * SIZE_UM**2 / adata.n_obs
    assert 130 < area_per_cell < 260, area_per_cell
    total = np.asarray(adata.X.sum(1)).ravel()
    assert 50 <= np.median(total) <= 200
    assert (adata.X.toarray() == 0).mean() > 0.4  # sparse-ish like Xenium
    ctrl = (adata.var["feature_type"] == "control").to_numpy()
    ctrl_mean = adata.X[:, ctrl].mean()
    gene_mean = adata.X[:, ~ctrl].mean()
    assert ctrl_mean < 0.1 and ctrl_mean < gene_mean / 10
    # markers follow the type: EPCAM in tumour cells, CD3E in T cells
    X = adata.X.toarray()
    t = adata.obs["cell_type"].to_numpy()
    for gene, typ in [
        ("EPCAM", "tumour"),
        ("CD3E", "T_cell"),
        ("MS4A1", "B_cell"),
        ("COL1A1", "fibroblast"),
    ]:
        g = adata.var_names.get_loc(gene)
        assert X[t == typ, g].mean() > 5 * X[t != typ, g].mean()


def test_same_seed_identical_other_seed_differs(slide, adata, image, tmp_path):
    again = write_synthetic_slide(tmp_path / "again", seed=0, size_um=SIZE_UM)
    a2 = anndata.read_h5ad(again.cells)
    assert (adata.X != a2.X).nnz == 0
    np.testing.assert_array_equal(adata.obsm["spatial"], a2.obsm["spatial"])
    np.testing.assert_array_equal(image, tifffile.imread(again.wsi))
    other = write_synthetic_slide(tmp_path / "other", seed=1, size_um=SIZE_UM)
    a3 = anndata.read_h5ad(other.cells)
    assert a3.n_obs != adata.n_obs or not np.array_equal(a3.obsm["spatial"], adata.obsm["spatial"])
    assert np.abs(tifffile.imread(other.wsi).astype(int) - image).mean() > 10


def test_background_is_empty_glass(adata, image):
    grid = np.asarray(adata.uns["domain_grid"])
    step = float(adata.uns["domain_grid_step_um"])
    assert list(adata.uns["domain_categories"])[0] == "background"
    assert 0.1 < (grid == 0).mean() < 0.2
    # Grid nodes two steps deep in background: every point within one grid step is background
    # (no cell centroid there) and no cell's cytoplasm reaches the node (cells are < 16 µm wide).
    deep = ndimage.binary_erosion(grid == 0, np.ones((3, 3)), iterations=2, border_value=1)
    yx_um = np.argwhere(deep) * step
    yx_um = yx_um[(yx_um < SIDE * PX).all(1)]
    assert len(yx_um) > 20
    cells_um = adata.obsm["spatial"][:, ::-1] * PX
    near = spatial.cKDTree(cells_um).query_ball_point(yx_um, 0.99 * step, return_length=True)
    assert near.sum() == 0
    rgb = image[(yx_um[:, 0] / PX).astype(int), (yx_um[:, 1] / PX).astype(int)].astype(int)
    assert rgb.min() > 225 and (rgb.max(1) - rgb.min(1)).max() < 20  # white, unstained
    # and tissue is not: the typical tissue pixel is clearly stained
    tissue_px = image[(cells_um[:, 0] / PX).astype(int), (cells_um[:, 1] / PX).astype(int)]
    assert np.median(tissue_px[:, 1]) < 190


def test_morphology_partly_informative(adata, image):
    xy = adata.obsm["spatial"]
    t = adata.obs["cell_type"].to_numpy()
    od = _od(image)
    r_px = 6.0 / PX
    yy, xx = np.mgrid[-int(r_px) : int(r_px) + 1, -int(r_px) : int(r_px) + 1]
    disc = yy**2 + xx**2 <= r_px**2
    centre = yy**2 + xx**2 <= (1.5 / PX) ** 2
    ok = ((xy >= r_px + 1) & (xy < SIDE - r_px - 1)).all(1)
    nuc_area, darkness = np.zeros(len(t)), np.zeros(len(t))
    for i in np.flatnonzero(ok):
        x, y = np.round(xy[i]).astype(int)
        win = od[y - int(r_px) : y + int(r_px) + 1, x - int(r_px) : x + int(r_px) + 1]
        nuc_area[i] = (win[disc] > 0.2).sum() * PX**2  # µm² of hematoxylin-dense pixels
        darkness[i] = win[centre].mean()
    tum, lym = ok & (t == "tumour"), ok & np.isin(t, ["T_cell", "B_cell"])
    # tumour nuclei: bigger, paler (vesicular) than lymphocytes, on average ...
    assert nuc_area[tum].mean() > 1.3 * nuc_area[lym].mean()
    assert darkness[lym].mean() > darkness[tum].mean()

    def auc(a, b):
        return stats.mannwhitneyu(a, b).statistic / (len(a) * len(b))

    # ... but not perfectly separable, and T vs B cells are nearly indistinguishable.
    assert 0.6 < auc(nuc_area[tum], nuc_area[lym]) < 0.99, auc(nuc_area[tum], nuc_area[lym])
    assert 0.6 < auc(darkness[lym], darkness[tum]) < 0.99, auc(darkness[lym], darkness[tum])
    tc, bc = ok & (t == "T_cell"), ok & (t == "B_cell")
    assert 0.25 < auc(darkness[tc], darkness[bc]) < 0.75, auc(darkness[tc], darkness[bc])


def test_neighbourhood_programmes(adata):
    xy = adata.obsm["spatial"] * PX
    t = adata.obs["cell_type"].to_numpy()
    X = adata.X.toarray().astype(float)
    X /= X.sum(1, keepdims=True)

    def expr(genes):
        return X[:, [adata.var_names.get_loc(g) for g in genes]].sum(1)

    n_t = spatial.cKDTree(xy[t == "T_cell"]).query_ball_point(xy, 80.0, return_length=True)
    tum = t == "tumour"
    rho = stats.spearmanr(expr(["CXCL9", "CXCL10", "STAT1", "GBP1"])[tum], n_t[tum])[0]
    assert rho > 0.2, rho
    n_tum = spatial.cKDTree(xy[tum]).query_ball_point(xy, 60.0, return_length=True)
    fib = t == "fibroblast"
    rho = stats.spearmanr(expr(["FAP", "POSTN", "ACTA2"])[fib], n_tum[fib])[0]
    assert rho > 0.3, rho
    # hypoxia rises with the depth inside a tumour nest (domain-level gradient)
    grid = np.asarray(adata.uns["domain_grid"])
    step = float(adata.uns["domain_grid_step_um"])
    depth = ndimage.distance_transform_edt(grid == 2) * step
    iy, ix = np.round(xy[:, 1] / step).astype(int), np.round(xy[:, 0] / step).astype(int)
    rho = stats.spearmanr(expr(["VEGFA", "CA9", "SLC2A1"])[tum], depth[iy, ix][tum])[0]
    assert rho > 0.2, rho


def test_rerun_skips_and_rejects_other_params(slide):
    before = (slide.wsi.stat().st_mtime_ns, slide.cells.stat().st_mtime_ns)
    again = write_synthetic_slide(slide.wsi.parent, seed=0, size_um=SIZE_UM)
    assert again == slide
    assert (slide.wsi.stat().st_mtime_ns, slide.cells.stat().st_mtime_ns) == before
    with pytest.raises(ValueError):
        write_synthetic_slide(slide.wsi.parent, seed=1, size_um=SIZE_UM)


def test_crash_leaves_no_final_file(tmp_path, monkeypatch, image):
    calls = []
    real = synthetic._render_strip

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic, "_render_strip", failing)
    with pytest.raises(RuntimeError, match="simulated"):
        write_synthetic_slide(tmp_path, seed=0, size_um=SIZE_UM)
    assert not (tmp_path / "slide.ome.tif").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.h5ad"]  # no temp left over

    def bad_cells(path, *args, **kwargs):
        pathlib.Path(path).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(synthetic, "_write_cells", bad_cells)
    with pytest.raises(OSError):
        write_synthetic_slide(tmp_path / "b", seed=0, size_um=SIZE_UM)
    assert os.listdir(tmp_path / "b") == []

    # the rerun finishes the slide, identical to an uninterrupted run
    monkeypatch.undo()
    done = write_synthetic_slide(tmp_path, seed=0, size_um=SIZE_UM)
    np.testing.assert_array_equal(tifffile.imread(done.wsi), image)


def test_small_slide_has_a_single_level(tmp_path):
    write_synthetic_slide(tmp_path, seed=3, size_um=200)
    with tifffile.TiffFile(tmp_path / "slide.ome.tif") as tif:
        assert len(tif.series[0].levels) == 1  # 731 px < 1024: no sub-resolutions
    assert anndata.read_h5ad(tmp_path / "cells.h5ad").n_obs > 50
