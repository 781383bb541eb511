"""Preprocessing's chunks run as an Apache Beam pipeline (`data.engine = "beam"`): the same shards,
sidecars and manifest as the local pool, on the DirectRunner's processes or on the machines of a
runner (Dataflow, Flink, Spark; launch/README.md).

Only the execution of chunks differs. `shards.preprocess` surveys the slides, plans the chunks,
hashes the settings and data, skips the chunks whose sidecar exists, validates the split and
assembles the manifest, exactly as for the local pool; this module runs the chunks left.

One element per chunk, and an element names its chunk rather than carrying it. The driver builds
each unfinished chunk in turn (a band of one slide: its cells' counts, positions and ids, and the
WSI's path; never pixels), pickles it to `<shard dir>/.beam/<name>.pkl` and lets it go, so it holds
one chunk at a time, as the local pool does, and the job graph holds a few bytes per chunk however
large the cohort. A worker loads its chunk and runs the kind's `run_chunk`, the local workers'
function: it reads the WSI regions, builds the tile graphs, encodes the records and writes the shard,
then the sidecar. Records are therefore the same bytes whatever ran them.

Why chunks are not rebuilt on the workers from the config: the panel, the hash and the split checks
span every slide, so a worker would have to load and survey the whole cohort (and repeat ST-Align's
per-slide k-means) to cut one band of one slide. The driver does that once, holding every slide's
cell table (as with the local pool: the shared code needs them), never their images; the staged
chunks are that table cut into bands, on disk.

Storage: workers reach the staged chunks, the WSIs and the shard directory by the driver's paths,
through the local filesystem API (atomic renames). On one machine that is its disk; on a cluster,
a POSIX filesystem mounted at the same path on the driver and on every worker (NFS, Lustre,
Filestore, GCS FUSE). gs:// URLs are not supported (`cli.local_paths` refuses them); a worker that
cannot see the staged chunk says so.

Progress: the driver watches the sidecars appear (the proof of completion, whatever the runner) and
feeds them to the local pool's bar; workers count chunks and records in Beam metrics (namespace
"sigmma_jax"), which a runner's UI shows. A retried bundle skips the chunks whose sidecar exists.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import pickle
import shlex
import shutil
import threading
import time
from typing import Any, Callable, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from sigmma_jax import atomic
from sigmma_jax.errors import InputError

STAGING = ".beam"  # hidden: the shard directory's listings skip dotted names
NAMESPACE = "sigmma_jax"


def pipeline_args(options: str | Sequence[str], workers: int) -> list[str]:
    """`data.beam_options` as arguments; "" is the DirectRunner with `workers` processes."""
    args = shlex.split(options) if isinstance(options, str) else list(options)
    return args or [
        "--runner=DirectRunner",
        f"--direct_num_workers={max(workers, 1)}",
        "--direct_running_mode=multi_processing",
        "--default_sdk_harness_log_level=WARNING",  # else every worker logs each bundle at INFO
    ]


def runner(options: PipelineOptions):
    """The DirectRunner as Beam runs it when Prism is unavailable: its FnApiRunner, whose workers
    are `--direct_num_workers` processes; None for other runners (Beam makes them from --runner).

    Since Beam 2.6x the DirectRunner first tries Prism, a binary it downloads from GitHub (a
    preprocessing command should not, and behind a firewall the download may hang); and Prism runs
    the Python work in this process (its LOOPBACK workers), whatever --direct_num_workers says.
    `--runner=PrismRunner` still asks for it."""
    if options.view_as(StandardOptions).runner not in (None, "DirectRunner"):
        return None
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    # The workers get the options (their log level...) as the DirectRunner hands them over.
    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    info = beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)
    return fn_runner.FnApiRunner(provision_info=fn_runner.ExtendedProvisionInfo(info))


def staged_path(out_dir: str | pathlib.Path, name: str) -> pathlib.Path:
    return pathlib.Path(out_dir) / STAGING / f"{name}.pkl"


def sidecar_path(out_dir: str | pathlib.Path, name: str) -> pathlib.Path:
    return pathlib.Path(out_dir) / f"{name}.json"


def _absolute(chunk):
    """The chunk with absolute paths: a runner's workers need not share the driver's cwd."""
    return dataclasses.replace(
        chunk, wsi_path=pathlib.Path(chunk.wsi_path).resolve(), out_dir=chunk.out_dir.resolve()
    )


def stage(todo: list[tuple[str, Callable[[], Any]]], out_dir: pathlib.Path) -> list[str]:
    """Each chunk built and written for the workers in turn (one in memory at a time); the names."""
    shutil.rmtree(out_dir / STAGING, ignore_errors=True)  # a stopped run's, maybe other settings
    for name, build in todo:
        data = pickle.dumps(_absolute(build()), protocol=pickle.HIGHEST_PROTOCOL)
        atomic.write_bytes(staged_path(out_dir, name), data)
    return [name for name, _ in todo]


class RunChunk(beam.DoFn):
    """On a worker: one staged chunk's shard, then its sidecar, by the kind's `run_chunk`."""

    def __init__(self, run_chunk: Callable[[Any], dict], unit: str):
        self.run_chunk, self.unit = run_chunk, unit
        self.chunks = beam.metrics.Metrics.counter(NAMESPACE, "chunks")
        self.skipped = beam.metrics.Metrics.counter(NAMESPACE, "chunks_already_done")
        self.records = beam.metrics.Metrics.counter(NAMESPACE, unit)

    def process(self, element: tuple[str, str]):
        out_dir, name = element
        if sidecar_path(out_dir, name).exists():  # a retried bundle: this chunk finished
            self.skipped.inc()
            return
        staged = staged_path(out_dir, name)
        if not staged.exists():
            raise FileNotFoundError(
                f"{staged}: the staged chunk is not on this worker; the shard directory must be "
                "a filesystem every worker mounts at the driver's path (launch/README.md)"
            )
        t0 = time.time()
        side = self.run_chunk(pickle.loads(staged.read_bytes()))
        self.chunks.inc()
        self.records.inc(len(side[self.unit]))
        logging.info(
            "chunk %s: %d %s in %.1f s", name, len(side[self.unit]), self.unit, time.time() - t0
        )
        yield name


class Sidecars(threading.Thread):
    """Calls `progress` with each chunk's sidecar once it appears (one listing per poll: cheap on a
    shared filesystem with many chunks)."""

    def __init__(self, out_dir: pathlib.Path, names: list[str], progress, every_s: float = 1.0):
        super().__init__(daemon=True)
        self.out_dir, self.waiting, self.progress = out_dir, set(names), progress
        self.every_s, self.stop = every_s, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.every_s):
            self.sweep()

    def sweep(self) -> None:
        appeared = {p.stem for p in self.out_dir.glob("*.json")} & self.waiting
        for name in sorted(appeared):
            self.progress(json.loads(sidecar_path(self.out_dir, name).read_text()))
        self.waiting -= appeared

    def __enter__(self) -> Sidecars:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.join()
        self.sweep()


def run_chunks(
    todo: list[tuple[str, Callable[[], Any]]],
    kind,
    out_dir: pathlib.Path,
    options: str | Sequence[str],
    workers: int,
    progress: Callable[[dict], None],
) -> None:
    """Runs the chunks `todo` ([(name, build)]) of `kind` into `out_dir` as a Beam pipeline with
    `options` (data.beam_options; "" the DirectRunner with `workers` processes), calling
    `progress` with each sidecar as it appears."""
    args = pipeline_args(options, workers)
    t0 = time.time()
    names = stage(todo, out_dir)
    logging.info(
        "preprocessing %d chunks on Beam (%s) into %s", len(names), " ".join(args), out_dir
    )
    elements = [(str(out_dir.resolve()), name) for name in names]
    pipeline_options = PipelineOptions(args)
    with Sidecars(out_dir, names, progress) as watch:
        with beam.Pipeline(runner=runner(pipeline_options), options=pipeline_options) as p:
            _ = (
                p
                | "chunks" >> beam.Create(elements)
                | "spread" >> beam.Reshuffle()  # else a runner may fuse all work into one worker
                | "run" >> beam.ParDo(RunChunk(kind.run_chunk, kind.unit))
            )
    if watch.waiting:  # the workers wrote elsewhere: their own disks, not the shared one
        raise InputError(
            f"the Beam pipeline finished, but {len(watch.waiting)} of {len(names)} chunks have no "
            f"sidecar in {out_dir} (e.g. {sorted(watch.waiting)[0]}): the shard directory must be "
            "a filesystem every worker mounts at the driver's path (launch/README.md)"
        )
    shutil.rmtree(out_dir / STAGING, ignore_errors=True)
    logging.info("beam: %d chunks in %.1f s", len(names), time.time() - t0)
