"""SpatialData stores (scverse): any platform spatialdata-io reads, as one `readers.Slide`.

A store holds the H&E as an image element, the cells (or Visium spots) as a table of counts, and
the shapes or labels the table annotates. Positions are mapped into the H&E's level-0 pixels by the
store's own transformations (`get_transformation_between_coordinate_systems`): every platform's
registration (Xenium's alignment affine, Visium's full-resolution pixels, CosMx's field-of-view
offsets, MERSCOPE's micron-to-mosaic matrix) is the one spatialdata-io wrote, not a guess here. The
pixels are read from the image element's own zarr arrays (`readers.WSI`), lazily, like a TIFF.

Units: a transformation carries no unit, so the H&E's µm per pixel comes from
`data.pixel_size_um` when given, else (Visium spots, with array_row and array_col) from the 100 µm
array pitch as the Space Ranger reader finds it, else from `data.spatialdata.um_per_unit`, the µm
per unit of the cells' own coordinates (1 for Xenium's and MERSCOPE's shapes, which are in µm;
CosMx: its pixel size).

Needs the `[spatialdata]` extra (`pip install sigmma_jax[spatialdata]`).
"""

from __future__ import annotations

import logging
import pathlib

import numpy as np
import scipy.sparse as sp

from sigmma_jax.data import readers
from sigmma_jax.errors import InputError

EXTRA = "the spatialdata source needs the extra: pip install 'sigmma_jax[spatialdata]'"
OURS = "sigmma_"  # the prefix of the elements results add to a store (analysis.spatialdata_out)
TISSUE_COLUMN = (
    "in_tissue"  # Visium's spots over glass are dropped, as the Space Ranger reader does
)


def import_spatialdata():
    """spatialdata, or the one line that says how to install it."""
    try:
        import spatialdata
    except ImportError as e:
        raise InputError(f"{EXTRA} ({e})") from e
    return spatialdata


def open_store(store):
    """A SpatialData object read from a zarr store path (lazily), or `store` itself when it is one
    already (written to disk: its image is read from there)."""
    sd = import_spatialdata()
    if isinstance(store, sd.SpatialData):
        if store.path is None:
            raise InputError(
                "the SpatialData object is not on disk: write it first (sdata.write('x.zarr')) and "
                "name that store (--config.data.spatialdata.store=x.zarr)"
            )
        return store
    path = pathlib.Path(store)
    if not path.exists():
        raise InputError(f"{path}: SpatialData store not found")
    if not readers.is_ome_zarr(path):
        raise InputError(f"{path}: not a zarr store (no zarr.json or .zgroup)")
    try:
        return sd.read_zarr(path)
    except Exception as e:  # spatialdata raises many types on other zarr groups
        raise InputError(
            f"{path}: cannot read as a SpatialData store ({type(e).__name__}: {e})"
        ) from e


def pick(elements, name: str, what: str, store, flag: str) -> str:
    """`name`, or the only element of its kind that is not one of this project's results (named
    "sigmma_...", added by `embed --spatialdata`); the error lists what the store holds."""
    names = sorted(k for k in elements.keys() if name or not k.startswith(OURS))
    if name:
        if name not in elements:
            raise InputError(f"{store}: no {what} {name!r}; it holds {names or 'none'}")
        return name
    if len(names) == 1:
        return names[0]
    if not names:
        raise InputError(f"{store}: no {what} element; {HINTS[what]}")
    raise InputError(
        f"{store}: {len(names)} {what}s ({', '.join(names)}): name one with {flag}=NAME"
    )


HINTS = {
    "image": "the H&E must be in the store (spatialdata_io.xenium_aligned_image(HE, ALIGNMENT), "
    "or Image2DModel.parse of the H&E, with its transformation to the cells' coordinate system)",
    "table": "the cells' counts must be in a table (TableModel.parse) annotating their shapes",
}


def _transform(sdata, element: str, image: str, coordinate_system: str, store) -> np.ndarray:
    """The 3x3 matrix from `element`'s coordinates to the image's level-0 pixels, (x, y)."""
    from spatialdata.transformations import (
        get_transformation,
        get_transformation_between_coordinate_systems,
    )

    try:
        t = get_transformation_between_coordinate_systems(
            sdata,
            sdata[element],
            sdata[image],
            intermediate_coordinate_systems=coordinate_system or None,
        )
    except Exception as e:  # no path between them, or several and no coordinate system named
        systems = {n: sorted(get_transformation(sdata[n], get_all=True)) for n in (element, image)}
        raise InputError(
            f"{store}: cannot map {element!r} onto the image {image!r}: their coordinate systems "
            f"({element}: {systems[element]}, {image}: {systems[image]}) "
            + (
                "share none; give them one (spatialdata.transformations.set_transformation)"
                if not set(systems[element]) & set(systems[image])
                else "need naming: --config.data.spatialdata.coordinate_system=NAME"
            )
            + f" ({type(e).__name__})"
        ) from e
    return np.asarray(t.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y")), float)


def _apply(m: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """(x, y) points through the 3x3 affine `m`."""
    return (np.c_[xy, np.ones(len(xy))] @ m.T)[:, :2]


def _scale(m: np.ndarray) -> float:
    """Target units per source unit of the affine `m` (the root of its linear part's |det|)."""
    return float(np.sqrt(abs(np.linalg.det(m[:2, :2]))))


def _obsm_positions(sdata, table, key: str, image: str, coordinate_system: str, store):
    """(centroids, image px per unit) from the table's obsm[key], positions in `coordinate_system`
    ("" -> "global"), e.g. CosMx's CenterX/Y_global_px in obsm['global']."""
    from spatialdata.transformations import get_transformation

    system = coordinate_system or "global"
    if key not in table.obsm:
        raise InputError(f"{store}: the table has no obsm[{key!r}] (it has {sorted(table.obsm)})")
    systems = get_transformation(sdata[image], get_all=True)
    if system not in systems:
        raise InputError(
            f"{store}: the image {image!r} has no transformation to {system!r} (it has "
            f"{sorted(systems)}), where obsm[{key!r}] lies; name the system with "
            "--config.data.spatialdata.coordinate_system=NAME"
        )
    m = np.asarray(
        systems[system].inverse().to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y"))
    )
    return _apply(m, np.asarray(table.obsm[key], float)[:, :2]), _scale(m)


def _positions(sdata, table, image: str, coordinate_system: str, store):
    """(centroids (n, 2) in image level-0 px, image px per unit of the cells' coordinates) of the
    table's rows, through the elements the table annotates."""
    sd = import_spatialdata()
    from spatialdata.models import get_table_keys

    try:
        regions, region_key, instance_key = get_table_keys(table)
    except Exception as e:
        raise InputError(
            f"{store}: the table annotates no element (TableModel.parse with region, region_key "
            f"and instance_key): {type(e).__name__}: {e}"
        ) from e
    regions = [regions] if isinstance(regions, str) else list(regions)
    xy, scales = np.full((table.n_obs, 2), np.nan), []
    row_region = np.asarray(table.obs[region_key].astype(str))
    instances = np.asarray(table.obs[instance_key].astype(str))
    for region in regions:
        if region not in sdata:
            raise InputError(f"{store}: the table annotates {region!r}, which is not in the store")
        m = _transform(sdata, region, image, coordinate_system, store)
        circles = sd.to_circles(sdata[region])  # centroids of any shapes or labels, by instance
        rows = np.flatnonzero(row_region == region)
        at = readers.positions(
            instances[rows],
            np.asarray(circles.index.astype(str)),
            f"{store}: {region}",
            f"cells of the table have no shape in {region!r}",
        )
        local = np.c_[circles.geometry.x.to_numpy()[at], circles.geometry.y.to_numpy()[at]]
        xy[rows] = _apply(m, local)
        scales.append(_scale(m))
    return xy, float(np.median(scales))


def _pitch_um_per_px(table, xy: np.ndarray, source, report: dict) -> float:
    """Visium: µm per H&E pixel from the 100 µm array pitch, as the Space Ranger reader finds it
    (Space Ranger's spot_diameter_fullres is not 55 µm in pixels)."""
    from sigmma_jax.data import visium

    pos = visium.Positions(
        path=source,
        layout="spatialdata",
        barcode=np.asarray(table.obs_names, str),
        in_tissue=np.ones(table.n_obs, bool),
        array_row=np.asarray(table.obs["array_row"], int),
        array_col=np.asarray(table.obs["array_col"], int),
        xy=xy,
    )
    pitch, pairs = visium.array_pitch_px(pos)
    report.update(
        pixel_size_from="array pitch (100 µm)", array_pitch_px=pitch, array_pitch_pairs=pairs
    )
    return visium.ARRAY_PITCH_UM / pitch


def _counts(table, store) -> sp.csr_matrix:
    """The raw counts: layers['counts'] when the table keeps them there (scanpy's habit before
    normalising X), else X."""
    x = table.layers["counts"] if "counts" in table.layers else table.X
    if x is None:
        raise InputError(f"{store}: the table has no counts (X is empty)")
    return sp.csr_matrix(x)


def read_spatialdata(
    store,
    image: str = "",
    table: str = "",
    coordinate_system: str = "",
    centroids: str = "",
    um_per_unit: float = 1.0,
    pixel_size_um: float = 0.0,
    spot_diameter_um: float = 0.0,
    allow_non_integer: bool = False,
    name: str | None = None,
) -> readers.Slide:
    """One slide from a SpatialData store (module docstring): its H&E `image`, the cells or spots
    of `table` at the centroids of the shapes or labels it annotates, or at the positions of its
    obsm[`centroids`] in `coordinate_system`. `spot_diameter_um` > 0 reads Visium spots (rows with
    in_tissue == 0 dropped)."""
    sdata = open_store(store)
    where = pathlib.Path(sdata.path)
    image = pick(sdata.images, image, "image", where, "--config.data.spatialdata.image")
    table_name = pick(sdata.tables, table, "table", where, "--config.data.spatialdata.table")
    cells = sdata.tables[table_name]
    source = where / "tables" / table_name
    report = {}
    if spot_diameter_um and TISSUE_COLUMN in cells.obs.columns:
        keep = np.asarray(cells.obs[TISSUE_COLUMN]).astype(int) == 1
        if not keep.any():
            raise InputError(f"{source}: no spot has {TISSUE_COLUMN} == 1")
        report.update(spots_in_tissue=int(keep.sum()), spots_not_in_tissue=int((~keep).sum()))
        cells = cells[keep]
    if centroids:
        xy, px_per_unit = _obsm_positions(sdata, cells, centroids, image, coordinate_system, where)
    else:
        xy, px_per_unit = _positions(sdata, cells, image, coordinate_system, where)
    wsi_path = where / "images" / image
    with readers.WSI(wsi_path) as wsi:
        shape = wsi.shape
    if pixel_size_um <= 0:
        if spot_diameter_um > 0 and {"array_row", "array_col"} <= set(cells.obs.columns):
            pixel_size_um = _pitch_um_per_px(cells, xy, source, report)
        elif um_per_unit > 0:
            pixel_size_um = um_per_unit / px_per_unit
        else:
            raise InputError(
                f"{source}: no pixel size: set --config.data.pixel_size_um (µm per H&E level-0 "
                "pixel) or --config.data.spatialdata.um_per_unit (µm per unit of the cells)"
            )
        logging.info(
            "%s: the H&E is %.4g µm/px by the store's transformations", where, pixel_size_um
        )
    genes, names_from = readers.gene_names(cells, source)
    slide = readers.make_slide(
        name or where.name.split(".")[0],
        wsi_path,
        float(pixel_size_um),
        shape,
        xy,
        _counts(cells, source),
        genes,
        np.asarray(cells.obs_names, str),
        source=source,
        allow_non_integer=allow_non_integer,
    )
    slide.report.update(report, **({"gene_names_from": names_from} if names_from else {}))
    slide.spot_diameter_um = float(spot_diameter_um)
    return slide


def read_obs(store, table: str = ""):
    """The table's obs (indexed by cell id), carried into results like a cells file's."""
    sdata = open_store(store)
    name = pick(sdata.tables, table, "table", sdata.path, "--config.data.spatialdata.table")
    return sdata.tables[name].obs.copy()


def image_element(wsi_path, transformations: dict):
    """An H&E (TIFF or OME-Zarr) as a multiscale RGB image element with `transformations`, its
    pixels read lazily in 1024 px blocks through `readers.WSI` (8-bit, as the tiles see them)."""
    import dask.array as da
    from spatialdata.models import Image2DModel

    wsi = readers.WSI(wsi_path)
    h, w = wsi.shape
    step = 1024

    def block(y: int, x: int):  # (3, h, w): da.block joins the last two axes, y then x
        y1, x1 = min(y + step, h), min(x + step, w)
        part = da.from_delayed(_delayed_read(wsi, y, y1, x, x1), (y1 - y, x1 - x, 3), np.uint8)
        return part.transpose(2, 0, 1)

    image = da.block([[block(y, x) for x in range(0, w, step)] for y in range(0, h, step)])
    factors = []
    side = max(h, w)
    while side > 2048:
        factors.append(2)
        side //= 2
    return Image2DModel.parse(
        image,
        dims=("c", "y", "x"),
        c_coords=["r", "g", "b"],
        scale_factors=factors or None,
        transformations=transformations,
    )


def _delayed_read(wsi, y0, y1, x0, x1):
    import dask

    return dask.delayed(wsi.read)(y0, y1, x0, x1)


def add_image(sdata, image_path, matrix_csv=None, system: str = "global", name: str = "he"):
    """`sdata` with the H&E `image_path` added as image `name`, placed in coordinate system
    `system` by the 3x3 affine of `matrix_csv` (H&E level-0 px -> the system's units, (x, y);
    e.g. a landmark registration's), Identity without one; returns `sdata`. For stores whose
    reader adds no H&E (CosMx, MERSCOPE): README, "A SpatialData store"."""
    from spatialdata.transformations import Affine, Identity

    if matrix_csv:
        m = np.loadtxt(matrix_csv, delimiter=",", ndmin=2)
        if m.shape != (3, 3) or not np.isfinite(m).all() or abs(np.linalg.det(m[:2, :2])) < 1e-12:
            raise InputError(
                f"{matrix_csv}: expected an invertible 3x3 affine (H&E px -> {system})"
            )
        t = Affine(m, input_axes=("x", "y"), output_axes=("x", "y"))
    else:
        t = Identity()
    sdata[name] = image_element(image_path, {system: t})
    return sdata
