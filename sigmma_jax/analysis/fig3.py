"""The paper's Fig. 3 for a run (`python -m sigmma_jax.attention_maps --run=RUN_DIR`): class-token
attention maps of the last block of the run's trained backbone beside its base backbone (the
converted weights the run started from, or its seeded initialisation), on tiles of a shard set,
with the tiles' cell centroids drawn on top.
"""

from __future__ import annotations

import logging
import pathlib

import grain
import jax
import numpy as np

from sigmma_jax import atomic, sharding
from sigmma_jax.analysis.embed import Run, load_run
from sigmma_jax.data import readers, records, shards
from sigmma_jax.models import backbones
from sigmma_jax.tools import attention_maps
from sigmma_jax.train import optimizer, run_info
from sigmma_jax.train import state as state_lib


def base_backbone(run: Run, mesh):
    """The backbone parameters the run started from, or None when they are gone."""
    weights = run.config.model.backbone_weights
    if weights:
        try:
            return backbones.load(weights, like=run.params["backbone"])[1]
        except (OSError, ValueError) as e:
            logging.warning("base backbone %s unavailable (%s); trained maps only", weights, e)
            return None
    tx = optimizer.make_optimizer(run.config)
    _, shardings = state_lib.abstract_state(run.model, tx, run.config, run.manifest, mesh)
    init = state_lib.initialise(run.model, tx, run.config, run.manifest, mesh, shardings)
    return init.params["backbone"]


def pick_tiles(manifest: dict, names: list[str], n: int) -> list[int]:
    """Record indices of the tiles `names` (SLIDE_ROW_COL), else of the `n` with the most cells."""
    index = {f"{t['slide']}_{t['row']}_{t['col']}": i for i, t in enumerate(manifest["tiles"])}
    if names:
        unknown = [x for x in names if x not in index]
        if unknown:
            raise readers.InputError(f"no such tile in the shard set: {unknown}")
        return [index[x] for x in names]
    return sorted(index.values(), key=lambda i: -manifest["tiles"][i]["n_kept"])[:n]


def write(
    run_dir: str | pathlib.Path, out: str | pathlib.Path, shard_dir: str, names, n: int
) -> list[pathlib.Path]:
    """`<tile>_attention.png` (tile, head-mean maps, heads) and `<tile>_attention.npz` (per model,
    (heads, gh, gw) maps) per tile; returns the PNG paths."""
    out = pathlib.Path(out)
    config, _ = run_info.read(run_dir)
    mesh = sharding.make_mesh(config, jax.devices()[:1])
    run = load_run(run_dir, mesh)
    shard_dir = pathlib.Path(shard_dir or shards.shard_dir(run.config, run_dir))
    manifest = shards.read_manifest(shard_dir)
    source = grain.sources.ArrayRecordDataSource([str(shard_dir / s) for s in manifest["shards"]])
    model = run.model.backbone
    params = {"trained": run.params["backbone"]}
    base = base_backbone(run, mesh)
    if base is not None:
        params = {"base": base, **params}
    paths = []
    for i in pick_tiles(manifest, names, n):
        rec = records.decode(source[i])
        t = manifest["tiles"][i]
        name = f"{t['slide']}_{t['row']}_{t['col']}"
        image = attention_maps.prepare_tiles(rec["image"][None], model.img_size)
        maps = {
            k: attention_maps.class_token_attention(model, p, image)[0] for k, p in params.items()
        }
        with atomic.open_atomic(out / f"{name}_attention.npz", "wb") as f:
            np.savez(f, **maps)
        path = out / f"{name}_attention.png"
        title = f"{name}: last block, class token -> patches; {len(rec['xy'])} cells (cyan)"
        attention_maps.save_comparison(rec["image"], maps, path, rec["xy"], title)
        paths.append(path)
    return paths
