"""`run.json`: what a run directory says about itself, for using the trained model later
(`sigmma_jax.analysis.embed`): the resolved config and the manifest of the shards it trained on
(gene panel, tile geometry, preprocessing settings, budgets, tiles and their splits). Written when
the shards are ready, so embedding never needs the shard directory itself.
"""

from __future__ import annotations

import json
import pathlib

import ml_collections

from sigmma_jax import atomic

FILE = "run.json"


def write(workdir: str | pathlib.Path, config: ml_collections.ConfigDict, manifest: dict) -> None:
    atomic.write_json(
        pathlib.Path(workdir) / FILE, dict(config=config.to_dict(), manifest=manifest)
    )


def _tuples(x):
    # JSON has no tuples; every sequence of a config is one (ml_collections keeps them).
    if isinstance(x, dict):
        return {k: _tuples(v) for k, v in x.items()}
    if isinstance(x, list):
        return tuple(_tuples(v) for v in x)
    return x


def read(workdir: str | pathlib.Path) -> tuple[ml_collections.ConfigDict, dict]:
    """(the run's config, its manifest)."""
    path = pathlib.Path(workdir) / FILE
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: not found; is {workdir} a run directory of `python -m sigmma_jax.main`? "
            "(a run made before run.json existed writes it when resumed)"
        )
    info = json.loads(path.read_text())
    return ml_collections.ConfigDict(_tuples(info["config"])), info["manifest"]
