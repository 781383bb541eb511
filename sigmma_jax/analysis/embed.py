"""A trained run applied to a slide: `OUT/tiles.h5ad` and, with cells, `OUT/cells.h5ad`
(docs/method.md, "Using a trained model"; the command is `python -m sigmma_jax.embed`).

1. The run (`load_run`): config and manifest from run.json, the latest checkpoint's parameters
   restored onto the abstract state's shardings, the predictors fitted at the end of training.
2. The slide, in any input format (`config.data`) or an H&E image alone (`data.wsi` without
   `data.cells`), is preprocessed into OUT/shards by `shards.preprocess` with the run's gene panel
   and tile settings, keeping every cell of every kept tile (`overflow="keep"`); an H&E image alone
   keeps every tissue tile (`min_cells=0`) and is embedded by the HE tower only.
3. Tiles go through the model in batches. A tile with more cells than the run's node budget goes in a
   batch of a larger budget (doubled until it fits; each budget compiles once): its graph is the
   same kNN graph inside micro blocks, over all its cells.
4. Per-cell arrays stream into memory-mapped files, so memory holds one batch and the per-tile
   arrays; the AnnData files are written atomically at the end, then `OUT/embed.json`, which marks
   the output complete: a rerun with the same run and slide reuses it instead of embedding again.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import json
import logging
import pathlib
import shutil
import time
from typing import Any, Iterator

import grain
import jax
import ml_collections
import numpy as np
import pandas as pd
import scipy.sparse as sp
import tqdm

from sigmma_jax import atomic, sharding
from sigmma_jax.data import input_pipeline, readers, records, shards, sources, tiling
from sigmma_jax.evaluation import inference, predictors
from sigmma_jax.families.sigmma import FAMILY as SIGMMA
from sigmma_jax.scales import SCALES
from sigmma_jax.train import checkpoints, loop, run_info

DONE = "embed.json"
TILES = "tiles.h5ad"
CELLS = "cells.h5ad"


@dataclasses.dataclass
class Run:
    path: pathlib.Path
    config: ml_collections.ConfigDict
    manifest: dict
    model: Any
    params: Any
    step: int
    predictors: predictors.Predictors


def load_run(run_dir: str | pathlib.Path, mesh) -> Run:
    """A run directory's model and parameters (the latest checkpoint) and its predictors."""
    run_dir = pathlib.Path(run_dir)
    config, manifest = run_info.read(run_dir)
    path = run_dir / predictors.FILE
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: not found; the run has not finished, or predates it (rerun "
            "`python -m sigmma_jax.main` with the same --workdir: it resumes and writes it)"
        )
    model, abstract, mngr = loop.saved_model(config, run_dir, manifest, mesh)
    params, step = checkpoints.restore_params(mngr, abstract)
    mngr.close()
    return Run(run_dir, config, manifest, model, params, step, predictors.load(path))


def he_only(config: ml_collections.ConfigDict) -> bool:
    """An H&E image without cells: the generic source with `data.wsi` and no `data.cells`."""
    d = config.data
    return d.source == "generic" and bool(d.wsi) and not d.cells


def slide_config(
    run_config: ml_collections.ConfigDict,
    settings: dict,
    config: ml_collections.ConfigDict,
    out: pathlib.Path,
) -> ml_collections.ConfigDict:
    """The config the slide is preprocessed and embedded with: the run's, with the slide (`data`),
    batch, mesh and analysis of `config`, and the run's preprocessing `settings`."""
    c = ml_collections.ConfigDict(run_config.to_dict())
    c.data = ml_collections.ConfigDict(config.data.to_dict())
    c.data.update({k: v for k, v in settings.items() if k != "chunk_rows"})
    c.data.update(overflow="keep", shard_dir=str(out / "shards"))
    if he_only(config):
        c.data.min_cells = 0
    c.eval.batch = config.eval.batch
    c.mesh = ml_collections.ConfigDict(config.mesh.to_dict())
    # The mesh checks the batch; nothing trains or is evaluated on the slide's shards, so its split
    # is not checked either (data.validate.split_problem).
    c.train.global_batch, c.train.steps, c.evals = config.eval.batch, 0, ()
    c.analysis = ml_collections.ConfigDict(config.analysis.to_dict())
    return c


def node_budget(n: int, base: int) -> int:
    """The run's budget, doubled until `n` cells fit."""
    budget = base
    while n > budget:
        budget *= 2
    return budget


def _round_up(x: int, m: int) -> int:
    return max(m, -(-x // m) * m)


def _prefetch(gen: Iterator, depth: int = 2) -> Iterator:
    """Host work (decoding, padding) of the next batches in a thread while the model runs."""
    with cf.ThreadPoolExecutor(1) as pool:
        pending = []
        it = iter(gen)
        for _ in range(depth):
            pending.append(pool.submit(next, it, None))
        while True:
            item = pending.pop(0).result()
            if item is None:
                return
            pending.append(pool.submit(next, it, None))
            yield item


def _batches(source, tiles: list[dict], batch: int, base: int, mode: str) -> Iterator:
    """(record indices, decoded records, host batch) in groups of equal node budget."""
    groups: dict[int, list[int]] = {}
    for i, t in enumerate(tiles):
        groups.setdefault(node_budget(t["n_kept"], base), []).append(i)
    for nodes, idx in sorted(groups.items()):
        edges = _round_up(max(tiles[i]["n_edges"] for i in idx), 64)
        for start in range(0, len(idx), batch):
            chunk = idx[start : start + batch]
            recs = [records.decode(source[i]) for i in chunk]
            if mode == "he":
                images = np.zeros((batch,) + recs[0]["image"].shape, np.uint8)
                images[: len(recs)] = [r["image"] for r in recs]
                yield chunk, recs, {"image": images}
                continue
            padded = [input_pipeline.pad_tile(r, nodes, edges) for r in recs]
            padded += [input_pipeline.empty_tile(padded[0])] * (batch - len(padded))
            yield chunk, recs, input_pipeline.collate(padded)


def _run_model(run: Run, c, mesh, manifest: dict, mode: str, tmp: pathlib.Path):
    """Embeds every tile of the shard set: per-tile arrays in memory, per-cell arrays memory-mapped
    under `tmp`, rows in manifest order (cells: tile by tile, in each record's order)."""
    shard_dir = shards.shard_dir(c, tmp.parent)
    apply = inference.make_embed_fn(SIGMMA, run.model, mesh, mode)
    tiles = manifest["tiles"]
    n_cells = np.array([t["n_kept"] for t in tiles])
    offsets = np.concatenate([[0], np.cumsum(n_cells)])
    per_tile: dict[str, Any] = {}
    per_cell: dict[str, np.ndarray] = {}
    counts: list = [None] * len(tiles)
    ids: list = [None] * len(tiles)
    observed = np.zeros((len(tiles), len(manifest["genes"])), np.float32)
    source = grain.sources.ArrayRecordDataSource([str(shard_dir / s) for s in manifest["shards"]])
    batches = _batches(source, tiles, c.eval.batch, run.manifest["budgets"]["nodes"], mode)
    bar = tqdm.tqdm(total=len(tiles), desc="embed", unit="tile", smoothing=0.1)
    t0, done = time.time(), 0
    for chunk, recs, batch in _prefetch(batches):
        out = jax.device_get(apply(run.params, sharding.to_device(batch, mesh)))
        k = len(chunk)
        for key in ("he", "he_backbone", "st"):
            for s, v in out.get(key, {}).items():
                if (key, s) not in per_tile:
                    per_tile[key, s] = np.zeros((len(tiles), v.shape[-1]), np.float32)
                per_tile[key, s][chunk] = v[:k]
        for j, (i, r) in enumerate(zip(chunk, recs)):
            ids[i] = r["cell_ids"]
            counts[i] = sp.csr_matrix(r["counts"])
            observed[i] = np.log1p(r["tile_counts"])
            for s, v in out.get("nodes", {}).items():
                if s not in per_cell:
                    per_cell[s] = np.lib.format.open_memmap(
                        tmp / f"nodes_{s}.npy", "w+", np.float32, (offsets[-1], v.shape[-1])
                    )
                per_cell[s][offsets[i] : offsets[i + 1]] = v[j, : n_cells[i]]
        bar.update(k)
        done += int(n_cells[chunk].sum())
        bar.set_postfix(cells_per_s=f"{done / max(time.time() - t0, 1e-9):,.0f}")
    bar.close()
    seconds = time.time() - t0
    logging.info(
        "embedded %d tiles, %d cells in %.1fs (%.1f tiles/s)",
        len(tiles),
        offsets[-1],
        seconds,
        len(tiles) / max(seconds, 1e-9),
    )
    return per_tile, per_cell, counts, ids, observed, seconds


def _tile_names(tiles: list[dict]) -> list[str]:
    return [f"{t['slide']}_{t['row']}_{t['col']}" for t in tiles]


def h5ad_safe(df: pd.DataFrame) -> pd.DataFrame:
    """Strings as object dtype (pandas 3 makes Arrow strings, which anndata refuses to write)."""
    df = df.copy()
    if not pd.api.types.is_object_dtype(df.index.dtype):
        df.index = pd.Index(df.index.astype(str), dtype=object)
    for k in df.columns:
        col = df[k]
        if isinstance(col.dtype, pd.CategoricalDtype):
            cats = col.cat.categories
            if pd.api.types.is_string_dtype(cats.dtype) and not pd.api.types.is_object_dtype(cats):
                df[k] = col.cat.rename_categories(pd.Index(cats.astype(str), dtype=object))
        elif pd.api.types.is_string_dtype(col.dtype) and not pd.api.types.is_object_dtype(col):
            df[k] = col.astype(object)
        elif pd.api.types.is_object_dtype(col.dtype):
            df[k] = col.map(lambda v: v if isinstance(v, str) or v is None else str(v))
    return df


def _write_h5ad(adata, path: pathlib.Path) -> None:
    with atomic.atomic_path(path) as tmp:
        adata.write_h5ad(tmp)


def _tiles_adata(run, manifest, slides, per_tile, observed, preds, with_cells: bool):
    import anndata

    tiles = manifest["tiles"]
    s = manifest["settings"]
    grids = {sl.name: tiling.tile_grid(sl, s["target_mpp"], s["tile_px"]) for sl in slides}
    boxes = np.array([grids[t["slide"]].box(t["row"], t["col"]) for t in tiles], np.float64)
    obs = pd.DataFrame(
        {
            "slide": pd.Categorical([t["slide"] for t in tiles]),
            "row": [t["row"] for t in tiles],
            "col": [t["col"] for t in tiles],
            **{k: boxes[:, i] for i, k in enumerate(("x0", "y0", "x1", "y1"))},
            "n_cells": [t["n_kept"] for t in tiles],
        }
    )
    obs.index = pd.Index(_tile_names(tiles), dtype=object)
    obsm = {"spatial": (boxes[:, :2] + boxes[:, 2:]) / 2}
    for (key, scale), v in per_tile.items():
        name = {"he": "he", "st": "st", "he_backbone": "backbone"}[key]
        obsm[f"{name}_{scale}"] = v
    probe, knn = preds
    layers = {"knn": knn.astype(np.float32)}
    if with_cells:
        layers["observed"] = observed
    return anndata.AnnData(
        X=probe.astype(np.float32),
        obs=h5ad_safe(obs),
        var=pd.DataFrame(index=pd.Index(manifest["genes"], dtype=object)),
        obsm=obsm,
        layers=layers,
        uns=dict(
            sigmma=dict(
                run=str(run.path.resolve()),
                step=run.step,
                probe_embedding=run.predictors.probe_embedding,
                probe_scales=run.predictors.probe_scales,
                eval_genes=[str(g) for g in run.predictors.genes[run.predictors.eval_genes]],
                knn_k=run.predictors.knn_k,
                pixel_size_um={sl.name: sl.pixel_size_um for sl in slides},
                wsi={sl.name: str(sl.wsi_path.resolve()) for sl in slides},
                image_shape={sl.name: list(sl.image_shape) for sl in slides},
            )
        ),
    )


def _cells_adata(manifest, slides, obs_tables, per_cell, counts, ids):
    import anndata

    tiles = manifest["tiles"]
    n = [len(i) for i in ids]
    cell_ids = np.concatenate(ids).astype(str).astype(object)
    slide_of = np.repeat([t["slide"] for t in tiles], n).astype(object)
    obs = pd.DataFrame(
        {
            "slide": pd.Categorical(slide_of),
            "tile": pd.Categorical(np.repeat(_tile_names(tiles), n).astype(object)),
        },
        index=cell_ids,
    )
    xy = np.zeros((len(cell_ids), 2))
    joined = []  # the input's columns, joined on the ids slide by slide, indexed by row position
    for slide, table in zip(slides, obs_tables):
        sel = np.flatnonzero(slide_of == slide.name)
        xy[sel] = slide.xy[pd.Index(slide.cell_ids).get_indexer(cell_ids[sel])]
        if len(table.columns):
            part = table.reindex(pd.Index(cell_ids[sel].astype(str)))
            part.index = sel
            joined.append(part)
    if joined:
        extra = pd.concat(joined).reindex(np.arange(len(cell_ids)))
        for k in extra.columns:
            if k not in obs.columns:
                obs[k] = extra[k].array  # by position, keeping the dtype (categories)
    if len(slides) > 1:  # ids of different slides may collide: obs_names must be unique
        obs.insert(0, "cell_id", obs.index.to_numpy())
        obs.index = pd.Index(slide_of + "/" + cell_ids, dtype=object)
    return anndata.AnnData(
        X=sp.vstack(counts).tocsr().astype(np.float32),
        obs=h5ad_safe(obs),
        var=pd.DataFrame(index=pd.Index(manifest["genes"], dtype=object)),
        # np.asarray: a plain ndarray view of the memory map (anndata writes no np.memmap).
        obsm={
            "spatial": xy,
            **{f"sigmma_{s}": np.asarray(per_cell[s]) for s in SCALES if s in per_cell},
        },
    )


def embed_slide(
    run_dir: str | pathlib.Path, config: ml_collections.ConfigDict, out: str | pathlib.Path
) -> dict:
    """Writes OUT/tiles.h5ad and (with cells and the graph ST tower) OUT/cells.h5ad; returns
    OUT/embed.json's content. See the module docstring."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config_run, manifest_run = run_info.read(run_dir)
    c = slide_config(config_run, manifest_run["settings"], config, out)
    genes = manifest_run["genes"]
    if he_only(config):
        d = config.data
        slides = [readers.read_wsi_only(d.wsi, genes, d.pixel_size_um)]
        obs_tables = [pd.DataFrame()]
        mode = "he"
    else:
        slides = sources.load_slides(c, out)
        obs_tables = sources.load_obs(c, out)
        mode = "cells" if c.model.st_tower == "graph" else "tiles"
    manifest = shards.preprocess(c, out, slides=slides, panel=genes)
    mesh = sharding.make_mesh(c)
    run = load_run(run_dir, mesh)
    stamp = dict(run=str(run.path.resolve()), step=run.step, shard_hash=manifest["shard_hash"])
    done = out / DONE
    if done.exists():
        old = json.loads(done.read_text())
        if {k: old.get(k) for k in stamp} == stamp and all(
            (out / f).exists() for f in old["files"]
        ):
            logging.info("%s: already embedded with this run and slide; reusing it", out)
            return old
        done.unlink()  # stale: the files below are rewritten
    tmp = out / ".embed_tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        per_tile, per_cell, counts, ids, observed, seconds = _run_model(
            run, c, mesh, manifest, mode, tmp
        )
        preds = run.predictors.predict(
            {k: {s: v for (kk, s), v in per_tile.items() if kk == k} for k in ("he", "he_backbone")}
        )
        files = [TILES]
        tiles = _tiles_adata(run, manifest, slides, per_tile, observed, preds, mode != "he")
        _write_h5ad(tiles, out / TILES)
        if mode == "cells":
            cells = _cells_adata(manifest, slides, obs_tables, per_cell, counts, ids)
            _write_h5ad(cells, out / CELLS)
            files.append(CELLS)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = dict(
        stamp,
        mode=mode,
        files=files,
        tiles=len(manifest["tiles"]),
        cells=int(sum(len(i) for i in ids)),
        seconds=round(seconds, 1),
        tiles_per_s=round(len(manifest["tiles"]) / max(seconds, 1e-9), 2),
        preprocessing=manifest["report"],
    )
    atomic.write_json(done, result, indent=1)
    return result
