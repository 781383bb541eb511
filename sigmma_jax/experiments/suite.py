"""Every method x fold x seed of a config's suite, each run in its own folder over one shard set.

    W/slide/                    the demo's synthetic slide (generated once)
    W/shards/                   the shard set every run reads (preprocessed once)
    W/runs/NAME/METHOD/foldK/seedS/   one run: what `python -m sigmma_jax.main` writes, and time.json
    W/tables.{md,csv,json}, W/plots/  the paper's tables (sigmma_jax.experiments.tables)

NAME is "main" for Tables 1, 2 and 4, and a `suite.backbones` entry's name for the runs of that
backbone: which methods run on it is the family's choice (`backbone_methods(arch)`: SIGMMA's
Table 3, a vision-language model's text tower on gene sentences, ST-Align's pathology and CLIP
rows). A preset named without converted weights on disk runs at random initialisation and its
rows say so (`random_init`); the tables keep it out of every comparison. A run whose results.json
exists is finished and skipped, so an interrupted suite resumes; an interrupted run resumes from its
last checkpoint. Each run holds its own split of the shared shard set (`shards.with_split`), so no
run rewrites another's manifest.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import resource
import time

import ml_collections

from sigmma_jax import atomic, config_check, families
from sigmma_jax.data import shards, sources
from sigmma_jax.experiments import methods, st_align_methods, st_align_tables, tables
from sigmma_jax.models import backbones

# Each family's experiments: its methods (named config changes) and its tables.
EXPERIMENTS = {"sigmma": (methods, tables), "st_align": (st_align_methods, st_align_tables)}


def experiment(config: ml_collections.ConfigDict):
    """(methods module, tables module) of the config's family."""
    return EXPERIMENTS[families.name_of(config)]


MAIN = "main"  # the runs of Tables 1, 2 and 4, with the config's own backbone


@dataclasses.dataclass(frozen=True)
class Run:
    method: str
    fold: int
    seed: int
    backbone: str = MAIN  # Table 3: a backbone's name

    @property
    def path(self) -> pathlib.Path:
        return pathlib.Path(
            "runs", self.backbone, self.method, f"fold{self.fold}", f"seed{self.seed}"
        )


def parse_backbone(spec: str) -> tuple[str, str]:
    """suite.backbones entry -> (name, converted weights directory): "NAME" reads weights/NAME,
    "NAME=DIR" reads DIR."""
    name, _, path = spec.partition("=")
    if not name or name == MAIN or "/" in name:
        raise ValueError(f"suite.backbones entry {spec!r}: expected NAME or NAME=DIR")
    return name, path or f"weights/{name}"


def backbone_arch(spec: str) -> tuple[str, str]:
    """(arch, weights directory or "" for random initialisation) of a suite.backbones entry: the
    architecture saved with converted weights; a preset name whose weights/NAME is absent runs at
    random init. An explicit NAME=DIR must exist."""
    name, path = parse_backbone(spec)
    if pathlib.Path(path, backbones.META).exists():
        return backbones.read_meta(path)["arch"], path
    if "=" not in spec and name in backbones.ARCHS:
        return name, ""
    backbones.read_meta(path)  # raises, naming the directory and how to make it
    raise AssertionError("unreachable")


def random_init(config: ml_collections.ConfigDict) -> set[str]:
    """Names of the suite's backbones that run at random initialisation (no weights on disk)."""
    return {parse_backbone(s)[0] for s in config.suite.backbones if not backbone_arch(s)[1]}


def n_folds(manifest: dict) -> int:
    """Folds of a shard set: its groups of samples when split by sample, else one (spatial blocks)."""
    return max(1, len(manifest.get("folds", [])))


def plan(config: ml_collections.ConfigDict, manifest: dict) -> list[Run]:
    """The runs of config.suite: every method x fold x seed, then each backbone's methods."""
    s = config.suite
    methods_, _ = experiment(config)
    methods_.check(s.methods)
    folds = tuple(s.folds) or tuple(range(n_folds(manifest)))
    bad = [f for f in folds if not 0 <= f < n_folds(manifest)]
    if bad:
        raise ValueError(f"suite.folds {bad} do not exist: the shard set has {n_folds(manifest)}")
    runs = [Run(m, f, seed) for m in s.methods for f in folds for seed in s.seeds]
    for spec in s.backbones:
        name, _ = parse_backbone(spec)
        own = methods_.backbone_methods(backbone_arch(spec)[0])
        runs += [Run(m, f, seed, name) for m in own for f in folds for seed in s.seeds]
    return runs


def shared(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> ml_collections.ConfigDict:
    """The config with the suite's shared locations: one shard set (and one set of generated
    slides)."""
    c = config.copy_and_resolve_references()
    with c.unlocked():
        c.data.shard_dir = c.data.shard_dir or str(workdir / "shards")
        for section, folder in sources.GENERATED.items():
            if section in c.data:
                c.data[section].dir = c.data[section].dir or str(workdir / folder)
    return c


def run_config(config: ml_collections.ConfigDict, run: Run) -> ml_collections.ConfigDict:
    """The config of one run: the method's changes, the run's seed, fold and backbone."""
    c = experiment(config)[0].configure(config, run.method)
    with c.unlocked():
        c.seed = run.seed
        c.data.split.fold = run.fold
        c.eval.initial = False  # the suite's baseline for "no training" is frozen_backbone
        if c.suite.steps and c.train.steps:  # frozen_backbone trains nothing
            c.train.steps = c.suite.steps
        if run.backbone != MAIN:
            spec = {parse_backbone(s)[0]: s for s in c.suite.backbones}[run.backbone]
            c.model.backbone, c.model.backbone_weights = backbone_arch(spec)
    return c


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return sum(x.ru_utime + x.ru_stime for x in r)


def run_suite(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict:
    """Runs (or resumes) the suite and writes the tables; returns tables.json's content."""
    from sigmma_jax.train import loop  # JAX only when something runs

    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    config = shared(config, workdir)
    for spec in config.suite.backbones:  # fail now, not after the first runs
        if not backbone_arch(spec)[1]:
            print(
                f"suite: {spec} has no converted weights: its rows run at random init", flush=True
            )
    family, (_, tables_) = families.get(config), experiment(config)
    manifest = family.preprocess(config, workdir)
    runs = plan(config, manifest)
    print(f"suite: {len(runs)} runs in {workdir / 'runs'}", flush=True)
    t_suite = time.time()
    for i, run in enumerate(runs, 1):
        out = workdir / run.path
        label = f"[{i}/{len(runs)}] {run.backbone}/{run.method} fold {run.fold} seed {run.seed}"
        if (out / "results.json").exists():
            print(f"{label}: finished before, skipped", flush=True)
            continue
        c = run_config(config, run)
        config_check.validate(c)  # the method's changes, checked as the command checked the rest
        t0, cpu0 = time.time(), _cpu_seconds()
        results = loop.train_and_evaluate(
            c, out, manifest=shards.with_split(manifest, c.data.split)
        )
        seconds = dict(wall=round(time.time() - t0, 1), cpu=round(_cpu_seconds() - cpu0, 1))
        atomic.write_json(out / "time.json", seconds)
        print(
            f"{label}: {seconds['wall']:.0f} s ({seconds['cpu']:.0f} CPU s), "
            f"{tables_.summary(results)}",
            flush=True,
        )
    logging.info("suite ran for %.0f s", time.time() - t_suite)
    out = tables_.write(workdir, runs, config)
    print(f"tables: {workdir / 'tables.md'}", flush=True)
    return out
