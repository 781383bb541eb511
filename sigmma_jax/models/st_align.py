"""ST-Align (arXiv 2411.16793, §3): four encoders, a fusion network, and the CLIP-style baseline.

`STAlign` encodes a Visium spot and its niche, each from its image and its expression:
- spot image: AE-Img, a ResNet trained from scratch on the spot crop (`spot_image`);
- niche image: a backbone of the registry, UNI by default (`backbone`, at params["backbone"]
  where converted weights are loaded);
- spot expression: scGPT (`spot_gene`, pretrained when converted weights are given);
- niche expression: AE-Gene, a transformer over the niche's mean expression (`niche_gene`).
Each encoder's output goes through its own projection head (BLEEP's, L2-normalised) into one
space of `embed_dim`, where L_spot and L_niche align image and expression. The fusion network
(ABFN, §3.3, or concatenation for the ablation) joins a spot's image and expression, and a niche's,
with the same weights for both, into the space of L_NS (`fused_spot`, `fused_niche`, normalised).
With `encoders="pretrained"` (Table 2's ablation without the trainable encoders) the spot image
goes through the niche image encoder and the niche expression through scGPT.

`CLIPStyle` is the paper's CLIP / PLIP baseline as STimage-1K4M builds it: the image encoder on the
spot image and a fully connected layer to 32-d, against a fully connected layer from the spot's
normalised log1p expression to 32-d.

Both return their embeddings, their encoders' raw outputs (for the frozen baselines), the
temperature and, in training with `negatives="other_clusters"`, what the loss needs to keep one
negative per other pre-cluster (`sigmma_jax.losses.one_per_cluster`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from sigmma_jax.models.he_encoder import resize
from sigmma_jax.models.heads import ProjectionHead
from sigmma_jax.models.niche_expression import normalized_log1p

ENCODERS = ("spot_image", "spot_gene", "niche_image", "niche_gene")
NEGATIVES = ("in_batch", "other_clusters")


def _unit(x: jax.Array) -> jax.Array:
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True).clip(1e-6)


class Temperature(nn.Module):
    """τ, learnable in log space or fixed, clipped to [minimum, 1]."""

    init: float = 0.1
    learn: bool = False
    minimum: float = 0.01

    @nn.compact
    def __call__(self) -> jax.Array:
        log_t = self.param("log_temperature", nn.initializers.constant(jnp.log(self.init)), ())
        t = jnp.exp(log_t)
        if not self.learn:
            t = jax.lax.stop_gradient(t)
        return jnp.clip(t, self.minimum, 1.0)


def _negatives(batch: dict, module: nn.Module) -> dict:
    """A spot's pre-cluster, unique across slides, and two uniform draws per pair (one for each
    direction of a symmetric loss) that pick one negative per other cluster."""
    meta = batch["meta"]
    b = meta["slide"].shape[0]
    cluster = meta["slide"].astype(jnp.int32) * 1024 + meta["precluster"].astype(jnp.int32)
    pick = jax.random.uniform(module.make_rng("negatives"), (2, b, b))
    return dict(cluster=cluster, pick=pick)


class STAlign(nn.Module):
    backbone: nn.Module  # the niche image encoder
    spot_gene: nn.Module  # scGPT
    fusion: nn.Module  # ABFN or Concatenate, shared by spots and niches
    spot_image: nn.Module | None = None  # AE-Img; None with encoders="pretrained"
    niche_gene: nn.Module | None = None  # AE-Gene; None with encoders="pretrained"
    embed_dim: int = 512
    head_dropout: float = 0.1
    temperature_init: float = 0.1
    learn_temperature: bool = False
    temperature_min: float = 0.01
    negatives: str = "in_batch"

    def setup(self):
        self.heads = {n: ProjectionHead(self.embed_dim, self.head_dropout) for n in ENCODERS}
        self.temperature = Temperature(
            self.temperature_init, self.learn_temperature, self.temperature_min
        )

    def _image(self, images: jax.Array) -> jax.Array:
        """The niche image encoder on uint8 images resized to its input."""
        x = images.astype(jnp.float32) / 255.0
        size = self.backbone.img_size
        return self.backbone(x if x.shape[1] == size else resize(x, size))

    def encode_images(self, batch: dict, train: bool = False) -> dict:
        """The image side alone (an H&E slide without expression): raw encoder outputs and their
        projections, {"spot_image", "niche_image", "image" (the two, concatenated), "raw": {...}}."""
        niche = self._image(batch["niche_image"])
        if self.spot_image is None:
            spot = self._image(batch["spot_image"])
        else:
            spot = self.spot_image(batch["spot_image"].astype(jnp.float32) / 255.0)
        z = {
            "spot_image": self.heads["spot_image"](spot, train),
            "niche_image": self.heads["niche_image"](niche, train),
        }
        z["image"] = jnp.concatenate([z["spot_image"], z["niche_image"]], -1)
        return dict(z, raw=dict(spot_image=spot, niche_image=niche))

    def __call__(self, batch: dict, train: bool = False) -> dict:
        """-> {each encoder's projection, "image", "fused_spot", "fused_niche": (B, E) unit
        vectors, "raw": {encoder: its output}, "temperature": ()} (and "negatives" in training
        with negatives="other_clusters")."""
        out = self.encode_images(batch, train)
        s = batch["scgpt"]
        spot_gene = self.spot_gene(s["genes"], s["values"], s["mask"], train)
        if self.niche_gene is None:
            n = batch["niche_scgpt"]
            niche_gene = self.spot_gene(n["genes"], n["values"], n["mask"], train)
        else:
            niche_gene = self.niche_gene(batch["niche_counts"], train)
        out["raw"].update(spot_gene=spot_gene, niche_gene=niche_gene)
        out["spot_gene"] = self.heads["spot_gene"](spot_gene, train)
        out["niche_gene"] = self.heads["niche_gene"](niche_gene, train)
        out["fused_spot"] = _unit(self.fusion(out["spot_image"], out["spot_gene"], train))
        out["fused_niche"] = _unit(self.fusion(out["niche_image"], out["niche_gene"], train))
        out["temperature"] = self.temperature()
        if train and self.negatives == "other_clusters":
            out["negatives"] = _negatives(batch, self)
        return out


class CLIPStyle(nn.Module):
    """The CLIP / PLIP baseline (§4.2): image encoder -> FC to `dim` against expression -> FC."""

    backbone: nn.Module
    dim: int = 32
    target_sum: float = 1e4
    temperature_init: float = 0.07
    learn_temperature: bool = True
    temperature_min: float = 0.01
    negatives: str = "in_batch"

    def setup(self):
        self.image_fc = nn.Dense(self.dim)
        self.expression_fc = nn.Dense(self.dim)
        self.temperature = Temperature(
            self.temperature_init, self.learn_temperature, self.temperature_min
        )

    def encode_images(self, batch: dict, train: bool = False) -> dict:
        x = batch["spot_image"].astype(jnp.float32) / 255.0
        size = self.backbone.img_size
        raw = self.backbone(x if x.shape[1] == size else resize(x, size))
        return dict(image=_unit(self.image_fc(raw)), raw=dict(spot_image=raw))

    def __call__(self, batch: dict, train: bool = False) -> dict:
        out = self.encode_images(batch, train)
        expr = normalized_log1p(batch["counts"], self.target_sum)
        out["expression"] = _unit(self.expression_fc(expr))
        out["joint"] = jnp.concatenate([out["image"], out["expression"]], -1)
        out["temperature"] = self.temperature()
        if train and self.negatives == "other_clusters":
            out["negatives"] = _negatives(batch, self)
        return out
