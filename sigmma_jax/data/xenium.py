"""Raw 10x Xenium output bundle + post-Xenium H&E OME-TIFF + alignment -> `Slide` (docs/method.md, "Data formats").

Coordinates. Xenium centroids (`cells.parquet`) are in µm; dividing by `pixel_size`
(experiment.xenium, µm per morphology pixel) gives morphology-image pixels. The Xenium Explorer
alignment matrix maps H&E level-0 pixels (x, y, 1) to morphology pixels (x, y, 1) (10x knowledge
base "How can I convert coordinates between H&E image and Xenium data"; spatialdata-io's
`xenium_aligned_image` attaches the same CSV as the H&E image's transform to the morphology frame),
so cells reach the H&E through its inverse. The keypoint export (`fixedX,fixedY` = Xenium µm,
`alignmentX,alignmentY` = H&E pixels) is turned into that matrix by a least-squares affine fit.

Memory. Only three columns of cells.parquet are read; the matrix stays sparse throughout.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import pathlib

import numpy as np

from sigmma_jax.data import readers
from sigmma_jax.data.tenx import decode_ids as _ids
from sigmma_jax.data.tenx import read_matrix

Path = pathlib.Path
# A few cell diameters: beyond this the keypoints do not describe one affine transform.
MAX_KEYPOINT_RMS_UM = 50.0
PIXEL_SIZE_RTOL = 0.05
_KEYPOINT_COLUMNS = ("fixedx", "fixedy", "alignmentx", "alignmenty")


@dataclasses.dataclass
class Alignment:
    matrix: np.ndarray  # (3, 3) H&E level-0 px -> morphology px
    kind: str  # "matrix" or "keypoints"
    rms_um: float | None = None  # keypoint fit residual
    n_keypoints: int = 0


def bundle_files(bundle: Path, he_image: Path, alignment: Path) -> tuple[Path, ...]:
    """(experiment.xenium, cells.parquet, cell_feature_matrix.h5, H&E, alignment), all present."""
    files = (
        bundle / "experiment.xenium",
        bundle / "cells.parquet",
        bundle / "cell_feature_matrix.h5",
        he_image,
        alignment,
    )
    missing = [p for p in files if not p.is_file()]
    if missing:
        raise readers.InputError("; ".join(f"{p}: file not found" for p in missing))
    return files


def read_pixel_size(spec_path: Path) -> float:
    """µm per morphology pixel from experiment.xenium."""
    try:
        spec = json.loads(spec_path.read_text())
    except (OSError, ValueError) as e:
        raise readers.InputError(f"{spec_path}: cannot read as JSON ({e})") from e
    size = spec.get("pixel_size") if isinstance(spec, dict) else None
    if not isinstance(size, (int, float)) or not size > 0:
        raise readers.InputError(f"{spec_path}: no positive 'pixel_size' (µm per morphology pixel)")
    return float(size)


def read_alignment(path: Path, pixel_size: float) -> Alignment:
    """Either form of the Xenium Explorer export, as the H&E px -> morphology px matrix."""
    try:
        with open(path, newline="") as f:
            rows = [r for r in csv.reader(f) if any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError) as e:
        raise readers.InputError(f"{path}: cannot read the alignment CSV ({e})") from e
    if not rows:
        raise readers.InputError(f"{path}: empty alignment file")
    header = [c.strip().lower() for c in rows[0]]
    if all(c in header for c in _KEYPOINT_COLUMNS):
        return _fit_keypoints(path, header, rows[1:], pixel_size)
    expected = "a 3x3 affine matrix or keypoints with columns fixedX,fixedY,alignmentX,alignmentY"
    if not all(_is_number(c) for c in rows[0]):
        raise readers.InputError(f"{path}: expected {expected}; got header {rows[0]}")
    m = _floats(path, rows)
    if m.shape != (3, 3):
        raise readers.InputError(
            f"{path}: expected {expected}; got {m.shape[0]}x{m.shape[1]} values"
        )
    if not np.allclose(m[2], [0, 0, 1], atol=1e-6):
        raise readers.InputError(
            f"{path}: not an affine matrix, last row is {m[2].tolist()} instead of [0, 0, 1]"
        )
    _check_invertible(path, m)
    return Alignment(m, "matrix")


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _floats(path: Path, rows: list[list[str]]) -> np.ndarray:
    if len({len(r) for r in rows}) != 1:
        raise readers.InputError(f"{path}: rows have different numbers of columns")
    try:
        m = np.array([[float(c) for c in r] for r in rows], np.float64)
    except ValueError as e:
        raise readers.InputError(f"{path}: non-numeric alignment value ({e})") from e
    if not np.isfinite(m).all():
        raise readers.InputError(f"{path}: alignment contains NaN or inf")
    return m


def _check_invertible(path: Path, m: np.ndarray) -> None:
    a = m[:2, :2]
    if abs(np.linalg.det(a)) <= 1e-12 * max(np.abs(a).max(), 1e-300) ** 2:
        raise readers.InputError(
            f"{path}: singular alignment matrix (det of the linear part "
            f"is {np.linalg.det(a):.3g}); it cannot be inverted"
        )


def _fit_keypoints(
    path: Path, header: list[str], rows: list[list[str]], pixel_size: float
) -> Alignment:
    cols = [header.index(c) for c in _KEYPOINT_COLUMNS]
    pts = _floats(path, [[r[i] for i in cols] for r in rows]) if rows else np.zeros((0, 4))
    fixed_um, he_px = pts[:, :2], pts[:, 2:]
    if len(pts) < 3:
        raise readers.InputError(f"{path}: {len(pts)} keypoints; an affine needs at least 3")
    design = np.c_[he_px, np.ones(len(pts))]
    s = np.linalg.svd(design - [*he_px.mean(0), 1], compute_uv=False)
    if s[1] <= 1e-9 * max(s[0], 1e-300):  # all keypoints on one line: the affine is undetermined
        raise readers.InputError(f"{path}: the {len(pts)} keypoints are collinear in the H&E image")
    coef, *_ = np.linalg.lstsq(design, fixed_um, rcond=None)  # (3, 2): H&E px -> µm
    rms = float(np.sqrt(np.mean(np.sum((design @ coef - fixed_um) ** 2, axis=1))))
    if rms > MAX_KEYPOINT_RMS_UM:
        raise readers.InputError(
            f"{path}: keypoints do not fit one affine transform (RMS residual "
            f"{rms:.1f} µm > {MAX_KEYPOINT_RMS_UM:g} µm); mismatched pairs?"
        )
    # µm -> morphology px, so both forms mean the same matrix. Were `fixed` in morphology px
    # instead, the affine's implied H&E pixel size would be off by 1/pixel_size (~4.7x): the
    # pixel-size cross-check warns, and the cells fall off the H&E image.
    m = np.eye(3)
    m[:2] = coef.T / pixel_size
    _check_invertible(path, m)
    return Alignment(m, "keypoints", rms, len(pts))


def um_to_he_px(xy_um: np.ndarray, alignment: np.ndarray, pixel_size: float) -> np.ndarray:
    """Xenium µm -> H&E level-0 px through the inverse of the H&E -> morphology affine."""
    morph = np.c_[np.asarray(xy_um, np.float64) / pixel_size, np.ones(len(xy_um))]
    return np.linalg.solve(alignment, morph.T).T[:, :2]


def inside(xy: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    return (xy[:, 0] >= 0) & (xy[:, 1] >= 0) & (xy[:, 0] < w) & (xy[:, 1] < h)


def read_cells(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(cell ids, centroids in µm) in file order, reading only the three columns needed."""
    import pyarrow.parquet as pq

    need = ["cell_id", "x_centroid", "y_centroid"]
    try:
        schema = pq.read_schema(path)
        missing = [c for c in need if c not in schema.names]
        if missing:
            raise readers.InputError(f"{path}: missing columns {missing} (has {schema.names})")
        table = pq.read_table(path, columns=need)
    except readers.InputError:
        raise
    except Exception as e:  # pyarrow raises several types on damaged files
        raise readers.InputError(f"{path}: cannot read as parquet ({type(e).__name__}: {e})") from e
    ids = _ids(table.column("cell_id").to_numpy(zero_copy_only=False))
    xy = np.c_[table.column("x_centroid").to_numpy(), table.column("y_centroid").to_numpy()]
    readers.check_unique(ids, path)
    return ids, xy.astype(np.float64)


def read_cells_table(bundle: str | Path):
    """Every column of a bundle's cells.parquet, indexed by cell id (for joining results back)."""
    import pyarrow.parquet as pq

    path = Path(bundle) / "cells.parquet"
    try:
        df = pq.read_table(path).to_pandas()
    except Exception as e:
        raise readers.InputError(f"{path}: cannot read as parquet ({type(e).__name__}: {e})") from e
    df.index = _ids(df.pop("cell_id").to_numpy())
    return df


def _he_pixel_size(
    he_image: Path, alignment: Alignment, pixel_size: float, override: float
) -> tuple[float, dict]:
    """An explicit value wins (as in read_generic), then the OME metadata, then the affine scale."""
    with readers.WSI(he_image) as wsi:
        shape, ome = wsi.shape, wsi.pixel_size_um()
    from_affine = pixel_size * float(np.sqrt(abs(np.linalg.det(alignment.matrix[:2, :2]))))
    found = {"given": override or None, "ome": ome, "affine": from_affine}
    chosen = next(v for v in (override, ome, from_affine) if v)
    for source, v in found.items():
        if v and abs(np.log(v / chosen)) > np.log1p(PIXEL_SIZE_RTOL):
            msg = "%s: H&E pixel size %.4f µm (%s) disagrees with the %.4f µm used; is the "
            msg += "alignment for this image and in the H&E -> morphology direction?"
            logging.warning(msg, he_image, v, source, chosen)
    return chosen, {"shape": shape, **{f"he_pixel_size_{k}": v for k, v in found.items()}}


def read_xenium(
    bundle: str | Path,
    he_image: str | Path,
    alignment: str | Path,
    name: str | None = None,
    he_pixel_size_um: float = 0.0,
) -> readers.Slide:
    bundle, he_image, alignment = Path(bundle), Path(he_image), Path(alignment)
    spec, cells_path, h5_path, *_ = bundle_files(bundle, he_image, alignment)
    pixel_size = read_pixel_size(spec)
    align = read_alignment(alignment, pixel_size)
    he_px, info = _he_pixel_size(he_image, align, pixel_size, he_pixel_size_um)
    shape = info.pop("shape")

    cell_ids, xy_um = read_cells(cells_path)
    barcodes, counts, genes, n_other = read_matrix(h5_path)
    import pandas as pd

    col = pd.Index(barcodes).get_indexer(cell_ids)
    if (col < 0).any():
        raise readers.InputError(
            f"{cells_path}: {int((col < 0).sum())} of {len(cell_ids)} cells have no column in "
            f"{h5_path.name}, e.g. {cell_ids[col < 0][:3].tolist()}"
        )
    unmatched = len(barcodes) - len(col)
    if unmatched:
        logging.warning(
            "%s: %d matrix columns have no row in %s; dropped", h5_path, unmatched, cells_path.name
        )

    xy = um_to_he_px(xy_um, align.matrix, pixel_size)
    placed = inside(xy, shape)
    if not placed.all():
        hint = ""
        if placed.mean() < 0.5:
            flipped = inside(
                (np.c_[xy_um / pixel_size, np.ones(len(xy))] @ align.matrix.T)[:, :2], shape
            ).mean()
            hint = "; most cells miss the image: is the alignment for this H&E image"
            if flipped > 0.5:
                hint += f", or inverted ({flipped:.0%} would land inside without the inverse)"
            hint += "?"
        raise readers.InputError(
            f"{alignment}: {int((~placed).sum())} of {len(xy)} cells of {cells_path} map outside "
            f"the {shape[1]}x{shape[0]} px H&E image {he_image.name}{hint}"
        )

    name = name or (bundle.parent.name if bundle.name == "outs" else bundle.name)
    slide = readers.make_slide(
        name, he_image, he_px, shape, xy, counts[col], genes, cell_ids, source=cells_path
    )
    slide.dropped_controls += n_other
    slide.report = dict(
        morphology_pixel_size_um=pixel_size,
        alignment=align.kind,
        keypoints=align.n_keypoints,
        keypoint_rms_um=align.rms_um,
        non_gene_features=n_other,
        matrix_columns_without_cell=unmatched,
        **info,
    )
    return slide
