"""What a trained run leaves for predicting expression on new slides (`predictors.npz` in the run
directory; plain arrays, loaded with allow_pickle=False):

- the linear probe of Task 1 (`probe.fit`) over the run's whole gene panel, with HEST's alpha (that
  of `eval.n_genes` genes) and an intercept, so its predictions are log1p expression levels and,
  for the evaluation's genes, the evaluated probe's predictions plus each gene's training mean;
- BLEEP's kNN reference: the training tiles' ST embeddings in the joint space and their targets.

Fitted by the run at the end of training from the training split's embeddings; applied by
`sigmma_jax.analysis.embed` to the HE embeddings of any slide.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from sigmma_jax import atomic
from sigmma_jax.evaluation import expression, knn_expression, probe

FILE = "predictors.npz"


@dataclasses.dataclass
class Predictors:
    genes: np.ndarray  # (genes,) str: the run's panel, the columns of every prediction
    eval_genes: np.ndarray  # (n,) int: the genes Task 1 scored (`evaluation.genes`)
    probe: probe.Probe
    probe_embedding: str  # "he" (projected) or "he_backbone"
    probe_scales: str  # how the probe reads the scales (expression.SCALE_READS)
    knn_keys: np.ndarray  # (train tiles, scales * E) float32 joint-space ST embeddings
    knn_targets: np.ndarray  # (train tiles, genes) float32 log1p summed counts
    knn_k: int

    def predict(self, embeddings: dict) -> tuple[np.ndarray, np.ndarray]:
        """(probe, kNN) predictions, (tiles, genes) log1p, from a split-like dict with "he" and
        "he_backbone" ({scale: (tiles, D)})."""
        x = expression.features(embeddings, self.probe_embedding, self.probe_scales)
        query = knn_expression.joint(embeddings, "he")
        knn = knn_expression.knn_expression(self.knn_keys, self.knn_targets, query, self.knn_k)
        return self.probe.predict(x), knn


def fit(train: dict, genes: list[str], config, eval_genes: np.ndarray) -> Predictors:
    """From the training split's embeddings (`inference.embed_split`), the run's config and the
    panel indices Task 1 scored (`evaluation.genes.select`)."""
    key, scales = probe.EMBEDDINGS[config.eval.probe_embedding], config.eval.probe_scales
    targets = np.asarray(train["targets"], np.float64)
    n_eval = len(eval_genes)
    return Predictors(
        genes=np.asarray(genes, str),
        eval_genes=np.asarray(eval_genes, np.int64),
        probe=probe.fit(
            expression.features(train, key, scales),
            targets,
            n_components=probe.components(config, scales),
            alpha_genes=n_eval,
            fit_intercept=True,
        ),
        probe_embedding=key,
        probe_scales=scales,
        knn_keys=knn_expression.joint(train, "st").astype(np.float32),
        knn_targets=targets.astype(np.float32),
        knn_k=int(config.eval.knn_k),
    )


def _probe_arrays(p: probe.Probe) -> dict[str, np.ndarray]:
    return {f"probe_{k}": v for k, v in dataclasses.asdict(p).items()}


def _probe_of(z) -> probe.Probe:
    return probe.Probe(**{f.name: z[f"probe_{f.name}"] for f in dataclasses.fields(probe.Probe)})


def save(path: str | os.PathLike, p: Predictors) -> None:
    arrays = _probe_arrays(p.probe)
    arrays.update(
        genes=p.genes.astype(str),
        eval_genes=p.eval_genes,
        probe_embedding=np.asarray(p.probe_embedding),
        probe_scales=np.asarray(p.probe_scales),
        knn_keys=p.knn_keys,
        knn_targets=p.knn_targets,
        knn_k=np.asarray(p.knn_k),
    )
    with atomic.open_atomic(path, "wb") as f:
        np.savez(f, **arrays)


def load(path: str | os.PathLike) -> Predictors:
    with np.load(path, allow_pickle=False) as z:
        return Predictors(
            genes=z["genes"].astype(str),
            eval_genes=z["eval_genes"],
            probe=_probe_of(z),
            probe_embedding=str(z["probe_embedding"]),
            # files written before 2026-12-03 read the scales concatenated
            probe_scales=str(z["probe_scales"]) if "probe_scales" in z else "concat",
            knn_keys=z["knn_keys"],
            knn_targets=z["knn_targets"],
            knn_k=int(z["knn_k"]),
        )


def save_probe(path: str | os.PathLike, p: probe.Probe, genes, embedding: str) -> None:
    """A probe alone (ST-Align's expression predictor): its arrays, the genes of its columns and
    the embedding it reads."""
    arrays = _probe_arrays(p)
    arrays.update(genes=np.asarray(genes, str), embedding=np.asarray(embedding))
    with atomic.open_atomic(path, "wb") as f:
        np.savez(f, **arrays)


def load_probe(path: str | os.PathLike) -> tuple[probe.Probe, np.ndarray, str]:
    """(probe, genes, embedding) of `save_probe`."""
    with np.load(path, allow_pickle=False) as z:
        return _probe_of(z), z["genes"].astype(str), str(z["embedding"])
