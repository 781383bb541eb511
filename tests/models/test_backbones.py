"""Backbones against their PyTorch references (timm; transformers for Hibou): random reference
models (shallow variants) saved in the published layout, converted and compared.

The real depths run in scripts/check_uni_parity.py and the benchmark (docs/benchmarks.md).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from support import timm_helpers as th
from support.models import grads, small_vit

from sigmma_jax.models import backbones
from sigmma_jax.models.vit import resample_pos_embed
from sigmma_jax.tools import convert

SHALLOW = {
    "uni": dict(depth=2),
    "uni2-h": dict(depth=2),
    "h-optimus-0": dict(depth=2),
    "resnet50": dict(layers=(1, 1, 1, 1)),
    "prov-gigapath": dict(depth=2),
    "virchow2": dict(depth=2),
    "hibou-b": dict(depth=2),
    "hibou-l": dict(depth=2),
}
OTHER_SIZE = {
    "uni": 288,
    "uni2-h": 168,
    "h-optimus-0": 280,
    "resnet50": 160,
    "prov-gigapath": 160,
    "virchow2": 168,
    "hibou-b": 182,
    "hibou-l": 280,
}
SUFFIX = {
    "uni": ".bin",
    "uni2-h": ".safetensors",
    "h-optimus-0": ".bin",
    "resnet50": ".safetensors",
    "prov-gigapath": ".bin",
    "virchow2": ".safetensors",
    "hibou-b": ".safetensors",  # transformers 5's naming
    "hibou-l": ".bin",  # the published (transformers 4 remote code) naming
}


def published_dinov2_names(sd: dict) -> dict:
    """transformers 5's Dinov2 names -> those of Hibou's published checkpoint (attention.attention.*,
    attention.output.dense, the packed SwiGLU mlp.weights_in / weights_out)."""
    _, torch = th.import_timm()
    out = {}
    for k, v in sd.items():
        for new, old in (
            ("attention.q_proj", "attention.attention.query"),
            ("attention.k_proj", "attention.attention.key"),
            ("attention.v_proj", "attention.attention.value"),
            ("attention.o_proj", "attention.output.dense"),
            ("mlp.down_proj", "mlp.weights_out"),
        ):
            k = k.replace(new, old)
        out[k] = v
    for k in [k for k in out if ".mlp.gate_proj." in k]:
        up = k.replace("gate_proj", "up_proj")
        out[k.replace("gate_proj", "weights_in")] = torch.cat([out.pop(k), out.pop(up)], 0)
    return out


def save_state_dict(model, path):
    sd = th.state_dict(model)
    if "hibou-l" in str(path):
        sd = published_dinov2_names(sd)
    if str(path).endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        _, torch = th.import_timm()
        torch.save(sd, str(path))
    return path


@pytest.fixture(scope="module", params=sorted(SHALLOW))
def converted(request, tmp_path_factory):
    """(arch, reference model, Flax model, params) through file -> convert -> backbones.load."""
    arch = request.param
    tm = th.reference_model(arch, seed=len(arch), **SHALLOW[arch])
    root = tmp_path_factory.mktemp(arch)
    src = save_state_dict(tm, root / f"pytorch_model{SUFFIX[arch]}")
    convert.convert(arch, src, root / "flax", **SHALLOW[arch])
    model, params = backbones.load(root / "flax", arch=arch)
    return arch, tm, model, params


def test_embeddings_match_the_reference_at_224_and_another_size(converted, demo_tile):
    arch, tm, model, params = converted
    cfg = backbones.config(arch)
    apply = jax.jit(model.apply)
    rng = np.random.default_rng(0)
    for size in (224, OTHER_SIZE[arch]):
        x = rng.random((2, size, size, 3), np.float32)
        if size == 224:  # noise and a tile of the demo's slide
            x[1] = demo_tile
        ref = th.reference_embed(tm, x, cfg["mean"], cfg["std"], arch)
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


def test_remat_and_bfloat16():
    x = np.random.default_rng(0).random((2, 32, 32, 3), np.float32)
    params = backbones.init_params(small_vit())
    g = grads(small_vit(), params, x)
    g_remat = grads(small_vit(remat=True), params, x)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_remat)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    f32 = jax.jit(small_vit().apply)({"params": params}, x)
    bf16 = jax.jit(small_vit(dtype=jnp.bfloat16).apply)({"params": params}, x)
    assert bf16.dtype == jnp.float32
    _, cos = th.compare(bf16, f32)
    assert cos > 0.99
    g_bf16 = grads(small_vit(dtype=jnp.bfloat16, remat=True), params, x)
    assert all(l.dtype == jnp.float32 for l in jax.tree.leaves(g_bf16))  # float32 master weights


def test_load_keeps_shardings_and_names_mismatches(tmp_path):
    arch, ov = "uni", dict(depth=1, width=64, num_heads=4, img_size=32)
    model = backbones.build(arch, **ov)
    src = backbones.init_params(model, seed=1)
    backbones.save(tmp_path / "w", arch, backbones.config(arch, **ov), jax.device_get(src), {})
    mesh = Mesh(np.asarray(jax.devices()), ("data",))
    rep = NamedSharding(mesh, P())
    params = jax.device_put(
        {"backbone": backbones.init_params(model, seed=2), "head": {"w": jnp.zeros(3)}}, rep
    )
    _, out = backbones.load(tmp_path / "w", like=params["backbone"])
    np.testing.assert_array_equal(out["pos_embed"], src["pos_embed"])
    assert out["pos_embed"].sharding == rep
    other = backbones.init_params(backbones.build(arch, **{**ov, "width": 96}))
    with pytest.raises(ValueError, match=r"shape of blocks_0/attn/qkv/kernel"):
        backbones.load(tmp_path / "w", like=other)
    with pytest.raises(ValueError, match="holds 'uni' weights"):
        backbones.load(tmp_path / "w", arch="uni2-h")


def _from_config(c, saved=None):
    cfg, kw = backbones.resolve(c, saved)
    return backbones.build(cfg, **kw)


def test_resolve_follows_mode_and_weights(tmp_path):
    from sigmma_jax import config_base

    c = config_base.base_config().model
    c.backbone, c.backbone_weights = "vit", ""  # the plain ViT of model.vit, randomly initialised
    c.backbone_mode = "frozen"
    m = _from_config(c)
    assert m.trainable_blocks == 0 and m.width == 1024 and m.dtype == jnp.bfloat16
    c.backbone_mode, c.backbone_last_k = "last_k", 3
    assert _from_config(c).trainable_blocks == 3
    c.backbone_mode = "last-k"
    with pytest.raises(ValueError, match="backbone_mode must be one of"):
        _from_config(c)
    c.backbone_mode = "last_k"
    ov = dict(depth=1, width=96, num_heads=4, img_size=28)
    backbones.save(
        tmp_path / "w",
        "uni2-h",
        backbones.config("uni2-h", **ov),
        backbones.init_params(backbones.build("uni2-h", **ov)),
        {},
    )
    c.backbone_weights = str(tmp_path / "w")
    cfg, _ = backbones.resolve(c)
    m = _from_config(c)
    assert (m.reg_tokens, m.width, m.mlp) == (8, 96, "swiglu_packed")
    c.backbone = "uni"
    with pytest.raises(ValueError, match="holds 'uni2-h'"):
        backbones.resolve(c)
    c.backbone = "vit"
    # A checkpoint's saved config builds the same module without reading the weights' directory.
    (tmp_path / "w" / "backbone.json").unlink()
    assert _from_config(c, cfg) == m


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
