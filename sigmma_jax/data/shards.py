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
import pathlib
import time

import ml_collections
import numpy as np
import scipy.sparse as sp
import tqdm

from sigmma_jax import atomic
from sigmma_jax.data import graphs, readers, records, sources, splits, tiling, validate, workers
from sigmma_jax.workdir import lock as lock_dir

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
# data.overflow: what a tile with more cells than data.node_budget becomes. "keep" keeps them all
# and the manifest's node budget grows to the largest tile (embedding a slide: every cell counts).
OVERFLOW = ("subsample", "drop", "keep")


def shard_dir(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> pathlib.Path:
    """Where a run's shards live: `data.shard_dir` when set (shared between runs), else workdir/shards."""
    return pathlib.Path(config.data.shard_dir or pathlib.Path(workdir) / "shards")


def read_manifest(directory: str | pathlib.Path) -> dict:
    return json.loads((pathlib.Path(directory) / MANIFEST).read_text())


def _file_id(path: pathlib.Path, span: int = 1 << 20) -> list:
    """What identifies a file wherever it lies: its size and a checksum of its head and tail."""
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(span))
        f.seek(max(size - span, 0))
        h.update(f.read(span))
    return [size, h.hexdigest()[:16]]


def _cells_id(s: readers.Slide) -> str:
    """A checksum of the cells: centroids, counts and panel (a corrected cells file changes it)."""
    h = hashlib.sha256(np.ascontiguousarray(s.xy, np.float64).tobytes())
    for a in (s.counts.indptr, s.counts.indices, s.counts.data):
        h.update(np.ascontiguousarray(a).tobytes())
    h.update("\n".join(map(str, s.genes)).encode())
    return h.hexdigest()[:16]


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


def shard_hash(
    config: ml_collections.ConfigDict, slides: list[readers.Slide], panel: list[str]
) -> str:
    """The shard-defining settings and what identifies the data (not where it lies: a moved or
    copied workdir resumes)."""
    d = config.data
    ident = {k: d[k] for k in SHARD_KEYS}
    ident.update(record_version=records.VERSION, panel=list(panel))
    if d.cell_embedding_key:  # records then hold the embeddings too
        ident["cell_embeddings"] = (d.cell_embeddings, d.cell_embedding_key)
    ident["slides"] = [
        (s.name, _file_id(s.wsi_path), s.image_shape, s.pixel_size_um, len(s.xy), _cells_id(s))
        for s in slides
    ]
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


def shared_panel(
    slides: list[readers.Slide], panel: list[str] | None = None
) -> tuple[list[str], dict[str, int]]:
    """Genes present in every slide, sorted (so shards do not depend on the reader's gene order);
    and how many genes each slide loses. With `panel` (a trained run's), every slide must have each
    of its genes: a slide lacking one is refused by name, never zero-filled (docs/method.md)."""
    if panel is not None:
        for s in slides:
            missing = sorted(set(panel) - set(s.genes))
            if missing:
                raise readers.InputError(
                    f"slide {s.name}: {len(missing)} genes of the run's panel are missing: "
                    + ", ".join(missing[:20])
                    + (" ..." if len(missing) > 20 else "")
                )
        return list(panel), {s.name: len(s.genes) - len(panel) for s in slides}
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
    rows: tuple[int, int]  # tile rows [r0, r1) of this chunk
    tile_of_cell: np.ndarray  # flat tile index per cell of this chunk
    xy: np.ndarray  # (n, 2) tile-pixel coordinates
    counts: sp.csr_matrix  # (n, panel)
    cell_ids: np.ndarray  # (n,) the input's cell ids
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
        tiles_overflow_kept=0,
        cells_in_dropped_tiles=0,
        cells_subsampled_away=0,
        cells_kept=0,
    )
    tiles, payload = [], []
    order = np.argsort(c.tile_of_cell, kind="stable")
    uniq, starts, sizes = np.unique(c.tile_of_cell[order], return_index=True, return_counts=True)
    cells_of = {int(t): order[st : st + n] for t, st, n in zip(uniq, starts, sizes)}
    visit = list(cells_of)
    if s["min_cells"] == 0:  # every tile of the chunk's rows, with or without cells (H&E only)
        visit = range(c.rows[0] * c.grid.cols, c.rows[1] * c.grid.cols)
    with readers.WSI(c.wsi_path) as wsi:
        for t in visit:
            idx = cells_of.get(t, np.zeros(0, np.int64))
            n = len(idx)
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
            if n > s["node_budget"] and s["overflow"] == "keep":
                rep["tiles_overflow_kept"] += 1
            elif n > s["node_budget"]:
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
                cell_ids=c.cell_ids[idx],
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


def _remove_unfinished(out_dir: pathlib.Path, h: str) -> None:
    """Chunks of a preprocessing that never wrote its manifest, made with other settings or data:
    nothing uses them, and they must not block the corrected rerun."""
    stale = []
    for side in out_dir.glob("*.json"):
        if side.name == MANIFEST:
            continue
        try:
            meta = json.loads(side.read_text())
        except ValueError:
            meta = {}
        if meta.get("hash") != h:
            stale.append((side, meta.get("shard")))
    if stale:
        logging.warning(
            "%s: removing %d chunks of an unfinished preprocessing made with other settings or "
            "slides",
            out_dir,
            len(stale),
        )
    for side, shard in stale:
        if shard:
            (out_dir / shard).unlink(missing_ok=True)
        side.unlink()


def preprocess(
    config: ml_collections.ConfigDict,
    workdir: str | pathlib.Path,
    *,
    slides: list[readers.Slide] | None = None,
    panel: list[str] | None = None,
) -> dict:
    """Makes (or resumes, or reuses) the shard set of `config` and returns its manifest.

    `slides` (default: those `config.data` names) and `panel` (default: the genes they share) are
    given when a trained run embeds a slide: then the run's panel is the panel.
    """
    from sigmma_jax import config_check  # the registries it reads import this module

    config_check.validate(config)
    with lock_dir(shard_dir(config, workdir), "shard directory") as out_dir:
        return _preprocess(config, workdir, out_dir, slides, panel)


def _preprocess(
    config: ml_collections.ConfigDict,
    workdir,
    out_dir: pathlib.Path,
    slides: list[readers.Slide] | None,
    panel: list[str] | None,
) -> dict:
    d = config.data
    t0 = time.time()
    if slides is None:
        slides = sources.load_slides(config, workdir)
    panel, genes_dropped = shared_panel(slides, panel)
    h = shard_hash(config, slides, panel)
    manifest_path = out_dir / MANIFEST
    split_cfg = d.split.to_dict()
    if manifest_path.exists():
        old = json.loads(manifest_path.read_text())
        if old.get("version") != records.VERSION:
            raise readers.InputError(
                f"{out_dir} holds shards of record version {old.get('version')}, written by an "
                f"older sigmma_jax (this one writes {records.VERSION}); delete it or point "
                "--config.data.shard_dir elsewhere to preprocess again"
            )
        if old["shard_hash"] != h:
            raise readers.InputError(
                f"{out_dir} holds shards made with other preprocessing settings or slides (hash "
                f"{old['shard_hash']} != {h}); point --config.data.shard_dir elsewhere or delete it"
            )
        if old["split_config"] == split_cfg:
            logging.info("shards up to date in %s (%d tiles)", out_dir, len(old["tiles"]))
            problem = validate.split_problem([t["split"] for t in old["tiles"]], config)
            if problem:
                raise readers.InputError(f"{out_dir}: {problem}")
            return old
        # Only the split changed: refused as a fresh split would be, else recorded.
        validate.split_tiles(old["tiles"], old["slides"], config, groups=old.get("groups"))
        manifest = with_split(old, d.split)
        atomic.write_json(manifest_path, manifest)
        return manifest
    _remove_unfinished(out_dir, h)

    settings = {k: d[k] for k in SHARD_KEYS}
    names, todo, slide_report, surveys = [], [], {}, []
    for sv in validate.survey(slides, panel, d):
        slide, counts, usable = sv.slide, sv.counts, sv.usable
        slide.counts = None  # the panel copy replaces it: one copy of the counts in memory
        grid, flat, local = sv.layout.grid, sv.layout.tile_of_cell, sv.layout.local
        slide_report[slide.name] = dict(
            cells_total=len(flat),
            cells_outside_grid=int((flat < 0).sum()),
            cells_zero_counts=int(((flat >= 0) & ~usable).sum()),
            controls_dropped=slide.dropped_controls,
            genes_not_shared=genes_dropped[slide.name],
            grid=[grid.rows, grid.cols],
            pixel_size_um=slide.pixel_size_um,
            most_cells_in_a_tile=sv.fullest,
            **sv.layout.report,
            reader=slide.report,
        )
        surveys.append(sv)
        for ci, r0 in enumerate(range(0, grid.rows, d.chunk_rows)):
            name = f"{slide.name}-{ci:04d}"
            names.append(name)
            if (out_dir / f"{name}.json").exists():  # finished by an earlier run
                continue
            r1 = min(r0 + d.chunk_rows, grid.rows)
            rows = (flat >= r0 * grid.cols) & (flat < r1 * grid.cols)
            sel = np.flatnonzero(usable & rows)
            todo.append((name, slide, grid, (r0, r1), flat, local, counts, sel))
    validate.check_candidates(surveys, config)  # before hours of work
    slide_names = [s.name for s in slides]

    def chunks():  # built one at a time: a chunk copies its cells' counts
        for name, slide, grid, rows, flat, local, counts, sel in todo:
            yield Chunk(
                name,
                slide.name,
                slide.wsi_path,
                grid,
                rows,
                flat[sel],
                local[sel],
                counts[sel],
                slide.cell_ids[sel],
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
            with workers.pool(d.workers) as pool:
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
            f"node_budget={d.node_budget} with overflow={d.overflow!r}) among "
            f"{validate.grids(surveys, d)}: {report}"
        )
    groups = splits.sample_groups(slides)
    validate.split_tiles(tiles, slide_names, config, groups=groups)
    report.update(
        tiles_kept=len(tiles),
        slides=slide_report,
        genes=len(panel),
        seconds=round(time.time() - t0, 1),
    )
    manifest = dict(
        version=records.VERSION,
        shard_hash=h,
        settings=settings,
        genes=panel,
        budgets=dict(
            nodes=max(d.node_budget, max(t["n_kept"] for t in tiles)),
            edges=_round_up(max(t["n_edges"] for t in tiles), 64),
        ),
        slides=slide_names,
        groups=groups,
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
