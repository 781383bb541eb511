"""SIGMMA's records: tiles of H&E with their cells and micro-scale cell graph (docs/method.md,
"Data"), as a kind of `sigmma_jax.data.shards` (which orchestrates, resumes and writes manifests).

A slide is laid on its tile grid and surveyed before any pixel is read (`validate.survey`); a chunk
is a band of `data.chunk_rows` tile rows of one slide; each kept tile becomes one record
(`records.encode`). The manifest records the node and edge budgets every batch is padded to.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import Any

import ml_collections
import numpy as np
import scipy.sparse as sp

from sigmma_jax import atomic
from sigmma_jax.data import graphs, readers, records, tiling, validate
from sigmma_jax.errors import InputError

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


def write_shard(out_dir: pathlib.Path, name: str, payload: list[bytes]) -> str | None:
    """The chunk's records as `<name>.array_record`, atomically; None when it has none."""
    if not payload:
        return None
    from array_record.python.array_record_module import ArrayRecordWriter

    shard = f"{name}.array_record"
    with atomic.atomic_path(out_dir / shard) as tmp:
        w = ArrayRecordWriter(str(tmp), "group_size:1,zstd:1")
        for p in payload:
            w.write(p)
        w.close()
    return shard


def run_chunk(c: Chunk) -> dict:
    """Writes one chunk's shard, then its sidecar (the proof of completion); returns the sidecar."""
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
    side = dict(
        hash=c.shard_hash, shard=write_shard(c.out_dir, c.name, payload), tiles=tiles, report=rep
    )
    atomic.write_json(c.out_dir / f"{c.name}.json", side)
    return side


def _round_up(x: int, m: int) -> int:
    return max(m, int(math.ceil(x / m) * m))


class TileKind:
    """The tile records of SIGMMA for `shards.preprocess`."""

    unit = "tiles"
    version = records.VERSION
    rate = ("cells", "cells_kept")  # what the progress bar counts per second
    run_chunk = staticmethod(run_chunk)

    def settings(self, d: ml_collections.ConfigDict) -> dict[str, Any]:
        return {k: d[k] for k in SHARD_KEYS}

    def hash_extra(self, config: ml_collections.ConfigDict, slides) -> dict:
        d = config.data
        if d.cell_embedding_key:  # records then hold the embeddings too
            return {"cell_embeddings": (d.cell_embeddings, d.cell_embedding_key)}
        return {}

    def panel(self, slides, panel, config) -> tuple[list[str], dict[str, int]]:
        return validate.shared_panel(slides, panel)

    def plan(self, slides, panel, genes_dropped, config, h: str, out_dir: pathlib.Path):
        """(per-slide report, [(chunk name, build)], the slides' grids in words) after surveying
        every slide and refusing a split of the candidate tiles that could not train or evaluate;
        `build()` makes the chunk (one at a time: a chunk copies its cells' counts)."""
        d = config.data
        settings = self.settings(d)
        slide_report, chunks, surveys = {}, [], []
        for sv in validate.survey(slides, panel, d):
            slide, usable = sv.slide, sv.usable
            slide.counts = None  # the panel copy replaces it: one copy of the counts in memory
            grid, flat = sv.layout.grid, sv.layout.tile_of_cell
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
                r1 = min(r0 + d.chunk_rows, grid.rows)

                def build(slide=slide, grid=grid, rows=(r0, r1), name=name, sv=sv):
                    flat, local = sv.layout.tile_of_cell, sv.layout.local
                    inside = (flat >= rows[0] * grid.cols) & (flat < rows[1] * grid.cols)
                    sel = np.flatnonzero(sv.usable & inside)
                    return Chunk(
                        name,
                        slide.name,
                        slide.wsi_path,
                        grid,
                        rows,
                        flat[sel],
                        local[sel],
                        sv.counts[sel],
                        slide.cell_ids[sel],
                        None if slide.embeddings is None else slide.embeddings[sel],
                        settings,
                        h,
                        out_dir,
                    )

                chunks.append((name, build))
        validate.check_candidates(surveys, config)  # before hours of work
        return slide_report, chunks, validate.grids(surveys, d)

    def nothing_passed(self, config, where: str, report: dict) -> InputError:
        d = config.data
        return InputError(
            f"no tile passed the filters (min_cells={d.min_cells}, min_tissue={d.min_tissue}, "
            f"node_budget={d.node_budget} with overflow={d.overflow!r}) among {where}: {report}"
        )

    def extra(self, items: list[dict], config) -> dict:
        """The manifest's node and edge budgets: every batch is padded to them."""
        return dict(
            budgets=dict(
                nodes=max(config.data.node_budget, max(t["n_kept"] for t in items)),
                edges=_round_up(max(t["n_edges"] for t in items), 64),
            )
        )


TILES = TileKind()
