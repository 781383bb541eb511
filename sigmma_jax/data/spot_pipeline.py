"""ST-Align's batches: decoded spots -> augmented -> scGPT's tokens -> batches (`loader`).

A batch (B spots) holds the spot and niche images (uint8), the spot's raw counts and the niche's
mean counts over the panel, scGPT's input for the spot (and, for the ablation without trainable
encoders, for the niche: `features["niche_tokens"]`), and `meta`: per-row arrays that come back
with the model's outputs at evaluation (valid, label and slide indices, pre-cluster, position in
µm, record index). Every shape is fixed by the manifest, so the step compiles once.

scGPT's tokens (`sigmma_jax.data.scgpt_tokens`) are drawn with a generator seeded by the record's
index: a spot gets the same tokens in every epoch, run and process.
"""

from __future__ import annotations

import pathlib
from typing import Any, Iterator

import grain
import numpy as np
from jax.sharding import Mesh

from sigmma_jax.data import loader, records, scgpt_tokens
from sigmma_jax.data.loader import ShardSource


class Tokens:
    """scGPT's input of a spot, from the run's host features (the manifest's `features`)."""

    def __init__(self, spec: dict):
        self.spec = spec
        self.tokens = np.asarray(spec["tokens"], np.int64)

    def __call__(self, counts: np.ndarray, index: int, stream: int = 0) -> dict[str, np.ndarray]:
        s = self.spec
        rng = np.random.default_rng([int(index), stream])
        genes, values, mask = scgpt_tokens.tokenize(
            counts,
            self.tokens,
            s["length"],
            s["pad_id"],
            s["cls_id"],
            s["pad_value"],
            s["n_bins"],
            rng,
        )
        return dict(genes=genes, values=values, mask=mask)

    def empty(self) -> dict[str, np.ndarray]:
        n = self.spec["length"]
        return dict(
            genes=np.full(n, self.spec["pad_id"], np.int32),
            values=np.full(n, self.spec["pad_value"], np.float32),
            mask=np.zeros(n, bool),
        )


class SpotSource(grain.sources.RandomAccessDataSource):
    """Decoded spots of one split with their scGPT tokens and per-row metadata."""

    def __init__(self, shard_dir: str | pathlib.Path, manifest: dict, split: str):
        self._records = ShardSource(shard_dir, manifest, split)
        feats = manifest["features"]
        self._tokens = Tokens(feats)
        self._niche_tokens = bool(feats.get("niche_tokens"))
        self._labels = {name: i for i, name in enumerate(manifest["labels"])}
        self._slides = {name: i for i, name in enumerate(manifest["slides"])}
        self._um = {k: v["pixel_size_um"] for k, v in manifest["report"]["slides"].items()}

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, i: int) -> dict:
        rec = records.decode_spot(self._records[i])
        index = self._records.record(i)
        meta = rec["meta"]
        um = self._um[meta["slide"]]
        out = dict(
            spot_image=rec["spot_image"],
            niche_image=rec["niche_image"],
            counts=rec["counts"],
            niche_counts=rec["niche_counts"],
            scgpt=self._tokens(rec["counts"], index),
            meta=dict(
                valid=np.bool_(True),
                label=np.int32(self._labels.get(meta["label"], -1)),
                slide=np.int32(self._slides[meta["slide"]]),
                precluster=np.int32(meta["precluster"]),
                xy_um=np.array([meta["x"] * um, meta["y"] * um], np.float32),
                index=np.int32(index),
            ),
        )
        if self._niche_tokens:
            out["niche_scgpt"] = self._tokens(rec["niche_counts"], index, stream=1)
        return out

    def __repr__(self) -> str:  # stable: Grain compares it when restoring iterator state
        return f"SpotSource({self._records!r}, niche_tokens={self._niche_tokens})"


def augment(spot: dict, rng: np.random.Generator) -> dict:
    """One of the 8 dihedral transforms, the same for the spot's and the niche's image (H&E has no
    orientation; the two images share one centre up to the niche's offset)."""
    k = int(rng.integers(8))
    return dict(
        spot,
        spot_image=loader.dihedral(spot["spot_image"], k),
        niche_image=loader.dihedral(spot["niche_image"], k),
    )


def empty_spot(like: dict) -> dict:
    """A spot of zeros marked invalid: fills the last evaluation batch."""
    out = {k: _zeros(v) for k, v in like.items()}
    out["meta"]["valid"] = np.bool_(False)
    out["meta"]["label"] = np.int32(-1)
    return out


def _zeros(x):
    if isinstance(x, dict):
        return {k: _zeros(v) for k, v in x.items()}
    return np.zeros_like(x)


def collate(spots: list[dict]) -> dict[str, Any]:
    """Stacks spots field by field (nested dicts kept)."""

    def stack(items):
        if isinstance(items[0], dict):
            return {k: stack([x[k] for x in items]) for k in items[0]}
        return np.stack(items)

    return stack(spots)


def zeros_batch(manifest: dict, batch: int) -> dict[str, Any]:
    """A batch of empty spots with the manifest's shapes: for initialisation and shape inference."""
    s, g = manifest["settings"], len(manifest["genes"])
    tokens = Tokens(manifest["features"])
    spot = dict(
        spot_image=np.zeros((s["crop_px"], s["crop_px"], 3), np.uint8),
        niche_image=np.zeros((s["niche_px"], s["niche_px"], 3), np.uint8),
        counts=np.zeros(g, np.float32),
        niche_counts=np.zeros(g, np.float32),
        scgpt=tokens.empty(),
        meta=dict(
            valid=np.bool_(False),
            label=np.int32(-1),
            slide=np.int32(0),
            precluster=np.int32(0),
            xy_um=np.zeros(2, np.float32),
            index=np.int32(0),
        ),
    )
    if manifest["features"].get("niche_tokens"):
        spot["niche_scgpt"] = tokens.empty()
    return collate([spot] * batch)


def train_iterator(
    shard_dir: str | pathlib.Path,
    manifest: dict,
    global_batch: int,
    *,
    seed: int,
    mesh: Mesh | None = None,
    augment_images: bool = True,
    workers: int = 0,
    prefetch: int = 2,
) -> grain.DatasetIterator:
    """Endless shuffled batches of spots (`loader.shuffled_batches`)."""
    return loader.shuffled_batches(
        SpotSource(shard_dir, manifest, "train"),
        global_batch,
        seed=seed,
        mesh=mesh,
        augment=augment if augment_images else None,
        prepare=lambda s: s,
        collate=collate,
        workers=workers,
        prefetch=prefetch,
        unit="spots",
    )


def eval_batches(
    shard_dir: str | pathlib.Path,
    manifest: dict,
    split: str,
    global_batch: int,
    mesh: Mesh | None = None,
) -> Iterator[dict]:
    """Every spot of a split once, in manifest order (`loader.ordered_batches`); the last batch is
    filled with invalid empty spots (meta["valid"] is False for them)."""
    return loader.ordered_batches(
        SpotSource(shard_dir, manifest, split),
        global_batch,
        mesh,
        prepare=lambda s: s,
        empty=empty_spot,
        collate=collate,
    )
