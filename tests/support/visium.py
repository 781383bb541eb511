"""Tiny 10x Visium samples in the real layouts: a HEST-1k Visium sample (st/, wsis/, metadata/), a
Space Ranger outs/ folder (SR >= 2.0 or SR 1.x) beside its full-resolution H&E, and spatialLIBD's
layer table (barcode_level_layer_map.tsv).

Spots sit on a real Visium array: array_row, array_col with col ≡ row (mod 2), centres at
x = 50 µm · col, y = 100 µm · √3/2 · row, turned and shifted as a registration leaves them, with a
fraction of a pixel of jitter. Counts are raw integers.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp
import tifffile
from PIL import Image

from sigmma_jax.data import tenx

PITCH_UM = 100.0
LAYERS = ("L1", "L2", "L3", "L4", "L5", "L6", "WM")
# DLPFC-like: 151507's hires image is 2000 px of a 13332 px scan; Space Ranger's spot diameter is
# that of a 65 µm spot and measures about 70 µm on these slides: NOT 55 µm in px.
HIRES_SCALEF = 0.15
LOWRES_SCALEF = 0.045
SPOT_DIAMETER_FULLRES_UM = 70.0
GENES = ["MOBP", "PCP4", "SNAP25", "FABP7", "CCK", "PVALB", "IGKC", "HBB", "NPY", "TBCE", "TBCE"]


@dataclasses.dataclass
class Spots:
    barcode: np.ndarray  # (n,) str, sorted as Space Ranger lists them
    array_row: np.ndarray
    array_col: np.ndarray
    xy: np.ndarray  # (n, 2) float64 centres in full-resolution px, (x, y)
    in_tissue: np.ndarray  # (n,) bool
    counts: np.ndarray  # (n, genes) int64
    genes: list[str]
    labels: np.ndarray  # (n,) str layer of in-tissue spots, "" unannotated
    pixel_size_um: float
    image: np.ndarray  # (h, w, 3) uint8 H&E


def visium_spots(
    pixel_size_um: float = 0.725,
    rows: tuple[int, int] = (30, 40),
    cols: tuple[int, int] = (50, 72),
    angle_deg: float = 1.3,
    margin_um: float = 150.0,
    seed: int = 0,
) -> Spots:
    """The spots of the array block `rows` x `cols` on an H&E just large enough to hold them."""
    rng = np.random.default_rng(seed)
    r, c = np.mgrid[rows[0] : rows[1], cols[0] : cols[1]]
    ok = (r % 2) == (c % 2)
    r, c = r[ok], c[ok]
    um = np.c_[c * PITCH_UM / 2, r * PITCH_UM * np.sqrt(3) / 2]
    t = np.deg2rad(angle_deg)
    um = (um - um.mean(0)) @ np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])
    um -= um.min(0) - margin_um
    xy = um / pixel_size_um + rng.normal(0, 0.4, um.shape)
    w, h = (np.ceil(xy.max(0) + margin_um / pixel_size_um)).astype(int)
    letters = np.array(list("ACGT"))
    barcode = np.unique(["".join(rng.choice(letters, 16)) + "-1" for _ in range(len(r) + 10)])
    barcode = rng.permutation(barcode)[: len(r)]
    order = np.argsort(barcode)  # Space Ranger lists spots by barcode
    barcode, r, c, xy = barcode[order], r[order], c[order], xy[order]
    centre, radius = np.array([w, h]) / 2, np.array([w, h]) * 0.36
    in_tissue = (((xy - centre) / radius) ** 2).sum(1) <= 1
    in_tissue[0] = True  # the first line of the positions file: the spot header=1 would lose
    depth = (xy[:, 1] - xy[:, 1].min()) / np.ptp(xy[:, 1])
    labels = np.array(LAYERS)[np.minimum((depth * len(LAYERS)).astype(int), len(LAYERS) - 1)]
    labels = np.where(in_tissue & (rng.uniform(size=len(r)) > 0.08), labels, "")
    counts = rng.poisson(rng.gamma(2.0, 2.0, (len(r), 1)) * np.ones(len(GENES)))
    image = np.full((h, w, 3), 243, np.uint8)
    yy, xx = np.mgrid[:h, :w]
    image[((xx - centre[0]) / radius[0]) ** 2 + ((yy - centre[1]) / radius[1]) ** 2 <= 1.1] = (
        220,
        140,
        180,
    )
    return Spots(barcode, r, c, xy, in_tissue, counts, list(GENES), labels, pixel_size_um, image)


def write_pyramid(path, image, resolution_um: float | None = None) -> pathlib.Path:
    """A pyramidal tiled TIFF (level 0 and a half-size SubIFD), as HEST and scanners write them;
    `resolution_um` puts µm/px in the resolution tags (none by default, as most exports)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kw = dict(tile=(256, 256), compression="zlib", photometric="rgb")
    res = {}
    if resolution_um:
        res = dict(
            resolution=(1e4 / resolution_um, 1e4 / resolution_um), resolutionunit="CENTIMETER"
        )
    with tifffile.TiffWriter(path, bigtiff=True) as t:
        t.write(image, subifds=1, **kw, **res)
        t.write(image[::2, ::2], subfiletype=1, **kw)
    return path


def write_hest_visium(
    root, sample_id: str, spots: Spots, meta: dict | None = None, in_tissue_as=np.int64
) -> pathlib.Path:
    """HEST-1k's files of a Visium sample. st/{id}.h5ad holds every spot written (in and out of
    tissue) with float raw counts, as HEST saves them; obs may carry extra columns via meta."""
    root = pathlib.Path(root)
    for sub in ("st", "wsis", "metadata"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    obs = pd.DataFrame(
        {
            "in_tissue": spots.in_tissue.astype(in_tissue_as),
            "array_row": spots.array_row.astype(np.int64),
            "array_col": spots.array_col.astype(np.int64),
            "pxl_col_in_fullres": spots.xy[:, 0],
            "pxl_row_in_fullres": spots.xy[:, 1],
        },
        index=pd.Index(spots.barcode, dtype=object),
    )
    a = anndata.AnnData(
        X=sp.csr_matrix(spots.counts.astype(np.float32)),
        obs=obs,
        var=pd.DataFrame(index=pd.Index(_unique(spots.genes), dtype=object)),
    )
    a.obsm["spatial"] = spots.xy.copy()
    a.write_h5ad(root / "st" / f"{sample_id}.h5ad")
    write_pyramid(root / "wsis" / f"{sample_id}.tif", spots.image)
    h, w = spots.image.shape[:2]
    metadata = {
        "dataset_title": "spatialLIBD",
        "id": sample_id,
        "organ": "Brain",
        "species": "Homo sapiens",
        "patient": "Br5292",
        "st_technology": "Visium",
        "inter_spot_dist": 100.0,
        "spot_diameter": 55.0,
        "spots_under_tissue": int(spots.in_tissue.sum()),
        "spot_estimate_dist": 138,  # a count in HEST's metadata, not a distance
        "pixel_size_um_embedded": spots.pixel_size_um,
        "pixel_size_um_estimated": spots.pixel_size_um,
        "magnification": "20x",
        "fullres_px_width": w,
        "fullres_px_height": h,
        "subseries": "151507",
        **(meta or {}),
    }
    (root / "metadata" / f"{sample_id}.json").write_text(json.dumps(metadata))
    return root


def _unique(genes: list[str]) -> list[str]:
    """What the h5ad of HEST holds: var_names made unique (scanpy's "-1" suffix)."""
    seen, out = {}, []
    for g in genes:
        out.append(g if g not in seen else f"{g}-{seen[g]}")
        seen[g] = seen.get(g, 0) + 1
    return out


@dataclasses.dataclass
class SpaceRanger:
    outs: pathlib.Path
    image: pathlib.Path
    positions: pathlib.Path
    xy: np.ndarray  # (n, 2) the positions as written (SR 1.x rounds them to whole pixels)
    matrix_rows: np.ndarray  # indices into the Spots of the filtered matrix's barcodes


def write_spaceranger(
    sample_dir,
    spots: Spots,
    version: str = "2.0",
    tiff_resolution_um: float | None = None,
    drop_from_matrix: int = 0,
) -> SpaceRanger:
    """`sample_dir/outs/` as Space Ranger writes it, and `sample_dir/{name}_fullres.tif`, the
    full-resolution H&E it was given. The filtered matrix holds the in-tissue spots (less the
    last `drop_from_matrix` of them), the raw one every spot; both carry an antibody feature
    that is no gene and the duplicated symbol TBCE."""
    sample_dir = pathlib.Path(sample_dir)
    outs, spatial = sample_dir / "outs", sample_dir / "outs" / "spatial"
    spatial.mkdir(parents=True, exist_ok=True)
    names = spots.genes + ["CD3_TotalSeqB"]
    types = ["Gene Expression"] * len(spots.genes) + ["Antibody Capture"]
    ids = [f"ENSG{i:011d}" for i in range(len(spots.genes))] + ["CD3"]
    counts = np.c_[spots.counts, np.arange(len(spots.counts)) % 3]
    rows = np.flatnonzero(spots.in_tissue)
    rows = rows[: len(rows) - drop_from_matrix]  # the last ones: the first spot stays
    for kind, sel in (("filtered", rows), ("raw", np.arange(len(counts)))):
        tenx.write_matrix(
            outs / f"{kind}_feature_bc_matrix.h5",
            sp.csr_matrix(counts[sel]),
            spots.barcode[sel],
            names,
            gene_ids=ids,
            feature_types=types,
            library_id=sample_dir.name,
        )
    if version == "2.0":
        positions = spatial / "tissue_positions.csv"
        xy = np.round(spots.xy, 4)
        lines = ["barcode,in_tissue,array_row,array_col,pxl_row_in_fullres,pxl_col_in_fullres"]
        fmt = "{:.4f}"
    else:
        positions = spatial / "tissue_positions_list.csv"
        xy = np.rint(spots.xy)
        lines = []
        fmt = "{:.0f}"
    for b, t, r, c, (x, y) in zip(
        spots.barcode, spots.in_tissue, spots.array_row, spots.array_col, xy, strict=True
    ):
        lines.append(f"{b},{int(t)},{r},{c},{fmt.format(y)},{fmt.format(x)}")
    positions.write_text("\n".join(lines) + "\n")
    spot_px = SPOT_DIAMETER_FULLRES_UM / spots.pixel_size_um
    (spatial / "scalefactors_json.json").write_text(
        json.dumps(
            {
                "spot_diameter_fullres": spot_px,
                "tissue_hires_scalef": HIRES_SCALEF,
                "fiducial_diameter_fullres": spot_px * 1.5,
                "tissue_lowres_scalef": LOWRES_SCALEF,
            }
        )
    )
    h, w = spots.image.shape[:2]
    full = Image.fromarray(spots.image)
    for res, s in (("hires", HIRES_SCALEF), ("lowres", LOWRES_SCALEF)):
        full.resize((round(w * s), round(h * s)), Image.BILINEAR).save(
            spatial / f"tissue_{res}_image.png"
        )
    image = write_pyramid(
        sample_dir / f"{sample_dir.name}_fullres.tif", spots.image, tiff_resolution_um
    )
    return SpaceRanger(outs, image, positions, xy, rows)


def write_layer_table(path, rows, header: bool = False) -> pathlib.Path:
    """spatialLIBD's barcode_level_layer_map.tsv: barcode, sample, layer; tabs, no header (a .csv
    path gives commas; `header` adds the line barcode,sample,layer)."""
    path = pathlib.Path(path)
    sep = "," if path.suffix == ".csv" else "\t"
    lines = ([sep.join(("barcode", "sample", "layer"))] if header else []) + [
        sep.join(map(str, r)) for r in rows
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def layer_rows(spots: Spots, sample: str, which=None) -> list[tuple[str, str, str]]:
    """The table rows of the annotated spots of `spots` (or of the indices `which`)."""
    idx = np.flatnonzero(spots.labels != "") if which is None else which
    return [(spots.barcode[i], sample, spots.labels[i]) for i in idx]
