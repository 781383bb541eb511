"""The HEST transcript reader against a plain pyarrow group-by of the same file: M transcripts/s,
peak memory, and whether their counts are identical.

  python -m sigmma_jax.bench transcripts --n_transcripts=3000000

Writes a synthetic HEST-1k Xenium `*_transcripts.parquet` first (not timed): string cell ids as
Xenium's ("aaabbbcc-1"), ~10 % UNASSIGNED, qv spread so that ~7 % fall under 20, a 300-gene panel
plus control probes, rows in field-of-view order, the other Xenium columns beside. Then, in turns,
`hest.read_transcripts` and the reference (`pq.read_table` of the reader's columns, the same
filter, `Table.group_by([cell_id, feature_name])` counting), each `--tx_repeats` times: medians.
Peak RSS is this process's high-water mark during each call (reset before it), and its growth
over the RSS the call started from.
"""

from __future__ import annotations

import gc
import pathlib
import re
import statistics
import tempfile
import time
from typing import Any, Callable

import numpy as np
from absl import flags

from sigmma_jax.tools.bench import common

flags.DEFINE_integer("n_transcripts", 3_000_000, "transcripts: rows of the synthetic parquet.")
flags.DEFINE_integer("tx_cells", 30_000, "transcripts: cells of the synthetic slide.")
flags.DEFINE_integer("tx_genes", 300, "transcripts: genes of the panel (+20 control probes).")
flags.DEFINE_integer("tx_repeats", 3, "transcripts: timed calls of each reader (medians).")

MIN_QV = 20.0
FOV_PX = 4000.0  # Xenium fields of view are ~1 mm², ~4000 px of a 0.2125 µm/px H&E
PIXEL_SIZE_UM = 0.2125


def _cell_names(rng: np.random.Generator, n: int) -> np.ndarray:
    """Xenium cell ids: 8 letters a-p (a base-16 number) and the "-1" dataset suffix."""
    numbers = rng.choice(16**8, n, replace=False)
    digits = (numbers[:, None] // 16 ** np.arange(7, -1, -1)) % 16
    letters = np.frombuffer(b"abcdefghijklmnop", np.uint8)[digits]
    return np.char.add(letters.view("S8").ravel().astype(str), "-1")


def write_transcripts(
    path: pathlib.Path, n_transcripts: int, n_cells: int, n_genes: int, seed: int = 0
) -> pathlib.Path:
    """A HEST-like Xenium transcripts parquet (see the module docstring), written as HEST's are:
    pyarrow's defaults (dictionary-encoded strings, 1 Mi-row row groups)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    genes = [f"GENE{i:04d}" for i in range(n_genes)]
    genes += [f"NegControlProbe_{i:05d}" for i in range(10)] + [f"BLANK_{i:04d}" for i in range(10)]
    side = np.sqrt(n_cells) * 60.0  # ~60 px (13 µm) between neighbouring cells
    centre = rng.uniform(0, side, (n_cells, 2))
    size = rng.lognormal(0, 0.5, n_cells)
    expression = np.r_[1.0 / np.arange(1, n_genes + 1) ** 0.8, np.full(20, 0.002)]
    outside = rng.random(n_transcripts) < 0.1
    cell = rng.choice(n_cells, n_transcripts, p=size / size.sum())
    gene = rng.choice(len(genes), n_transcripts, p=expression / expression.sum())
    xy = centre[cell] + rng.normal(0, 8.0, (n_transcripts, 2))
    xy[outside] = rng.uniform(0, side, (int(outside.sum()), 2))
    fov = (xy[:, 1] // FOV_PX) * 1000 + xy[:, 0] // FOV_PX
    order = np.lexsort((rng.random(n_transcripts), fov))
    cell_code = np.where(outside, n_cells, cell)[order].astype(np.int32)
    ids = pa.array(np.append(_cell_names(rng, n_cells), "UNASSIGNED"))
    xy = xy[order]

    def strings(codes: np.ndarray, values: pa.Array) -> pa.Array:  # plain strings, as Xenium's
        return pa.DictionaryArray.from_arrays(pa.array(codes), values).cast(pa.string())

    table = pa.table(
        {
            "transcript_id": pa.array(np.arange(n_transcripts, dtype=np.uint64)),
            "cell_id": strings(cell_code, ids),
            "overlaps_nucleus": pa.array(rng.integers(0, 2, n_transcripts).astype(np.uint8)),
            "feature_name": strings(gene[order].astype(np.int32), pa.array(genes)),
            "x_location": pa.array((xy[:, 0] * PIXEL_SIZE_UM).astype(np.float32)),
            "y_location": pa.array((xy[:, 1] * PIXEL_SIZE_UM).astype(np.float32)),
            "z_location": pa.array(rng.uniform(10, 20, n_transcripts).astype(np.float32)),
            "qv": pa.array(np.clip(rng.normal(32, 8, n_transcripts), 0, 40).astype(np.float32)),
            "fov_name": strings(
                np.unique(fov[order], return_inverse=True)[1].astype(np.int32),
                pa.array([f"F{i}" for i in range(len(np.unique(fov)))]),
            ),
            "nucleus_distance": pa.array(rng.exponential(3, n_transcripts).astype(np.float32)),
            "he_x": pa.array(xy[:, 0]),
            "he_y": pa.array(xy[:, 1]),
        }
    )
    pq.write_table(table, path)
    return path


def pyarrow_group_by(path: pathlib.Path, min_qv: float = MIN_QV):
    """The plain pyarrow reference: counts per (cell_id, feature_name) of the kept transcripts,
    as a table (cell_id, feature_name, count_all)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from sigmma_jax.data import hest

    t = pq.read_table(path, columns=list(hest.TRANSCRIPT_COLUMNS))
    inside = pc.invert(pc.is_in(t["cell_id"], value_set=pa.array(sorted(hest.UNASSIGNED))))
    t = t.filter(pc.and_(pc.greater_equal(t["qv"], min_qv), inside))
    return t.group_by(["cell_id", "feature_name"]).aggregate([([], "count_all")])


def same_counts(cell_ids: np.ndarray, genes: np.ndarray, counts, grouped) -> bool:
    """Whether the reader's CSR holds exactly the group-by's counts: every pair, nothing else."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import scipy.sparse as sp

    rows = pc.index_in(grouped["cell_id"], value_set=pa.array(cell_ids.tolist()))
    cols = pc.index_in(grouped["feature_name"], value_set=pa.array(genes.tolist()))
    if rows.null_count or cols.null_count:  # a cell or a gene the reader does not have
        return False
    want = sp.csr_matrix(
        (
            grouped["count_all"].to_numpy().astype(np.float32),
            (rows.to_numpy(), cols.to_numpy()),
        ),
        shape=counts.shape,
    )
    return want.nnz == counts.nnz and (want != counts).nnz == 0


def _rss_mb() -> dict[str, float]:
    status = pathlib.Path("/proc/self/status").read_text()
    return {k: int(re.search(rf"{k}:\s+(\d+)", status).group(1)) / 1024 for k in ("VmRSS", "VmHWM")}


def measured(fn: Callable[[], Any]) -> tuple[Any, float, float, float]:
    """-> (fn(), seconds, peak RSS MiB during the call, its growth over the RSS before it).

    The high-water mark is reset first (Linux: /proc/self/clear_refs), and memory that earlier
    calls left in arrow's pool handed back, so each call's peak is its own."""
    import pyarrow as pa

    gc.collect()
    pa.default_memory_pool().release_unused()
    try:
        pathlib.Path("/proc/self/clear_refs").write_text("5")
    except OSError:  # no reset: the peak is the process's so far (an upper bound)
        pass
    before = _rss_mb()["VmRSS"]
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    peak = _rss_mb()["VmHWM"]
    return out, seconds, peak, peak - before


def measure(path: pathlib.Path, repeats: int = 3, batch_rows: int = 1 << 21) -> dict:
    """Times both readers on `path` in turns; raises if their counts differ."""
    from sigmma_jax.data import hest

    runs: dict[str, list] = dict(reader=[], group_by=[])
    for _ in range(repeats):
        runs["reader"].append(measured(lambda: hest.read_transcripts(path, MIN_QV, batch_rows)))
        runs["group_by"].append(measured(lambda: pyarrow_group_by(path, MIN_QV)))
    cell_ids, genes, counts, _, rep = runs["reader"][-1][0]
    if not same_counts(cell_ids, genes, counts, runs["group_by"][-1][0]):
        raise RuntimeError(f"{path}: read_transcripts and the pyarrow group-by count differently")
    n = rep["transcripts"]
    r: dict[str, Any] = dict(
        transcripts=n,
        kept=int(counts.sum()),
        cells=len(cell_ids),
        genes=len(genes),
        counts_identical=True,
        repeats=repeats,
    )
    for name, calls in runs.items():
        seconds = statistics.median(c[1] for c in calls)
        r[f"{name}_s"] = round(seconds, 3)
        r[f"{name}_m_per_s"] = round(n / seconds / 1e6, 2)
        r[f"{name}_peak_rss_mb"] = round(max(c[2] for c in calls))
        r[f"{name}_rss_growth_mb"] = round(max(c[3] for c in calls))
    r["reader_vs_group_by"] = round(r["reader_m_per_s"] / r["group_by_m_per_s"], 2)
    return r


def run(
    n_transcripts: int, n_cells: int, n_genes: int, repeats: int, workdir: pathlib.Path
) -> dict:
    t0 = time.time()
    path = write_transcripts(
        workdir / "TENX000_transcripts.parquet", n_transcripts, n_cells, n_genes
    )
    generate_s = time.time() - t0
    return dict(measure(path, repeats), generate_s=round(generate_s, 1))


def run_cli(a) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        r = run(
            a.n_transcripts, a.tx_cells, a.tx_genes, a.tx_repeats, pathlib.Path(a.workdir or tmp)
        )
    common.print_result(r)
    return 0
