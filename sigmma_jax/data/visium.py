"""10x Visium spots -> `Slide` (docs/st_align.md, "Inputs"): HEST-1k's Visium samples, Space
Ranger `outs/`, an AnnData of spots; and ground-truth domains (spatialLIBD's DLPFC layers), for
evaluation only.

A spot is a row of a `Slide` as a cell is: `xy` its centre in level-0 px of the H&E as (x, y),
`cell_ids` its barcode, `counts` its raw UMIs, `spot_diameter_um` 55. Only spots under the tissue
are read (`in_tissue`): the others hold ambient RNA over glass.

Space Ranger facts the readers rest on (and the mistakes they refuse):
- Positions are pixels of the full-resolution image given to Space Ranger, `pxl_row_in_fullres`
  = y, `pxl_col_in_fullres` = x; never of the `spatial/tissue_{hires,lowres}_image.png`, which
  are that image scaled by `tissue_{hires,lowres}_scalef`.
- SR >= 2.0 writes `tissue_positions.csv` with a header line, SR 1.x `tissue_positions_list.csv`
  without. Skipping a line by count (`header=1`) silently loses the first spot (scanpy#2746,
  squidpy#1089): here the header is recognised by its content, and each layout must be what its
  name says.
- µm per pixel comes from the array: spots of one array row two columns apart (array_col ± 2) are
  100 µm apart, centre to centre; their median distance in pixels is exact to a fraction of a
  pixel over thousands of pairs. `spot_diameter_fullres` is not a measure of the image: it is
  defined for a 65 µm spot and comes out at about 70 µm on DLPFC; it is only reported.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import pathlib
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from sigmma_jax.data import hest, readers, tenx
from sigmma_jax.errors import InputError

Path = pathlib.Path
SPOT_DIAMETER_UM = 55.0
ARRAY_PITCH_UM = 100.0  # centre to centre, same array_row, array_col +- 2
POSITION_COLUMNS = (
    "barcode",
    "in_tissue",
    "array_row",
    "array_col",
    "pxl_row_in_fullres",
    "pxl_col_in_fullres",
)
SR2_POSITIONS = "tissue_positions.csv"
SR1_POSITIONS = ("tissue_positions_list.csv", "tissue_positions_list.txt")  # .txt: SR 1.0
SCALEFACTOR_KEYS = (
    "tissue_hires_scalef",
    "tissue_lowres_scalef",
    "fiducial_diameter_fullres",
    "spot_diameter_fullres",
)
MATRIX = "filtered_feature_bc_matrix.h5"
# The full-resolution H&E of a sample folder (.ome.tif ends with .tif).
IMAGE_SUFFIXES = (".tif", ".tiff", ".btf")
# The image the positions refer to disagrees with the TIFF's own pixel size beyond this: warned.
PIXEL_SIZE_RTOL = 0.05
# HEST-1k stores the twelve spatialLIBD DLPFC slices under other names (HEST_v1_1_0.csv: id and
# subseries, dataset_title "spatialLIBD"); spatialLIBD's layer table names them by slice number.
# Pass this as `attach_labels(..., samples=HEST_DLPFC)`. (read_hest_visium also records the
# metadata's subseries, which attach_labels tries when a slide's own name is not in the table.)
HEST_DLPFC = {
    "MISC12": "151507",
    "MISC11": "151508",
    "MISC10": "151509",
    "MISC9": "151510",
    "MISC8": "151669",
    "MISC7": "151670",
    "MISC6": "151671",
    "MISC5": "151672",
    "MISC4": "151673",
    "MISC3": "151674",
    "MISC2": "151675",
    "MISC1": "151676",
}
LABEL_TABLE_SUFFIXES = (".tsv", ".csv", ".txt")
_NO_LABEL = {"", "na", "nan", "none"}


# ----------------------------------------------------------------------------------- HEST-1k


def hest_visium_paths(hest_dir: str | os.PathLike, sample_id: str) -> dict[str, Path]:
    d = Path(hest_dir)
    return dict(
        wsi=d / "wsis" / f"{sample_id}.tif",
        metadata=d / "metadata" / f"{sample_id}.json",
        st=d / "st" / f"{sample_id}.h5ad",
    )


def _metadata(path: Path, sample_id: str) -> dict:
    if not path.exists():
        raise InputError(
            f"{path}: missing (metadata of HEST sample {sample_id}); "
            f"run `python -m sigmma_jax.check_data {path.parent.parent}`"
        )
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: cannot read as JSON ({e})") from e
    if not isinstance(meta, dict):
        raise InputError(f"{path}: expected a JSON object of HEST metadata")
    return meta


def technology(hest_dir: str | os.PathLike, sample_id: str) -> str:
    """ "visium" or "xenium": the HEST-1k sample's `st_technology`. The other technologies of
    HEST-1k (Visium HD's square bins, the legacy 100 µm Spatial Transcriptomics spots) are refused
    by name. Metadata without the field (written by hand for the Xenium reader) counts as Xenium
    when the sample has a transcripts table, as before this field was read."""
    path = hest_visium_paths(hest_dir, sample_id)["metadata"]
    meta = _metadata(path, sample_id)
    tech = meta.get("st_technology")
    if tech is None or (isinstance(tech, float) and math.isnan(tech)) or not str(tech).strip():
        if hest.sample_paths(hest_dir, sample_id)["transcripts"].exists():
            return "xenium"
        raise InputError(
            f"{path}: no st_technology; HEST-1k metadata says 'Visium' or 'Xenium' there"
        )
    t = str(tech).strip().lower()
    if t == "xenium":
        return "xenium"
    if "visium hd" in t or t in ("visiumhd", "visium-hd"):
        raise InputError(
            f"{path}: st_technology {tech!r}: Visium HD's square bins are not supported (its "
            "st/ h5ad holds bins, not 55 µm spots); leave the sample out of data.sample_ids"
        )
    if t.startswith("visium"):
        return "visium"
    if t in ("spatial transcriptomics", "st"):
        raise InputError(
            f"{path}: st_technology {tech!r}: the legacy ST array (100 µm spots, 200 µm pitch) is "
            "not supported; leave the sample out of data.sample_ids"
        )
    raise InputError(
        f"{path}: unknown st_technology {tech!r} (expected 'Visium' or 'Xenium'); "
        "leave the sample out of data.sample_ids"
    )


def read_hest_visium(hest_dir: str | os.PathLike, sample_id: str) -> readers.Slide:
    """A HEST-1k Visium sample: the in-tissue spots of `st/{id}.h5ad` (raw counts in X,
    obsm['spatial'] = spot centres in level-0 px of `wsis/{id}.tif`), µm/px from the metadata's
    `pixel_size_um_estimated`, grouped by patient for the folds."""
    p = hest_visium_paths(hest_dir, sample_id)
    for key in ("wsi", "metadata", "st"):
        if not p[key].exists():
            raise InputError(
                f"{p[key]}: missing ({key} of HEST Visium sample {sample_id}); "
                "download the sample's st/, wsis/ and metadata/ files"
            )
    meta = _metadata(p["metadata"], sample_id)
    tech = technology(hest_dir, sample_id)
    if tech != "visium":
        raise InputError(
            f"{p['metadata']}: st_technology {meta.get('st_technology')!r}, not Visium"
        )
    key = next(
        (k for k in ("pixel_size_um_estimated", "pixel_size_um_embedded") if meta.get(k)), ""
    )
    try:
        pixel_size = float(meta[key]) if key else 0.0
    except (TypeError, ValueError):
        pixel_size = 0.0
    if not pixel_size > 0:
        raise InputError(f"{p['metadata']}: no pixel_size_um_estimated (µm per WSI pixel)")
    diameter = meta.get("spot_diameter")
    if isinstance(diameter, (int, float)) and diameter and abs(diameter - SPOT_DIAMETER_UM) > 1e-6:
        logging.warning(
            "%s: spot_diameter %s; Visium spots are %g µm, used as such",
            p["metadata"],
            diameter,
            SPOT_DIAMETER_UM,
        )
    slide = read_spots_h5ad(p["st"], p["wsi"], pixel_size, SPOT_DIAMETER_UM, name=sample_id)
    slide.group = hest.patient_group(meta, sample_id)
    slide.report.update(technology="visium", pixel_size_from=key)
    subseries = meta.get("subseries")
    if isinstance(subseries, (str, int)) and str(subseries).strip():
        slide.report["subseries"] = str(subseries).strip()  # DLPFC: the slice number (151507...)
    logging.info("HEST %s: %s", sample_id, slide.report)
    return slide


# ---------------------------------------------------------------------- AnnData of spots


def _in_tissue(values, source) -> np.ndarray:
    """An `in_tissue` column (0/1, booleans, or their strings) as booleans."""
    s = pd.Series(values).reset_index(drop=True)
    if s.dtype == bool:
        return s.to_numpy()
    if pd.api.types.is_numeric_dtype(s):
        v = s.to_numpy(np.float64)
        bad = ~np.isin(v, (0.0, 1.0))
    else:
        low = s.astype(str).str.strip().str.lower()
        v = np.where(low.isin(("1", "true")), 1.0, 0.0)
        bad = ~low.isin(("1", "true", "0", "false")).to_numpy()
    if bad.any():
        raise InputError(
            f"{source}: in_tissue holds {s[bad].iloc[0]}; expected 1 (under tissue) or 0"
        )
    return v == 1.0


def read_spots_h5ad(
    h5ad: str | os.PathLike,
    wsi: str | os.PathLike,
    pixel_size_um: float = 0.0,
    diameter_um: float = SPOT_DIAMETER_UM,
    name: str | None = None,
    allow_non_integer: bool = False,
) -> readers.Slide:
    """The generic format for spots: an AnnData of spots (raw counts in X, obsm['spatial'] = spot
    centres in level-0 px) and a TIFF of the H&E, read as `readers.read_generic` reads cells.
    An obs column `in_tissue` (Space Ranger's, HEST's) keeps the spots under the tissue."""
    if not diameter_um > 0:
        raise InputError(f"spot diameter {diameter_um} µm: must be > 0 (Visium: 55)")
    h5ad = Path(h5ad)
    kept = {}

    def under_tissue(adata) -> np.ndarray:
        # Spots over glass are dropped before the reader checks positions and counts: their
        # positions may lie off the H&E (HEST crops its WSIs to the tissue).
        if "in_tissue" not in adata.obs.columns:
            return np.ones(adata.n_obs, bool)
        keep = _in_tissue(adata.obs["in_tissue"], h5ad)
        if not keep.any():
            raise InputError(f"{h5ad}: no spot has in_tissue == 1")
        kept.update(spots_in_tissue=int(keep.sum()), spots_not_in_tissue=int((~keep).sum()))
        return keep

    slide = readers.read_generic(
        h5ad, wsi, pixel_size_um, name=name, allow_non_integer=allow_non_integer, rows=under_tissue
    )
    slide.report.update(kept)
    slide.spot_diameter_um = float(diameter_um)
    return slide


# ------------------------------------------------------------------------ Space Ranger outs/


@dataclasses.dataclass
class Positions:
    path: Path
    layout: str  # "SR >= 2.0" (header) or "SR 1.x" (no header)
    barcode: np.ndarray  # (n,) str
    in_tissue: np.ndarray  # (n,) bool
    array_row: np.ndarray  # (n,) int
    array_col: np.ndarray  # (n,) int
    xy: np.ndarray  # (n, 2) float64 (pxl_col_in_fullres, pxl_row_in_fullres): (x, y)


def _numeric(row: list[str]) -> bool:
    try:
        [float(c) for c in row[1:]]
        return len(row) == len(POSITION_COLUMNS)
    except ValueError:
        return False


def read_positions(path: str | os.PathLike) -> Positions:
    """Space Ranger's spot positions, in whichever layout the file's name says it has."""
    path = Path(path)
    try:
        with open(path, newline="") as f:
            rows = [r for r in csv.reader(f) if any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"{path}: cannot read as CSV ({e})") from e
    if not rows:
        raise InputError(f"{path}: empty positions file")
    header = [c.strip().lower() for c in rows[0]]
    has_header = not _numeric(rows[0])
    expected = ",".join(POSITION_COLUMNS)
    if path.name == SR2_POSITIONS:
        if not has_header:
            raise InputError(
                f"{path}: no header line; Space Ranger >= 2.0 starts this file with '{expected}' "
                f"(a file without it is SR 1.x's: name it {SR1_POSITIONS[0]})"
            )
        missing = [c for c in POSITION_COLUMNS if c not in header]
        if missing:
            raise InputError(
                f"{path}: header {rows[0]} lacks {missing}; Space Ranger >= 2.0 writes '{expected}'"
            )
        order, body, layout = [header.index(c) for c in POSITION_COLUMNS], rows[1:], "SR >= 2.0"
    else:
        if has_header:
            raise InputError(
                f"{path}: starts with a header line {rows[0]}; Space Ranger 1.x's {path.name} has "
                f"none (its columns are {expected}): remove the line, or name the file "
                f"{SR2_POSITIONS} (the SR >= 2.0 layout, with header)"
            )
        order, body, layout = list(range(len(POSITION_COLUMNS))), rows, "SR 1.x"
    if not body:
        raise InputError(f"{path}: no spots")
    width = max(order) + 1
    short = next((i for i, r in enumerate(body) if len(r) < width), None)
    if short is not None:
        line = short + 1 + (layout != "SR 1.x")
        raise InputError(
            f"{path}: line {line} has {len(body[short])} fields, expected {len(POSITION_COLUMNS)}"
        )
    cols = [np.array([r[i].strip() for r in body]) for i in order]
    try:
        num = np.array(cols[1:], np.float64)  # (5, n)
    except ValueError as e:
        raise InputError(f"{path}: a non-numeric position ({e})") from e
    if not np.isfinite(num).all():
        raise InputError(f"{path}: positions hold NaN or inf")
    if not np.isin(num[0], (0.0, 1.0)).all():
        raise InputError(f"{path}: in_tissue holds values other than 0 and 1")
    if (num[1:3] != np.rint(num[1:3])).any() or num[1:3].min() < 0:
        raise InputError(f"{path}: array_row/array_col are not non-negative integers")
    readers.check_unique(cols[0], path, "barcodes")
    return Positions(
        path=path,
        layout=layout,
        barcode=cols[0],
        in_tissue=num[0] == 1.0,
        array_row=num[1].astype(np.int64),
        array_col=num[2].astype(np.int64),
        xy=np.c_[num[4], num[3]],  # (pxl_col, pxl_row) = (x, y)
    )


def read_scalefactors(path: str | os.PathLike) -> dict[str, float]:
    """`scalefactors_json.json`: the four positive numbers Space Ranger writes there."""
    path = Path(path)
    if not path.is_file():
        raise InputError(
            f"{path}: file not found; Space Ranger writes it in outs/spatial/ beside the "
            "positions: give the whole outs/ folder"
        )
    try:
        sf = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(
            f"{path}: cannot read as JSON ({e}); copy it again from outs/spatial/"
        ) from e
    if not isinstance(sf, dict):
        raise InputError(f"{path}: expected a JSON object with {', '.join(SCALEFACTOR_KEYS)}")
    bad = [
        k
        for k in SCALEFACTOR_KEYS
        if isinstance(sf.get(k), bool)
        or not isinstance(sf.get(k), (int, float))
        or not math.isfinite(sf[k])
        or sf[k] <= 0
    ]
    if bad:
        raise InputError(
            f"{path}: {', '.join(bad)} missing or not a positive number; Space Ranger writes "
            f"{', '.join(SCALEFACTOR_KEYS)}: copy the file again from outs/spatial/"
        )
    return {k: float(sf[k]) for k in SCALEFACTOR_KEYS}


def array_pitch_px(pos: Positions) -> tuple[float, int]:
    """(median distance in px between spots of one array row two columns apart = 100 µm, pairs).

    Diagonal neighbours (array_row ± 1, array_col ± 1) are also 100 µm apart; they are used only
    when no row holds two neighbours (a capture area cut to a few spots)."""
    width = int(pos.array_col.max()) + 3
    key = pos.array_row * width + pos.array_col
    order = np.argsort(key)
    skey = key[order]
    for dr, dc in ((0, 2), (1, 1), (1, -1)):
        want = key + dr * width + dc
        j = np.clip(np.searchsorted(skey, want), 0, len(skey) - 1)
        hit = skey[j] == want
        if hit.any():
            d = np.linalg.norm(pos.xy[order[j[hit]]] - pos.xy[hit], axis=1)
            pitch = float(np.median(d))
            if not pitch > 0:
                raise InputError(
                    f"{pos.path}: neighbouring spots share one pixel position; the positions "
                    "do not place the spots on the image"
                )
            return pitch, int(hit.sum())
    raise InputError(
        f"{pos.path}: no two neighbouring spots (same array_row, array_col ± 2): the pixel size "
        "cannot be derived from the 100 µm array pitch"
    )


def _positions_file(spatial: Path) -> Path:
    for name in (SR2_POSITIONS, *SR1_POSITIONS):
        if (spatial / name).is_file():
            return spatial / name
    raise InputError(
        f"{spatial / SR2_POSITIONS}: file not found (nor SR 1.x's {SR1_POSITIONS[0]}); give the "
        "whole Space Ranger outs/ folder"
    )


def _inside(xy: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    return (xy[:, 0] >= 0) & (xy[:, 1] >= 0) & (xy[:, 0] < w) & (xy[:, 1] < h)


def _not_a_tiff(image: Path, pos: Positions, sf: dict[str, float]) -> None:
    """A PNG or JPEG given as the H&E (typically spatial/tissue_hires_image.png): refused, saying
    why the spots miss it when they do."""
    from PIL import Image  # reads the header only

    try:
        with Image.open(image) as im:
            w, h = im.size
    except Exception as e:  # PIL raises many types on damaged files
        raise InputError(f"{image}: cannot open as an image ({type(e).__name__}: {e})") from e
    xy = pos.xy[pos.in_tissue]
    out = int((~_inside(xy, (h, w))).sum())
    kind = image.suffix.lower().lstrip(".").upper()
    why = (
        f"{out} of {len(xy)} in-tissue spots of {pos.path.name} fall outside it, because Space "
        "Ranger's positions are full-resolution pixels (of the image it was given) and the "
        f"spatial/ PNGs are that image scaled by tissue_hires_scalef={sf['tissue_hires_scalef']:g} "
        f"or tissue_lowres_scalef={sf['tissue_lowres_scalef']:g}; "
        if out
        else ""
    )
    raise InputError(
        f"{image}: a {w}x{h} px {kind}, not the full-resolution H&E: {why}pass the "
        "full-resolution image given to Space Ranger, as a TIFF"
    )


def _check_pitch(
    pos: Positions, pitch: float, sf: dict[str, float], image: Path, shape: tuple[int, int]
) -> None:
    """The pixel size the pitch implies must be a scanner's; positions in hires or lowres pixels
    (all crowded into the image's top-left corner) are named as such."""
    um = ARRAY_PITCH_UM / pitch
    lo, hi = readers.SCANNER_PIXEL_SIZE_UM
    if lo <= um <= hi:
        return
    h, w = shape
    for key, what in (("tissue_hires_scalef", "hires"), ("tissue_lowres_scalef", "lowres")):
        s = sf[key]
        if s < 1 and um > hi and (pos.xy <= [w * s + pitch, h * s + pitch]).all():
            raise InputError(
                f"{pos.path}: all {len(pos.xy)} spots lie in the top-left {s:g} of the {w}x{h} px "
                f"image {image.name} (x < {w * s:.0f}, y < {h * s:.0f}) and the 100 µm array pitch "
                f"is {pitch:.1f} px ({um:.3g} µm/px): the positions are in {what} image pixels "
                f"({key}={s:g}), not full-resolution ones; use Space Ranger's own positions "
                f"file, or divide pxl_row/pxl_col by {s:g}"
            )
    raise InputError(
        f"{pos.path}: the 100 µm array pitch is {pitch:.1f} px, i.e. {um:.3g} µm/px, outside what "
        f"H&E scanners produce ({lo}–{hi} µm/px); are these the positions of {image.name}?"
    )


def _outside(
    pos: Positions, xy: np.ndarray, sf: dict[str, float], image: Path, shape: tuple[int, int]
) -> None:
    outside = ~_inside(xy, shape)
    if not outside.any():
        return
    h, w = shape
    if _inside(xy[:, ::-1], shape).all():
        hint = " With pxl_row and pxl_col exchanged all would lie inside: pxl_row is y."
    elif outside.mean() > 0.5 and any(
        _inside(xy * sf[k], shape).all() for k in SCALEFACTOR_KEYS[:2]
    ):
        # (most spots miss it: a few outside are no sign of a downscaled image)
        hint = (
            f" Scaled by tissue_hires_scalef or tissue_lowres_scalef all would lie inside: "
            f"{image.name} is a downscaled image, but the positions are full-resolution pixels: "
            "pass the full-resolution image given to Space Ranger."
        )
    else:
        hint = f" Is {image.name} the full-resolution image given to Space Ranger?"
    raise InputError(
        f"{pos.path}: {int(outside.sum())} of {len(xy)} in-tissue spots lie outside the "
        f"{w}x{h} px image {image}.{hint}"
    )


def _unique_names(names: np.ndarray) -> tuple[np.ndarray, int]:
    """Gene symbols made unique as scanpy's var_names_make_unique does ("TBCE", "TBCE-1"): the
    10x references map a few symbols to two Ensembl ids. -> (names, how many were renamed)."""
    taken, seen, out, renamed = set(names.tolist()), set(), [], 0
    for n in names.tolist():
        if n not in seen:
            seen.add(n)
            out.append(n)
            continue
        i = 1
        while f"{n}-{i}" in taken:
            i += 1
        taken.add(f"{n}-{i}")
        out.append(f"{n}-{i}")
        renamed += 1
    return np.asarray(out, str), renamed


def read_spaceranger(
    outs_dir: str | os.PathLike, image: str | os.PathLike, name: str | None = None
) -> readers.Slide:
    """A Space Ranger `outs/` folder and the full-resolution H&E it was run on: the in-tissue spots
    of the filtered matrix, at their full-resolution pixel positions, µm/px from the array pitch."""
    outs, image = Path(outs_dir), Path(image)
    h5, spatial = outs / MATRIX, outs / "spatial"
    if not h5.is_file():
        raise InputError(f"{h5}: file not found; give the whole Space Ranger outs/ folder")
    pos_path = _positions_file(spatial)
    sf = read_scalefactors(spatial / "scalefactors_json.json")
    pos = read_positions(pos_path)
    if not image.exists():
        raise InputError(f"{image}: full-resolution H&E not found")
    if image.is_file() and image.suffix.lower() in (".png", ".jpg", ".jpeg"):
        _not_a_tiff(image, pos, sf)
    with readers.WSI(image) as wsi:
        shape, tiff_um = wsi.shape, wsi.pixel_size_um()
    pitch, pairs = array_pitch_px(pos)
    _check_pitch(pos, pitch, sf, image, shape)
    um = ARRAY_PITCH_UM / pitch
    if tiff_um and abs(math.log(tiff_um / um)) > math.log1p(PIXEL_SIZE_RTOL):
        logging.warning(
            "%s: the TIFF says %.4f µm/px, the 100 µm array pitch of %s %.4f µm/px; "
            "the pitch is used",
            image,
            tiff_um,
            pos.path.name,
            um,
        )

    barcodes, counts, genes, n_other = tenx.read_matrix(h5)
    row = pd.Index(pos.barcode).get_indexer(barcodes)
    if (row < 0).any():
        raise InputError(
            f"{h5}: {int((row < 0).sum())} of {len(barcodes)} barcodes have no row in {pos.path}, "
            f"e.g. {barcodes[row < 0][:3].tolist()}: are both files from the same Space Ranger run?"
        )
    keep = pos.in_tissue[row]
    if not keep.any():
        raise InputError(f"{h5}: none of its {len(barcodes)} barcodes is in tissue in {pos.path}")
    xy = pos.xy[row[keep]]
    _outside(pos, xy, sf, image, shape)
    genes, renamed = _unique_names(genes)
    slide = readers.make_slide(
        name or sample_name(outs),
        image,
        um,
        shape,
        xy,
        counts[np.flatnonzero(keep)],
        genes,
        barcodes[keep],
        source=pos.path,
    )
    slide.spot_diameter_um = SPOT_DIAMETER_UM
    slide.dropped_controls += n_other
    n_tissue = int(pos.in_tissue.sum())
    slide.report = dict(
        positions=pos.layout,
        pixel_size_from="array pitch (100 µm)",
        array_pitch_px=pitch,
        array_pitch_pairs=pairs,
        pixel_size_um=um,
        tiff_pixel_size_um=tiff_um,
        spot_diameter_fullres_px=sf["spot_diameter_fullres"],
        spot_diameter_fullres_um=sf["spot_diameter_fullres"] * um,
        spots_in_tissue=n_tissue,
        spots=int(keep.sum()),
        spots_dropped=dict(
            matrix_not_in_tissue=int((~keep).sum()),
            in_tissue_not_in_matrix=n_tissue - int(keep.sum()),
        ),
        non_gene_features=n_other,
        gene_names_made_unique=renamed,
    )
    logging.info("Space Ranger %s: %s", slide.name, slide.report)
    return slide


def _is_outs(d: Path) -> bool:
    return (d / MATRIX).is_file() or (d / "spatial").is_dir()


def sample_name(outs_dir: str | os.PathLike) -> str:
    """The sample an outs/ folder belongs to: the folder above it (its own name if not "outs")."""
    outs = Path(outs_dir)
    return outs.parent.name if outs.name == "outs" else outs.name


def find_outs(spaceranger_dir: str | os.PathLike) -> list[Path]:
    """The Space Ranger outs/ folders of `spaceranger_dir`: itself when it is one, its outs/ when
    it is a sample folder, else the outs/ of each sample folder in it (sorted by sample)."""
    d = Path(spaceranger_dir)
    layouts = "an outs/ folder, a sample folder holding outs/, or a folder of sample folders"
    if not d.is_dir():
        raise InputError(f"{d}: not a folder; expected Space Ranger output: {layouts}")
    if _is_outs(d):
        return [d]
    if _is_outs(d / "outs"):
        return [d / "outs"]
    found = sorted(
        (c / "outs" for c in d.iterdir() if c.is_dir() and _is_outs(c / "outs")),
        key=lambda p: p.parent.name,
    )
    if not found:
        raise InputError(
            f"{d}: no Space Ranger outs/ folder (with {MATRIX} and spatial/) in it, in "
            f"{d.name}/outs or in {d.name}/*/outs; expected {layouts}"
        )
    return found


def image_for(outs_dir: str | os.PathLike, wsi_setting: str | None) -> Path:
    """The full-resolution H&E of a sample: `data.wsi` as a path (one sample), a pattern with
    "{sample}" (the sample's name put in), or empty: the one .tif/.tiff/.btf/.ome.tif of the sample
    folder (the folder above outs/)."""
    outs = Path(outs_dir)
    setting = str(wsi_setting or "").strip()
    name = sample_name(outs)
    if "{sample}" in setting:
        path = Path(setting.replace("{sample}", name))
        if not path.is_file():
            raise InputError(f"{path}: not found (data.wsi={setting!r} for sample {name})")
        return path
    if setting:
        return Path(setting)
    folder = outs.parent if outs.name == "outs" else outs
    found = sorted(
        f
        for f in folder.iterdir()
        if f.is_file() and not f.name.startswith(".") and f.name.lower().endswith(IMAGE_SUFFIXES)
    )
    if len(found) == 1:
        return found[0]
    fix = "pass --config.data.wsi=IMAGE (or a pattern with {sample}, e.g. /images/{sample}.tif)"
    if not found:
        raise InputError(
            f"{folder}: no full-resolution H&E (.tif, .tiff, .btf, .ome.tif) in the sample folder "
            f"of {name}; put the image given to Space Ranger there, or {fix}"
        )
    raise InputError(
        f"{folder}: {len(found)} candidate H&E images ({', '.join(f.name for f in found)}); {fix}"
    )


def read_spaceranger_samples(
    spaceranger_dir: str | os.PathLike, wsi_setting: str | None = ""
) -> list[readers.Slide]:
    """Every sample of `find_outs(spaceranger_dir)`, each with its `image_for` H&E."""
    outs = find_outs(spaceranger_dir)
    setting = str(wsi_setting or "").strip()
    if setting and "{sample}" not in setting and len(outs) > 1:
        raise InputError(
            f"{spaceranger_dir}: {len(outs)} samples ({', '.join(map(sample_name, outs))}) but "
            f"data.wsi names one image ({setting}); give a pattern with {{sample}} (e.g. "
            "/images/{sample}.tif), or leave it empty to take the TIFF of each sample folder"
        )
    return [read_spaceranger(o, image_for(o, setting)) for o in outs]


# ---------------------------------------------------------------------------- domain labels


def read_label_table(path: str | os.PathLike) -> pd.DataFrame:
    """A table of (barcode, sample, label) in spatialLIBD's layout (`barcode_level_layer_map.tsv`:
    tab-separated, no header); a header row `barcode,sample,layer` and .csv are accepted too.
    "NA" labels are unannotated ("")."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: label table not found")
    sep = "," if path.suffix.lower() == ".csv" else "\t"
    try:
        df = pd.read_csv(path, sep=sep, header=None, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read as a table ({type(e).__name__}: {e})") from e
    layout = "barcode, sample, layer (spatialLIBD's barcode_level_layer_map.tsv)"
    if df.shape[1] != 3:
        raise InputError(
            f"{path}: {df.shape[1]} columns separated by {'commas' if sep == ',' else 'tabs'}; "
            f"expected 3: {layout}"
        )
    df.columns = ["barcode", "sample", "label"]
    df = df.apply(lambda c: c.str.strip())
    if len(df) and df.iloc[0]["barcode"].lower() == "barcode":
        df = df.iloc[1:]
    df = df.reset_index(drop=True)
    df.loc[df["label"].str.lower().isin(_NO_LABEL), "label"] = ""
    return df


def _is_table(spec: str) -> bool:
    p = Path(spec)
    return p.suffix.lower() in LABEL_TABLE_SUFFIXES or os.sep in spec or p.is_file()


def attach_labels(
    slides: list[readers.Slide],
    spec: str,
    obs_tables: Sequence | None = None,
    samples: Mapping[str, str] | None = None,
) -> list[readers.Slide]:
    """Sets each slide's `labels` (its spots' ground-truth domain, "" where unannotated), for
    evaluation only. `spec` is either an obs column of the .h5ad each slide came from
    (`obs_tables[i]`, that obs indexed by barcode, when given), or a table joined by barcode (see
    `read_label_table`): a row's sample selects the slide by name, by `samples[slide name]` (e.g.
    HEST_DLPFC: HEST-1k calls spatialLIBD's 151507 MISC12), or by the HEST subseries the reader
    recorded. Slides the table does not cover get no label anywhere (and a warning)."""
    if not spec:
        return slides
    if _is_table(str(spec)):
        _labels_from_table(slides, Path(spec), dict(samples or {}))
    else:
        _labels_from_column(slides, str(spec), obs_tables)
    return slides


def _labels_from_column(slides, column: str, obs_tables) -> None:
    for i, s in enumerate(slides):
        obs = obs_tables[i] if obs_tables is not None else None
        source = s.cells_file or s.name
        if obs is None or obs.shape[1] == 0:  # HEST's OBS gives empty tables: read the .h5ad's
            if s.cells_file is None or s.cells_file.suffix.lower() != ".h5ad":
                raise InputError(
                    f"{source}: no obs table to take the label column {column!r} from (slide "
                    f"{s.name}); give a table joined by barcode instead (barcode, sample, layer)"
                )
            obs = readers.read_obs(s.cells_file)
        if column not in obs.columns:
            raise InputError(
                f"{source}: no obs column {column!r} (it has {list(obs.columns)}); name the "
                "column that holds the domains, or give a table of barcode, sample, layer"
            )
        index = pd.Index(np.asarray(obs.index, str))
        readers.check_unique(np.asarray(index), source, "obs index entries (barcodes)")
        row = index.get_indexer(s.cell_ids)
        if (row < 0).any():
            raise InputError(
                f"{source}: {int((row < 0).sum())} of {len(row)} spots of slide {s.name} have no "
                f"row in its obs table, e.g. {s.cell_ids[row < 0][:3].tolist()}"
            )
        values = obs[column].iloc[row]
        text = values.astype(str).str.strip().to_numpy()
        missing = values.isna().to_numpy() | np.isin(
            np.char.lower(text.astype(str)), list(_NO_LABEL)
        )
        s.labels = np.where(missing, "", text).astype(str)


def _labels_from_table(slides, path: Path, samples: dict[str, str]) -> None:
    table = read_label_table(path)
    by_sample = {k: g for k, g in table.groupby("sample", sort=False)}
    names = [s.name for s in slides]
    subseries = [s.report.get("subseries") for s in slides]
    chosen: dict[int, str] = {}
    for i, s in enumerate(slides):
        if s.name in samples:
            want = samples[s.name]
            if want not in by_sample:
                raise InputError(
                    f"{path}: no row of sample {want!r} (samples maps slide {s.name} to it); "
                    f"the table's samples are {sorted(by_sample)[:12]}"
                )
        elif s.name in by_sample:
            want = s.name
        elif subseries[i] in by_sample and subseries.count(subseries[i]) == 1:
            want = subseries[i]  # HEST's DLPFC: the metadata's subseries is the slice number
        else:
            continue
        chosen[i] = want
    taken = list(chosen.values())
    twice = sorted({w for w in taken if taken.count(w) > 1})
    if twice:
        raise InputError(f"{path}: sample(s) {twice} would label several slides; fix `samples`")
    if not chosen:
        raise InputError(
            f"{path}: no row's sample names one of the slides {names} (the table's samples: "
            f"{sorted(by_sample)[:12]}); pass samples={{slide name: table sample}} (HEST-1k's "
            "DLPFC: visium.HEST_DLPFC, MISC12 = 151507 ...)"
        )
    for i, s in enumerate(slides):
        if i not in chosen:
            logging.warning("%s: no row for slide %s; its spots are unannotated", path, s.name)
            s.labels = np.full(len(s.cell_ids), "", dtype=str)
            continue
        rows = by_sample[chosen[i]]
        readers.check_unique(rows["barcode"].to_numpy(), path, f"barcodes of sample {chosen[i]}")
        spot = pd.Index(s.cell_ids).get_indexer(rows["barcode"])
        miss = spot < 0
        if miss.any():
            examples = rows["barcode"][miss].head(3).tolist()
            raise InputError(
                f"{path}: {int(miss.sum())} of {len(rows)} barcodes of sample {chosen[i]!r} match "
                f"no in-tissue spot of slide {s.name}, e.g. {examples} "
                f"(the slide's are like {s.cell_ids[:2].tolist()}); give the table of this slide, "
                "or map the right table sample to it with samples={slide name: table sample}"
            )
        labels = np.full(len(s.cell_ids), "", dtype=object)
        labels[spot] = rows["label"].to_numpy()
        s.labels = labels.astype(str)
