"""Train / val / test splits of a shard set's tiles; never random tiles (docs/method.md, "Splits").

Neighbouring tiles share cells' context, so a random split leaks: one slide is split by spatial
blocks of tiles, several slides leave one group of samples out (HEST-Benchmark: a patient's samples
are held out together). Splits are a function of the tiles, their samples' groups and the split
config only, so changing them rewrites the manifest, never the shards.
"""

from __future__ import annotations

import numpy as np

from sigmma_jax.data import readers

SPLIT_BY = ("auto", "sample", "space")  # data.split.by


def spatial_splits(
    tiles: list[dict], block_tiles: int, test_fraction: float, val_fraction: float, seed: int
) -> list[str]:
    """Whole spatial blocks of block_tiles x block_tiles tiles go to one split, so that neighbouring
    tiles (which share cells' context) rarely straddle train and test."""
    keys = [(t["slide"], t["row"] // block_tiles, t["col"] // block_tiles) for t in tiles]
    blocks = sorted(set(keys))
    perm = np.random.default_rng(seed).permutation(len(blocks))
    size = {b: 0 for b in blocks}
    for k in keys:
        size[k] += 1
    total = len(tiles)
    assign, filled = {}, {"test": 0, "val": 0}
    for i in perm:
        b = blocks[i]
        if filled["test"] < test_fraction * total:
            assign[b] = "test"
        elif filled["val"] < val_fraction * total:
            assign[b] = "val"
        else:
            assign[b] = "train"
        if assign[b] in filled:
            filled[assign[b]] += size[b]
    return [assign[k] for k in keys]


def sample_groups(slides) -> dict[str, str]:
    """Sample name -> its group, from slides' `name` and `group` (HEST: dataset and patient); a
    sample without a group is its own."""
    return {s.name: s.group or s.name for s in slides}


def sample_folds(slides: list[str], groups: dict[str, str] | None = None) -> list[list[str]]:
    """HEST-Benchmark's folds: the samples grouped by patient (`groups`: sample -> group, e.g.
    "dataset_title / patient"; a sample without one is its own group), groups in order of their
    first sample. Fold k holds out group k."""
    out: dict[str, list[str]] = {}
    for s in slides:
        out.setdefault((groups or {}).get(s) or s, []).append(s)
    return list(out.values())


def split_by(slides: list[str], split) -> str:
    """ "sample" (leave one group of samples out) or "space" (spatial blocks)."""
    return split.by if split.by != "auto" else ("sample" if len(slides) > 1 else "space")


def sample_splits(tiles: list[dict], folds: list[list[str]], fold: int) -> list[str]:
    """Leave-one-group-out (HEST-Benchmark): fold k tests on the samples of group k."""
    if not 0 <= fold < len(folds):
        raise readers.InputError(f"split fold {fold} does not exist: {len(folds)} folds {folds}")
    held_out = set(folds[fold])
    return ["test" if t["slide"] in held_out else "train" for t in tiles]


def make_splits(
    tiles: list[dict], slides: list[str], split, groups: dict[str, str] | None = None
) -> list[str]:
    if split_by(slides, split) == "sample":
        return sample_splits(tiles, sample_folds(slides, groups), split.fold)
    return spatial_splits(
        tiles, split.block_tiles, split.test_fraction, split.val_fraction, split.seed
    )
