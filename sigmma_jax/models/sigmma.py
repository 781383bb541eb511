"""The two-tower model: an HE tower and an ST tower, projected to one latent space per scale.

SIGMMA is `MultiCrop` (HE) with the graph `STEncoder` (ST) at three scales. A baseline is another
pair of towers in the same model, loop and evaluation: `HE_TOWERS` and `ST_TOWERS` name them
(`config.model.he_tower`, `config.model.st_tower`). The model's scales are those both towers produce
and the loss weighs (`train.scale_weights`); heads are shared across scales, one per modality.

The backbone is built outside (`backbones.build(cfg, **kw)` with `backbones.resolve(config.model)`)
and passed in:
nothing here reads a file, and the backbone's parameters sit at `params["backbone"]`, where converted
weights are loaded.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from sigmma_jax.models import text
from sigmma_jax.models.expression_mlp import ExpressionMLP
from sigmma_jax.models.gene_sentence import GeneSentence
from sigmma_jax.models.gene_text import GeneText
from sigmma_jax.models.he_encoder import MultiCrop, WholeTile
from sigmma_jax.models.heads import ProjectionHead
from sigmma_jax.models.st_encoder import STEncoder
from sigmma_jax.scales import SCALES

HEADS = ("shared", "per_scale")  # model.heads
HE_TOWERS = {"multi_crop": MultiCrop, "whole_tile": WholeTile}
# Each ST tower is built from its own config section: model.st for "graph", model.mlp for "mlp",
# model.gene_sentence for "gene_sentence"; "text" (a vision-language model's pretrained text tower)
# from the text.json converted with model.backbone_weights.
ST_TOWERS = {
    "graph": (STEncoder, "st"),
    "mlp": (ExpressionMLP, "mlp"),
    "gene_sentence": (GeneSentence, "gene_sentence"),
    "text": (GeneText, None),
}


def text_tower(model_config: ml_collections.ConfigDict) -> text.TextTransformer:
    """The text tower saved with model.backbone_weights (its configuration; `families.sigmma` loads
    the weights)."""
    if not model_config.backbone_weights:
        raise ValueError(
            "model.st_tower='text' reads the text tower converted with the image tower: set "
            "model.backbone_weights to a vision-language model's converted directory"
        )
    return text.build(text.read_meta(model_config.backbone_weights)["config"])


class SIGMMA(nn.Module):
    backbone: nn.Module
    st: nn.Module  # the ST tower
    he_tower: str = "multi_crop"
    scales: tuple[str, ...] = SCALES
    embed_dim: int = 256
    head_dropout: float = 0.1
    heads: str = "shared"  # model.heads: one head per modality | "per_scale": one per scale too
    l2_normalize: bool = True
    temperature_init: float = 0.07
    learn_temperature: bool = True
    temperature_min: float = 0.01

    def setup(self):
        self.he = HE_TOWERS[self.he_tower](self.backbone)

        def head():
            return ProjectionHead(self.embed_dim, self.head_dropout, self.l2_normalize)

        if self.heads == "per_scale":  # parameters "he_head_micro", ...
            self.he_head = {s: head() for s in self.scales}
            self.st_head = {s: head() for s in self.scales}
        else:
            self.he_head, self.st_head = head(), head()
        self.log_temperature = self.param(
            "log_temperature", nn.initializers.constant(jnp.log(self.temperature_init)), ()
        )

    def _head(self, heads, scale: str) -> nn.Module:
        return heads[scale] if self.heads == "per_scale" else heads

    def temperature(self) -> jax.Array:
        t = jnp.exp(self.log_temperature)
        if not self.learn_temperature:
            t = jax.lax.stop_gradient(t)
        return jnp.clip(t, self.temperature_min, 1.0)

    def encode_he(self, images: jax.Array, train: bool = False) -> dict:
        """The HE tower alone (H&E-only inference): uint8 (B, m, m, 3) ->
        {"he": {scale: (B, E)}, "he_backbone": {scale: (B, D)}}."""
        he_raw = self.he(images)
        return dict(
            he={s: self._head(self.he_head, s)(he_raw[s], train) for s in self.scales},
            he_backbone={s: he_raw[s] for s in self.scales},
        )

    def __call__(self, batch: dict, train: bool = False) -> dict:
        """-> {"he": {scale: (B, E)}, "st": {...}, "he_backbone": {scale: (B, D)}, "temperature": ()}."""
        st_raw = self.st(batch["graph"], train)
        return dict(
            **self.encode_he(batch["image"], train),
            st={s: self._head(self.st_head, s)(st_raw[s], train) for s in self.scales},
            temperature=self.temperature(),
        )


def model_scales(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The scales a run trains and evaluates: produced by both towers, weighted by the loss."""
    m = config.model
    he = HE_TOWERS[m.he_tower].scales
    st = ST_TOWERS[m.st_tower][0].scales
    weights = dict(zip(SCALES, config.train.scale_weights))
    scales = tuple(s for s in SCALES if s in he and s in st and weights[s] > 0)
    if not scales:
        raise ValueError(
            f"no scale in common: HE tower {m.he_tower!r} has {he}, ST tower {m.st_tower!r} has "
            f"{st}, train.scale_weights {tuple(config.train.scale_weights)}"
        )
    return scales


def build(config: ml_collections.ConfigDict, backbone: nn.Module) -> SIGMMA:
    """The model of a run config around an already built backbone."""
    m = config.model
    if m.he_tower not in HE_TOWERS:
        raise ValueError(
            f"unknown model.he_tower {m.he_tower!r}; expected one of {sorted(HE_TOWERS)}"
        )
    if m.st_tower not in ST_TOWERS:
        raise ValueError(
            f"unknown model.st_tower {m.st_tower!r}; expected one of {sorted(ST_TOWERS)}"
        )
    tower, section = ST_TOWERS[m.st_tower]
    st = tower(text_tower(m)) if m.st_tower == "text" else tower(**m[section])
    return SIGMMA(
        backbone=backbone,
        st=st,
        he_tower=m.he_tower,
        scales=model_scales(config),
        embed_dim=m.embed_dim,
        head_dropout=m.head_dropout,
        heads=m.heads,
        l2_normalize=m.l2_normalize,
        temperature_init=m.temperature_init,
        learn_temperature=m.learn_temperature,
        temperature_min=m.temperature_min,
    )
