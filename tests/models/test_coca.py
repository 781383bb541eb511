"""CoCa image towers (CONCH, open_clip's CoCa ViT-L/14) against their PyTorch references: shallow,
narrow random models saved in the published layouts, converted, loaded and compared."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support import timm_helpers as th

from sigmma_jax.models import backbones, text
from sigmma_jax.tools import convert

POOL = dict(pool_dim=48, proj_dim=48, pool_heads=4)
# Reduced shapes; "packed": the pooler as wide as the trunk, so torch packs q/k/v in in_proj_weight.
CASES = {
    "conch": ("conch", dict(depth=2, width=64, num_heads=4, img_size=64, patch_size=16, **POOL)),
    "coca-vit-l-14": (
        "coca-vit-l-14",
        dict(depth=2, width=64, num_heads=2, img_size=56, patch_size=14, pool_queries=6, **POOL),
    ),
    "coca-vit-l-14-packed": (
        "coca-vit-l-14",
        dict(
            depth=1,
            width=64,
            num_heads=4,
            img_size=28,
            patch_size=14,
            pool_dim=64,
            proj_dim=64,
            pool_heads=2,
            pool_queries=3,
        ),
    ),
}
# The text towers, reduced (open_clip names for the references; the CoCa one keeps the real CLIP
# vocabulary so the converted directory's tokenizer can be used on gene sentences).
TEXT = dict(width=48, heads=4, layers=2)
REF_TEXT = {
    "conch": dict(text=dict(TEXT, vocab_size=97, context_length=12)),
    "coca-vit-l-14": dict(
        text=dict(TEXT, vocab_size=49408, context_length=16),
        decoder=dict(TEXT, vocab_size=49408, context_length=16, layers=1),
    ),
}
# `convert`'s overrides of the Flax text tower (text.ARCHS fields) matching REF_TEXT; CONCH's text
# tower is not converted by `convert` (its tokenizer is not CLIP's; see test_conch_text_tower).
COCA_TEXT = {"text.context_length": 16, "text.width": 48, "text.depth": 2, "text.num_heads": 4}
FILE = {"conch": "pytorch_model.bin", "coca-vit-l-14": "checkpoint.pt"}  # CONCH's, Loki's names
GENES = [
    "EPCAM KRT8 KRT18 CD3E MS4A1 COL1A1",
    "MALAT1 NEAT1 ACTB GAPDH TMSB4X",
    "cd74 hla-dra",
    "",
]


def _reference(case: str, seed: int = 3, **extra):
    arch, ov = CASES[case]
    return th.reference_model(arch, seed=seed, **ov, **extra, **REF_TEXT[arch])


@pytest.fixture(scope="module", params=sorted(CASES))
def converted(request, tmp_path_factory):
    """(case, reference, Flax model, params, converted dir): file -> convert -> backbones.load."""
    _, torch = th.import_timm()
    case = request.param
    arch, ov = CASES[case]
    ref = _reference(case)
    root = tmp_path_factory.mktemp(case)
    torch.save(th.state_dict(ref), root / FILE[arch])
    text_ov = dict(COCA_TEXT, **{"text.proj_dim": ov["proj_dim"]}) if arch in text.ARCHS else {}
    convert.convert(arch, root / FILE[arch], root / "flax", **ov, **text_ov)
    model, params = backbones.load(root / "flax", arch=arch)
    return case, ref, model, params, root / "flax"


def _embed(arch, ref, model, params, size):
    cfg = backbones.config(arch)
    x = np.random.default_rng(size).random((2, size, size, 3), np.float32)
    want = th.reference_embed(ref, x, cfg["mean"], cfg["std"], arch=arch)
    got = np.asarray(jax.jit(model.apply)({"params": params}, x))
    assert got.shape == want.shape == (2, model.embed_dim)
    return th.compare(got, want)


def test_image_embedding_matches_reference(converted):
    case, ref, model, params, _ = converted
    arch, ov = CASES[case]
    sizes = [ov["img_size"]] + ([96] if arch == "conch" else [])  # CONCH's trunk: dynamic_img_size
    for size in sizes:
        diff, cos = _embed(arch, ref, model, params, size)
        assert diff < 1e-4 and cos > 0.99999, (case, size, diff, cos)


def test_conch_pooled_features_without_projection(tmp_path):
    """proj_contrast=False: CONCH's README embedding for linear probes / MIL (before proj_contrast)."""
    _, torch = th.import_timm()
    arch, ov = CASES["conch"]
    ov = dict(ov, proj_contrast=False)
    ref = _reference("conch", seed=5, proj_contrast=False)
    torch.save(th.state_dict(ref), tmp_path / FILE[arch])
    convert.convert(arch, tmp_path / FILE[arch], tmp_path / "flax", **ov)
    model, params = backbones.load(tmp_path / "flax", arch=arch)
    assert "proj" not in params and model.embed_dim == ov["pool_dim"]
    diff, cos = _embed(arch, ref, model, params, ov["img_size"])
    assert diff < 1e-4 and cos > 0.99999, (diff, cos)


@pytest.mark.parametrize("converted", ["conch"], indirect=True)
def test_layouts_are_told_apart_and_wrong_ones_refused(converted):
    conch = th.state_dict(converted[1])
    arch, ov = CASES["coca-vit-l-14"]
    with pytest.raises(ValueError, match="CONCH.*pick the matching --arch"):
        convert.convert_state_dict(
            {k: v.numpy() for k, v in conch.items()}, backbones.config(arch, **ov)
        )
    with pytest.raises(ValueError, match="not a CoCa state dict"):
        convert.convert_state_dict({"blocks.0.norm1.weight": np.zeros(3)}, backbones.config(arch))
    # A DDP-wrapped state dict (open_clip's training checkpoints) converts; a visual key too many
    # is named.
    arch, ov = CASES["conch"]
    sd = {"module." + k: v.numpy() for k, v in conch.items()}
    params, _ = convert.convert_state_dict(sd, backbones.config(arch, **ov))
    assert params["proj"]["kernel"].shape == (48, 48)
    sd["module.visual.extra.weight"] = np.zeros(2, np.float32)
    with pytest.raises(convert.ConversionError, match="unused key visual.extra.weight"):
        convert.convert_state_dict(sd, backbones.config(arch, **ov))


def test_frozen_and_last_k_reach_the_right_parameters():
    arch, ov = CASES["coca-vit-l-14"]
    x = jnp.asarray(np.random.default_rng(0).random((1, 28, 28, 3), np.float32))
    shapes = backbones.abstract_params(backbones.build(arch, **ov))
    rng = np.random.default_rng(1)  # random values without a (slow to compile) jitted init
    params = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape), jnp.float32), shapes)

    def grads(trainable_blocks):
        model = backbones.build(arch, **ov, trainable_blocks=trainable_blocks)
        return jax.jit(jax.grad(lambda p: jnp.sum(model.apply({"params": p}, x) ** 2)))(params)

    def norm(tree):
        return float(sum(jnp.abs(a).sum() for a in jax.tree.leaves(tree)))

    assert norm(grads(0)) == 0.0
    last = grads(1)
    assert norm(last["trunk"]["blocks_0"]) == 0.0 and norm(last["trunk"]["patch_embed"]) == 0.0
    assert norm(last["trunk"]["blocks_1"]) > 0 and norm(last["attn_pool"]) > 0
    assert norm(last["proj"]) > 0


@pytest.mark.parametrize("converted", ["coca-vit-l-14"], indirect=True)
def test_coca_text_tower_through_the_converted_directory(converted):
    """open_clip's CoCa text tower (Loki's gene sentences: `encode_text` of space-separated symbols)
    and its tokenizer, from the same converted directory as the image tower."""
    _, ref, _, _, root = converted
    import open_clip  # after timm_helpers' torchvision shim (the fixture imported it)

    _, torch = th.import_timm()
    model, params, tokenizer = text.load(root)
    ids = tokenizer(GENES + [" ".join(["KRT19"] * 40)])  # the last one is cut to 16 tokens
    want_ids = open_clip.get_tokenizer("coca_ViT-L-14")(GENES + [" ".join(["KRT19"] * 40)], 16)
    np.testing.assert_array_equal(ids, want_ids.numpy())
    with torch.inference_mode():
        want = ref.encode_text(torch.from_numpy(ids).long(), normalize=False).numpy()
    got = np.asarray(jax.jit(model.apply)({"params": params}, ids))
    diff, cos = th.compare(got, want)
    assert got.shape == (len(ids), 48) and diff < 1e-4 and cos > 0.99999, (diff, cos)


@pytest.mark.parametrize("converted", ["conch"], indirect=True)
def test_conch_text_tower(converted):
    """CONCH's text tower (its own forward: the last id dropped, the pad mask on the cls row only)
    equals `text.TextTransformer` with `coca.CONCH_TEXT`'s layout, mapped by the CLIP key map."""
    from flax import traverse_util

    from sigmma_jax.models import coca
    from sigmma_jax.tools.keymaps import clip

    _, torch = th.import_timm()
    ref = converted[1]
    t = REF_TEXT["conch"]["text"]
    cfg = dict(
        coca.CONCH_TEXT,
        vocab_size=t["vocab_size"],
        context_length=t["context_length"] - 1,
        width=48,
        depth=2,
        num_heads=4,
        proj_dim=CASES["conch"][1]["proj_dim"],
    )
    sd = {k: v.numpy() for k, v in th.state_dict(ref).items()}
    tower, other = clip.text_state_dict(sd, clip.text_layout(sd))
    kmap = clip.text_key_map(cfg)
    assert not other and set(tower) == set(kmap)
    params = traverse_util.unflatten_dict({p: fn(tower[k]) for k, (p, fn) in kmap.items()})
    rng = np.random.default_rng(1)
    ids = rng.integers(3, t["vocab_size"], (4, t["context_length"]))
    for i, n in enumerate((3, 7, 11, 12)):  # CONCH pads to 127 and adds one pad: <= 11 real ids
        ids[i, n:] = 0
    with torch.inference_mode():
        want = ref.encode_text(torch.from_numpy(ids), normalize=False).numpy()
    got = np.asarray(jax.jit(text.build(cfg).apply)({"params": params}, ids[:, :-1]))
    diff, cos = th.compare(got, want)
    assert diff < 1e-4 and cos > 0.99999, (diff, cos)
