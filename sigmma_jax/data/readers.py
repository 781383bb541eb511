"""Readers: every input format becomes one in-memory `Slide` (cells in memory, the WSI opened lazily).

The tiler only ever sees a `Slide`; new platforms add a reader here, nothing downstream changes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import pathlib
import re
import xml.etree.ElementTree as ET

import numpy as np
import scipy.sparse as sp
import tifffile
import zarr

from sigmma_jax.errors import InputError

# Xenium control probes and unassigned codewords carry no biology (docs/method.md, "Data formats").
CONTROL_PATTERN = re.compile(
    r"^(BLANK|NegControl|Unassigned|Deprecated|antisense|IntergenicRegion)", re.IGNORECASE
)
_UNIT_TO_UM = {"µm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}
# µm per pixel of real H&E scans: 40x ≈ 0.25, 20x ≈ 0.5, 10x ≈ 1. A value outside is a metadata or
# unit mistake (the tiles would be resampled from nonsense); the slide is refused.
SCANNER_PIXEL_SIZE_UM = (0.08, 2.0)
# Tables of cells that are not AnnData: the generic format needs an .h5ad.
TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet", ".xlsx")
# var columns that hold gene names when var_names do not (an integer index).
GENE_NAME_COLUMNS = (
    "gene_symbols",
    "gene_symbol",
    "gene_name",
    "gene_names",
    "feature_name",
    "feature_names",
    "gene",
    "genes",
    "symbol",
    "name",
    "gene_ids",
    "gene_id",
)


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
    cells_file: pathlib.Path | None = None  # where the centroids came from (named in errors)
    # Samples of one group (HEST: one patient of one dataset) are held out together; "" -> the name.
    group: str = ""
    embeddings: np.ndarray | None = None  # (n, d) precomputed per-cell embeddings, if given
    # Spots (Visium): each row of `xy` is a spot centre and `cell_ids` its barcode; 0 for cells.
    spot_diameter_um: float = 0.0
    # Ground-truth domain per row (e.g. DLPFC's layers), "" where unannotated: evaluation only.
    labels: np.ndarray | None = None


@contextlib.contextmanager
def _quiet_tifffile():
    """tifffile logs what it cannot parse in a damaged file; the WSI's own checks say it in one line."""
    log = logging.getLogger("tifffile")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def _data_end(series) -> int:
    """The byte where the image data of every level of `series` ends."""
    end = 0
    for level in series.levels:
        for page in level.pages:
            offsets = getattr(page, "dataoffsets", None) or ()
            counts = getattr(page, "databytecounts", None) or ()
            end = max([end] + [o + c for o, c in zip(offsets, counts) if c])
    return end


def value_scale(sample: np.ndarray, path) -> float:
    """The factor that maps a slide's pixel values onto 0..255, from a sample of its pixels.

    8-bit: 1. Integers wider than 8 bits: by the bit depth their largest value needs (8, 10, 12, 14
    or 16; an 8-bit scan stored in 16 bits stays as it is). Floats: [0, 1] is scaled up, [0, 255]
    kept; anything else is refused rather than guessed (tiles would come out black or white)."""
    if sample.dtype == np.uint8:
        return 1.0
    lo, hi = (sample.min(), sample.max()) if sample.size else (0, 0)
    if np.issubdtype(sample.dtype, np.integer):
        top = int(hi)
        bits = next((b for b in (8, 10, 12, 14, 16) if top < 2**b), None)
        if bits is None or lo < 0:
            raise InputError(
                f"{path}: {sample.dtype} pixels up to {top}: expected 8- or 16-bit RGB; "
                "save the H&E as 8-bit RGB"
            )
        return 255.0 / (2**bits - 1)
    if not np.isfinite(sample).all():
        raise InputError(f"{path}: the float pixels include NaN or inf; save the H&E as 8-bit RGB")
    lo, hi = float(lo), float(hi)
    if lo < 0 or hi > 255:
        raise InputError(
            f"{path}: float pixels range over [{lo:.4g}, {hi:.4g}]; expected [0, 1] or "
            "[0, 255]: save the H&E as 8-bit RGB"
        )
    return 255.0 if hi <= 1.0 else 1.0


class _ChannelsLast:
    """A (c, y, x) zarr array of an OME-Zarr image indexed as (y, x, c), like a TIFF level."""

    def __init__(self, array, order: tuple[int, int, int]):
        self._array, self._order = array, order  # positions of y, x, c in the stored array
        self.shape = tuple(array.shape[i] for i in order)
        self.dtype = array.dtype

    def __getitem__(self, key) -> np.ndarray:
        ys, xs = key
        index = [slice(None)] * 3
        index[self._order[0]], index[self._order[1]] = ys, xs
        # the stored axes taken in (y, x, c) order
        return np.transpose(np.asarray(self._array[tuple(index)]), self._order)


def ome_zarr_levels(path: pathlib.Path) -> list:
    """The resolution levels of an OME-Zarr image (a SpatialData image element, NGFF 0.4 or 0.5),
    largest first, each indexed (y, x, c)."""
    try:
        group = zarr.open_group(path, mode="r")
        attrs = dict(group.attrs)
        multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
        if not multiscales:
            raise InputError(f"{path}: a zarr group without OME-NGFF multiscales: not an image")
        axes = [a["name"] if isinstance(a, dict) else a for a in multiscales[0]["axes"]]
        if sorted(axes) != ["c", "x", "y"]:
            raise InputError(f"{path}: image axes {axes}; expected c, y and x (a 2D RGB image)")
        order = tuple(axes.index(a) for a in ("y", "x", "c"))
        return [_ChannelsLast(group[d["path"]], order) for d in multiscales[0]["datasets"]]
    except InputError:
        raise
    except Exception as e:  # zarr raises many types on damaged stores
        raise InputError(
            f"{path}: cannot open as an OME-Zarr image ({type(e).__name__}: {e})"
        ) from e


def is_ome_zarr(path: pathlib.Path) -> bool:
    """A folder holding zarr metadata (v2 or v3): an OME-Zarr image rather than a TIFF."""
    return path.is_dir() and any((path / f).exists() for f in ("zarr.json", ".zattrs", ".zgroup"))


class WSI:
    """Lazy region reads from level 0 of a (pyramidal) TIFF, or of an OME-Zarr image (a SpatialData
    store's image element, `STORE.zarr/images/NAME`); only the requested tiles are decoded."""

    def __init__(self, path: str | pathlib.Path):
        self.path = pathlib.Path(path)
        self._tif = None
        if not self.path.exists():
            raise InputError(f"{self.path}: WSI file not found")
        if is_ome_zarr(self.path):
            self._levels = ome_zarr_levels(self.path)
        elif self.path.is_dir():
            raise InputError(f"{self.path}: a folder, not a TIFF of the H&E")
        else:
            self._open_tiff()
        self._level0 = self._levels[0]
        shape = self._level0.shape
        if len(shape) != 3 or shape[-1] not in (3, 4):
            raise InputError(f"{self.path}: expected an RGB image (H, W, 3), got shape {shape}")
        self.shape = (int(shape[0]), int(shape[1]))
        self._scale = None if self._level0.dtype != np.uint8 else 1.0

    def _open_tiff(self) -> None:
        try:
            with _quiet_tifffile():
                self._tif = tifffile.TiffFile(self.path)
                series = self._tif.series[0]
                root = zarr.open(series.aszarr(), mode="r")
                # pyramidal: one array per level, largest first
                self._levels = (
                    [root[str(i)] for i in range(len(series.levels))]
                    if isinstance(root, zarr.Group)
                    else [root]
                )
                end = _data_end(series)
        except Exception as e:  # tifffile raises many types on damaged files
            raise InputError(f"{self.path}: cannot open as TIFF ({type(e).__name__}: {e})") from e
        size = self.path.stat().st_size
        if end > size:
            self._tif.close()
            raise InputError(
                f"{self.path}: truncated or damaged TIFF: its image data runs to byte {end:,} "
                f"but the file has {size:,} bytes"
            )

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
            out[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = self._to_uint8(region)
        return out

    def _to_uint8(self, region: np.ndarray) -> np.ndarray:
        region = region[..., :3]
        if self._scale is None:  # decided once per slide from a sample of its coarsest level
            self._scale = value_scale(self._sample(), self.path)
        if region.dtype == np.uint8:
            return region
        return np.clip(np.rint(region.astype(np.float32) * self._scale), 0, 255).astype(np.uint8)

    def _sample(self, grid: int = 8, side: int = 32) -> np.ndarray:
        """Pixels of a grid of small patches of the coarsest level: cheap even without a pyramid
        (only the TIFF tiles under the patches are decoded), and H&E has glass almost everywhere
        around the tissue, so the patches see the brightest values."""
        level = self._levels[-1]
        h, w = level.shape[:2]
        patches = []
        for y in np.linspace(0, max(h - side, 0), grid).astype(int):
            for x in np.linspace(0, max(w - side, 0), grid).astype(int):
                patches.append(
                    np.asarray(level[y : y + side, x : x + side])[..., :3].reshape(-1, 3)
                )
        return np.concatenate(patches)

    def thumbnail(self, max_side: int = 1024) -> tuple[np.ndarray, tuple[float, float]]:
        """(RGB uint8 image of at most ~max_side px a side, (level-0 px per thumbnail px in y, x)),
        from the coarsest pyramid level that is large enough."""
        want = min(max_side, max(self.shape))
        level = next(lv for lv in reversed(self._levels) if max(lv.shape[:2]) >= want)
        step = max(1, math.ceil(max(level.shape[:2]) / max_side))
        try:
            raw = np.asarray(level[::step, ::step])
        except Exception as e:  # tifffile raises many types on damaged files
            raise InputError(
                f"{self.path}: cannot decode the image (truncated or corrupt TIFF? "
                f"{type(e).__name__}: {e})"
            ) from e
        img = self._to_uint8(raw)
        return img, (self.shape[0] / img.shape[0], self.shape[1] / img.shape[1])

    def pixel_size_um(self) -> float | None:
        """From the TIFF's metadata; None for an OME-Zarr image, whose scale lives in its store's
        coordinate transformations (the spatialdata source reads it there)."""
        return tiff_pixel_size_um(self._tif) if self._tif is not None else None

    @property
    def n_levels(self) -> int:
        return len(self._levels)

    def close(self) -> None:
        if self._tif is not None:
            self._tif.close()

    def __enter__(self) -> "WSI":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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


GENERIC_FORMAT = (
    "the generic format is an AnnData .h5ad of cells (raw counts in X, centroids in level-0 px "
    "of the H&E in obsm['spatial']) and a TIFF of the H&E (README, 'Your own data')"
)


def read_generic(
    cells_path: str | pathlib.Path,
    wsi_path: str | pathlib.Path,
    pixel_size_um: float = 0.0,
    name: str | None = None,
    allow_non_integer: bool = False,
    rows=None,
) -> Slide:
    """AnnData of cells (raw counts in X, obsm['spatial'] in level-0 px) + TIFF of the H&E.
    `rows(adata)`, when given, picks the rows read (a bool mask; Visium: the spots under tissue),
    before anything about them is checked."""
    import anndata  # heavy import, only needed here

    cells_path, wsi_path = pathlib.Path(cells_path), pathlib.Path(wsi_path)
    if not cells_path.exists():
        raise InputError(f"{cells_path}: cells file not found")
    if cells_path.suffix.lower() in TABLE_SUFFIXES:
        raise InputError(f"{cells_path}: a table, not an AnnData .h5ad; {GENERIC_FORMAT}")
    shape, pixel_size_um = _wsi_geometry(wsi_path, pixel_size_um)
    try:
        adata = anndata.read_h5ad(cells_path)
    except Exception as e:
        raise InputError(f"{cells_path}: cannot read as .h5ad ({type(e).__name__}: {e})") from e
    if "spatial" not in adata.obsm:
        raise InputError(
            f"{cells_path}: obsm['spatial'] (cell centroids in level-0 pixels) is missing"
        )
    if rows is not None:
        adata = adata[rows(adata)]
    xy = np.asarray(adata.obsm["spatial"], np.float64)[:, :2]
    genes, names_from = gene_names(adata, cells_path)
    slide = make_slide(
        name or cells_path.stem,
        wsi_path,
        float(pixel_size_um),
        shape,
        xy,
        adata.X,
        genes,
        np.asarray(adata.obs_names, str),
        source=cells_path,
        allow_non_integer=allow_non_integer,
    )
    if names_from:
        slide.report["gene_names_from"] = names_from
    return slide


def gene_names(adata, source) -> tuple[np.ndarray, str]:
    """(gene names, where they came from). var_names normally; when they are an integer index
    (anndata turns it into "0", "1", ...), the var column that holds the names, so that control
    probes are still recognised and panels of several slides still match."""
    names = np.asarray(adata.var_names, str)
    if not all(n.isdigit() for n in names):
        return names, ""
    columns = [c for c in GENE_NAME_COLUMNS if c in adata.var.columns]
    columns += [c for c in adata.var.columns if c not in columns]
    for c in columns:
        values = np.asarray(adata.var[c].astype(str))
        if adata.var[c].dtype.kind in "OUS" or str(adata.var[c].dtype) == "category":
            if not all(v.isdigit() for v in values):
                logging.info("%s: var_names are integers; gene names from var[%r]", source, c)
                return values, f"var[{c!r}]"
    raise InputError(
        f"{source}: var_names are integers ({', '.join(names[:3])}, ...) and no var column holds "
        "gene names; put the gene names in var_names"
    )


def _wsi_geometry(wsi_path: pathlib.Path, pixel_size_um: float) -> tuple[tuple[int, int], float]:
    """(level-0 shape, µm per pixel): the given pixel size, else the OME/TIFF metadata's."""
    if pixel_size_um < 0:
        raise InputError(
            f"pixel size {pixel_size_um} µm/px: must be > 0 (or 0 to read it from {wsi_path})"
        )
    with WSI(wsi_path) as wsi:
        shape = wsi.shape
        found = wsi.pixel_size_um()
    pixel_size_um = pixel_size_um or found
    if not pixel_size_um or pixel_size_um <= 0:
        raise InputError(
            f"{wsi_path}: no pixel size in the OME/TIFF metadata; pass "
            "--config.data.pixel_size_um=<µm per level-0 pixel>"
        )
    return shape, float(pixel_size_um)


def read_wsi_only(
    wsi_path: str | pathlib.Path, genes, pixel_size_um: float = 0.0, name: str | None = None
) -> Slide:
    """An H&E image without cells (a trained model predicts its expression from the pixels): a
    Slide with no cells over the panel `genes`, named after the file unless `name` is given."""
    wsi_path = pathlib.Path(wsi_path)
    shape, pixel_size_um = _wsi_geometry(wsi_path, pixel_size_um)
    return Slide(
        name=name or wsi_path.name.split(".")[0],
        wsi_path=wsi_path,
        pixel_size_um=pixel_size_um,
        image_shape=shape,
        xy=np.zeros((0, 2)),
        counts=sp.csr_matrix((0, len(genes)), dtype=np.float32),
        genes=np.asarray(genes, str),
        cell_ids=np.zeros(0, str),
    )


def read_obs(cells_path: str | pathlib.Path):
    """The `obs` table of a cells .h5ad (its columns, indexed by cell id), without reading X."""
    import h5py
    from anndata.io import read_elem

    with h5py.File(cells_path, "r") as f:
        return read_elem(f["obs"])


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
    allow_non_integer: bool = False,
) -> Slide:
    """Validates what every reader produces and drops control probes; errors name `source`.

    Counts must be raw (integers) unless `allow_non_integer` (config.data.allow_non_integer_counts):
    the model normalises them itself and the evaluation takes log1p of their sums."""
    lo, hi = SCANNER_PIXEL_SIZE_UM
    if not lo <= pixel_size_um <= hi:
        raise InputError(
            f"{wsi_path}: pixel size {pixel_size_um:g} µm/px is outside what H&E scanners produce "
            f"({lo}–{hi} µm/px; 40x ≈ 0.25, 20x ≈ 0.5): fix the slide's metadata or pass "
            "--config.data.pixel_size_um=<µm per level-0 pixel>"
        )
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
    fractional = counts.data[np.abs(counts.data - np.rint(counts.data)) > 1e-4]
    if len(fractional) and not allow_non_integer:
        raise InputError(
            f"{source}: X holds non-integer values (e.g. {fractional[0]:.4g}); raw counts are "
            "required (normalised or log-transformed data cannot be used as counts); "
            "--config.data.allow_non_integer_counts=True takes them as they are"
        )
    check_unique(cell_ids, source)
    h, w = image_shape
    outside = ~_inside(xy, image_shape)
    if outside.any():
        raise InputError(
            f"{source}: {int(outside.sum())} of {len(xy)} cells lie outside the "
            f"{w}x{h} px image {wsi_path.name}; are the coordinates in level-0 pixels?"
            + _outside_hint(xy, image_shape, pixel_size_um)
        )
    keep = np.array([not CONTROL_PATTERN.match(g) for g in genes])
    if not keep.any():
        raise InputError(f"{source}: no genes left after dropping control probes")
    check_unique(genes[keep], source, "gene names")
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
        cells_file=pathlib.Path(source),
    )


def _inside(xy: np.ndarray, image_shape: tuple[int, int]) -> np.ndarray:
    h, w = image_shape
    return (xy[:, 0] >= 0) & (xy[:, 1] >= 0) & (xy[:, 0] < w) & (xy[:, 1] < h)


def _outside_hint(xy: np.ndarray, image_shape: tuple[int, int], pixel_size_um: float) -> str:
    """What would put the cells inside: the two common mistakes, when one of them explains it."""
    if _inside(xy[:, ::-1], image_shape).all():
        return " With x and y exchanged all would lie inside: obsm['spatial'] holds (x, y)."
    if pixel_size_um > 1 and _inside(xy / pixel_size_um, image_shape).all():
        return (
            f" Divided by the pixel size ({pixel_size_um:g} µm/px) all would lie inside: are "
            "they in µm?"
        )
    return ""
