"""The converter refuses state dicts that do not fit, reads only safely, and resamples like timm."""

import json
import pickle

import jax
import numpy as np
import pytest
from support import cli
from support import timm_helpers as th

from sigmma_jax import convert as convert_command
from sigmma_jax.models import backbones
from sigmma_jax.tools import convert

ARCH, SHALLOW = "uni", dict(depth=2)


@pytest.fixture(scope="module")
def timm_uni():
    return th.timm_model(ARCH, seed=7, **SHALLOW)


@pytest.fixture(scope="module")
def sd(timm_uni):
    return {k: v.numpy() for k, v in th.state_dict(timm_uni).items()}


def _convert(sd, **kw):
    return convert.convert_state_dict(sd, backbones.config(ARCH, **SHALLOW, **kw))


def test_wrong_shape_is_refused_naming_the_key(sd):
    bad = dict(sd)
    bad["blocks.1.mlp.fc1.weight"] = np.zeros((4096, 1000), np.float32)
    with pytest.raises(
        convert.ConversionError,
        match=r"wrong shape blocks\.1\.mlp\.fc1\.weight: expected shape \(4096, 1024\), "
        r"found \(4096, 1000\)",
    ):
        _convert(bad)


def test_missing_key_is_refused_naming_the_key(sd):
    bad = {k: v for k, v in sd.items() if k != "blocks.0.ls2.gamma"}
    with pytest.raises(convert.ConversionError, match=r"missing key blocks\.0\.ls2\.gamma"):
        _convert(bad)


def test_unused_key_is_refused_unless_ignored(sd):
    bad = {
        **sd,
        "head.weight": np.zeros((10, 1024), np.float32),
        "blocks.2.norm1.weight": sd["norm.weight"],
    }
    with pytest.raises(convert.ConversionError) as e:
        _convert(bad)
    assert "unused key head.weight" in str(e.value) and "unused key blocks.2.norm1.weight" in str(
        e.value
    )
    with pytest.raises(convert.ConversionError, match="blocks.2.norm1.weight"):
        convert.convert_state_dict(bad, backbones.config(ARCH, **SHALLOW), ignore=r"^head\.")
    params, _ = convert.convert_state_dict(
        {**sd, "head.weight": bad["head.weight"]},
        backbones.config(ARCH, **SHALLOW),
        ignore=r"^head\.",
    )
    assert "head" not in params


def test_deeper_model_than_the_state_dict_names_the_missing_blocks(sd):
    with pytest.raises(convert.ConversionError, match=r"missing key blocks\.2\.attn\.qkv\.weight"):
        convert.convert_state_dict(sd, backbones.config(ARCH, depth=3))


def test_pos_embed_resampled_for_another_input_size(tmp_path, timm_uni, sd):
    """Converted for 288 px, the model needs no runtime resampling and still matches timm there."""
    _, torch = th.import_timm()
    torch.save(th.state_dict(timm_uni), tmp_path / "uni.pth")
    meta = convert.convert(ARCH, tmp_path / "uni.pth", tmp_path / "out", img_size=288, **SHALLOW)
    assert meta["pos_embed_resampled"] == [[1, 197, 1024], [1, 325, 1024]]
    model, params = backbones.load(tmp_path / "out", arch=ARCH)
    assert model.img_size == 288 and params["pos_embed"].shape == (1, 325, 1024)
    x = np.random.default_rng(0).random((1, 288, 288, 3), np.float32)
    cfg = backbones.config(ARCH)
    diff, cos = th.compare(
        jax.jit(model.apply)({"params": params}, x),
        th.timm_embed(timm_uni, x, cfg["mean"], cfg["std"]),
    )
    assert diff < 1e-4 and cos > 0.99999
    bad = dict(sd)
    bad["pos_embed"] = np.zeros((1, 190, 1024), np.float32)
    with pytest.raises(convert.ConversionError, match="pos_embed.*not a square grid"):
        _convert(bad)


def test_cli_writes_params_and_checksum(tmp_path, timm_uni, capsys):
    from safetensors.torch import save_file

    src = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in th.state_dict(timm_uni).items()}, str(src))
    rc = cli.run(
        convert_command,
        [f"--arch={ARCH}", f"--src={src}", f"--dst={tmp_path / 'flax'}", "--override=depth=2"],
    )
    assert rc == 0 and "converted" in capsys.readouterr().out
    meta = json.loads((tmp_path / "flax" / "backbone.json").read_text())
    assert meta["source"]["sha256"] == convert.sha256(src)
    assert meta["arch"] == ARCH and meta["config"]["depth"] == 2
    assert meta["reference"]["model"] == "vit_large_patch16_224"
    # A refused conversion exits non-zero with the reason.
    rc = cli.run(convert_command, [f"--arch={ARCH}", f"--src={src}", f"--dst={tmp_path / 'x'}"])
    assert rc == 1 and "missing key blocks.2." in capsys.readouterr().err


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled arbitrary code",))


def test_unsafe_pickles_are_not_loaded(tmp_path, capsys):
    th.import_timm()
    path = tmp_path / "evil.bin"
    with open(path, "wb") as f:
        pickle.dump({"x": _Evil()}, f)
    with pytest.raises(convert.ConversionError, match="refused by torch.load"):
        convert.read_state_dict(path)
    assert "unpickled arbitrary code" not in capsys.readouterr().out
    with pytest.raises(convert.ConversionError, match="expected a .safetensors"):
        convert.read_state_dict(tmp_path / "weights.npz")
