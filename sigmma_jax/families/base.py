"""What a model family provides: the one seam between a method and the machinery every method shares.

The training loop, the train state and step, checkpoints, health checks, the evaluation runner, the
experiments suite and `embed` know a method only through this contract; `config.model.family`
picks the family (`sigmma_jax.families.FAMILIES`). A family brings:

- its records and batching: `preprocess` (slides -> shards + manifest), `prepare` (host-side
  inputs fitted once per run), `train_iterator` / `eval_batches` (host batches), `zeros_batch`
  (a batch of the right shapes, for initialisation);
- its model: `build_model` (with the backbone resolved once; its config is saved with every
  checkpoint), `pretrained` (converted weights put into the initial parameters), `rng_streams`
  (the random streams of a training step);
- its loss: `loss_fn(config)(out) -> (total, {term: value})`; the model's output holds the loss's
  inputs and "temperature";
- what inference keeps: `inference_fn` (params, batch -> outputs with the batch's per-row `meta`,
  jitted by the caller) and `keep` (a batch's valid rows as the evaluators' embeddings),
  `context` (what the evaluators read besides the embeddings, computed once per run),
  `evaluators` (the names of `sigmma_jax.evaluation.EVALUATORS` it can run);
- what a finished run leaves: `finish` (predictors, figures) and its report.

The layers above choose by family name what is theirs: the experiments' methods and tables
(`sigmma_jax.experiments`), embedding slides with a trained run (`sigmma_jax.embed`).

Families are stateless objects; everything a call needs comes in its arguments. The methods
without a body are the contract's required part; the others have the common default.
"""

from __future__ import annotations

import abc
import pathlib
from typing import Any, Callable, Iterator

import ml_collections


class Family(abc.ABC):
    name: str = ""
    # The step key is split into one key per stream, in this order (resuming repeats them).
    rng_streams: tuple[str, ...] = ("dropout",)
    evaluators: tuple[str, ...] = ()
    # The loss terms in the order the log line shows them (others after, sorted).
    loss_terms: tuple[str, ...] = ()

    # --- records and batching -----------------------------------------------------------------

    @abc.abstractmethod
    def preprocess(
        self, config: ml_collections.ConfigDict, workdir, *, slides=None, panel=None
    ) -> dict:
        """Makes (or resumes, or reuses) the shard set of `config`; returns its manifest."""

    def prepare(
        self, config: ml_collections.ConfigDict, manifest: dict, shard_dir, workdir
    ) -> dict:
        """The run's manifest with its host-side inputs (fitted once, on the run's split)."""
        return manifest

    @abc.abstractmethod
    def train_iterator(self, config: ml_collections.ConfigDict, shard_dir, manifest: dict, mesh):
        """Endless, checkpointable host batches of this process's rows of each global batch."""

    @abc.abstractmethod
    def eval_batches(
        self, config: ml_collections.ConfigDict, shard_dir, manifest: dict, split: str, mesh
    ) -> Iterator[dict]:
        """Every record of `split` once, in manifest order, batches of config.eval.batch rows
        (the last filled with invalid records); `meta["valid"]` marks the real ones."""

    @abc.abstractmethod
    def zeros_batch(self, manifest: dict, batch: int) -> dict:
        """A host batch of `batch` empty records with the manifest's shapes."""

    # --- model and loss -----------------------------------------------------------------------

    @abc.abstractmethod
    def build_model(
        self, config: ml_collections.ConfigDict, manifest: dict, resolved: dict | None = None
    ):
        """(model, its resolved configuration: what building it again needs, saved with every
        checkpoint): from `resolved` when given, else from the config and the run's manifest (a
        converted model's metadata is read, its weights are not)."""

    def check_weights(self, config: ml_collections.ConfigDict) -> None:
        """Refuses converted weights the config names but that are not there, before any work
        (their metadata is read, the weights are not)."""
        from sigmma_jax.models import backbones

        if config.model.backbone_weights:
            backbones.read_meta(config.model.backbone_weights)

    def pretrained(self, config: ml_collections.ConfigDict, params) -> Any:
        """The initial parameters with converted pretrained weights put in (sharded like them)."""
        return params

    def frozen_modules(self, config: ml_collections.ConfigDict) -> tuple[str, ...]:
        """Top-level parameter modules that do not train (no optimizer state); the backbone's
        training mode is model.backbone_mode's."""
        return ()

    @abc.abstractmethod
    def loss_fn(self, config: ml_collections.ConfigDict) -> Callable[[dict], tuple[Any, dict]]:
        """out -> (total loss, {term: loss}); terms are logged as loss_<term>."""

    # --- inference and evaluation -------------------------------------------------------------

    @abc.abstractmethod
    def inference_fn(self, model, mode: str = "eval") -> Callable[[Any, dict], dict]:
        """(params, batch) -> the outputs evaluation keeps, with the batch's `meta` arrays."""

    @abc.abstractmethod
    def keep(self, out: dict, valid, config: ml_collections.ConfigDict) -> dict:
        """A batch's valid rows of `out`, as the evaluators read them."""

    def context(self, config: ml_collections.ConfigDict, manifest: dict, shard_dir) -> dict:
        """What the evaluators read besides the embeddings (chosen once per run)."""
        return {}

    def finish(
        self,
        workdir: pathlib.Path,
        config: ml_collections.ConfigDict,
        manifest: dict,
        embeddings: dict,
        context: dict,
        results: dict,
    ) -> list[pathlib.Path]:
        """What a trained run leaves beside its results (predictors, figures, per-record outputs
        taken out of `results`); the paths."""
        return []

    def write_report(self, workdir: pathlib.Path, results: dict, history) -> list[pathlib.Path]:
        """results.md, results.json and the plots; the paths."""
        from sigmma_jax.evaluation import report

        return report.write_results(workdir, results, history)

    def n_items(self, manifest: dict, split: str) -> int:
        """Records of a split (tiles, spots)."""
        return len(manifest["splits"][split])
