"""Backbones against timm: random timm models (shallow variants) converted and compared.

The real depths run in scripts/check_uni_parity.py and the benchmark (docs/benchmarks.md).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import timm_helpers as th
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from sigmma_jax import attention_maps, convert
from sigmma_jax.models import backbones
from sigmma_jax.models.vit import resample_pos_embed

SHALLOW = {
    "uni": dict(depth=2),
    "uni2-h": dict(depth=2),
    "h-optimus-0": dict(depth=2),
    "resnet50": dict(layers=(1, 1, 1, 1)),
}
OTHER_SIZE = {"uni": 288, "uni2-h": 168, "h-optimus-0": 280, "resnet50": 160}
SUFFIX = {
    "uni": ".bin",
    "uni2-h": ".safetensors",
    "h-optimus-0": ".bin",
    "resnet50": ".safetensors",
}


def save_state_dict(model, path):
    sd = th.state_dict(model)
    if str(path).endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        _, torch = th.import_timm()
        torch.save(sd, str(path))
    return path


@pytest.fixture(scope="module", params=sorted(SHALLOW))
def converted(request, tmp_path_factory):
    """(arch, timm model, Flax model, params) through file -> convert -> backbones.load."""
    arch = request.param
    tm = th.timm_model(arch, seed=len(arch), **SHALLOW[arch])
    root = tmp_path_factory.mktemp(arch)
    src = save_state_dict(tm, root / f"pytorch_model{SUFFIX[arch]}")
    convert.convert(arch, src, root / "flax", **SHALLOW[arch])
    model, params = backbones.load(arch, root / "flax")
    return arch, tm, model, params


def test_embeddings_match_timm_at_224_and_another_size(converted):
    arch, tm, model, params = converted
    cfg = backbones.config(arch)
    apply = jax.jit(model.apply)
    rng = np.random.default_rng(0)
    for size in (224, OTHER_SIZE[arch]):
        x = rng.random((2, size, size, 3), np.float32)
        ref = th.timm_embed(tm, x, cfg["mean"], cfg["std"])
        got = np.asarray(apply({"params": params}, x))
        assert got.shape == ref.shape == (2, model.embed_dim)
        diff, cos = th.compare(got, ref)
        assert diff < 1e-4 and cos > 0.99999, (arch, size, diff, cos)


def test_params_are_float32_and_normalisation_is_the_models(converted):
    arch, _, model, params = converted
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    assert tuple(model.mean) == tuple(backbones.ARCHS[arch]["mean"])


@pytest.mark.parametrize(
    "grid,prefix", [((18, 18), 1), ((10, 10), 1), ((12, 20), 0), ((20, 20), 5)]
)
def test_pos_embed_resampling_matches_timm(grid, prefix):
    timm, torch = th.import_timm()
    from timm.layers import resample_abs_pos_embed

    pos = np.random.default_rng(1).normal(size=(1, prefix + 14 * 14, 32)).astype(np.float32)
    ref = resample_abs_pos_embed(
        torch.from_numpy(pos), list(grid), num_prefix_tokens=prefix
    ).numpy()
    got = np.asarray(resample_pos_embed(jnp.asarray(pos), grid, prefix))
    np.testing.assert_allclose(got, ref, atol=2e-6)
    del timm


def test_last_block_attention_matches_timm(tmp_path):
    _, torch = th.import_timm()
    tm = th.timm_model("uni", seed=3, depth=2)
    cfg = backbones.config("uni", depth=2)
    params, _ = convert.convert_state_dict(
        {k: v.numpy() for k, v in th.state_dict(tm).items()}, cfg
    )
    model = backbones.build_module(cfg)
    captured = {}
    attn = tm.blocks[-1].attn
    attn.fused_attn = False  # the unfused path exposes the probabilities to a hook
    attn.attn_drop.register_forward_hook(lambda m, i, o: captured.setdefault("p", o.detach()))
    x = np.random.default_rng(2).random((2, 224, 224, 3), np.float32)
    th.timm_embed(tm, x, cfg["mean"], cfg["std"])
    emb, probs = jax.jit(lambda p, x: model.apply({"params": p}, x, return_attention=True))(
        params, x
    )
    np.testing.assert_allclose(np.asarray(probs), captured["p"].numpy(), atol=1e-5)
    np.testing.assert_allclose(emb, jax.jit(model.apply)({"params": params}, x), atol=1e-5)
    maps = attention_maps.class_token_attention(model, params, x)
    assert maps.shape == (2, 16, 14, 14)
    np.testing.assert_allclose(
        maps.reshape(2, 16, -1), captured["p"].numpy()[:, :, 0, 1:], atol=1e-5
    )
    tiles = (np.random.default_rng(3).random((2, 256, 256, 3)) * 255).astype(np.uint8)
    paths = attention_maps.save_attention_maps(model, params, tiles, tmp_path, ["a", "b"])
    assert [p.name for p in paths] == ["a_attention.png", "b_attention.png"]
    assert all(p.stat().st_size > 1000 for p in paths)
    assert np.load(tmp_path / "a_attention.npy").shape == (16, 14, 14)


def test_registers_are_skipped_in_attention_maps():
    model = backbones.build("uni2-h", depth=1, width=96, num_heads=4)
    params = backbones.init_params(model)
    x = np.random.default_rng(0).random((1, 56, 56, 3), np.float32)
    maps = attention_maps.class_token_attention(model, params, x)
    assert maps.shape == (1, 4, 4, 4)
    assert (maps.sum((2, 3)) < 1).all()  # the class token and 8 registers take the rest


def _small_vit(**kw):
    return backbones.build("uni", depth=4, width=64, num_heads=4, img_size=32, **kw)


def _grads(model, params, x):
    return jax.jit(jax.grad(lambda p: jnp.sum(model.apply({"params": p}, x) ** 2)))(params)


def test_trainable_blocks_stop_gradients_below_the_last_k():
    x = np.random.default_rng(0).random((2, 32, 32, 3), np.float32)
    params = backbones.init_params(_small_vit())
    g = _grads(_small_vit(trainable_blocks=1), params, x)
    nonzero = {
        k for k, v in g.items() if any(float(jnp.abs(l).sum()) > 0 for l in jax.tree.leaves(v))
    }
    assert nonzero == {"blocks_3", "norm"}
    g0 = _grads(_small_vit(trainable_blocks=0), params, x)
    assert all(float(jnp.abs(l).sum()) == 0 for l in jax.tree.leaves(g0))
    labels = backbones.param_labels({"backbone": params, "head": {"w": 0}}, "last_k", 1)
    assert labels["head"]["w"] == "rest"
    trained = {k for k, v in labels["backbone"].items() if set(jax.tree.leaves(v)) == {"backbone"}}
    assert trained == nonzero


def test_remat_and_bfloat16():
    x = np.random.default_rng(0).random((2, 32, 32, 3), np.float32)
    params = backbones.init_params(_small_vit())
    g = _grads(_small_vit(), params, x)
    g_remat = _grads(_small_vit(remat=True), params, x)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_remat)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    f32 = jax.jit(_small_vit().apply)({"params": params}, x)
    bf16 = jax.jit(_small_vit(dtype=jnp.bfloat16).apply)({"params": params}, x)
    assert bf16.dtype == jnp.float32
    _, cos = th.compare(bf16, f32)
    assert cos > 0.99
    g_bf16 = _grads(_small_vit(dtype=jnp.bfloat16, remat=True), params, x)
    assert all(l.dtype == jnp.float32 for l in jax.tree.leaves(g_bf16))  # float32 master weights


def test_layer_decay_inside_multi_transform():
    params = {"backbone": backbones.init_params(_small_vit()), "head": {"w": jnp.ones((3,))}}
    decay = 0.5
    mults = backbones.lr_multipliers(params, decay)
    assert mults["head"]["w"] == 1.0
    assert mults["backbone"]["norm"]["scale"] == 1.0
    assert mults["backbone"]["blocks_3"]["fc1"]["kernel"] == 0.5
    assert mults["backbone"]["blocks_0"]["fc1"]["kernel"] == 0.5**4
    assert mults["backbone"]["pos_embed"] == 0.5**5
    labels = backbones.param_labels(params, "last_k", 2)
    tx = optax.multi_transform(
        {
            "backbone": optax.chain(optax.sgd(1.0), backbones.layer_decay(decay)),
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


def test_load_into_keeps_shardings_and_names_mismatches(tmp_path):
    arch, ov = "uni", dict(depth=1, width=64, num_heads=4, img_size=32)
    model = backbones.build(arch, **ov)
    src = backbones.init_params(model, seed=1)
    backbones.save(tmp_path / "w", arch, backbones.config(arch, **ov), jax.device_get(src), {})
    mesh = Mesh(np.asarray(jax.devices()), ("data",))
    rep = NamedSharding(mesh, P())
    params = jax.device_put(
        {"backbone": backbones.init_params(model, seed=2), "head": {"w": jnp.zeros(3)}}, rep
    )
    out = backbones.load_into(params, tmp_path / "w")
    np.testing.assert_array_equal(out["backbone"]["pos_embed"], src["pos_embed"])
    assert out["backbone"]["pos_embed"].sharding == rep
    assert out["head"] is params["head"]
    other = backbones.init_params(backbones.build(arch, **{**ov, "width": 96}))
    with pytest.raises(ValueError, match=r"shape of blocks_0/attn/qkv/kernel"):
        backbones.load_into({"backbone": other}, tmp_path / "w")
    with pytest.raises(ValueError, match="holds 'uni' weights"):
        backbones.load("uni2-h", tmp_path / "w")


def test_from_config_follows_mode_and_weights(tmp_path):
    import ml_collections

    from sigmma_jax import config_base

    c = config_base.base_config().model
    c.backbone, c.backbone_weights = "vit", ""  # the plain ViT of model.vit, randomly initialised
    c.backbone_mode = "frozen"
    m = backbones.from_config(c)
    assert m.trainable_blocks == 0 and m.width == 1024 and m.dtype == jnp.bfloat16
    c.backbone_mode, c.backbone_last_k = "last_k", 3
    assert backbones.from_config(c).trainable_blocks == 3
    ov = dict(depth=1, width=96, num_heads=4, img_size=28)
    backbones.save(
        tmp_path / "w",
        "uni2-h",
        backbones.config("uni2-h", **ov),
        backbones.init_params(backbones.build("uni2-h", **ov)),
        {},
    )
    c.backbone_weights = str(tmp_path / "w")
    m = backbones.from_config(c)
    assert (m.reg_tokens, m.width, m.mlp) == (8, 96, "swiglu_packed")
    c.backbone = "uni"
    with pytest.raises(ValueError, match="holds 'uni2-h'"):
        backbones.from_config(c)
    del ml_collections


def test_padded_attention_equals_attention():
    """The cuDNN path pads the sequence to a multiple of 64 and masks the padding (checked here with
    XLA's implementation, which takes the same arguments)."""
    from sigmma_jax.models.vit import attention

    q, k, v = jax.random.normal(jax.random.PRNGKey(0), (3, 2, 197, 4, 16))
    np.testing.assert_allclose(attention(q, k, v, None, 64), attention(q, k, v), atol=1e-5)
    g = jax.jit(jax.grad(lambda q: attention(q, k, v, None, 64).sum()))(q)
    np.testing.assert_allclose(
        g, jax.jit(jax.grad(lambda q: attention(q, k, v).sum()))(q), atol=1e-5
    )
