import json
import pathlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
from support.configs import load_config, preprocessing_only, shrink, tiny_config
from support.hest import sample
from support.xenium import rotation_affine, write_xenium_bundle

from sigmma_jax.data import hest, input_pipeline, readers, records, shards, tiling

# --- The transcript reader as it was before the dictionary-encoded rewrite (commit cebb916), a
# faithful copy: the new `hest.read_transcripts` must reproduce all of its output exactly.


def _ref_strings(column) -> np.ndarray:
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


class _RefIndex:
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


def _reference_read_transcripts(
    path: pathlib.Path, min_qv: float = 20.0, batch_rows: int = 1 << 21
):
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
    cells, genes = _RefIndex(), _RefIndex()
    parts, xy_sum, n_tx = [], np.zeros((0, 2)), np.zeros(0)
    rep = dict(transcripts=0, low_qv=0, unassigned=0)
    for batch in pf.iter_batches(batch_size=batch_rows, columns=list(need)):
        rep["transcripts"] += batch.num_rows
        qv = batch.column("qv").to_numpy(zero_copy_only=False).astype(np.float32)
        cid = _ref_strings(batch.column("cell_id"))
        keep = qv >= min_qv
        rep["low_qv"] += int((~keep).sum())
        assigned = ~np.isin(cid, list(hest.UNASSIGNED))
        rep["unassigned"] += int((keep & ~assigned).sum())
        keep &= assigned
        if not keep.any():
            continue
        c = cells(cid[keep])
        g = genes(_ref_strings(batch.column("feature_name"))[keep])
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
            parts = [_ref_stack(parts, n, len(genes.of))]
    if not cells.of:
        raise readers.InputError(f"{path}: no transcript assigned to a cell with qv >= {min_qv}")
    counts = _ref_stack(parts, len(cells.of), len(genes.of))
    return cells.names(), genes.names(), counts, xy_sum / n_tx[:, None], rep


def _ref_stack(parts: list[sp.spmatrix], n_cells: int, n_genes: int) -> sp.csr_matrix:
    """Sums partial count matrices, each padded to the cells and genes seen so far."""
    total = sp.csr_matrix((n_cells, n_genes), dtype=np.float32)
    for p in parts:
        p = p.tocoo()
        total = total + sp.csr_matrix((p.data, (p.row, p.col)), shape=(n_cells, n_genes))
    return total


# --- Tests.


def test_hest_sample_reads_as_the_same_slide_as_the_generic_format(tmp_path):
    wsi, cells, xy, counts, genes = sample(tmp_path)
    h = hest.read_hest(tmp_path / "hest", "TENX999")
    g = readers.read_generic(cells, wsi)
    assert h.pixel_size_um == pytest.approx(g.pixel_size_um) and h.image_shape == g.image_shape
    order = np.argsort(h.cell_ids)
    assert list(h.cell_ids[order]) == sorted(g.cell_ids)
    gorder = np.argsort(g.cell_ids)
    col = [list(h.genes).index(x) for x in g.genes]
    np.testing.assert_array_equal(h.counts.toarray()[order][:, col], g.counts.toarray()[gorder])
    np.testing.assert_allclose(h.xy[order], g.xy[gorder], atol=1e-6)
    assert h.dropped_controls == 2
    assert h.report["low_qv"] == len(xy) and h.report["unassigned"] == 50
    assert h.report["centroid_from_transcripts"] == 5


def test_the_same_slide_in_all_three_formats_gives_the_same_tiles(tmp_path):
    wsi, cells, xy, counts, genes = sample(tmp_path, side_px=1900, n_cells=900)
    affine = rotation_affine(0.2737, degrees=-4.0, translation=(950.0, -60.0))
    bundle, he, align = write_xenium_bundle(
        tmp_path / "x",
        xy,
        counts,
        genes,
        [f"cell{i}" for i in range(len(xy))],
        (1900, 1900),
        0.2737,
        affine,
    )
    out = {}
    for src in ("generic", "hest", "xenium"):
        c = tiny_config(tmp_path / f"shards_{src}")
        c.data.update(
            source=src,
            cells=str(cells),
            wsi=str(he if src == "xenium" else wsi),
            hest_dir=str(tmp_path / "hest"),
            sample_ids=("TENX999",),
            xenium_dir=str(bundle),
            alignment=str(align),
        )
        m = shards.preprocess(c, tmp_path)
        split = input_pipeline.ShardSource(c.data.shard_dir, m, "train")
        out[src] = (
            m,
            {
                (r["meta"]["row"], r["meta"]["col"]): r
                for r in (records.decode(split[i]) for i in range(len(split)))
            },
        )
    mg, rg = out["generic"]
    assert len(rg) > 3
    for src in ("hest", "xenium"):
        m, r = out[src]
        assert m["genes"] == mg["genes"]
        assert [(t["row"], t["col"], t["n_cells"]) for t in m["tiles"]] == [
            (t["row"], t["col"], t["n_cells"]) for t in mg["tiles"]
        ]
        assert r.keys() == rg.keys()
        for k in rg:
            np.testing.assert_array_equal(r[k]["image"], rg[k]["image"])
            a, b = np.lexsort(rg[k]["xy"].T), np.lexsort(r[k]["xy"].T)
            np.testing.assert_allclose(r[k]["xy"][b], rg[k]["xy"][a], atol=1e-3)
            np.testing.assert_array_equal(r[k]["counts"][b], rg[k]["counts"][a])
            np.testing.assert_array_equal(r[k]["tile_counts"], rg[k]["tile_counts"])
            np.testing.assert_array_equal(r[k]["senders"].size, rg[k]["senders"].size)


def test_several_samples_share_a_panel_and_split_bysample(tmp_path):
    sample(tmp_path, "TENX1", seed=1, n_genes=12)
    sample(tmp_path, "TENX2", seed=2, n_genes=10)  # a smaller panel: G10, G11 are not shared
    for fold, held_out in ((0, "TENX1"), (1, "TENX2")):
        c = preprocessing_only(tiny_config(tmp_path / f"shards{fold}"))
        c.data.update(source="hest", hest_dir=str(tmp_path / "hest"), sample_ids=("TENX1", "TENX2"))
        c.data.split.fold = fold
        m = shards.preprocess(c, tmp_path)
        assert m["genes"] == [f"G{i}" for i in range(10)]
        assert m["report"]["slides"]["TENX1"]["genes_not_shared"] == 2
        test = {m["tiles"][i]["slide"] for i in m["splits"]["test"]}
        train = {m["tiles"][i]["slide"] for i in m["splits"]["train"]}
        assert test == {held_out} and train == {"TENX1", "TENX2"} - {held_out}


@pytest.mark.parametrize(
    "case,pattern",
    [
        ("no_wsi", r"wsis/TENX999\.tif: missing \(wsi of HEST sample TENX999\)"),
        ("no_transcripts", r"TENX999_transcripts\.parquet: missing"),
        ("no_pixel_size", r"metadata/TENX999\.json: no pixel_size_um_estimated"),
        ("bad_columns", r"TENX999_transcripts\.parquet: missing columns \['he_x', 'he_y'\]"),
        ("corrupt_parquet", r"TENX999_transcripts\.parquet: cannot read as parquet"),
    ],
)
def test_bad_hest_input_names_the_file(tmp_path, case, pattern):
    sample(tmp_path)
    p = hest.sample_paths(tmp_path / "hest", "TENX999")
    if case == "no_wsi":
        p["wsi"].unlink()
    elif case == "no_transcripts":
        p["transcripts"].unlink()
    elif case == "no_pixel_size":
        p["metadata"].write_text(json.dumps({"st_technology": "Xenium"}))
    elif case == "bad_columns":
        t = pq.read_table(p["transcripts"]).drop_columns(["he_x", "he_y"])
        pq.write_table(t, p["transcripts"])
    elif case == "corrupt_parquet":
        p["transcripts"].write_bytes(p["transcripts"].read_bytes()[:1000])
    with pytest.raises(readers.InputError, match=pattern):
        hest.read_hest(tmp_path / "hest", "TENX999")


@pytest.mark.parametrize("kind", ["bytes", "int"])
def test_cell_ids_as_bytes_or_integers_read_as_strings(tmp_path, kind):
    # NCBI783's transcripts hold cell ids as bytes (b'aagigajm-1'), other samples as integers; the
    # segmentation keeps them as its GeoDataFrame index (on disk __index_level_0__), as strings for
    # the bytes case.
    n = 400
    if kind == "bytes":
        ids = [f"aagig{i:03d}-1".encode() for i in range(n)]
        seg = [i.decode() for i in ids]
    else:
        ids = seg = list(range(1, n + 1))
    wsi, cells, xy, counts, genes = sample(tmp_path, ids=ids, seg_ids=seg)
    h = hest.read_hest(tmp_path / "hest", "TENX999")
    g = readers.read_generic(cells, wsi)
    want = [i.decode() for i in ids] if kind == "bytes" else [str(i) for i in ids]
    assert sorted(h.cell_ids) == sorted(want)
    assert h.report["unassigned"] == 50 and h.report["centroid_from_transcripts"] == 5
    order = np.argsort(h.cell_ids)
    by_id = {c: i for i, c in enumerate(want)}
    rows = [by_id[c] for c in h.cell_ids[order]]
    col = [list(h.genes).index(x) for x in g.genes]
    np.testing.assert_array_equal(h.counts.toarray()[order][:, col], g.counts.toarray()[rows])
    np.testing.assert_allclose(h.xy[order], g.xy[rows], atol=1e-6)


def test_estimated_pixel_size_wins_over_a_wrong_embedded_one(tmp_path):
    # TENX95 and TENX99 embed 1.0 µm/px; their estimated size is 0.2125.
    sample(tmp_path, meta={"pixel_size_um_estimated": 0.2125, "pixel_size_um_embedded": 1.0})
    h = hest.read_hest(tmp_path / "hest", "TENX999")
    assert h.pixel_size_um == 0.2125
    grid = tiling.tile_grid(h, 0.5, 256)
    assert grid.box(0, 1)[0] == pytest.approx(256 * 0.5 / 0.2125)  # a tile is 128 µm wide


def test_folds_group_samples_by_dataset_and_patient(tmp_path):
    # HEST-Benchmark holds out a patient's samples together: IDC-like metadata with two samples of
    # one patient gives 3 folds of 4 samples.
    metas = {
        "TENX95": dict(dataset_title="Xenium breast", patient="Patient 2"),
        "TENX99": dict(dataset_title="Xenium breast", patient="Patient 1"),
        "NCBI783": dict(dataset_title="Janesick", patient="Patient 2"),  # other dataset: own group
        "NCBI785": dict(dataset_title="Janesick", patient="Patient 2"),
    }
    for seed, (sid, meta) in enumerate(metas.items()):
        sample(tmp_path, sid, seed=seed, meta=meta)
    c = tiny_config(tmp_path / "shards")
    c.data.update(source="hest", hest_dir=str(tmp_path / "hest"), sample_ids=tuple(metas))
    m = shards.preprocess(c, tmp_path)
    assert m["folds"] == [["TENX95"], ["TENX99"], ["NCBI783", "NCBI785"]]
    assert m["groups"]["NCBI785"] == "Janesick / Patient 2"
    for fold, held_out in enumerate(m["folds"]):
        c.data.split.fold = fold
        split = shards.with_split(m, c.data.split)
        test = {split["tiles"][i]["slide"] for i in split["splits"]["test"]}
        train = {split["tiles"][i]["slide"] for i in split["splits"]["train"]}
        assert test == set(held_out) and train == set(metas) - set(held_out)
    c.data.split.fold = 3
    with pytest.raises(readers.InputError, match="split fold 3 does not exist: 3 folds"):
        shards.with_split(m, c.data.split)
    assert hest.patient_group({"dataset_title": "x"}, "TENX1") == "TENX1"  # no patient: alone
    assert hest.patient_group({"patient": float("nan")}, "TENX1") == "TENX1"


def test_luad_config_computes_hests_folds_from_metadata(tmp_path):
    for seed, sid in enumerate(("TENX118", "TENX141")):
        sample(tmp_path, sid, seed=seed, meta=dict(dataset_title="LUAD", patient=f"P{seed}"))
    c = preprocessing_only(shrink(load_config("luad", "demo")))
    c.data.update(hest_dir=str(tmp_path / "hest"), shard_dir=str(tmp_path / "shards"))
    m = shards.preprocess(c, tmp_path)
    assert m["folds"] == [["TENX118"], ["TENX141"]]
    assert {m["tiles"][i]["slide"] for i in m["splits"]["test"]} == {"TENX118"}


# --- The dictionary-encoded transcript reader against the reference copy above.

ID_KINDS = ("str", "bytes", "large_string", "dict", "int")


def _random_transcripts(
    path: pathlib.Path,
    seed: int,
    ids: str = "str",
    genes: str = "str",
    n: int = 3000,
    row_group_size: int = 300,
    qv_type=pa.float32(),
    **write_kw,
) -> pathlib.Path:
    """A transcripts parquet of `n` rows with every kind of row the reader drops or keeps:
    unassigned ids (all three spellings), qv below, at and (float64) a hair under 20, control
    probes, non-ASCII and numeric-looking ids whose string order is not their number order, and a
    first stretch without a kept row (its runs give nothing)."""
    rng = np.random.default_rng(seed)
    n_cells = 150
    numbers = rng.choice(100_000, n_cells, replace=False) + 1  # "10" < "7" as strings
    names = np.array([f"c{v:x}-1" for v in numbers[:-3]] + ["zellé-1", "Zelle-1", "10"])
    cell = rng.integers(0, n_cells, n)
    outside = rng.random(n) < 0.15
    outside[: n // 10] = True
    gene_names = [f"G{i}" for i in rng.permutation(40)]
    gene_names += ["NegControlProbe_00042", "BLANK_0007", "antisense_ACTB"]
    gene = np.asarray(gene_names)[rng.integers(0, len(gene_names), n)]
    qv = rng.uniform(0, 40, n)
    qv[rng.random(n) < 0.05] = 20.0
    qv[rng.random(n) < 0.05] = 19.9999999  # 20 once in float32, as the reader compares it
    if ids == "int":
        cid = pa.array(np.where(outside, -1, numbers[cell]))
    else:
        unassigned = np.asarray(["UNASSIGNED", "-1", ""])[rng.integers(0, 3, n)]
        strs = np.where(outside, unassigned, names[cell]).tolist()
        cid = {
            "str": lambda: pa.array(strs),
            "bytes": lambda: pa.array([s.encode() for s in strs]),
            "large_string": lambda: pa.array(strs, pa.large_string()),
            "dict": lambda: pa.array(strs).dictionary_encode(),
        }[ids]()
    feature = {
        "str": lambda: pa.array(gene.tolist()),
        "bytes": lambda: pa.array([g.encode() for g in gene.tolist()]),
        "dict": lambda: pa.array(gene.tolist()).dictionary_encode(),
    }[genes]()
    table = pa.table(
        {
            "transcript_id": pa.array(np.arange(n, dtype=np.uint64)),
            "cell_id": cid,
            "feature_name": feature,
            "qv": pa.array(qv, qv_type),
            "he_x": pa.array(rng.uniform(0, 5000, n)),
            "he_y": pa.array(rng.uniform(0, 5000, n).astype(np.float32)),
        }
    )
    pq.write_table(table, path, row_group_size=row_group_size, **write_kw)
    return path


def _assert_identical(new: tuple, ref: tuple) -> None:
    """Every output equal, dtypes and the CSR's arrays included; the means bit for bit."""
    for a, b in zip(new[:2], ref[:2]):  # cell ids, genes: same names, same order
        assert a.dtype == b.dtype and a.tolist() == b.tolist()
    a, b = new[2], ref[2]
    assert type(a) is type(b) and a.shape == b.shape and a.dtype == b.dtype
    assert a.has_canonical_format and b.has_canonical_format
    for k in ("indptr", "indices", "data"):
        x, y = getattr(a, k), getattr(b, k)
        assert x.dtype == y.dtype and np.array_equal(x, y), k
    assert new[3].dtype == ref[3].dtype and new[3].shape == ref[3].shape
    assert new[3].tobytes() == ref[3].tobytes()
    assert new[4] == ref[4] and list(new[4]) == list(ref[4])


@pytest.mark.parametrize("batch_rows", [97, 1000, 1 << 21])
@pytest.mark.parametrize(
    "ids,genes",
    [
        ("str", "str"),
        ("bytes", "bytes"),
        ("large_string", "str"),
        ("dict", "dict"),
        ("dict", "bytes"),
        ("int", "str"),
    ],
)
def test_transcripts_read_exactly_as_the_reference_reader(tmp_path, ids, genes, batch_rows):
    # Row groups of 300 rows against runs of 97 or 1000: the dictionary reader's batches end at
    # row groups, the runs do not, and ids are still numbered run by run as before.
    for seed in range(2):
        path = _random_transcripts(tmp_path / f"{seed}.parquet", seed, ids, genes)
        for min_qv in (20.0, 0.0, 31.5):
            new = hest.read_transcripts(path, min_qv, batch_rows)
            _assert_identical(new, _reference_read_transcripts(path, min_qv, batch_rows))
        assert {"NegControlProbe_00042", "BLANK_0007"} <= set(new[1])  # make_slide drops them


@pytest.mark.parametrize(
    "write_kw",
    [
        dict(use_dictionary=False),  # plain-encoded strings: hashed per batch
        dict(dictionary_pagesize_limit=64),  # dictionary pages overflow: plain pages follow
        dict(qv_type=pa.float64(), row_group_size=1000),
    ],
)
def test_transcripts_read_exactly_as_the_reference_however_written(tmp_path, write_kw):
    path = _random_transcripts(tmp_path / "t.parquet", 3, "str", "str", n=5000, **write_kw)
    for batch_rows in (128, 700, 1 << 21):
        new = hest.read_transcripts(path, 20.0, batch_rows)
        _assert_identical(new, _reference_read_transcripts(path, 20.0, batch_rows))


def _error(fn, *args) -> str:
    with pytest.raises(readers.InputError) as e:
        fn(*args)
    return str(e.value)


@pytest.mark.parametrize("case", ["missing", "corrupt", "nan", "inf", "low_qv", "unassigned"])
def test_transcript_errors_are_the_reference_ones(tmp_path, case):
    path = _random_transcripts(tmp_path / "t.parquet", 0)
    t = pq.read_table(path)
    if case == "missing":
        pq.write_table(t.drop_columns(["qv", "he_y"]), path)
    elif case == "corrupt":
        path.write_bytes(path.read_bytes()[:1000])
    elif case in ("nan", "inf"):  # in the last kept row: a late batch
        kept = ~np.isin(t["cell_id"].to_numpy(zero_copy_only=False), list(hest.UNASSIGNED))
        kept &= t["qv"].to_numpy() >= 20
        x = t["he_x"].to_numpy().copy()
        x[np.flatnonzero(kept)[-1]] = np.nan if case == "nan" else np.inf
        t = t.set_column(t.column_names.index("he_x"), "he_x", pa.array(x))
        pq.write_table(t, path, row_group_size=300)
    elif case == "low_qv":
        t = t.set_column(t.column_names.index("qv"), "qv", pa.array(np.full(len(t), 5, np.float32)))
        pq.write_table(t, path)
    elif case == "unassigned":
        t = t.set_column(1, "cell_id", pa.array(["UNASSIGNED", "-1", ""] * (len(t) // 3)))
        pq.write_table(t, path)
    for batch_rows in (100, 1 << 21):
        want = _error(_reference_read_transcripts, path, 20.0, batch_rows)
        assert _error(hest.read_transcripts, path, 20.0, batch_rows) == want
        assert "\n" not in want and str(path) in want


def test_null_cell_ids_are_unassigned_and_null_genes_an_error(tmp_path):
    # The reference read a null id as a cell named "None"; it is a transcript outside any cell.
    n = 12
    t = pa.table(
        {
            "cell_id": pa.array(["a", None, "b", "UNASSIGNED"] * 3),
            "feature_name": pa.array(["G1", "G2", "G1", "G2"] * 3),
            "qv": pa.array(np.full(n, 30, np.float32)),
            "he_x": pa.array(np.arange(n, dtype=float)),
            "he_y": pa.array(np.zeros(n)),
        }
    )
    pq.write_table(t, tmp_path / "t.parquet")
    cells, genes, counts, xy, rep = hest.read_transcripts(tmp_path / "t.parquet", 20.0, 5)
    assert cells.tolist() == ["a", "b"] and genes.tolist() == ["G1"]
    assert counts.toarray().tolist() == [[3.0], [3.0]] and xy[:, 0].tolist() == [4.0, 6.0]
    assert rep == dict(transcripts=12, low_qv=0, unassigned=6)
    t = t.set_column(1, "feature_name", pa.array(["G1", "G2", None, "G2"] * 3))
    pq.write_table(t, tmp_path / "t.parquet")
    with pytest.raises(readers.InputError, match=r"t\.parquet: feature_name holds nulls$"):
        hest.read_transcripts(tmp_path / "t.parquet")
