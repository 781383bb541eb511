"""HEST-1k Xenium samples -> `Slide` (docs/method.md, "Data formats"); `read_hest` hands Visium
samples to `visium.read_hest_visium`.

Cell-level counts come from the transcripts table, streamed in record batches (a slide holds
10^8 transcripts; they are never all in memory), grouped by `cell_id`. Centroids come from the
Xenium cell polygons, with the transcripts' mean position for cells the segmentation lacks.
`st/{id}.h5ad` is never used: for Xenium it holds 100 µm pseudo-spots, not cells.
"""

from __future__ import annotations

import json
import logging
import pathlib

import numpy as np
import scipy.sparse as sp

from sigmma_jax.data import readers

# Transcripts outside any cell carry these ids, depending on the Xenium software version.
UNASSIGNED = {"UNASSIGNED", "-1", ""}
SEG_ID_COLUMNS = ("cell_id", "__index_level_0__", "index", "id")


def sample_paths(hest_dir: str | pathlib.Path, sample_id: str) -> dict[str, pathlib.Path]:
    d = pathlib.Path(hest_dir)
    return dict(
        wsi=d / "wsis" / f"{sample_id}.tif",
        metadata=d / "metadata" / f"{sample_id}.json",
        transcripts=d / "transcripts" / f"{sample_id}_transcripts.parquet",
        cell_seg=d / "xenium_seg" / f"{sample_id}_xenium_cell_seg.parquet",
    )


def _strings(column) -> np.ndarray:
    """Arrow string/binary/dictionary/integer column -> numpy str array."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
        column = column.cast(pa.string())
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        column = pc.cast(column, pa.string())
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=str)


class _Index:
    """Grows a str -> int mapping batch by batch (Python work per distinct value, not per row)."""

    def __init__(self):
        self.of: dict[str, int] = {}

    def __call__(self, values: np.ndarray) -> np.ndarray:
        uniq, inverse = np.unique(values, return_inverse=True)
        ids = np.fromiter((self.of.setdefault(u, len(self.of)) for u in uniq), np.int64, len(uniq))
        return ids[inverse]

    def names(self) -> np.ndarray:
        out = np.empty(len(self.of), dtype=object)
        for k, i in self.of.items():
            out[i] = k
        return out.astype(str)


def read_transcripts(path: pathlib.Path, min_qv: float = 20.0, batch_rows: int = 1 << 21):
    """-> (cell_ids, genes, counts CSR (cells x genes), mean (x, y) per cell, report)."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:
        raise readers.InputError(f"{path}: cannot read as parquet ({type(e).__name__}: {e})") from e
    need = ("cell_id", "feature_name", "qv", "he_x", "he_y")
    missing = [c for c in need if c not in pf.schema_arrow.names]
    if missing:
        raise readers.InputError(f"{path}: missing columns {missing} (has {pf.schema_arrow.names})")
    cells, genes = _Index(), _Index()
    parts, xy_sum, n_tx = [], np.zeros((0, 2)), np.zeros(0)
    rep = dict(transcripts=0, low_qv=0, unassigned=0)
    for batch in pf.iter_batches(batch_size=batch_rows, columns=list(need)):
        rep["transcripts"] += batch.num_rows
        qv = batch.column("qv").to_numpy(zero_copy_only=False).astype(np.float32)
        cid = _strings(batch.column("cell_id"))
        keep = qv >= min_qv
        rep["low_qv"] += int((~keep).sum())
        assigned = ~np.isin(cid, list(UNASSIGNED))
        rep["unassigned"] += int((keep & ~assigned).sum())
        keep &= assigned
        if not keep.any():
            continue
        c = cells(cid[keep])
        g = genes(_strings(batch.column("feature_name"))[keep])
        x = batch.column("he_x").to_numpy(zero_copy_only=False)[keep]
        y = batch.column("he_y").to_numpy(zero_copy_only=False)[keep]
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise readers.InputError(f"{path}: he_x/he_y hold NaN or inf")
        parts.append(sp.coo_matrix((np.ones(len(c), np.float32), (c, g))))
        n = len(cells.of)
        xy_sum = np.pad(xy_sum, ((0, n - len(xy_sum)), (0, 0)))
        n_tx = np.pad(n_tx, (0, n - len(n_tx)))
        xy_sum[:, 0] += np.bincount(c, x, n)
        xy_sum[:, 1] += np.bincount(c, y, n)
        n_tx += np.bincount(c, minlength=n)
        if len(parts) >= 8:  # compact now and then: memory stays at one copy of the sparse counts
            parts = [_stack(parts, n, len(genes.of))]
    if not cells.of:
        raise readers.InputError(f"{path}: no transcript assigned to a cell with qv >= {min_qv}")
    counts = _stack(parts, len(cells.of), len(genes.of))
    return cells.names(), genes.names(), counts, xy_sum / n_tx[:, None], rep


def _stack(parts: list[sp.spmatrix], n_cells: int, n_genes: int) -> sp.csr_matrix:
    """Sums partial count matrices, each padded to the cells and genes seen so far."""
    total = sp.csr_matrix((n_cells, n_genes), dtype=np.float32)
    for p in parts:
        p = p.tocoo()
        total = total + sp.csr_matrix((p.data, (p.row, p.col)), shape=(n_cells, n_genes))
    return total


def read_centroids(path: pathlib.Path) -> dict[str, tuple[float, float]]:
    """Cell polygon centroids (WSI level-0 px) keyed by cell id, from a GeoParquet of polygons."""
    import pyarrow.parquet as pq
    import shapely

    try:
        table = pq.read_table(path)
    except Exception as e:
        raise readers.InputError(f"{path}: cannot read as parquet ({type(e).__name__}: {e})") from e
    id_col = next((c for c in SEG_ID_COLUMNS if c in table.column_names), None)
    if "geometry" not in table.column_names or id_col is None:
        raise readers.InputError(
            f"{path}: expected a 'geometry' column and a cell id column "
            f"({' / '.join(SEG_ID_COLUMNS)}), found {table.column_names}"
        )
    try:
        geoms = shapely.from_wkb(table.column("geometry").to_numpy(zero_copy_only=False))
    except Exception as e:
        raise readers.InputError(f"{path}: geometry is not WKB polygons ({e})") from e
    c = shapely.get_coordinates(shapely.centroid(geoms))
    return dict(zip(_strings(table.column(id_col)), map(tuple, c)))


def read_hest(hest_dir: str | pathlib.Path, sample_id: str, min_qv: float = 20.0) -> readers.Slide:
    """A HEST-1k sample, read as what its metadata's `st_technology` says it is: Xenium cells
    from the transcripts (`read_hest_xenium`), Visium spots from st/{id}.h5ad
    (`visium.read_hest_visium`)."""
    from sigmma_jax.data import visium  # visium imports this module

    if visium.technology(hest_dir, sample_id) == "visium":
        return visium.read_hest_visium(hest_dir, sample_id)
    return read_hest_xenium(hest_dir, sample_id, min_qv)


def read_hest_xenium(
    hest_dir: str | pathlib.Path, sample_id: str, min_qv: float = 20.0
) -> readers.Slide:
    p = sample_paths(hest_dir, sample_id)
    for key in ("wsi", "metadata", "transcripts"):
        if not p[key].exists():
            raise readers.InputError(
                f"{p[key]}: missing ({key} of HEST sample {sample_id}); "
                f"run `python -m sigmma_jax.check_data {hest_dir}`"
            )
    meta = json.loads(p["metadata"].read_text())
    pixel_size = meta.get("pixel_size_um_estimated") or meta.get("pixel_size_um_embedded")
    if not pixel_size:
        raise readers.InputError(f"{p['metadata']}: no pixel_size_um_estimated")
    with readers.WSI(p["wsi"]) as wsi:
        shape = wsi.shape
    cell_ids, genes, counts, mean_xy, rep = read_transcripts(p["transcripts"], min_qv)
    xy = mean_xy
    if p["cell_seg"].exists():
        cent = read_centroids(p["cell_seg"])
        have = np.array([c in cent for c in cell_ids])
        xy = mean_xy.copy()
        xy[have] = [cent[c] for c in cell_ids[have]]
        rep["centroid_from_transcripts"] = int((~have).sum())
    else:
        rep["centroid_from_transcripts"] = len(cell_ids)
        logging.warning(
            "%s: no cell segmentation; centroids are the transcripts' mean positions", p["cell_seg"]
        )
    logging.info("HEST %s: %s", sample_id, rep)
    slide = readers.make_slide(
        sample_id,
        p["wsi"],
        float(pixel_size),
        shape,
        xy,
        counts,
        genes,
        cell_ids,
        source=p["transcripts"],
    )
    slide.report = rep
    slide.group = patient_group(meta, sample_id)
    return slide


def patient_group(meta: dict, sample_id: str) -> str:
    """HEST-Benchmark's fold unit: the sample's (dataset_title, patient); a sample whose metadata
    names no patient is a group of its own."""
    patient = meta.get("patient")
    if patient is None or str(patient).strip().lower() in ("", "nan", "none"):
        return sample_id
    return f"{meta.get('dataset_title', '')} / {patient}"
