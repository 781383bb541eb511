"""Slides -> records -> ArrayRecord shards + manifest, for any kind of record.

A kind of record (SIGMMA's tiles, `tile_shards.TILES`; ST-Align's spots, `spot_shards.SPOTS`) says
what a record holds, how a slide is surveyed and cut into chunks, and what its manifest adds; the
orchestration here is shared. Work is cut into chunks (a band of one slide). Each chunk writes its
shard and then a sidecar JSON; the sidecar is the proof of completion, so a rerun skips finished
chunks and a crash never leaves a chunk looking complete. `data.engine` says what runs the chunks:
a local pool of processes, or an Apache Beam pipeline (`beam_pipeline`); nothing else differs. The
manifest (gene panel, the records and their splits, the report, and the kind's own entries) is
written last, atomically, from the sidecars. Its records are listed under the kind's unit
("tiles"; "spots", named by manifest["unit"]).
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import importlib
import json
import logging
import pathlib
import time

import ml_collections
import numpy as np
import tqdm

from sigmma_jax import atomic
from sigmma_jax.data import readers, sources, splits, validate, workers
from sigmma_jax.data.tile_shards import TILES
from sigmma_jax.workdir import lock as lock_dir

MANIFEST = "manifest.json"
# data.engine: what executes the chunks; surveying, planning, resuming and the manifest are shared.
ENGINES = ("local", "beam")


def unit(manifest: dict) -> str:
    """The manifest's key of its records: "tiles" (SIGMMA; manifests without "unit") or "spots"."""
    return manifest.get("unit", "tiles")


def items(manifest: dict) -> list[dict]:
    """The manifest's records (tiles or spots), in record order."""
    return manifest[unit(manifest)]


def shard_dir(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> pathlib.Path:
    """Where a run's shards live: `data.shard_dir` when set (shared between runs), else workdir/shards."""
    return pathlib.Path(config.data.shard_dir or pathlib.Path(workdir) / "shards")


def read_manifest(directory: str | pathlib.Path) -> dict:
    return json.loads((pathlib.Path(directory) / MANIFEST).read_text())


def _file_id(path: pathlib.Path, span: int = 1 << 20) -> list:
    """What identifies a file wherever it lies: its size and a checksum of its head and tail. A
    folder (an OME-Zarr image): the names and sizes of its files and its metadata files' bytes."""
    if path.is_dir():
        h, total = hashlib.sha256(), 0
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            rel, size = f.relative_to(path).as_posix(), f.stat().st_size
            h.update(f"{rel}\0{size}\0".encode())
            total += size
            if f.name in ("zarr.json", ".zattrs", ".zarray", ".zgroup"):
                h.update(f.read_bytes())
        return [total, h.hexdigest()[:16]]
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
    """The manifest with its records (tiles, spots) split by `split` (data.split): `split_config`,
    each record's `split`, the record indices per split, `folds` (the held-out groups of samples
    when split by sample, else []) and the split sizes in the report (`split_tiles`,
    `split_spots`). Nothing is read or written, so runs that share one shard set can each hold
    their own split (sigmma_jax.experiments)."""
    slides = manifest["slides"]
    tiles = [{k: v for k, v in t.items() if k != "split"} for t in items(manifest)]
    split_of = splits.make_splits(tiles, slides, split, manifest.get("groups"))
    by_sample = splits.split_by(slides, split) == "sample"
    return dict(
        manifest,
        split_config=split.to_dict(),
        **{unit(manifest): [dict(t, split=s) for t, s in zip(tiles, split_of)]},
        splits={n: [i for i, s in enumerate(split_of) if s == n] for n in ("train", "val", "test")},
        folds=splits.sample_folds(slides, manifest.get("groups")) if by_sample else [],
        report={
            **manifest["report"],
            f"split_{unit(manifest)}": {n: split_of.count(n) for n in ("train", "val", "test")},
        },
    )


def shard_hash(
    config: ml_collections.ConfigDict, slides: list[readers.Slide], panel: list[str], kind=TILES
) -> str:
    """The shard-defining settings and what identifies the data (not where it lies: a moved or
    copied workdir resumes)."""
    ident = kind.settings(config.data)
    ident.update(record_version=kind.version, panel=list(panel))
    ident.update(kind.hash_extra(config, slides))
    ident["slides"] = [
        (s.name, _file_id(s.wsi_path), s.image_shape, s.pixel_size_um, len(s.xy), _cells_id(s))
        for s in slides
    ]
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------
# Orchestration


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
    kind=TILES,
) -> dict:
    """Makes (or resumes, or reuses) the shard set of `config` and returns its manifest.

    `slides` (default: those `config.data` names) and `panel` (default: the genes they share) are
    given when a trained run embeds a slide: then the run's panel is the panel. `kind`: the
    records' kind (SIGMMA's tiles by default). The config is checked by the command that runs
    (`sigmma_jax.config_check`).
    """
    if engine(config.data) == "beam":
        beam_engine()  # a missing package is said before any slide is read
    with lock_dir(shard_dir(config, workdir), "shard directory") as out_dir:
        return _preprocess(config, workdir, out_dir, slides, panel, kind)


def engine(d: ml_collections.ConfigDict) -> str:
    """data.engine; configs saved before it existed (a trained run's) run locally."""
    return d.get("engine", "local")


def beam_engine():
    """`sigmma_jax.data.beam_pipeline`, imported only here: Apache Beam is an optional extra."""
    try:
        return importlib.import_module("sigmma_jax.data.beam_pipeline")
    except ImportError as e:
        if not (e.name or "").startswith("apache_beam"):
            raise
        raise readers.InputError(
            "data.engine = 'beam' needs Apache Beam: pip install 'sigmma_jax[beam]'"
        ) from e


class Progress:
    """The preprocessing bar, whatever runs the chunks: chunks done, the kind's records kept and
    its count per second; called with each finished chunk's sidecar."""

    def __init__(self, kind, total: int):
        self.bar = tqdm.tqdm(total=total, desc="preprocess", unit="chunk")
        self.unit, (self.what, self.key) = kind.unit, kind.rate
        self.items = self.n = 0

    def __call__(self, side: dict) -> None:
        self.items += len(side[self.unit])
        self.n += side["report"][self.key]
        self.bar.update(1)
        rate = self.bar.format_dict["elapsed"] or 1e-9
        self.bar.set_postfix(
            **{self.unit: self.items, f"{self.what}_per_s": f"{self.n / rate:,.0f}"}
        )

    def close(self) -> None:
        self.bar.close()


def _run_chunks(todo: list, kind, d: ml_collections.ConfigDict, out_dir: pathlib.Path) -> None:
    """Runs the chunks not finished yet, [(name, build)], by data.engine, with a progress bar."""
    progress = Progress(kind, len(todo))
    if engine(d) == "beam":
        beam_engine().run_chunks(todo, kind, out_dir, d.beam_options, d.workers, progress)
    else:
        _run_local([build for _, build in todo], kind, d.workers, out_dir, progress)
    progress.close()


def _run_local(todo: list, kind, n_workers: int, out_dir: pathlib.Path, progress) -> None:
    """The chunks' builds run in a bounded pool of `n_workers` processes (1: in this one)."""
    logging.info("preprocessing %d chunks with %d workers into %s", len(todo), n_workers, out_dir)
    if n_workers > 1:
        with workers.pool(n_workers) as pool:
            pending = set()
            for build in todo:
                if len(pending) >= 2 * n_workers:  # bounded: memory does not grow with the slide
                    finished, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                    for f in finished:
                        progress(f.result())
                pending.add(pool.submit(kind.run_chunk, build()))
            for f in cf.as_completed(pending):
                progress(f.result())
    else:
        for build in todo:
            progress(kind.run_chunk(build()))


def _preprocess(
    config: ml_collections.ConfigDict,
    workdir,
    out_dir: pathlib.Path,
    slides: list[readers.Slide] | None,
    panel: list[str] | None,
    kind,
) -> dict:
    d = config.data
    t0 = time.time()
    if slides is None:
        slides = sources.load_slides(config, workdir)
    panel, genes_dropped = kind.panel(slides, panel, config)
    h = shard_hash(config, slides, panel, kind)
    manifest_path = out_dir / MANIFEST
    split_cfg = d.split.to_dict()
    if manifest_path.exists():
        old = json.loads(manifest_path.read_text())
        if old.get("version") != kind.version or unit(old) != kind.unit:
            raise readers.InputError(
                f"{out_dir} holds shards of record version {old.get('version')}, written by an "
                f"older sigmma_jax or for another model ({unit(old)}; this one writes version "
                f"{kind.version} of {kind.unit}); delete it or point --config.data.shard_dir "
                "elsewhere to preprocess again"
            )
        if old["shard_hash"] != h:
            raise readers.InputError(
                f"{out_dir} holds shards made with other preprocessing settings or slides (hash "
                f"{old['shard_hash']} != {h}); point --config.data.shard_dir elsewhere or delete it"
            )
        groups = splits.sample_groups(slides)
        if old["split_config"] == split_cfg and old.get("groups") == groups:
            logging.info("shards up to date in %s (%d %s)", out_dir, len(items(old)), kind.unit)
            problem = validate.split_problem([t["split"] for t in items(old)], config, unit(old))
            if problem:
                raise readers.InputError(f"{out_dir}: {problem}")
            return old
        # Only the split (or the samples' groups) changed: refused as a fresh split would be,
        # else recorded.
        validate.split_tiles(items(old), old["slides"], config, groups=groups, unit=unit(old))
        manifest = with_split(dict(old, groups=groups), d.split)
        atomic.write_json(manifest_path, manifest)
        return manifest
    _remove_unfinished(out_dir, h)

    slide_report, chunks, where = kind.plan(slides, panel, genes_dropped, config, h, out_dir)
    todo = [(name, build) for name, build in chunks if not (out_dir / f"{name}.json").exists()]
    if todo:
        _run_chunks(todo, kind, d, out_dir)
    sides = [json.loads((out_dir / f"{name}.json").read_text()) for name, _ in chunks]
    shards = [s["shard"] for s in sides if s["shard"]]
    records = [t for s in sides for t in s[kind.unit]]
    report = {k: sum(s["report"][k] for s in sides) for k in sides[0]["report"]}
    if not records:
        raise kind.nothing_passed(config, where, report)
    slide_names = [s.name for s in slides]
    groups = splits.sample_groups(slides)
    validate.split_tiles(records, slide_names, config, groups=groups, unit=kind.unit)
    report.update(
        {f"{kind.unit}_kept": len(records)},
        slides=slide_report,
        genes=len(panel),
        seconds=round(time.time() - t0, 1),
    )
    manifest = dict(
        version=kind.version,
        **({} if kind.unit == "tiles" else {"unit": kind.unit}),
        shard_hash=h,
        settings=kind.settings(d),
        genes=panel,
        **kind.extra(records, config),
        slides=slide_names,
        groups=groups,
        shards=shards,
        **{kind.unit: records},
        report=report,
    )
    manifest = with_split(manifest, d.split)
    atomic.write_json(manifest_path, manifest)
    logging.info(
        "preprocessing report: %s",
        json.dumps({k: v for k, v in manifest["report"].items() if k != "slides"}),
    )
    return manifest
