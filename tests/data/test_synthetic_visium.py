"""Tests for sigmma_jax.data.synthetic_visium: HEST layout, Visium geometry, determinism, biology
of the nine genes, layers in the pixels, refusal of other arguments; and that the refactor of
synthetic.py it shares code with left the SIGMMA demo bit for bit as it was."""

import hashlib
import json
import re
import xml.etree.ElementTree as ET

import anndata
import numpy as np
import pandas as pd
import pytest
import tifffile
from scipy import sparse, spatial

from sigmma_jax.data import synthetic
from sigmma_jax.data.synthetic_visium import write_synthetic_visium
from sigmma_jax.dlpfc import LAYERS, NINE_GENES

SIZE_UM = 1200.0
PX = 0.725
SIDE = round(SIZE_UM / PX)  # 1655 px -> levels 1655, 827
# Three slices: SYN01, SYN02 from donor1, SYN03 from donor2, who lacks L1/L2.
ARGS = dict(seed=0, n_slices=3, slices_per_donor=2, size_um=SIZE_UM)
IDS = ("SYN01", "SYN02", "SYN03")
GREY = ["L1", "L2", "L3", "L4", "L5", "L6"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return write_synthetic_visium(tmp_path_factory.mktemp("visium"), **ARGS)


@pytest.fixture(scope="module")
def labels(demo) -> pd.DataFrame:
    return pd.read_csv(demo.labels, sep="\t", header=None, names=["barcode", "sample", "layer"])


@pytest.fixture(scope="module")
def spots(demo, labels) -> dict:
    """Per slice: AnnData of the in-tissue spots with its layer in obs."""
    out = {}
    for sid in demo.sample_ids:
        ad = anndata.read_h5ad(demo.hest_dir / "st" / f"{sid}.h5ad")
        t = ad[ad.obs["in_tissue"].to_numpy() == 1].copy()
        lab = labels[labels["sample"] == sid].set_index("barcode")["layer"]
        t.obs["layer"] = lab.reindex(t.obs_names).to_numpy()
        t.obs["n_erythrocytes"] = np.asarray(ad.uns["synthetic_truth"]["n_erythrocytes"])[
            ad.obs["in_tissue"].to_numpy() == 1
        ]
        out[sid] = t
    return out


def _um(ad) -> np.ndarray:
    return ad.obsm["spatial"] * PX


def test_hest_layout(demo):
    assert demo.sample_ids == IDS and demo.labels == demo.hest_dir / "barcode_level_layer_map.tsv"
    patients = []
    for sid in IDS:
        ad = anndata.read_h5ad(demo.hest_dir / "st" / f"{sid}.h5ad")
        assert sparse.issparse(ad.X) and ad.X.format == "csr" and ad.X.dtype == np.int32
        assert ad.X.min() >= 0 and ad.shape[1] == 120 and ad.var_names.is_unique
        nine = [g for genes in NINE_GENES.values() for g in genes]
        assert list(ad.var_names[:9]) == nine and sum(g.startswith("GENE_") for g in ad.var_names)
        assert ad.obs_names.is_unique
        assert all(re.fullmatch(r"[ACGT]{16}-1", b) for b in ad.obs_names)
        for col in ("in_tissue", "array_row", "array_col"):
            assert np.issubdtype(ad.obs[col].dtype, np.integer), col
        assert set(ad.obs["in_tissue"].unique()) == {0, 1}  # glass spots are kept
        xy = ad.obsm["spatial"]
        assert xy.dtype == np.float64 and xy.shape == (ad.n_obs, 2)
        np.testing.assert_array_equal(xy[:, 0], ad.obs["pxl_col_in_fullres"])
        np.testing.assert_array_equal(xy[:, 1], ad.obs["pxl_row_in_fullres"])
        r = 27.5 / PX
        assert xy.min() >= r - 1 and xy.max() <= SIDE - r + 1  # whole discs inside the image
        meta = json.loads((demo.hest_dir / "metadata" / f"{sid}.json").read_text())
        assert meta["pixel_size_um_estimated"] == meta["pixel_size_um_embedded"] == PX
        assert (meta["spot_diameter"], meta["inter_spot_dist"]) == (55.0, 100.0)
        assert meta["st_technology"] == "Visium" and meta["species"] == "Homo sapiens"
        assert meta["dataset_title"] == "synthetic DLPFC"
        assert meta["fullres_px_width"] == meta["fullres_px_height"] == SIDE
        patients.append(meta["patient"])
        with tifffile.TiffFile(demo.hest_dir / "wsis" / f"{sid}.tif") as tif:
            assert tif.is_ome
            levels = tif.series[0].levels
            assert [lv.shape for lv in levels] == [(SIDE, SIDE, 3), (SIDE // 2, SIDE // 2, 3)]
            assert levels[0].dtype == np.uint8
            pixels = ET.fromstring(tif.ome_metadata).find(".//{*}Pixels")
            assert float(pixels.get("PhysicalSizeX")) == PX
            assert pixels.get("PhysicalSizeXUnit") == "µm"
    assert patients[0] == patients[1] != patients[2]  # two slices per donor


def test_hex_grid_geometry(demo):
    placements = []
    for sid in IDS:
        ad = anndata.read_h5ad(demo.hest_dir / "st" / f"{sid}.h5ad")
        r, c = ad.obs["array_row"].to_numpy(), ad.obs["array_col"].to_numpy()
        assert ((c - r) % 2 == 0).all()
        assert r.min() >= 0 and r.max() < 78 and c.min() >= 0 and c.max() < 128
        xy = _um(ad)
        # Nearest neighbours are one pitch away (1 µm jitter per spot), six of them inside.
        dist, _ = spatial.cKDTree(xy).query(xy, 7)
        assert np.abs(dist[:, 1] - 100).max() < 6
        assert np.median(dist[:, 6]) == pytest.approx(100, abs=4)  # the 6th: biased up by jitter
        # Affine fit array -> µm: 50 µm per column, 86.6 per row, a small rotation.
        A = np.stack([c, r, np.ones_like(c)], 1).astype(float)
        coef, *_ = np.linalg.lstsq(A, xy, rcond=None)
        assert np.linalg.norm(coef[0]) == pytest.approx(50.0, rel=1e-3)
        assert np.linalg.norm(coef[1]) == pytest.approx(100 * np.sqrt(3) / 2, rel=1e-3)
        angle = np.degrees(np.arctan2(coef[0, 1], coef[0, 0]))
        assert 0 < abs(angle) < 2.5
        resid = xy - A @ coef
        assert 0.5 < resid.std() < 1.5  # the jitter
        placements.append((round(angle, 3), r.min(), c.min()))
    assert len(set(placements)) == len(IDS)  # the capture area lies differently on each slice


def test_labels_only_in_tissue(demo, labels, spots):
    assert list(labels["sample"].unique()) == list(IDS)
    assert labels["layer"].isin(LAYERS).all()
    assert not labels.duplicated(["barcode", "sample"]).any()
    for sid in IDS:
        ad = anndata.read_h5ad(demo.hest_dir / "st" / f"{sid}.h5ad")
        tissue = set(ad.obs_names[ad.obs["in_tissue"].to_numpy() == 1])
        assert set(labels.loc[labels["sample"] == sid, "barcode"]) == tissue
        assert 80 < len(tissue) < ad.n_obs  # ~85 % of the field is tissue
    text = demo.labels.read_text()
    assert text.count("\t") == 2 * len(labels) and not text.startswith("barcode")


def test_donor_without_l1_l2(spots):
    for sid in ("SYN01", "SYN02"):
        assert set(spots[sid].obs["layer"]) == set(LAYERS)
    assert set(spots["SYN03"].obs["layer"]) == set(LAYERS[2:])  # 5 domains


def test_nine_genes_layer_patterns(spots):
    both = anndata.concat([spots["SYN01"], spots["SYN02"]], index_unique="_")
    X = both.X.toarray().astype(float)
    X = X / X.sum(1, keepdims=True) * 1e3  # per 1000 counts, as CPM would
    lay = both.obs["layer"].to_numpy()

    def mean(gene, layers):
        return X[np.isin(lay, layers), both.var_names.get_loc(gene)].mean()

    per_layer = {g: np.array([mean(g, [k]) for k in LAYERS]) for g in both.var_names[:9]}
    assert mean("MOBP", ["WM"]) > 3 * mean("MOBP", GREY)
    assert mean("MOBP", ["L6"]) > 2 * mean("MOBP", ["L2", "L3", "L4"])
    assert LAYERS[per_layer["PCP4"].argmax()] == "L5"
    assert mean("PCP4", ["L6"]) > mean("PCP4", ["L2", "L3"])
    assert mean("SNAP25", ["WM"]) < 0.4 * mean("SNAP25", GREY)
    assert LAYERS[per_layer["PVALB"].argmax()] == "L4"
    assert mean("CCK", ["L2", "L3", "L6"]) > 2 * mean("CCK", ["L1", "L4", "L5", "WM"])
    assert mean("FABP7", ["L1", "WM"]) > 2 * mean("FABP7", ["L3", "L4", "L5"])
    # HBB: spots over vessels holding blood, anywhere in depth.
    rbc = both.obs["n_erythrocytes"].to_numpy() > 0
    hbb = X[:, both.var_names.get_loc("HBB")]
    assert rbc.sum() >= 3 and hbb[rbc].mean() > 5 * hbb[~rbc].mean()
    # IGKC is a few hotspots: most spots have (almost) none.
    igkc = X[:, both.var_names.get_loc("IGKC")]
    assert np.median(igkc) == 0 and igkc.max() > 20
    # Library size varies per spot; a few spots are damaged (very low counts).
    total = np.asarray(both.X.sum(1)).ravel()
    assert 200 < np.median(total) < 2000 and total.min() < 0.2 * np.median(total)


def test_layers_show_in_the_pixels(demo, spots):
    """Hematoxylin-dense pixels under the spot discs: L2/L4 (dense granular) over L1/WM (sparse)."""
    nuclear = {k: [] for k in LAYERS}
    for sid in ("SYN01", "SYN02"):
        img = tifffile.imread(demo.hest_dir / "wsis" / f"{sid}.tif")
        od = -np.log(np.maximum(img[..., 0].astype(np.float32), 1) / 242.0)  # red: mostly H
        r = int(27.5 / PX)
        yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
        disc = yy**2 + xx**2 <= r * r
        ad = spots[sid]
        for (x, y), layer in zip(np.round(ad.obsm["spatial"]).astype(int), ad.obs["layer"]):
            win = od[y - r : y + r + 1, x - r : x + r + 1]
            nuclear[layer].append((win[disc] > 0.5).mean())
    share = {k: np.mean(v) for k, v in nuclear.items()}
    assert min(share["L2"], share["L4"]) > 1.5 * max(share["L1"], share["WM"]), share


def test_same_args_same_bytes_any_pixel_size_same_tissue(demo, tmp_path):
    again = write_synthetic_visium(tmp_path / "again", **ARGS)
    files = sorted(p.relative_to(demo.hest_dir) for p in demo.hest_dir.rglob("*") if p.is_file())
    assert len(files) == 3 * 3 + 1
    for rel in files:
        assert (demo.hest_dir / rel).read_bytes() == (again.hest_dir / rel).read_bytes(), rel
    # Another pixel size renders the same tissue: same spots (in µm) and the same counts.
    coarse = write_synthetic_visium(
        tmp_path / "coarse", seed=0, n_slices=1, size_um=SIZE_UM, pixel_size_um=1.0
    )
    a = anndata.read_h5ad(demo.hest_dir / "st" / "SYN01.h5ad")
    b = anndata.read_h5ad(coarse.hest_dir / "st" / "SYN01.h5ad")
    assert (a.X != b.X).nnz == 0 and list(a.obs_names) == list(b.obs_names)
    np.testing.assert_allclose(a.obsm["spatial"] * PX, b.obsm["spatial"] * 1.0, rtol=1e-12)
    other = write_synthetic_visium(tmp_path / "other", seed=1, n_slices=1, size_um=SIZE_UM)
    c = anndata.read_h5ad(other.hest_dir / "st" / "SYN01.h5ad")
    assert c.n_obs != a.n_obs or not np.array_equal(c.obsm["spatial"], a.obsm["spatial"])


def test_rerun_resumes_and_refuses_other_args(demo, tmp_path):
    out = tmp_path / "v"
    first = write_synthetic_visium(out, **ARGS)
    wsi = out / "wsis" / "SYN02.tif"
    before = wsi.read_bytes()
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p != wsi}
    wsi.unlink()
    assert write_synthetic_visium(out, **ARGS) == first
    assert wsi.read_bytes() == before  # regenerated identically
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes  # the rest untouched
    assert not [p for p in out.rglob(".*")]  # no temp files left
    for other in (dict(seed=1), dict(n_genes=60), dict(size_um=1000.0), dict(n_slices=4)):
        with pytest.raises(ValueError, match="another out_dir"):
            write_synthetic_visium(out, **{**ARGS, **other})
    with pytest.raises(ValueError):
        write_synthetic_visium(tmp_path / "w", n_genes=5)


# sha256 of the SIGMMA demo, write_synthetic_slide(tmp, size_um=512.0, n_genes=40), computed with
# synthetic.py as it was before the Visium demo's refactor (git 4e93b4e).
SIGMMA_DEMO_SHA256 = {
    "pixels": "5744b62f635ab4d633bf9dbe7c942bb34d29ecb0650cd0d906e1727b0511c427",
    "X_data": "eb1acb7b2d55d495818321d2b34ac7df725372956bdb02c078e7a39cab52994f",
    "X_indices": "3e29324d70673efd2bae10ce57d704c03a63b762a49492a55b16047002b923cb",
    "X_indptr": "0eab5e5cf274fe065f455d76da41035267a2607cb374d47b2c2d65543fa5f25d",
    "obs_cell_type": "4f68c3ede1e3fe55ba30380de214a5f70a623573d22eb6e9a025cd09b5810533",
    "obs_domain": "383c8ca1f5907be034116e22256f10b18884b8bfb4baba010e4b4c4b5385a2e7",
    "obs_names": "2eb4c7719ef54abc8efc260fa269fcbaa5572f8f98b0502813fd578ebfbb7125",
    "obsm_spatial": "c5a9cc179d5f815ac65dcf3a557660550aaab47799c4151317dd7c75a75fd094",
}


def test_sigmma_demo_unchanged_by_the_refactor(tmp_path):
    s = synthetic.write_synthetic_slide(tmp_path, size_um=512.0, n_genes=40)

    def h(a, dtype) -> str:
        return hashlib.sha256(np.ascontiguousarray(np.asarray(a, dtype)).tobytes()).hexdigest()

    with tifffile.TiffFile(s.wsi) as tif:
        img = tif.series[0].levels[0].asarray()
    ad = anndata.read_h5ad(s.cells)
    got = dict(
        pixels=h(img, np.uint8),
        X_data=h(ad.X.data, np.int32),
        X_indices=h(ad.X.indices, np.int64),
        X_indptr=h(ad.X.indptr, np.int64),
        obs_cell_type=h(ad.obs["cell_type"].cat.codes, np.int64),
        obs_domain=h(ad.obs["domain"].cat.codes, np.int64),
        obs_names=hashlib.sha256("\n".join(ad.obs_names).encode()).hexdigest(),
        obsm_spatial=h(ad.obsm["spatial"], np.float64),
    )
    assert got == SIGMMA_DEMO_SHA256
