"""CTransPath (`models.swin`: Swin-T with TransPath's ConvStem) against its PyTorch reference (timm
1.0's Swin with `tools.ctranspath_torch.ConvStem`): random reference weights saved in the published
layout (timm 0.5.4's, wrapped as {"model": ...}) and in timm 1.0's, converted, loaded, compared.

Shallow and narrow: 2 blocks in the first stage (a shifted block over 8 x 8 windows) and in the last
(whose 7 x 7 grid is one window: not shifted), 1 in the others; the full Swin-T was checked against TransPath's own code on its vendored
timm 0.5.4 (max abs difference 1e-6 at 224 px).
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support import timm_helpers as th

from sigmma_jax.models import backbones
from sigmma_jax.tools import convert, keymaps
from sigmma_jax.tools.keymaps import swin as swin_keys
from sigmma_jax.train import optimizer

ARCH = "ctranspath"
SHALLOW = dict(width=32, depths=(2, 1, 1, 2), num_heads=(2, 2, 4, 4))

# The published layout at Swin-T, written from timm 0.5.4's swin_transformer.py (TransPath's
# `timm_ctp` differs only in taking `embed_layer`): every block saves `attn.relative_position_index`;
# a shifted block (odd index) also `attn_mask`, (windows, 49, 49), except in the last stage, whose 7 x 7
# grid is one window (shift_size set to 0, the buffer None and not saved); `BasicLayer.downsample`
# (PatchMerging: reduction, then norm) follows the blocks of stages 0-2; the head is nn.Identity.
OLD_ATTN_MASKS = {
    "layers.0.blocks.1.attn_mask": (64, 49, 49),
    "layers.1.blocks.1.attn_mask": (16, 49, 49),
    "layers.2.blocks.1.attn_mask": (4, 49, 49),
    "layers.2.blocks.3.attn_mask": (4, 49, 49),
    "layers.2.blocks.5.attn_mask": (4, 49, 49),
}
OLD_DOWNSAMPLE = [
    f"layers.{i}.downsample.{n}"
    for i in (0, 1, 2)
    for n in ("reduction.weight", "norm.weight", "norm.bias")
]
OLD_STEM = [
    "patch_embed.proj.0.weight",
    *(f"patch_embed.proj.1.{n}" for n in ("weight", "bias", "running_mean", "running_var")),
    "patch_embed.proj.1.num_batches_tracked",
    "patch_embed.proj.3.weight",
    *(f"patch_embed.proj.4.{n}" for n in ("weight", "bias", "running_mean", "running_var")),
    "patch_embed.proj.4.num_batches_tracked",
    "patch_embed.proj.6.weight",
    "patch_embed.proj.6.bias",
    "patch_embed.norm.weight",
    "patch_embed.norm.bias",
]
OLD_BLOCK = [
    "norm1.weight",
    "norm1.bias",
    "attn.relative_position_bias_table",
    "attn.relative_position_index",
    "attn.qkv.weight",
    "attn.qkv.bias",
    "attn.proj.weight",
    "attn.proj.bias",
    "norm2.weight",
    "norm2.bias",
    "mlp.fc1.weight",
    "mlp.fc1.bias",
    "mlp.fc2.weight",
    "mlp.fc2.bias",
]
OLD_TENSORS = 200  # 16 stem + 12 blocks x 14 + 5 masks + 9 merging + 2 final norm


def reference(seed: int = 3, randomize: bool = True, **overrides):
    tm = th.reference_model(ARCH, seed=seed, randomize=randomize, **overrides)
    for m in tm.modules():  # randomize_ redraws float buffers too: the shifted windows' masks
        if hasattr(m, "init_non_persistent_buffers"):
            m.init_non_persistent_buffers()
    return tm


def old_layout(tm) -> dict:
    """A timm 1.0 model's state dict in timm 0.5.4's layout (the inverse of keymaps.swin.adapt):
    PatchMerging moved to the end of the stage before, the buffers old timm saved added."""
    out = {}
    for k, v in th.state_dict(tm).items():
        if m := re.match(r"layers\.(\d+)\.downsample\.(.*)", k):
            k = f"layers.{int(m[1]) - 1}.downsample.{m[2]}"
        out[k] = v
    for i, stage in enumerate(tm.layers):
        for j, block in enumerate(stage.blocks):
            out[f"layers.{i}.blocks.{j}.attn.relative_position_index"] = (
                block.attn.relative_position_index.clone()
            )
            if block.attn_mask is not None:
                out[f"layers.{i}.blocks.{j}.attn_mask"] = block.attn_mask.clone()
    return out


def test_old_layout_names_are_timm_054s():
    tm = reference(randomize=False)  # Swin-T
    old = old_layout(tm)
    assert len(old) == OLD_TENSORS
    masks = {k: tuple(v.shape) for k, v in old.items() if k.endswith("attn_mask")}
    assert masks == OLD_ATTN_MASKS
    assert {k for k in old if ".downsample." in k} == set(OLD_DOWNSAMPLE)
    blocks = [
        f"layers.{i}.blocks.{j}.{n}"
        for i, d in enumerate((2, 2, 6, 2))
        for j in range(d)
        for n in OLD_BLOCK
    ]
    expected = {*OLD_STEM, *blocks, *OLD_ATTN_MASKS, *OLD_DOWNSAMPLE, "norm.weight", "norm.bias"}
    assert set(old) == expected
    assert all(tuple(old[k].shape) == (49, 49) for k in old if k.endswith("position_index"))
    # adapt brings it back to timm 1.0's names, which the key map covers (BatchNorm's counters aside).
    cfg = backbones.config(ARCH)
    new = swin_keys.adapt(old, cfg)
    assert set(new) == set(tm.state_dict())
    assert set(keymaps.key_map(cfg)) == {k for k in new if not k.endswith("num_batches_tracked")}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(reference, {layout: (metadata, model, params)}): one random reference saved as the published
    ctranspath.pth (old layout, {"model": ...}) and as timm 1.0's safetensors, each converted."""
    from safetensors.torch import save_file

    _, torch = th.import_timm()
    tm = reference(**SHALLOW)
    root = tmp_path_factory.mktemp(ARCH)
    torch.save({"model": old_layout(tm)}, root / "ctranspath.pth")
    save_file({k: v.contiguous() for k, v in th.state_dict(tm).items()}, root / "model.safetensors")
    out = {}
    for name in ("ctranspath.pth", "model.safetensors"):
        meta = convert.convert(ARCH, root / name, root / f"flax_{name}", **SHALLOW)
        out[name] = (meta, *backbones.load(root / f"flax_{name}", arch=ARCH))
    return tm, out


def test_both_layouts_convert_alike_and_match_the_reference_at_224(converted, demo_tile):
    tm, out = converted
    (meta_old, model, params), (meta_new, _, params_new) = out.values()
    assert meta_old["source"]["tensors"] == 6 * 14 + 1 + 9 + 16 + 2  # 1 shifted block's mask
    assert meta_new["source"]["tensors"] == 6 * 13 + 9 + 16 + 2
    assert meta_old["input"]["mpp"] == 0.5
    jax.tree.map(np.testing.assert_array_equal, params, params_new)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    assert model.embed_dim == 256 and tuple(model.mean) == backbones.IMAGENET_MEAN
    x = np.random.default_rng(0).random((2, 224, 224, 3), np.float32)
    x[1] = demo_tile
    cfg = backbones.config(ARCH)
    ref = th.reference_embed(tm, x, cfg["mean"], cfg["std"], ARCH)
    got = np.asarray(jax.jit(model.apply)({"params": params}, x))
    assert got.shape == ref.shape == (2, 256)
    diff, cos = th.compare(got, ref)
    assert diff < 1e-4 and cos > 0.99999, (diff, cos)


def test_another_size_pads_windows_as_timms_dynamic_img_size(converted):
    """200 px: grids 50, 25 (odd: the merging pads), 13, 7, none a multiple of the window."""
    from sigmma_jax.tools import references

    tm, out = converted
    _, model, params = out["model.safetensors"]
    dyn = references.build(ARCH, dynamic_img_size=True, **SHALLOW)
    dyn.load_state_dict(tm.state_dict())
    x = np.random.default_rng(1).random((2, 200, 200, 3), np.float32)
    cfg = backbones.config(ARCH)
    ref = th.reference_embed(dyn, x, cfg["mean"], cfg["std"], ARCH)
    diff, cos = th.compare(np.asarray(jax.jit(model.apply)({"params": params}, x)), ref)
    assert diff < 1e-4 and cos > 0.99999, (diff, cos)


def test_a_wrong_key_is_named(converted, tmp_path):
    _, torch = th.import_timm()
    src = converted[0]
    sd = old_layout(src)
    sd["layers.1.blocks.0.attn.qkv.kernel"] = sd.pop("layers.1.blocks.0.attn.qkv.weight")
    torch.save({"model": sd}, tmp_path / "ctranspath.pth")
    with pytest.raises(convert.ConversionError) as e:
        convert.convert(ARCH, tmp_path / "ctranspath.pth", tmp_path / "out", **SHALLOW)
    assert "missing key layers.1.blocks.0.attn.qkv.weight" in str(e.value)
    assert "unused key layers.1.blocks.0.attn.qkv.kernel" in str(e.value)
    assert not (tmp_path / "out").exists()


def test_trainable_blocks_stop_gradients_as_the_optimizer_labels_say(converted):
    _, model, params = converted[1]["model.safetensors"]
    x = np.random.default_rng(2).random((2, 32, 32, 3), np.float32)

    def nonzero(k):
        m = model.clone(trainable_blocks=k)
        g = jax.jit(jax.grad(lambda p: jnp.sum(m.apply({"params": p}, x) ** 2)))(params)
        return jax.tree.map(lambda a: bool(np.any(np.asarray(a) != 0)), g)

    assert not any(jax.tree.leaves(nonzero(0)))
    # The last 2 of 6 blocks: stage 3 (blocks_4, which holds the stage's patch merging, and
    # blocks_5) and the final norm, as train.optimizer labels them.
    got = nonzero(2)
    labels = optimizer.param_labels(params, "last_k", 2, key=None)
    assert jax.tree.map(lambda label: label == "backbone", labels) == got
    assert got["blocks_4"]["downsample"]["reduction"]["kernel"] and got["norm"]["scale"]
    assert not got["blocks_3"]["fc2"]["kernel"] and not got["patch_embed"]["proj_0"]["kernel"]
