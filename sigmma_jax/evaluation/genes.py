"""The genes Task 1 scores, chosen as HEST-Benchmark chooses them (docs/method.md, "HEST gene list").

HEST-Benchmark ships one list per task (`var_50genes.json`, `{"genes": [...]}`); `eval.genes_file`
reads it. Without one, the list is made by HEST-Benchmark's own procedure, on our tiles instead of
its spots: per slide keep the genes detected in at least 10 % of its tiles, intersect across slides,
drop names containing "BLANK" or "Control", stack the raw counts of every tile, log1p, scanpy's
`highly_variable_genes(n_top_genes=n)` (the "seurat" flavour), and take the flagged genes in panel
order. Every tile of the shard set takes part (HEST made one list per task from all its samples),
so every fold and method of a suite scores the same genes.
"""

from __future__ import annotations

import json
import math
import pathlib

import ml_collections
import numpy as np

from sigmma_jax import atomic
from sigmma_jax.data import features, readers

# config.eval: genes_file, HEST-Bench's var_50genes.json ({"genes": [...]}) when given, else
# n_genes by HEST-Bench's procedure on the tiles
DEFAULTS = {"n_genes": 50, "genes_file": ""}
CONTROL_WORDS = ("BLANK", "Control")  # HEST-Benchmark drops names containing these
MIN_TILE_FRACTION = 0.10  # of a slide's tiles a gene must be detected in


def from_file(path: str | pathlib.Path, panel: list[str]) -> np.ndarray:
    """Panel indices of the genes a HEST-Benchmark gene list names, in the list's order."""
    path = pathlib.Path(path)
    try:
        names = json.loads(path.read_text())["genes"]
    except FileNotFoundError:
        raise readers.InputError(f"{path}: gene list not found") from None
    except (ValueError, KeyError, TypeError) as e:
        raise readers.InputError(f'{path}: expected {{"genes": [...]}} ({e})') from e
    return readers.positions(names, panel, path, "genes are not in the shard set's panel")


def hest_hvgs(tile_counts: np.ndarray, slides: list[str], panel: list[str], n: int) -> np.ndarray:
    """Panel indices of HEST-Benchmark's `n` highly variable genes of raw `tile_counts`
    (tiles, genes) whose tiles come from `slides` (one name per tile), in panel order."""
    import anndata
    import scanpy as sc

    tile_counts = np.asarray(tile_counts, np.float32)
    slides = np.asarray(slides)
    panel = np.asarray(panel, dtype=object)
    common = None
    for s in dict.fromkeys(slides.tolist()):
        rows = tile_counts[slides == s]
        detected = (rows > 0).sum(0) >= math.ceil(MIN_TILE_FRACTION * len(rows))
        common = panel[detected] if common is None else np.intersect1d(common, panel[detected])
    common = [g for g in common if not any(w in g for w in CONTROL_WORDS)]
    if not common:
        raise readers.InputError(
            f"no gene is detected in {MIN_TILE_FRACTION:.0%} of the tiles of every slide"
        )
    index = {g: i for i, g in enumerate(panel)}
    cols = np.array([index[g] for g in common])
    if len(cols) <= n:  # nothing to choose
        return np.sort(cols)
    adata = anndata.AnnData(tile_counts[:, cols])
    adata.var_names = [str(g) for g in common]
    sc.pp.log1p(adata)
    sc.pp.highly_variable_genes(adata, n_top_genes=n, flavor="seurat")
    chosen = adata.var_names[adata.var["highly_variable"].to_numpy()][:n]
    return np.sort([index[g] for g in chosen])


def select(config: ml_collections.ConfigDict, manifest: dict, shard_dir) -> np.ndarray:
    """Panel indices of the genes a run's Task 1 scores (eval.genes_file, else `hest_hvgs`).

    `hest_hvgs` reads every tile of the shard set, so its list is kept beside the shards
    (task1/genes_HASH_N.json, in HEST's file format) and every later run of the set reads it."""
    if config.eval.genes_file:
        return from_file(config.eval.genes_file, manifest["genes"])
    n = config.eval.n_genes
    kept = pathlib.Path(shard_dir) / "task1" / f"genes_{manifest.get('shard_hash', '')}_{n}.json"
    if kept.exists():
        return from_file(kept, manifest["genes"])
    counts = np.stack([r["tile_counts"] for r in features.read_records(shard_dir, manifest)])
    slides = [t["slide"] for t in manifest["tiles"]]
    chosen = hest_hvgs(counts, slides, manifest["genes"], n)
    try:  # a read-only shard set is still usable: the list is then made once per run
        atomic.write_json(kept, {"genes": [manifest["genes"][i] for i in chosen]})
    except OSError:
        pass
    return chosen
