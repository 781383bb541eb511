"""Slides -> tiles and cell graphs -> ArrayRecord shards + manifest.

Work is cut into chunks (a band of tile rows of one slide). Each chunk writes its shard and then a
sidecar JSON; the sidecar is the proof of completion, so a rerun skips finished chunks and a crash
never leaves a chunk looking complete. The manifest (gene panel, budgets, splits, report) is written
last, atomically, from the sidecars.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import json
import logging
import math
import multiprocessing
import pathlib
import time

import ml_collections
import numpy as np
import scipy.sparse as sp
import tqdm

from sigmma_jax import atomic
from sigmma_jax.data import graphs, readers, records, sources, splits, tiling

MANIFEST = "manifest.json"
# Settings that change what a tile record holds; a shard dir made with others is refused.
SHARD_KEYS = (
    "target_mpp",
    "tile_px",
    "min_cells",
    "min_tissue",
    "node_budget",
    "overflow",
    "graph",
    "micro_graph",
    "knn_k",
    "radius_px",
    "chunk_rows",
)


def shard_dir(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> pathlib.Path:
    """Where a run's shards live: `data.shard_dir` when set (shared between runs), else workdir/shards."""
    return pathlib.Path(config.data.shard_dir or pathlib.Path(workdir) / "shards")


def read_manifest(directory: str | pathlib.Path) -> dict:
    return json.loads((pathlib.Path(directory) / MANIFEST).read_text())


def with_split(manifest: dict, split: ml_collections.ConfigDict) -> dict:
    """The manifest with the tiles split by `split` (data.split): `split_config`, each tile's
    `split`, the record indices per split, `folds` (the held-out groups of samples when split by
    sample, else []) and the split sizes in the report. Nothing is read or written, so runs that
    share one shard set can each hold their own split (sigmma_jax.experiments)."""
    slides = manifest["slides"]
    tiles = [{k: v for k, v in t.items() if k != "split"} for t in manifest["tiles"]]
    split_of = splits.make_splits(tiles, slides, split, manifest.get("groups"))
    by_sample = splits.split_by(slides, split) == "sample"
    return dict(
        manifest,
        split_config=split.to_dict(),
        tiles=[dict(t, split=s) for t, s in zip(tiles, split_of)],
        splits={n: [i for i, s in enumerate(split_of) if s == n] for n in ("train", "val", "test")},
        folds=splits.sample_folds(slides, manifest.get("groups")) if by_sample else [],
        report=dict(
            manifest["report"], split_tiles={n: split_of.count(n) for n in ("train", "val", "test")}
        ),
    )


def shard_hash(config: ml_collections.ConfigDict, slides: list[readers.Slide]) -> str:
    d = config.data
    ident = {k: d[k] for k in SHARD_KEYS}
    if d.cell_embedding_key:  # records then hold the embeddings too
        ident["cell_embeddings"] = (d.cell_embeddings, d.cell_embedding_key)
    ident["slides"] = [
        (s.name, str(s.wsi_path), s.image_shape, s.pixel_size_um, len(s.xy), s.counts.shape[1])
        for s in slides
    ]
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


def shared_panel(slides: list[readers.Slide]) -> tuple[list[str], dict[str, int]]:
    """Genes present in every slide, sorted (so shards do not depend on the reader's gene order);
    and how many genes each slide loses."""
    common = set(slides[0].genes)
    for s in slides[1:]:
        common &= set(s.genes)
    if not common:
        raise readers.InputError("the slides share no gene: " + ", ".join(s.name for s in slides))
    panel = sorted(common)
    return panel, {s.name: len(s.genes) - len(panel) for s in slides}


# ---------------------------------------------------------------------------------------------------
# One chunk (runs in a worker process)


@dataclasses.dataclass
class Chunk:
    name: str
    slide: str
    wsi_path: pathlib.Path
    grid: tiling.TileGrid
    tile_of_cell: np.ndarray  # flat tile index per cell of this chunk
    xy: np.ndarray  # (n, 2) tile-pixel coordinates
    counts: sp.csr_matrix  # (n, panel)
    embeddings: np.ndarray | None  # (n, d) precomputed per-cell embeddings, if any
    settings: dict
    shard_hash: str
    out_dir: pathlib.Path


def run_chunk(c: Chunk) -> dict:
    s = c.settings
    rep = dict(
        tiles_few_cells=0,
        tiles_no_tissue=0,
        tiles_overflow_dropped=0,
        tiles_overflow_subsampled=0,
        cells_in_dropped_tiles=0,
        cells_subsampled_away=0,
        cells_kept=0,
    )
    tiles, payload = [], []
    order = np.argsort(c.tile_of_cell, kind="stable")
    uniq, starts, sizes = np.unique(c.tile_of_cell[order], return_index=True, return_counts=True)
    with readers.WSI(c.wsi_path) as wsi:
        for t, st, n in zip(uniq, starts, sizes):
            idx = order[st : st + n]
            row, col = divmod(int(t), c.grid.cols)
            if n < s["min_cells"]:
                rep["tiles_few_cells"] += 1
                rep["cells_in_dropped_tiles"] += int(n)
                continue
            image = tiling.read_tile(wsi, c.grid, row, col)
            if tiling.tissue_fraction(image) < s["min_tissue"]:
                rep["tiles_no_tissue"] += 1
                rep["cells_in_dropped_tiles"] += int(n)
                continue
            tile_counts = np.asarray(c.counts[idx].sum(0)).ravel().astype(np.float32)
            if n > s["node_budget"]:
                if s["overflow"] == "drop":
                    rep["tiles_overflow_dropped"] += 1
                    rep["cells_in_dropped_tiles"] += int(n)
                    continue
                # Seeded by position so reruns and other machines keep the same cells.
                rng = np.random.default_rng([row, col, int(n)])
                idx = np.sort(rng.choice(idx, s["node_budget"], replace=False))
                rep["tiles_overflow_subsampled"] += 1
                rep["cells_subsampled_away"] += int(n) - s["node_budget"]
            xy = c.xy[idx]
            blocks = graphs.micro_blocks(xy, c.grid.tile_px)
            snd, rcv = graphs.build_micro_graph(
                xy, blocks, s["graph"], s["knn_k"], s["radius_px"], s["micro_graph"]
            )
            meta = dict(slide=c.slide, row=row, col=col, n_cells=int(n))
            record = dict(
                image=image,
                xy=xy,
                blocks=blocks,
                counts=c.counts[idx].toarray(),
                senders=snd,
                receivers=rcv,
                tile_counts=tile_counts,
                meta=meta,
            )
            if c.embeddings is not None:
                record["cell_embedding"] = c.embeddings[idx]
            payload.append(records.encode(record))
            tiles.append(dict(meta, n_kept=len(idx), n_edges=len(snd)))
            rep["cells_kept"] += len(idx)
    shard = None
    if payload:
        from array_record.python.array_record_module import ArrayRecordWriter

        shard = f"{c.name}.array_record"
        with atomic.atomic_path(c.out_dir / shard) as tmp:
            w = ArrayRecordWriter(str(tmp), "group_size:1,zstd:1")
            for p in payload:
                w.write(p)
            w.close()
    side = dict(hash=c.shard_hash, shard=shard, tiles=tiles, report=rep)
    atomic.write_json(c.out_dir / f"{c.name}.json", side)
    return side


# ---------------------------------------------------------------------------------------------------
# Orchestration


def _round_up(x: int, m: int) -> int:
    return max(m, int(math.ceil(x / m) * m))


def preprocess(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict:
    """Makes (or resumes, or reuses) the shard set of `config` and returns its manifest."""
    d = config.data
    out_dir = shard_dir(config, workdir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    slides = sources.load_slides(config, workdir)
    h = shard_hash(config, slides)
    manifest_path = out_dir / MANIFEST
    split_cfg = d.split.to_dict()
    if manifest_path.exists():
        old = json.loads(manifest_path.read_text())
        if old["shard_hash"] != h:
            raise readers.InputError(
                f"{out_dir} holds shards made with other preprocessing settings or slides (hash "
                f"{old['shard_hash']} != {h}); point --config.data.shard_dir elsewhere or delete it"
            )
        if old["split_config"] == split_cfg:
            logging.info("shards up to date in %s (%d tiles)", out_dir, len(old["tiles"]))
            return old
        manifest = with_split(old, d.split)  # only the split changed
        atomic.write_json(manifest_path, manifest)
        return manifest

    panel, genes_dropped = shared_panel(slides)
    settings = {k: d[k] for k in SHARD_KEYS}
    names, todo, slide_report = [], [], {}
    for slide in slides:
        col_of = {g: i for i, g in enumerate(slide.genes)}
        counts = slide.counts[:, [col_of[g] for g in panel]].tocsr()
        slide.counts = None  # the panel copy replaces it: one copy of the counts in memory
        grid = tiling.tile_grid(slide, d.target_mpp, d.tile_px)
        flat, local = tiling.assign_cells(slide, grid)
        zero = np.asarray(counts.sum(1)).ravel() == 0
        slide_report[slide.name] = dict(
            cells_total=len(flat),
            cells_outside_grid=int((flat < 0).sum()),
            cells_zero_counts=int((zero & (flat >= 0)).sum()),
            controls_dropped=slide.dropped_controls,
            genes_not_shared=genes_dropped[slide.name],
            grid=[grid.rows, grid.cols],
            pixel_size_um=slide.pixel_size_um,
            reader=slide.report,
        )
        usable = (flat >= 0) & ~zero  # a cell without transcripts carries nothing to align
        for ci, r0 in enumerate(range(0, grid.rows, d.chunk_rows)):
            name = f"{slide.name}-{ci:04d}"
            names.append(name)
            side = out_dir / f"{name}.json"
            if side.exists():
                if json.loads(side.read_text())["hash"] != h:
                    raise readers.InputError(
                        f"{side}: chunk made with other settings (hash mismatch); "
                        f"point --config.data.shard_dir elsewhere or delete {out_dir}"
                    )
                continue
            rows = (flat >= r0 * grid.cols) & (flat < (r0 + d.chunk_rows) * grid.cols)
            todo.append((name, slide, grid, flat, local, counts, np.flatnonzero(usable & rows)))

    def chunks():  # built one at a time: a chunk copies its cells' counts
        for name, slide, grid, flat, local, counts, sel in todo:
            yield Chunk(
                name,
                slide.name,
                slide.wsi_path,
                grid,
                flat[sel],
                local[sel],
                counts[sel],
                None if slide.embeddings is None else slide.embeddings[sel],
                settings,
                h,
                out_dir,
            )

    if todo:
        logging.info(
            "preprocessing %d chunks with %d workers into %s", len(todo), d.workers, out_dir
        )
        bar = tqdm.tqdm(total=len(todo), desc="preprocess", unit="chunk")
        done = dict(tiles=0, cells=0)

        def progress(side):
            done["tiles"] += len(side["tiles"])
            done["cells"] += side["report"]["cells_kept"]
            bar.update(1)
            rate = bar.format_dict["elapsed"] or 1e-9
            bar.set_postfix(tiles=done["tiles"], cells_per_s=f"{done['cells'] / rate:,.0f}")

        if d.workers > 1:
            ctx = multiprocessing.get_context("spawn")  # fork after JAX/threads is unsafe
            with cf.ProcessPoolExecutor(d.workers, mp_context=ctx) as pool:
                pending = set()
                for c in chunks():
                    if (
                        len(pending) >= 2 * d.workers
                    ):  # bounded: memory does not grow with the slide
                        finished, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                        for f in finished:
                            progress(f.result())
                    pending.add(pool.submit(run_chunk, c))
                for f in cf.as_completed(pending):
                    progress(f.result())
        else:
            for c in chunks():
                progress(run_chunk(c))
        bar.close()

    sides = [json.loads((out_dir / f"{n}.json").read_text()) for n in names]
    shards = [s["shard"] for s in sides if s["shard"]]
    tiles = [t for s in sides for t in s["tiles"]]
    report = {k: sum(s["report"][k] for s in sides) for k in sides[0]["report"]}
    if not tiles:
        raise readers.InputError(
            f"no tile passed the filters (min_cells={d.min_cells}, min_tissue={d.min_tissue}, "
            f"node_budget={d.node_budget} with overflow={d.overflow!r}): {report}"
        )
    slide_names = [s.name for s in slides]
    report.update(
        tiles_kept=len(tiles),
        slides=slide_report,
        genes=len(panel),
        seconds=round(time.time() - t0, 1),
    )
    manifest = dict(
        version=1,
        shard_hash=h,
        settings=settings,
        genes=panel,
        budgets=dict(nodes=d.node_budget, edges=_round_up(max(t["n_edges"] for t in tiles), 64)),
        slides=slide_names,
        groups={s.name: s.group or s.name for s in slides},
        shards=shards,
        tiles=tiles,
        report=report,
    )
    manifest = with_split(manifest, d.split)
    atomic.write_json(manifest_path, manifest)
    logging.info(
        "preprocessing report: %s",
        json.dumps({k: v for k, v in manifest["report"].items() if k != "slides"}),
    )
    return manifest
