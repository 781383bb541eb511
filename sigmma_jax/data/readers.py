"""Readers: every input format becomes one in-memory `Slide` (cells in memory, the WSI opened lazily).

The tiler only ever sees a `Slide`; new platforms add a reader here, nothing downstream changes.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import xml.etree.ElementTree as ET

import numpy as np
import scipy.sparse as sp
import tifffile
import zarr

# Xenium control probes and unassigned codewords carry no biology (docs/method.md, "Data formats").
CONTROL_PATTERN = re.compile(
    r"^(BLANK|NegControl|Unassigned|Deprecated|antisense|IntergenicRegion)", re.IGNORECASE
)
_UNIT_TO_UM = {"µm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}


class InputError(ValueError):
    """Bad input: the message names the file and the problem."""


@dataclasses.dataclass
class Slide:
    name: str
    wsi_path: pathlib.Path
    pixel_size_um: float  # µm per level-0 pixel of the WSI
    image_shape: tuple[int, int]  # level-0 (height, width)
    xy: np.ndarray  # (n, 2) float64 cell centroids in level-0 pixels, (x, y)
    counts: sp.csr_matrix  # (n, genes) raw counts, controls removed
    genes: np.ndarray  # (genes,) str
    cell_ids: np.ndarray  # (n,) str
    dropped_controls: int = 0
    report: dict = dataclasses.field(default_factory=dict)  # what the reader skipped, and why
    # Samples of one group (HEST: one patient of one dataset) are held out together; "" -> the name.
    group: str = ""
    embeddings: np.ndarray | None = None  # (n, d) precomputed per-cell embeddings, if given


class WSI:
    """Lazy region reads from level 0 of a (pyramidal) TIFF; only the requested tiles are decoded."""

    def __init__(self, path: str | pathlib.Path):
        self.path = pathlib.Path(path)
        if not self.path.exists():
            raise InputError(f"{self.path}: WSI file not found")
        try:
            self._tif = tifffile.TiffFile(self.path)
            series = self._tif.series[0]
            self._level0 = zarr.open(series.aszarr(), mode="r")
            if isinstance(self._level0, zarr.Group):  # pyramidal: one array per level
                self._level0 = self._level0["0"]
        except Exception as e:  # tifffile raises many types on damaged files
            raise InputError(f"{self.path}: cannot open as TIFF ({type(e).__name__}: {e})") from e
        shape = self._level0.shape
        if len(shape) != 3 or shape[-1] not in (3, 4):
            raise InputError(f"{self.path}: expected an RGB image (H, W, 3), got shape {shape}")
        self.shape = (int(shape[0]), int(shape[1]))

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """RGB uint8 region [y0:y1, x0:x1]; parts outside the image read as white glass."""
        out = np.full((y1 - y0, x1 - x0, 3), 255, np.uint8)
        cy0, cy1 = max(y0, 0), min(y1, self.shape[0])
        cx0, cx1 = max(x0, 0), min(x1, self.shape[1])
        if cy0 < cy1 and cx0 < cx1:
            try:
                region = np.asarray(self._level0[cy0:cy1, cx0:cx1])
            except Exception as e:
                raise InputError(
                    f"{self.path}: cannot decode region y={cy0}:{cy1} x={cx0}:{cx1} "
                    f"(truncated or corrupt TIFF? {type(e).__name__}: {e})"
                ) from e
            out[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = _to_uint8_rgb(region)
        return out

    def pixel_size_um(self) -> float | None:
        return tiff_pixel_size_um(self._tif)

    @property
    def n_levels(self) -> int:
        return len(self._tif.series[0].levels)

    def close(self) -> None:
        self._tif.close()

    def __enter__(self) -> "WSI":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _to_uint8_rgb(region: np.ndarray) -> np.ndarray:
    region = region[..., :3]
    if region.dtype == np.uint8:
        return region
    if region.dtype == np.uint16:
        return (region >> 8).astype(np.uint8)
    return np.clip(region, 0, 255).astype(np.uint8)


def tiff_pixel_size_um(tif: tifffile.TiffFile) -> float | None:
    """µm per level-0 pixel from OME PhysicalSizeX, else the TIFF resolution tags; None if absent."""
    if tif.ome_metadata:
        root = ET.fromstring(tif.ome_metadata)
        for el in root.iter():
            if el.tag.endswith("Pixels") and el.get("PhysicalSizeX"):
                unit = el.get("PhysicalSizeXUnit", "µm")
                return float(el.get("PhysicalSizeX")) * _UNIT_TO_UM.get(unit, 1.0)
    page = tif.pages[0]
    res, unit = page.tags.get("XResolution"), page.tags.get("ResolutionUnit")
    if res is not None and unit is not None and unit.value in (2, 3):  # inch, centimetre
        num, den = res.value
        if num > 0 and not (num == 1 and den == 1):  # 1/1 is the "unset" default of many writers
            per_unit = num / den
            return (25400.0 if unit.value == 2 else 10000.0) / per_unit
    return None


def read_generic(
    cells_path: str | pathlib.Path,
    wsi_path: str | pathlib.Path,
    pixel_size_um: float = 0.0,
    name: str | None = None,
) -> Slide:
    """AnnData of cells (raw counts in X, obsm['spatial'] in level-0 px) + TIFF of the H&E."""
    import anndata  # heavy import, only needed here

    cells_path, wsi_path = pathlib.Path(cells_path), pathlib.Path(wsi_path)
    if not cells_path.exists():
        raise InputError(f"{cells_path}: cells file not found")
    with WSI(wsi_path) as wsi:
        shape = wsi.shape
        found = wsi.pixel_size_um()
    pixel_size_um = pixel_size_um or found
    if not pixel_size_um or pixel_size_um <= 0:
        raise InputError(
            f"{wsi_path}: no pixel size in the OME/TIFF metadata; pass "
            "--config.data.pixel_size_um=<µm per level-0 pixel>"
        )
    try:
        adata = anndata.read_h5ad(cells_path)
    except Exception as e:
        raise InputError(f"{cells_path}: cannot read as .h5ad ({type(e).__name__}: {e})") from e
    if "spatial" not in adata.obsm:
        raise InputError(
            f"{cells_path}: obsm['spatial'] (cell centroids in level-0 pixels) is missing"
        )
    xy = np.asarray(adata.obsm["spatial"], np.float64)[:, :2]
    return make_slide(
        name or cells_path.stem,
        wsi_path,
        float(pixel_size_um),
        shape,
        xy,
        adata.X,
        np.asarray(adata.var_names, str),
        np.asarray(adata.obs_names, str),
        source=cells_path,
    )


def check_unique(ids: np.ndarray, source, what: str = "cell ids") -> None:
    """Ids are keys: joins (counts to centroids, results back to the user's cells) need them unique."""
    uniq, n = np.unique(ids, return_counts=True)
    if len(uniq) != len(ids):
        raise InputError(f"{source}: duplicated {what}, e.g. {[str(u) for u in uniq[n > 1][:3]]}")


def positions(wanted, available, source, what: str) -> np.ndarray:
    """Positions of `wanted` in `available`; the error names `source` and the missing ones:
    "{source}: N of M {what}, e.g. [...]"."""
    index = {k: i for i, k in enumerate(available)}
    missing = [k for k in wanted if k not in index]
    if missing:
        raise InputError(f"{source}: {len(missing)} of {len(wanted)} {what}, e.g. {missing[:5]}")
    return np.array([index[k] for k in wanted], np.int64)


def make_slide(
    name: str,
    wsi_path: pathlib.Path,
    pixel_size_um: float,
    image_shape: tuple[int, int],
    xy: np.ndarray,
    counts,
    genes: np.ndarray,
    cell_ids: np.ndarray,
    source: pathlib.Path,
) -> Slide:
    """Validates what every reader produces and drops control probes; errors name `source`."""
    counts = sp.csr_matrix(counts, dtype=np.float32)
    if counts.shape[0] != len(xy):
        raise InputError(f"{source}: {counts.shape[0]} count rows but {len(xy)} centroids")
    if not np.isfinite(xy).all():
        raise InputError(
            f"{source}: {int((~np.isfinite(xy)).any(1).sum())} cells have NaN/inf centroids"
        )
    if counts.nnz and not np.isfinite(counts.data).all():
        raise InputError(f"{source}: counts contain NaN or inf")
    if counts.nnz and counts.data.min() < 0:
        raise InputError(f"{source}: counts contain negative values (raw counts expected)")
    check_unique(cell_ids, source)
    h, w = image_shape
    outside = (xy[:, 0] < 0) | (xy[:, 1] < 0) | (xy[:, 0] >= w) | (xy[:, 1] >= h)
    if outside.any():
        raise InputError(
            f"{source}: {int(outside.sum())} of {len(xy)} cells lie outside the "
            f"{w}x{h} px image {wsi_path.name}; are the coordinates in level-0 pixels?"
        )
    keep = np.array([not CONTROL_PATTERN.match(g) for g in genes])
    if not keep.any():
        raise InputError(f"{source}: no genes left after dropping control probes")
    return Slide(
        name=name,
        wsi_path=wsi_path,
        pixel_size_um=pixel_size_um,
        image_shape=image_shape,
        xy=xy,
        counts=counts[:, np.flatnonzero(keep)].tocsr(),
        genes=genes[keep],
        cell_ids=cell_ids,
        dropped_controls=int((~keep).sum()),
    )
