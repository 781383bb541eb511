"""ST-Align's methods, baselines and ablations (arXiv 2411.16793 Tables 1-3), each a named set of
config changes (docs/method.md, "ST-Align: baselines and ablations"). Every one runs through the
same loop on the same shards and split; the untrained ones (train.steps = 0) are evaluated on the
embeddings they name.

- `st_align`: the full model (Table 1's row, Table 2's last).
- `frozen_backbone`: the niche image encoder, frozen, on the spot image (the paper's pathology rows
  embed "pathological images of individual ST spots") and on the niche image; domains and genes.
- `expression`: expression alone, the paper's Scanpy row (normalised log1p of the panel, PCA).
- `scgpt`: the spot expression encoder alone (scGPT's <cls> embedding; with converted weights the
  pretrained model, else the architecture at random initialisation, labelled so).
- `clip`: the CLIP / PLIP baseline as STimage-1K4M builds it (image encoder + FC to 32-d against an
  FC layer from expression to 32-d), trained with one symmetric InfoNCE.
- ablations (Table 2): `concat` (concatenation instead of ABFN), `no_ns` (without L_NS: λ1 = λ2 =
  0.5, so ABFN gets no gradient and stays at its initialisation, as the paper's "AE + ABFN" row
  implies), `pretrained_encoders` (without the trainable encoders: the spot image through the
  niche image encoder, the niche expression through scGPT).
"""

from __future__ import annotations

import functools
from typing import Callable

import ml_collections

from sigmma_jax.experiments import methods


def _untrained(c: ml_collections.ConfigDict, domains: tuple, genes: tuple = ()) -> None:
    c.train.steps = 0
    c.evals = ("domains", "spot_expression") if genes else ("domains",)
    c.eval.domain_embeddings = domains
    c.eval.gene_embeddings = genes


def st_align(c: ml_collections.ConfigDict) -> None:
    del c


def frozen_backbone(c: ml_collections.ConfigDict) -> None:
    c.model.encoders = "pretrained"
    c.model.backbone_mode = "frozen"
    both = ("spot_backbone", "niche_backbone")
    _untrained(c, both, both)


def expression(c: ml_collections.ConfigDict) -> None:
    _untrained(c, ("expression",))


def scgpt(c: ml_collections.ConfigDict) -> None:
    _untrained(c, ("scgpt",))


def clip(c: ml_collections.ConfigDict) -> None:
    c.model.variant = "clip"
    c.model.update(temperature_init=0.07, learn_temperature=True)  # CLIP's
    c.eval.domain_embeddings = ("joint", "image", "expression")
    c.eval.gene_embeddings = ("image",)


def concat(c: ml_collections.ConfigDict) -> None:
    c.model.fusion = "concat"


def no_ns(c: ml_collections.ConfigDict) -> None:
    c.train.loss_weights = (0.5, 0.5)


def pretrained_encoders(c: ml_collections.ConfigDict) -> None:
    c.model.encoders = "pretrained"


METHODS: dict[str, Callable[[ml_collections.ConfigDict], None]] = {
    "st_align": st_align,
    "frozen_backbone": frozen_backbone,
    "expression": expression,
    "scgpt": scgpt,
    "clip": clip,
    "concat": concat,
    "no_ns": no_ns,
    "pretrained_encoders": pretrained_encoders,
}
# The paper's image-encoder rows, one suite.backbones entry each: a pathology encoder frozen on the
# spot and niche images (CTransPath, UNI, Prov-GigaPath, Hibou, CONCH), a vision-language image
# tower as the CLIP baseline with its 32-d heads (CLIP ViT-B/32, PLIP).
CLIP_STYLE = ("clip-vit-b-32", "plip")


def backbone_methods(arch: str) -> tuple[str, ...]:
    """The methods a suite.backbones entry of this architecture runs."""
    return ("clip",) if arch in CLIP_STYLE else ("frozen_backbone",)


# The paper's tables: Table 1 (domains) and Table 3 (genes) rows as (method, embedding, label);
# Table 2 (ablations) rows as (method, label), scored on the fused spot (ARI) and image (MSE).
TABLE1 = (
    ("frozen_backbone", "spot_backbone", "frozen image encoder, spot image"),
    ("frozen_backbone", "niche_backbone", "frozen image encoder, niche image"),
    ("expression", "expression", "expression alone (Scanpy: normalise, log1p, PCA)"),
    ("scgpt", "scgpt", "spot expression encoder alone (scGPT)"),
    ("clip", "image", "CLIP-style image alone"),
    ("clip", "joint", "CLIP-style (image ⊕ expression, 32-d each)"),
    ("st_align", "spot_image", "ST-Align: spot image (AE-Img)"),
    ("st_align", "niche_image", "ST-Align: niche image"),
    ("st_align", "spot_gene", "ST-Align: spot expression (scGPT)"),
    ("st_align", "niche_gene", "ST-Align: niche expression (AE-Gene)"),
    ("st_align", "fused_spot", "ST-Align: fused spot"),
)
TABLE2 = (
    ("concat", "concatenation instead of ABFN"),
    ("pretrained_encoders", "ABFN + L_NS, no trainable encoders"),
    ("no_ns", "AE + ABFN, no L_NS"),
    ("st_align", "AE + ABFN + L_NS (ST-Align)"),
)
TABLE3_GENES = (
    ("frozen_backbone", "spot_backbone", "frozen image encoder, spot image"),
    ("frozen_backbone", "niche_backbone", "frozen image encoder, niche image"),
    ("clip", "image", "CLIP-style image"),
    ("st_align", "image", "ST-Align image (spot ⊕ niche)"),
)

check = functools.partial(methods.check, registry=METHODS)
configure = functools.partial(methods.configure, registry=METHODS)
