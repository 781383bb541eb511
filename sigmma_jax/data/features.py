"""Host-side inputs of a run, computed once from its shard set and split, reaching the model through
the batch (docs/method.md, "Baselines" and "Node features").

- Tile features (`data.tile_features`, `TILE_FEATURES`): one array per tile, in the batch as
  `graph.globals[name]`. "expression_pcs" is BLEEP's expression input: principal components of the
  tile's normalised log1p expression, fitted on the training tiles, corrected across slides with
  Harmony when there are several. "gene_sentence" is OmiCLIP's: the tile's most expressed genes,
  in descending order, as token ids (panel index + 1; 0 pads a tile with fewer expressed genes).
  "gene_text" is the same sentence as text, through the tokenizer of the vision-language model in
  model.backbone_weights (its text tower reads it: `model.st_tower = "text"`).
- Node features (`data.node_features`), in the batch as `graph.nodes["features"]`: "counts" adds
  nothing (the graph tower normalises the counts itself); "pca" projects each cell's normalised
  log1p counts on principal components fitted on the training tiles' cells; "embedding" passes the
  precomputed per-cell embeddings stored in the records (`data.cell_embeddings`).

`prepare` writes what was fitted to `<workdir>/features-<key>.npz` (the key hashes the shard set,
the split and the settings, so a resumed run reads it back) and returns the run's manifest with a
`features` entry; `input_pipeline` attaches the features to each decoded tile (`Features.attach`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import pathlib
from typing import Callable, Iterator

import ml_collections
import numpy as np

from sigmma_jax import atomic
from sigmma_jax.data import records

NODE_FEATURES = ("counts", "pca", "embedding")
_MAX_PCA_CELLS = 200_000  # cells the node PCA is fitted on (a seeded subsample above that)


def normalized_log1p(counts: np.ndarray, target_sum: float) -> np.ndarray:
    """log1p of counts scaled to `target_sum` per row (a cell or a tile), as scanpy's
    normalize_total + log1p; an all-zero row stays zero."""
    counts = np.asarray(counts, np.float64)
    total = np.maximum(counts.sum(-1, keepdims=True), 1.0)
    return np.log1p(counts / total * target_sum)


def _pca(x: np.ndarray, n: int, fit_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, components (k, features)) of an exact PCA fitted on x[fit_rows]."""
    from sklearn.decomposition import PCA

    fit = x[fit_rows]
    k = min(n, *fit.shape)
    pca = PCA(n_components=k, svd_solver="full").fit(fit)
    return pca.mean_, pca.components_


def expression_pcs(
    tile_counts: np.ndarray, manifest: dict, config: ml_collections.ConfigDict
) -> np.ndarray:
    """BLEEP's expression input, (tiles, k) float32: PCA of normalised log1p tile expression fitted
    on the training tiles, then Harmony across slides (all tiles, as BLEEP corrects all slices)."""
    cfg = config.data.expression_pcs
    x = normalized_log1p(tile_counts, cfg.target_sum)
    mean, components = _pca(x, cfg.n, np.asarray(manifest["splits"]["train"]))
    pcs = (x - mean) @ components.T
    slides = [t["slide"] for t in manifest["tiles"]]
    if cfg.harmony and len(set(slides)) > 1:
        import harmonypy
        import pandas as pd

        h = harmonypy.run_harmony(
            pcs, pd.DataFrame({"slide": slides}), ["slide"], random_state=0, verbose=False
        )
        z = np.asarray(h.Z_corr)
        pcs = z if z.shape[0] == len(slides) else z.T  # older harmonypy returns (k, tiles)
    return pcs.astype(np.float32)


def sentence_mask(genes: list[str]) -> np.ndarray:
    """Genes a gene sentence may name: OmiCLIP drops names with '.' or '-'."""
    return np.array(["." not in g and "-" not in g for g in genes])


def gene_sentence(
    tile_counts: np.ndarray, manifest: dict, config: ml_collections.ConfigDict
) -> np.ndarray:
    """OmiCLIP's gene sentence, (tiles, data.sentence_length) int32: the expressed genes of each tile
    by decreasing count (ties in panel order), as panel index + 1, padded with 0."""
    d = config.data
    allowed = sentence_mask(manifest["genes"])
    counts = np.where(allowed & (tile_counts > 0), np.asarray(tile_counts, np.float64), -1.0)
    order = np.argsort(-counts, axis=1, kind="stable")[:, : d.sentence_length]
    kept = np.take_along_axis(counts, order, axis=1) > 0
    tokens = np.where(kept, order + 1, 0).astype(np.int32)
    if tokens.shape[1] < d.sentence_length:  # a panel shorter than a sentence
        tokens = np.pad(tokens, ((0, 0), (0, d.sentence_length - tokens.shape[1])))
    return tokens


def sentences(tokens: np.ndarray, genes: list[str]) -> list[str]:
    """Gene-sentence token ids (panel index + 1, 0 padding) -> the sentences as text."""
    return [" ".join(genes[t - 1] for t in row if t > 0) for row in tokens]


def gene_text(
    tile_counts: np.ndarray, manifest: dict, config: ml_collections.ConfigDict
) -> np.ndarray:
    """The gene sentence as text through the tokenizer converted with model.backbone_weights,
    (tiles, its context length) int32."""
    from sigmma_jax.models import text  # pylint: disable=import-outside-toplevel

    if not config.model.backbone_weights:
        raise ValueError(
            "data.tile_features 'gene_text' tokenizes with the text tower converted with the image "
            "tower: set model.backbone_weights to a vision-language model's converted directory"
        )
    tokenizer = text.tokenizer(config.model.backbone_weights)
    return tokenizer(sentences(gene_sentence(tile_counts, manifest, config), manifest["genes"]))


TILE_FEATURES: dict[str, Callable[[np.ndarray, dict, ml_collections.ConfigDict], np.ndarray]] = {
    "expression_pcs": expression_pcs,
    "gene_sentence": gene_sentence,
    "gene_text": gene_text,
}


def read_records(shard_dir: str | pathlib.Path, manifest: dict) -> Iterator[dict]:
    """Every record of the shard set, decoded, in manifest order (the index the splits use)."""
    import grain

    source = grain.sources.ArrayRecordDataSource(
        [str(pathlib.Path(shard_dir) / s) for s in manifest["shards"]]
    )
    for i in range(len(source)):
        yield records.decode(source[i])


def check(config: ml_collections.ConfigDict) -> None:
    d = config.data
    unknown = [n for n in d.tile_features if n not in TILE_FEATURES]
    if unknown:
        raise ValueError(
            f"unknown data.tile_features {unknown}; expected some of {sorted(TILE_FEATURES)}"
        )
    if d.node_features not in NODE_FEATURES:
        raise ValueError(
            f"unknown data.node_features {d.node_features!r}; expected one of {NODE_FEATURES}"
        )


def _tokenizer_ident(config: ml_collections.ConfigDict) -> dict:
    from sigmma_jax.models import text  # pylint: disable=import-outside-toplevel

    meta = text.read_meta(config.model.backbone_weights)
    return dict(tokenizer=meta["tokenizer"], source=meta.get("source"))


def _key(config: ml_collections.ConfigDict, manifest: dict) -> str:
    d = config.data
    ident = dict(
        shard_hash=manifest["shard_hash"],
        train=manifest["splits"]["train"],
        tile_features=sorted(d.tile_features),
        expression_pcs=d.expression_pcs.to_dict(),
        sentence_length=d.sentence_length,
        # the tokenizer of gene_text: the converted text tower's files and their sources
        tokenizer=_tokenizer_ident(config) if "gene_text" in d.tile_features else None,
        node_features=d.node_features,
        node_pca=d.node_pca,
        target_sum=config.model.st.target_sum,
    )
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def prepare(
    config: ml_collections.ConfigDict,
    manifest: dict,
    shard_dir: str | pathlib.Path,
    out_dir: str | pathlib.Path,
) -> dict:
    """The run's manifest with a `features` entry when the config asks for any (else unchanged):
    {"file": the .npz, "tile": {name: [shape per tile, dtype]}, "node": "pca" | "embedding" | None,
    "node_dim": int}. Computed once; a rerun with the same shard set, split and settings reads it."""
    check(config)
    d = config.data
    manifest = {k: v for k, v in manifest.items() if k != "features"}
    if not d.tile_features and d.node_features == "counts":
        return manifest
    path = pathlib.Path(out_dir) / f"features-{_key(config, manifest)}.npz"
    if not path.exists():
        arrays = _compute(config, manifest, shard_dir)
        with atomic.open_atomic(path, "wb") as f:
            np.savez(f, **arrays)
    with np.load(path) as a:
        tile = {
            n: [list(a[f"tile/{n}"].shape[1:]), a[f"tile/{n}"].dtype.str] for n in d.tile_features
        }
        node_dim = int(a["node/dim"])
    node = None if d.node_features == "counts" else d.node_features
    return dict(manifest, features=dict(file=str(path), tile=tile, node=node, node_dim=node_dim))


def _compute(config: ml_collections.ConfigDict, manifest: dict, shard_dir) -> dict[str, np.ndarray]:
    d = config.data
    train = set(manifest["splits"]["train"])
    tile_counts, cell_counts, node_dim = [], [], 0
    for i, rec in enumerate(read_records(shard_dir, manifest)):
        tile_counts.append(rec["tile_counts"])
        if d.node_features == "pca" and i in train:
            cell_counts.append(rec["counts"])
        if d.node_features == "embedding":
            if "cell_embedding" not in rec:
                raise ValueError(
                    f"data.node_features='embedding' but the records in {shard_dir} hold no cell "
                    "embeddings: preprocess with --config.data.cell_embedding_key=KEY"
                )
            node_dim = rec["cell_embedding"].shape[1]
    tile_counts = np.stack(tile_counts)
    out = {f"tile/{n}": TILE_FEATURES[n](tile_counts, manifest, config) for n in d.tile_features}
    if d.node_features == "pca":
        x = normalized_log1p(np.concatenate(cell_counts), config.model.st.target_sum)
        rows = np.arange(len(x))
        if len(x) > _MAX_PCA_CELLS:
            rows = np.sort(np.random.default_rng(0).choice(len(x), _MAX_PCA_CELLS, replace=False))
        out["node/mean"], out["node/components"] = _pca(x, d.node_pca, rows)
        out["node/target_sum"] = np.float64(config.model.st.target_sum)
        node_dim = len(out["node/components"])
    out["node/dim"] = np.int64(node_dim)
    logging.info(
        "host features: %s",
        {k: v.shape for k, v in out.items() if k.startswith("tile/") or k == "node/components"},
    )
    return out


class Features:
    """A run's features (the manifest's `features` entry), attached to decoded tiles in the loader;
    the arrays are read lazily, so the object pickles cheaply into loader workers."""

    def __init__(self, spec: dict):
        self.spec = spec
        self._arrays = None

    def _load(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            with np.load(self.spec["file"]) as a:
                self._arrays = {k: a[k] for k in a.files}
        return self._arrays

    def __getstate__(self):
        return dict(self.__dict__, _arrays=None)

    def attach(self, tile: dict, record: int) -> dict:
        """The tile with `features` ({name: per-tile array}) and `node_features` ((cells, d))."""
        a = self._load()
        out = dict(tile, features={n: a[f"tile/{n}"][record] for n in self.spec["tile"]})
        if self.spec["node"] == "pca":
            x = normalized_log1p(tile["counts"], float(a["node/target_sum"]))
            out["node_features"] = ((x - a["node/mean"]) @ a["node/components"].T).astype(
                np.float32
            )
        elif self.spec["node"] == "embedding":
            out["node_features"] = tile["cell_embedding"].astype(np.float32)
        return out

    def empty(self) -> dict:
        """The features of a tile without cells (shapes for initialisation and padding)."""
        out = {"features": {n: np.zeros(s, np.dtype(t)) for n, (s, t) in self.spec["tile"].items()}}
        if self.spec["node"]:
            out["node_features"] = np.zeros((0, self.spec["node_dim"]), np.float32)
        return out


def load(manifest: dict) -> Features | None:
    spec = manifest.get("features")
    return Features(spec) if spec else None
