"""The paper's methods and ablations, each a named set of config changes (docs/method.md, "Baselines
and ablations"). Every one is trained by the same loop on the same shards and split as SIGMMA; a
baseline is another pair of towers, another loss, another evaluation.

A single-scale method uses the `whole_tile` HE tower: its macro embedding is what `multi_crop`
computes for the macro scale (the backbone on the resized tile), without the 20 other crops.
"""

from __future__ import annotations

from typing import Callable

import ml_collections


def _single_scale(c: ml_collections.ConfigDict) -> None:
    """Macro only: trained on the macro loss and evaluated on the macro embedding."""
    c.model.he_tower = "whole_tile"
    c.train.scale_weights = (0.0, 0.0, 1.0)


def _tile_feature(c: ml_collections.ConfigDict, name: str) -> None:
    c.data.tile_features = tuple(dict.fromkeys((*c.data.tile_features, name)))


def frozen_backbone(c: ml_collections.ConfigDict) -> None:
    """The backbone's own embedding of the whole tile, as HEST-Benchmark embeds a patch; nothing is
    trained, and only Task 1 is scored (it has no ST side). Table 1's "UNI" row."""
    _single_scale(c)
    c.model.st_tower = "mlp"  # unused: the probe reads the backbone's embedding
    c.train.steps = 0
    c.evals = ("probe",)
    c.eval.probe_embedding = "backbone"


def single_scale_clip(c: ml_collections.ConfigDict) -> None:
    """Single-scale alignment: the backbone on the whole tile against an MLP on the tile's
    expression (model.mlp.input: its summed counts library-size normalised, then log1p, as
    SIGMMA's cells are), one symmetric InfoNCE."""
    _single_scale(c)
    c.model.st_tower = "mlp"


def bleep(c: ml_collections.ConfigDict) -> None:
    """BLEEP: an MLP on Harmony-corrected principal components of the tile's expression, BLEEP's
    heads without L2 normalisation, its soft-target loss at τ = 1; its own kNN predictor too."""
    _single_scale(c)
    c.model.st_tower = "mlp"
    c.model.mlp.input = "expression_pcs"
    _tile_feature(c, "expression_pcs")
    c.train.loss = "bleep"
    c.model.update(temperature_init=1.0, learn_temperature=False, l2_normalize=False)
    c.evals = tuple(dict.fromkeys((*c.evals, "knn_expression")))


def gene_sentence(c: ml_collections.ConfigDict) -> None:
    """OmiCLIP's representation of ST: the tile's top genes as a sentence, a transformer over gene
    tokens trained from scratch, CLIP's loss against the image tower. It stands in for the paper's
    CLIP and PLIP rows (vision-language models fine-tuned on such sentences, whose weights are out
    of reach here). Table 4 (a), "no graph, single scale"."""
    _single_scale(c)
    c.model.st_tower = "gene_sentence"
    _tile_feature(c, "gene_sentence")


def text_tower(c: ml_collections.ConfigDict) -> None:
    """A vision-language model's own two towers (CLIP, PLIP, OmiCLIP's CoCa; weights converted with
    its text tower into model.backbone_weights): the image tower on the whole tile, the pretrained
    text tower on the tile's gene sentence written as text (OmiCLIP's representation of ST, as Loki
    encodes it), fine-tuned with CLIP's symmetric InfoNCE. The paper's CLIP, PLIP and OmiCLIP rows;
    a suite.backbones entry of such a model runs it (`backbone_methods`)."""
    _single_scale(c)
    c.model.st_tower = "text"
    _tile_feature(c, "gene_text")


def sigmma(c: ml_collections.ConfigDict) -> None:
    """The full model: multi-crop HE tower, hierarchical cell graph with sampled edges, three scales."""
    del c


def _fully_connected(c: ml_collections.ConfigDict) -> None:
    # Every pair of a block an edge: no sampling and no neighbour-patch constraint.
    c.model.st_tower = "graph"
    c.model.st.update(edge_sampling="full", candidates="block")


def graph_single_scale_full(c: ml_collections.ConfigDict) -> None:
    """Table 4 (b): the cell graph, every pair of a block connected instead of sampled, the macro
    loss alone."""
    _single_scale(c)
    _fully_connected(c)


def graph_multiscale_full(c: ml_collections.ConfigDict) -> None:
    """Table 4 (c): the cell graph fully connected within blocks, the three-scale loss."""
    _fully_connected(c)


# Why SIGMMA's fine-tuned backbone embeds the whole tile worse than the single-scale models do: one
# backbone and one head serve 21 crops, 16 of them micro crops. Each changes one thing.
def sigmma_heads_per_scale(c: ml_collections.ConfigDict) -> None:
    """SIGMMA with one projection head per scale (and modality) instead of one shared."""
    c.model.heads = "per_scale"


def sigmma_macro_weighted(c: ml_collections.ConfigDict) -> None:
    """SIGMMA with the macro (whole-tile) term weighted 2 and the others 0.5: the same total."""
    c.train.scale_weights = (0.5, 0.5, 2.0)


def sigmma_backbone_lr(c: ml_collections.ConfigDict) -> None:
    """SIGMMA with the backbone at a tenth of the learning rate (the paper-scale default's 0.1)."""
    c.train.backbone_lr_mult = 0.1


METHODS: dict[str, Callable[[ml_collections.ConfigDict], None]] = {
    "frozen_backbone": frozen_backbone,
    "single_scale_clip": single_scale_clip,
    "bleep": bleep,
    "gene_sentence": gene_sentence,
    "text_tower": text_tower,
    "sigmma": sigmma,
    "graph_single_scale_full": graph_single_scale_full,
    "graph_multiscale_full": graph_multiscale_full,
    "sigmma_heads_per_scale": sigmma_heads_per_scale,
    "sigmma_macro_weighted": sigmma_macro_weighted,
    "sigmma_backbone_lr": sigmma_backbone_lr,
}

# The paper's tables: which methods fill which rows. Table 4's rows are cumulative ablations, named
# as the issue names them; (a) is the gene-sentence model.
TABLE1 = ("frozen_backbone", "single_scale_clip", "bleep", "gene_sentence", "sigmma")
TABLE2 = ("single_scale_clip", "bleep", "gene_sentence", "sigmma")
TABLE3 = ("frozen_backbone", "sigmma")


def backbone_methods(arch: str) -> tuple[str, ...]:
    """The methods a suite.backbones entry of this architecture runs: a vision-language model (one
    with a text tower) its own two towers, Tables 1 and 2's CLIP / PLIP / OmiCLIP rows under its
    name; any other backbone Table 3's."""
    from sigmma_jax.models import text  # pylint: disable=import-outside-toplevel

    return ("text_tower",) if arch in text.ARCHS else TABLE3


TABLE4 = {
    "no_graph": "gene_sentence",
    "graph_single_scale_full": "graph_single_scale_full",
    "graph_multiscale_full": "graph_multiscale_full",
    "sigmma": "sigmma",
}

# The whole-tile question (run with --config.suite.methods): SIGMMA and its three variants.
TABLE_WHOLE_TILE = (
    "sigmma",
    "sigmma_heads_per_scale",
    "sigmma_macro_weighted",
    "sigmma_backbone_lr",
)


def check(names, registry: dict | None = None) -> None:
    """Refuses names that are not methods of `registry` (SIGMMA's METHODS by default)."""
    registry = METHODS if registry is None else registry
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise ValueError(
            f"unknown method(s) {unknown} in config.suite.methods; known: {list(registry)}"
        )


def configure(
    config: ml_collections.ConfigDict, method: str, registry: dict | None = None
) -> ml_collections.ConfigDict:
    """A copy of `config` changed into `method` (of `registry`, SIGMMA's METHODS by default)."""
    registry = METHODS if registry is None else registry
    check([method], registry)
    c = config.copy_and_resolve_references()
    with c.unlocked():
        registry[method](c)
    return c
