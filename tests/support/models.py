"""Small models for tests: a 4-block ViT at 32 px and the gradient of a scalar through it."""

import jax
import jax.numpy as jnp

from sigmma_jax.models import backbones


def small_vit(**kw):
    return backbones.build("uni", depth=4, width=64, num_heads=4, img_size=32, **kw)


def grads(model, params, x):
    return jax.jit(jax.grad(lambda p: jnp.sum(model.apply({"params": p}, x) ** 2)))(params)
