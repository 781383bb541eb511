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
from typing import Iterator

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

    def __call__(self, pieces: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        """One run (a batch of the earlier reader) as pieces of (distinct values, each row's index
        into them) -> the rows' global ids, pieces concatenated.

        New names get ids in sorted order within the run, first run first: the order that
        np.unique over the rows' strings gave before the dictionary-encoded reader, so cell and
        gene order (and every shard built from them) stay as they were."""
        used = [np.flatnonzero(np.bincount(codes, minlength=len(names))) for names, codes in pieces]
        # One np.unique over every piece's used values: it also merges a value repeated across
        # pieces (each row group has its own dictionary) or within one dictionary.
        every = np.concatenate([names[u] for (names, _), u in zip(pieces, used)])
        uniq, inverse = np.unique(every, return_inverse=True)
        of = self.of  # str keys (tolist): hashing them is cheaper than numpy str scalars
        ids = np.fromiter((of.setdefault(u, len(of)) for u in uniq.tolist()), np.int32, len(uniq))
        out, start = [], 0
        for (names, codes), u in zip(pieces, used):
            lut = np.zeros(len(names), np.int32)
            lut[u] = ids[inverse[start : start + len(u)]]
            start += len(u)
            out.append(lut[codes])
        return np.concatenate(out)

    def names(self) -> np.ndarray:
        out = np.empty(len(self.of), dtype=object)
        for k, i in self.of.items():
            out[i] = k
        return out.astype(str)


class _PairCounts:
    """Counts (cell, gene) pairs into one CSR matrix as a streaming reduction.

    Each run's pairs wait as int32 arrays and are folded into the running total (one coo->csr,
    duplicates summed) only once they outnumber its entries (and `min_pending`): a file of a few
    runs is one conversion, and a whole slide holds O(distinct pairs + a few runs), never a matrix
    per batch or a sum of matrices. A fold holds 20 bytes per entry (int32 rows and columns,
    float32 counts, then the CSR), so it peaks at 20 x (total + pending) <= 40 bytes per distinct
    pair; folding every time the pending pairs match the total costs 2 conversions per pair."""

    def __init__(self, min_pending: int):
        self.total = sp.csr_matrix((0, 0), dtype=np.float32)
        self.rows: list[np.ndarray] = []
        self.cols: list[np.ndarray] = []
        self.pending = 0
        self.min_pending = min_pending

    def add(self, cells: np.ndarray, genes: np.ndarray, n_cells: int, n_genes: int) -> None:
        self.rows.append(cells)
        self.cols.append(genes)
        self.pending += len(cells)
        if self.pending > max(self.total.nnz, self.min_pending):
            self.fold(n_cells, n_genes)

    def fold(self, n_cells: int, n_genes: int) -> sp.csr_matrix:
        # Filled in place, the total and the pending pairs let go of before the conversion: no
        # copy of the triplets beside them (np.concatenate of a coo would be one).
        total, self.total = self.total, None
        done = total.nnz
        rows = np.empty(done + self.pending, np.int32)
        cols = np.empty(done + self.pending, np.int32)
        data = np.ones(done + self.pending, np.float32)
        rows[:done] = np.repeat(np.arange(total.shape[0], dtype=np.int32), np.diff(total.indptr))
        cols[:done], data[:done] = total.indices, total.data
        del total
        at = done
        while self.rows:
            r, c = self.rows.pop(0), self.cols.pop(0)
            rows[at : at + len(r)], cols[at : at + len(r)] = r, c
            at += len(r)
        self.pending = 0
        coo = sp.coo_matrix((data, (rows, cols)), shape=(n_cells, n_genes))
        del rows, cols, data
        self.total = coo.tocsr()
        return self.total


TRANSCRIPT_COLUMNS = ("cell_id", "feature_name", "qv", "he_x", "he_y")
# Read dictionary-encoded: a batch then holds each distinct id once (parquet writers store string
# columns dictionary-encoded by default), so no per-row string ever exists. Integer ids stay ints.
ID_COLUMNS = ("cell_id", "feature_name")


def _open_transcripts(path: pathlib.Path) -> tuple[object, bool]:
    """-> (the file opened for reading, whether its batches must be regrouped into runs)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    # Pages streamed through a 1 MiB buffer, not whole column chunks loaded: memory stays bounded
    # by the batch even where a writer made one huge row group (older pyarrow: 64 Mi rows).
    stream = dict(buffer_size=1 << 20, pre_buffer=False)
    try:
        pf = pq.ParquetFile(path, **stream)
    except Exception as e:
        raise readers.InputError(f"{path}: cannot read as parquet ({type(e).__name__}: {e})") from e
    schema = pf.schema_arrow
    missing = [c for c in TRANSCRIPT_COLUMNS if c not in schema.names]
    if missing:
        raise readers.InputError(f"{path}: missing columns {missing} (has {schema.names})")
    if any(pa.types.is_dictionary(schema.field(c).type) for c in TRANSCRIPT_COLUMNS):
        # The file's arrow schema keeps a column dictionary-encoded, so the plain reader (the
        # earlier one) cut its batches at row groups already: read as it did, for the same
        # batches and so the same id order; other string columns are hashed batch by batch.
        return pf, False
    pf.close()
    # read_dictionary names must exist (KeyError otherwise), hence the second open, once checked.
    return pq.ParquetFile(path, read_dictionary=list(ID_COLUMNS), **stream), True


def _dictionary(column) -> tuple[np.ndarray, np.ndarray]:
    """An id column -> (its distinct values as str, each row's index into them, -1 for a null).

    Columns not dictionary-encoded in the file (integer ids, a dictionary-less writer) are hashed
    here in C++; the str conversion then costs one step per distinct value, not per row."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not pa.types.is_dictionary(column.type):
        column = pc.dictionary_encode(column)
    indices = column.indices
    if indices.null_count:
        indices = indices.fill_null(-1)
    codes = indices.to_numpy()
    values = column.dictionary
    if values.null_count:  # a null among the values is a null id as well
        null = np.append(values.is_null().to_numpy(zero_copy_only=False), True)
        codes = np.where(null[codes], -1, codes)
    return _strings(values), codes


def _runs(pf, batch_rows: int, regroup: bool) -> Iterator[list]:
    """The file as runs of `batch_rows` rows (the plain reader's batches), each a list of record
    batches; with `regroup` False, each batch as it comes is a run.

    The dictionary reader also cuts its batches where a row group (a dictionary) ends; ids are
    assigned run by run as the earlier reader did batch by batch, so the order stays."""
    batches = pf.iter_batches(batch_size=batch_rows, columns=list(TRANSCRIPT_COLUMNS))
    if not regroup:
        yield from ([b] for b in batches)
        return
    run, filled = [], 0
    for batch in batches:
        while batch.num_rows:
            take = min(batch.num_rows, batch_rows - filled)
            run.append(batch.slice(0, take))
            batch, filled = batch.slice(take), filled + take
            if filled == batch_rows:
                yield run
                run, filled = [], 0
    if run:
        yield run


def _kept_rows(batch, min_qv: float, rep: dict, path: pathlib.Path) -> tuple | None:
    """-> the rows kept (qv >= min_qv, inside a cell) as ((cell values, codes), (gene values,
    codes), x, y), or None; counts the dropped rows into `rep`. A null cell id is outside any
    cell, like UNASSIGNED; a null gene name is an error."""
    rep["transcripts"] += batch.num_rows
    # float32 as before: qv == 19.99999999 in float64 is 20 in float32 and kept, as it always was.
    keep = batch.column("qv").to_numpy(zero_copy_only=False).astype(np.float32) >= min_qv
    rep["low_qv"] += int(keep.size - np.count_nonzero(keep))
    cell_names, cell_codes = _dictionary(batch.column("cell_id"))
    # Per distinct value, then gathered per row; the appended last entry is what code -1 reads.
    inside = np.append(~np.isin(cell_names, list(UNASSIGNED)), False)[cell_codes]
    rep["unassigned"] += int(np.count_nonzero(keep & ~inside))
    keep &= inside
    if not keep.any():
        return None
    gene_names, gene_codes = _dictionary(batch.column("feature_name"))
    gene_codes = gene_codes[keep]
    if (gene_codes < 0).any():
        raise readers.InputError(f"{path}: feature_name holds nulls")
    x = batch.column("he_x").to_numpy(zero_copy_only=False)[keep]
    y = batch.column("he_y").to_numpy(zero_copy_only=False)[keep]
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise readers.InputError(f"{path}: he_x/he_y hold NaN or inf")
    return (cell_names, cell_codes[keep]), (gene_names, gene_codes), x, y


def read_transcripts(
    path: pathlib.Path, min_qv: float = 20.0, batch_rows: int = 1 << 21
) -> tuple[np.ndarray, np.ndarray, sp.csr_matrix, np.ndarray, dict]:
    """-> (cell_ids, genes, counts CSR (cells x genes), mean (x, y) per cell, report).

    Cells and genes are numbered by first appearance, run of `batch_rows` rows by run, sorted
    within a run. Memory: a run of rows, the per-cell sums and the pairs of `_PairCounts`."""
    pf, regroup = _open_transcripts(path)
    cells, genes = _Index(), _Index()
    pairs = _PairCounts(min_pending=2 * batch_rows)
    xy_sum, n_tx = np.zeros((0, 2)), np.zeros(0)
    rep = dict(transcripts=0, low_qv=0, unassigned=0)
    for run in _runs(pf, batch_rows, regroup):
        kept = [k for k in (_kept_rows(b, min_qv, rep, path) for b in run) if k is not None]
        if not kept:
            continue
        c = cells([k[0] for k in kept])
        g = genes([k[1] for k in kept])
        x = np.concatenate([k[2] for k in kept])
        y = np.concatenate([k[3] for k in kept])
        n = len(cells.of)
        pairs.add(c, g, n, len(genes.of))
        # Per-run bincounts added run by run: the float64 sums of the earlier reader, bit for bit.
        xy_sum = np.pad(xy_sum, ((0, n - len(xy_sum)), (0, 0)))
        n_tx = np.pad(n_tx, (0, n - len(n_tx)))
        xy_sum[:, 0] += np.bincount(c, x, n)
        xy_sum[:, 1] += np.bincount(c, y, n)
        n_tx += np.bincount(c, minlength=n)
    if not cells.of:
        raise readers.InputError(f"{path}: no transcript assigned to a cell with qv >= {min_qv}")
    counts = pairs.fold(len(cells.of), len(genes.of))
    return cells.names(), genes.names(), counts, xy_sum / n_tx[:, None], rep


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
