import jax
import numpy as np
from support import timm_helpers as th

from sigmma_jax.models import backbones
from sigmma_jax.tools import attention_maps, convert


def test_last_block_attention_matches_timm(tmp_path):
    _, torch = th.import_timm()
    tm = th.timm_model("uni", seed=3, depth=2)
    cfg = backbones.config("uni", depth=2)
    params, _ = convert.convert_state_dict(
        {k: v.numpy() for k, v in th.state_dict(tm).items()}, cfg
    )
    model = backbones.build(cfg)
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
