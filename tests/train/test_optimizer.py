import jax
import jax.numpy as jnp
import numpy as np
import optax
from support.models import grads, small_vit

from sigmma_jax.models import backbones
from sigmma_jax.train import optimizer


def test_trainable_blocks_stop_gradients_below_the_last_k():
    x = np.random.default_rng(0).random((2, 32, 32, 3), np.float32)
    params = backbones.init_params(small_vit())
    g = grads(small_vit(trainable_blocks=1), params, x)
    nonzero = {
        k for k, v in g.items() if any(float(jnp.abs(l).sum()) > 0 for l in jax.tree.leaves(v))
    }
    assert nonzero == {"blocks_3", "norm"}
    g0 = grads(small_vit(trainable_blocks=0), params, x)
    assert all(float(jnp.abs(l).sum()) == 0 for l in jax.tree.leaves(g0))
    labels = optimizer.param_labels({"backbone": params, "head": {"w": 0}}, "last_k", 1)
    assert labels["head"]["w"] == "rest"
    trained = {k for k, v in labels["backbone"].items() if set(jax.tree.leaves(v)) == {"backbone"}}
    assert trained == nonzero


def test_layer_decay_inside_multi_transform():
    params = {"backbone": backbones.init_params(small_vit()), "head": {"w": jnp.ones((3,))}}
    decay = 0.5
    mults = optimizer.lr_multipliers(params, decay)
    assert mults["head"]["w"] == 1.0
    assert mults["backbone"]["norm"]["scale"] == 1.0
    assert mults["backbone"]["blocks_3"]["fc1"]["kernel"] == 0.5
    assert mults["backbone"]["blocks_0"]["fc1"]["kernel"] == 0.5**4
    assert mults["backbone"]["pos_embed"] == 0.5**5
    labels = optimizer.param_labels(params, "last_k", 2)
    tx = optax.multi_transform(
        {
            "backbone": optax.chain(optax.sgd(1.0), optimizer.layer_decay(decay)),
            "frozen": optax.set_to_zero(),
            "rest": optax.sgd(1.0),
        },
        labels,
    )
    upd, _ = jax.jit(tx.update)(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
    assert float(upd["backbone"]["blocks_3"]["fc1"]["kernel"][0, 0]) == -0.5
    assert float(upd["backbone"]["blocks_2"]["fc1"]["kernel"][0, 0]) == -0.25
    assert float(upd["backbone"]["blocks_1"]["fc1"]["kernel"][0, 0]) == 0.0  # frozen
    assert float(upd["backbone"]["norm"]["scale"][0]) == -1.0
    assert float(upd["head"]["w"][0]) == -1.0
    # Frozen leaves keep no optimizer state: Adam's moments cover the trainable leaves only.
    tx = optax.multi_transform(
        {"backbone": optax.adam(1.0), "frozen": optax.set_to_zero(), "rest": optax.adam(1.0)},
        labels,
    )
    state_size = sum(x.size for x in jax.tree.leaves(tx.init(params)) if x.ndim)
    trainable = sum(
        x.size for x, l in zip(jax.tree.leaves(params), jax.tree.leaves(labels)) if l != "frozen"
    )
    assert state_size == 2 * trainable


def test_weight_decay_spares_tokens_position_embedding_norms_and_biases():
    vit = backbones.build("uni2-h", depth=1, width=96, num_heads=4, img_size=28)
    params = {"backbone": backbones.init_params(vit), "log_temperature": jnp.zeros(())}
    mask = optimizer.decay_mask(params)["backbone"]
    for name in ("pos_embed", "cls_token", "reg_token"):
        assert params["backbone"][name].ndim == 3 and not mask[name]
    assert mask["patch_embed"]["kernel"] and mask["blocks_0"]["fc1"]["kernel"]
    assert not mask["blocks_0"]["fc1"]["bias"] and not mask["norm"]["scale"]
    assert not optimizer.decay_mask(params)["log_temperature"]
