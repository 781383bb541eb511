"""`bench transcripts`: the HEST reader and the pyarrow group-by count the same synthetic file alike."""

import numpy as np
import pyarrow.parquet as pq

from sigmma_jax.data import hest
from sigmma_jax.tools.bench import transcripts


def test_the_benchmark_runs_and_both_readers_count_the_same(tmp_path):
    r = transcripts.run(20_000, 400, 30, repeats=1, workdir=tmp_path)
    assert r["counts_identical"] and r["transcripts"] == 20_000
    assert r["cells"] == 400 and 30 < r["genes"] <= 50  # 30 genes, some of 20 control probes
    t = pq.read_table(tmp_path / "TENX000_transcripts.parquet")
    assert t.schema.field("cell_id").type == "string"  # ids as Xenium writes them
    outside = np.isin(t["cell_id"].to_numpy(zero_copy_only=False), list(hest.UNASSIGNED))
    low = t["qv"].to_numpy() < transcripts.MIN_QV
    assert 0.05 < outside.mean() < 0.15 and 0.02 < low.mean() < 0.15
    assert r["kept"] == int((~outside & ~low).sum())
    for name in ("reader", "group_by"):
        assert r[f"{name}_m_per_s"] > 0 and r[f"{name}_peak_rss_mb"] > 0


def test_a_count_that_differs_is_caught(tmp_path):
    path = transcripts.write_transcripts(tmp_path / "t.parquet", 5_000, 100, 20)
    cells, genes, counts, _, _ = hest.read_transcripts(path)
    grouped = transcripts.pyarrow_group_by(path)
    assert transcripts.same_counts(cells, genes, counts, grouped)
    more = counts.copy()
    more.data[0] += 1
    assert not transcripts.same_counts(cells, genes, more, grouped)
    assert not transcripts.same_counts(cells[:-1], genes, counts[:-1], grouped)  # a cell missing
