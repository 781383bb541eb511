"""The two towers: multi-crop HE encoder and hierarchical ST encoder, projected to one latent space."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from sigmma_jax.models import backbones
from sigmma_jax.models.he_encoder import HEEncoder
from sigmma_jax.models.st_encoder import STEncoder

SCALES = ("micro", "meso", "macro")


class ProjectionHead(nn.Module):
    """BLEEP's head: Linear -> GELU -> Linear -> dropout, residual, LayerNorm; then L2-normalised."""

    dim: int
    dropout: float

    @nn.compact
    def __call__(self, x, train: bool):
        p = nn.Dense(self.dim, name="proj")(x)
        h = nn.Dense(self.dim, name="fc")(nn.gelu(p, approximate=False))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = nn.LayerNorm()(h + p)
        return h / jnp.linalg.norm(h, axis=-1, keepdims=True).clip(1e-6)


class SIGMMA(nn.Module):
    config: ml_collections.ConfigDict  # the `model` part of a run config

    def setup(self):
        c = self.config
        self.he = HEEncoder(
            backbones.from_config(c, name="backbone"), frozen=c.backbone_mode == "frozen"
        )
        self.st = STEncoder(**c.st)
        self.he_head = ProjectionHead(c.embed_dim, c.head_dropout)
        self.st_head = ProjectionHead(c.embed_dim, c.head_dropout)
        self.log_temperature = self.param(
            "log_temperature", nn.initializers.constant(jnp.log(c.temperature_init)), ()
        )

    def temperature(self) -> jax.Array:
        t = jnp.exp(self.log_temperature)
        if not self.config.learn_temperature:
            t = jax.lax.stop_gradient(t)
        return jnp.clip(t, self.config.temperature_min, 1.0)

    def __call__(self, batch: dict, train: bool = False) -> dict:
        """-> {"he": {scale: (B, E)}, "st": {...}, "he_backbone": {scale: (B, D)}, "temperature": ()}."""
        he_raw = self.he(batch["image"])
        st_raw = self.st(batch["graph"], train)
        return dict(
            he={s: self.he_head(he_raw[s], train) for s in SCALES},
            st={s: self.st_head(st_raw[s], train) for s in SCALES},
            he_backbone=he_raw,
            temperature=self.temperature(),
        )
