"""Small models for tests: a 4-block ViT at 32 px, the gradient of a scalar through it, and a small
random ViT saved as converted weights (what a suite.backbones entry reads)."""

import jax
import jax.numpy as jnp

from sigmma_jax.models import backbones


def small_vit(**kw):
    return backbones.build("uni", depth=4, width=64, num_heads=4, img_size=32, **kw)


def grads(model, params, x):
    return jax.jit(jax.grad(lambda p: jnp.sum(model.apply({"params": p}, x) ** 2)))(params)


def random_backbone(path, config, width, seed):
    """A small random ViT of `config.model.vit`'s shape at `width`, saved as converted weights;
    returns the suite.backbones entry NAME=DIR."""
    cfg = dict(kind="vit", **dict(config.model.vit.to_dict(), width=width))
    backbones.save(path, "uni", cfg, backbones.init_params(backbones.build(cfg), seed=seed), {})
    return f"{path.name}={path}"
