"""The HE backbones of SIGMMA (docs/method.md, "HE encoder"; paper Table 3) and their converted weights.

    from sigmma_jax.models import backbones
    model, params = backbones.load("weights/uni")              # a directory made by sigmma_jax.convert
    emb = model.apply({"params": params}, images)              # float32 NHWC in [0, 1] -> (B, D)

| arch          | timm model (kwargs in `TIMM`)                | embedding             | D    |
| ------------- | -------------------------------------------- | --------------------- | ---- |
| `uni`         | vit_large_patch16_224, init_values=1e-5      | class token after norm | 1024 |
| `uni2-h`      | vit_giant_patch14_224 as ViT-H/14, 8 registers, SwiGLU-packed, no_embed_class | class token | 1536 |
| `h-optimus-0` | vit_giant_patch14_reg4_dinov2, 4 registers, SwiGLU-packed, img_size=224 | class token | 1536 |
| `resnet50`    | resnet50 (num_classes=0)                     | global average pool   | 2048 |
| `conch`       | CONCH's timm ViT-B/16 at 448 px + pooler (`models.coca`) | encode_image | 512 |
| `coca-vit-l-14` | open_clip coca_ViT-L-14 image tower, OmiCLIP's (`models.coca`) | encode_image | 768 |

Normalisation (each model's mean/std) belongs to the backbone. One way to build a backbone, `build`
(a preset name or a config dict); one way to load converted weights, `load`; `resolve` turns a run
config's `model` section into what `build` takes, reading the converted weights' metadata once, so
the model itself never reads a file.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from sigmma_jax import atomic
from sigmma_jax.models.coca import OPENAI_MEAN, OPENAI_STD, CoCaVision
from sigmma_jax.models.resnet import ResNet
from sigmma_jax.models.swin import SwinTransformer
from sigmma_jax.models.vit import VisionTransformer

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)

# Flax constructor arguments of each preset. "kind" picks the module.
ARCHS: dict[str, dict[str, Any]] = {
    "uni": dict(
        kind="vit",
        img_size=224,
        patch_size=16,
        width=1024,
        depth=24,
        num_heads=16,
        mlp_ratio=4.0,
        init_values=1e-5,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    ),
    "uni2-h": dict(
        kind="vit",
        img_size=224,
        patch_size=14,
        width=1536,
        depth=24,
        num_heads=24,
        mlp_ratio=2.66667 * 2,
        init_values=1e-5,
        reg_tokens=8,
        no_embed_class=True,
        mlp="swiglu_packed",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    ),
    "resnet50": dict(
        kind="resnet", layers=(3, 4, 6, 3), img_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD
    ),
}
# H-optimus-0 is UNI2-h's layout, deeper, with 4 registers and its own normalisation.
ARCHS["h-optimus-0"] = dict(
    ARCHS["uni2-h"], depth=40, reg_tokens=4, mean=HOPTIMUS_MEAN, std=HOPTIMUS_STD
)
# Prov-GigaPath's tile encoder: timm's DINOv2 ViT-g (SwiGLU-packed) at 16-px patches, class token.
ARCHS["prov-gigapath"] = dict(
    kind="vit",
    img_size=224,
    patch_size=16,
    width=1536,
    depth=40,
    num_heads=24,
    mlp_ratio=5.33334,
    init_values=1e-5,
    mlp="swiglu_packed",
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
)
# Virchow2: ViT-H/14, 4 registers, SwiGLU-packed; the class token beside the patch tokens' mean.
ARCHS["virchow2"] = dict(
    kind="vit",
    img_size=224,
    patch_size=14,
    width=1280,
    depth=32,
    num_heads=16,
    mlp_ratio=5.3375,
    init_values=1e-5,
    reg_tokens=4,
    mlp="swiglu_packed",
    pool="token_mean",
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
)
# Hibou: DINOv2 with 4 registers and DINOv2's fused SwiGLU, whose hidden width is
# (int(4 d * 2 / 3) + 7) // 8 * 8 per half; published as a Hugging Face Dinov2 (class token pooled).
HIBOU_MEAN = (0.7068, 0.5755, 0.722)
HIBOU_STD = (0.195, 0.2316, 0.1816)


def _dinov2_swiglu_hidden(width: int) -> int:
    return 2 * ((int(4 * width * 2 / 3) + 7) // 8 * 8)


for _name, _width, _depth, _heads in (("hibou-b", 768, 12, 12), ("hibou-l", 1024, 24, 16)):
    ARCHS[_name] = dict(
        kind="vit",
        img_size=224,
        patch_size=14,
        width=_width,
        depth=_depth,
        num_heads=_heads,
        mlp_hidden=_dinov2_swiglu_hidden(_width),
        init_values=1e-5,
        reg_tokens=4,
        no_embed_class=True,
        mlp="swiglu_packed",
        mean=HIBOU_MEAN,
        std=HIBOU_STD,
    )
# CoCa image towers (`sigmma_jax.models.coca`): the contrastive image embedding, as
# encode_image(normalize=False) returns it.
# CONCH (MahmoodLab/conch, conch_ViT-B-16.json): a timm ViT-B/16 at 448 px, a 1-query pooler 512
# wide with 8 heads, ln_contrast, proj_contrast 512 x 512; OpenAI CLIP's mean/std.
ARCHS["conch"] = dict(
    kind="coca",
    layout="timm",
    img_size=448,
    patch_size=16,
    width=768,
    depth=12,
    num_heads=12,
    mlp_ratio=4.0,
    pool_dim=512,
    pool_heads=8,
    pool_queries=1,
    proj_dim=512,
    mean=OPENAI_MEAN,
    std=OPENAI_STD,
)
# open_clip's coca_ViT-L-14 (OmiCLIP / Loki fine-tuned it): ViT-L/14 at 224 px (heads = width / 64),
# a 256-query pooler 768 wide with 8 heads (the first query is the embedding), ln_post, proj
# 768 x 768.
ARCHS["coca-vit-l-14"] = dict(
    kind="coca",
    layout="open_clip",
    img_size=224,
    patch_size=14,
    width=1024,
    depth=24,
    num_heads=16,
    mlp_ratio=4.0,
    pool_dim=768,
    pool_heads=8,
    pool_queries=256,
    proj_dim=768,
    mean=OPENAI_MEAN,
    std=OPENAI_STD,
)
# CLIP ViT-B/32's image tower (OpenAI's weights; open_clip "ViT-B-32" with quick_gelu, HF CLIPModel):
# LayerNorm before the blocks, no patch bias, QuickGELU, LayerNorm epsilon 1e-5, no LayerScale; the
# embedding is the projected class token (512, un-normalised: CLIPModel.get_image_features). Its text
# tower is `sigmma_jax.models.text` (ARCHS there), converted beside it.
ARCHS["clip-vit-b-32"] = dict(
    kind="vit",
    img_size=224,
    patch_size=32,
    width=768,
    depth=12,
    num_heads=12,
    mlp_ratio=4.0,
    init_values=None,
    pre_norm=True,
    patch_bias=False,
    ln_eps=1e-5,
    mlp="quick_gelu",
    proj_dim=512,
    mean=OPENAI_MEAN,
    std=OPENAI_STD,
)
# PLIP (vinid/plip): that CLIP fine-tuned on OpenPath, published as a Hugging Face CLIPModel; its
# CLIPProcessor resizes the short side to 224 (bicubic), centre-crops 224, and uses CLIP's mean/std.
ARCHS["plip"] = dict(ARCHS["clip-vit-b-32"])
# CTransPath (github.com/Xiyue-Wang/TransPath, ctran.py): timm's swin_tiny_patch4_window7_224 with a
# convolutional stem (`models.swin`); the mean of the last stage's tokens, 768. TransPath's feature
# script resizes to 224 and normalises with ImageNet's mean/std; its model takes 224 px only (the
# port pads other sizes to whole windows, as timm's dynamic_img_size).
ARCHS["ctranspath"] = dict(
    kind="swin",
    img_size=224,
    width=96,
    depths=(2, 2, 6, 2),
    num_heads=(3, 6, 12, 24),
    window_size=7,
    mlp_ratio=4.0,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
)

# How each model is made in timm (the models' cards), for parity tests and the benchmark.
# `uni2-h`: MahmoodLab's card creates "vit_giant_patch14_224" with these kwargs; every structural
# argument is overridden, so it is the ViT-H/14-shaped model the issue calls vit_huge_patch14_224.
TIMM: dict[str, tuple[str, dict[str, Any]]] = {
    "uni": (
        "vit_large_patch16_224",
        dict(img_size=224, patch_size=16, init_values=1e-5, num_classes=0, dynamic_img_size=True),
    ),
    "uni2-h": (
        "vit_giant_patch14_224",
        dict(
            img_size=224,
            patch_size=14,
            depth=24,
            num_heads=24,
            init_values=1e-5,
            embed_dim=1536,
            mlp_ratio=2.66667 * 2,
            num_classes=0,
            no_embed_class=True,
            mlp_layer="SwiGLUPacked",
            act_layer="silu",
            reg_tokens=8,
            dynamic_img_size=True,
        ),
    ),
    "h-optimus-0": (
        "vit_giant_patch14_reg4_dinov2",
        dict(
            img_size=224,
            init_values=1e-5,
            num_classes=0,
            global_pool="token",
            dynamic_img_size=True,
        ),
    ),
    "resnet50": ("resnet50", dict(num_classes=0)),
    # hf_hub:prov-gigapath/prov-gigapath's config; SwiGLUPacked and SiLU are the model's defaults.
    "prov-gigapath": (
        "vit_giant_patch14_dinov2",
        dict(
            img_size=224,
            patch_size=16,
            embed_dim=1536,
            depth=40,
            num_heads=24,
            init_values=1e-5,
            mlp_ratio=5.33334,
            num_classes=0,
            dynamic_img_size=True,
        ),
    ),
    # hf-hub:paige-ai/Virchow2's config, with the card's mlp_layer and act_layer.
    "virchow2": (
        "vit_huge_patch14_224",
        dict(
            img_size=224,
            init_values=1e-5,
            num_classes=0,
            reg_tokens=4,
            mlp_ratio=5.3375,
            global_pool="",
            dynamic_img_size=True,
            mlp_layer="SwiGLUPacked",
            act_layer="silu",
        ),
    ),
}

# The tissue each model was trained to see, from its card or paper: µm per input pixel at
# `img_size` (a 224-px input at 0.5 µm/px is a 112-µm field, "20x"). None: natural images. The input
# size and the normalisation are the presets' own (`img_size`, `mean`, `std`), applied by the model
# and by every caller that resizes to `model.img_size`; HEST-Bench's 0.5 µm/px patches are resized to
# each model's `img_size` (`evaluation.hest_bench`).
INPUTS: dict[str, dict[str, Any]] = {
    "uni": dict(mpp=0.5, magnification="20x"),
    "uni2-h": dict(mpp=0.5, magnification="20x"),
    "h-optimus-0": dict(mpp=0.5, magnification="20x"),
    "resnet50": dict(mpp=None, magnification="ImageNet"),
    "prov-gigapath": dict(mpp=0.5, magnification="20x"),
    "virchow2": dict(mpp=0.5, magnification="20x (trained on 5x-40x)"),
    "hibou-b": dict(mpp=0.5, magnification="20x"),
    "hibou-l": dict(mpp=0.5, magnification="20x"),
    "clip-vit-b-32": dict(mpp=None, magnification="natural images (OpenAI WIT)"),
    "plip": dict(
        mpp=None, magnification="mixed (OpenPath: pathology images from Twitter and LAION)"
    ),
    "ctranspath": dict(mpp=0.5, magnification="20x (TransPath's README: try 1.0 µm/px first)"),
}


def input_spec(arch: str) -> dict[str, Any]:
    """{"mpp": µm per input pixel or None, "magnification": the card's words} of a preset."""
    return dict(INPUTS.get(arch, dict(mpp=None, magnification="not recorded")))


META = "backbone.json"  # written by sigmma_jax.convert beside the Orbax parameters
PARAMS = "params"


def timm_kwargs(arch: str, **overrides) -> tuple[str, dict[str, Any]]:
    """(timm model name, kwargs) with layer names resolved to timm classes (imports timm)."""
    import timm.layers  # pylint: disable=import-outside-toplevel
    import torch  # pylint: disable=import-outside-toplevel

    name, kw = TIMM[arch]
    kw = {**kw, **overrides}
    if kw.get("mlp_layer") == "SwiGLUPacked":
        kw["mlp_layer"] = timm.layers.SwiGLUPacked
    if kw.get("act_layer") == "silu":
        kw["act_layer"] = torch.nn.SiLU
    return name, kw


def config(arch: str, **overrides) -> dict[str, Any]:
    """The preset's constructor arguments with `overrides` applied (e.g. depth=2 for tests)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown backbone {arch!r}; expected one of {sorted(ARCHS)}")
    return {**ARCHS[arch], **overrides}


TRAINING_MODES = ("frozen", "last_k", "full")


def trainable_blocks(mode: str, last_k: int = 0) -> int:
    """The backbone's `trainable_blocks` for a training mode: gradients stop below the last k blocks
    (-1: all trainable). The optimizer's labels (`train.optimizer.param_labels`) follow the same rule."""
    if mode not in TRAINING_MODES:
        raise ValueError(f"backbone_mode must be one of {TRAINING_MODES}, got {mode!r}")
    return {"frozen": 0, "full": -1, "last_k": int(last_k)}[mode]


def build(
    cfg: str | Mapping[str, Any],
    *,
    dtype: Any = jnp.float32,
    remat: bool = False,
    trainable_blocks: int = -1,
    attn_impl: str | None = None,
    name: str | None = None,
    **overrides,
) -> nn.Module:
    """The Flax module of a preset name (`ARCHS`) or a full config dict (with "kind"), e.g. the one
    saved with converted weights; `overrides` change preset fields (depth=2 in tests).

    `attn_impl` ("cudnn": fused attention on NVIDIA GPUs) applies to ViTs only. Random parameters
    come from `init_params`, converted ones from `load`.
    """
    cfg = config(cfg, **overrides) if isinstance(cfg, str) else {**cfg, **overrides}
    kind = cfg.pop("kind")
    for k in ("mean", "std", "layers"):
        if k in cfg:
            cfg[k] = tuple(cfg[k])
    kw = dict(dtype=jnp.dtype(dtype), remat=remat, trainable_blocks=trainable_blocks, name=name)
    if kind == "vit":
        return VisionTransformer(**cfg, **kw, attn_impl=attn_impl or None)
    if kind == "resnet":
        return ResNet(**cfg, **kw)
    if kind == "coca":
        return CoCaVision(**cfg, **kw, attn_impl=attn_impl or None)
    if kind == "swin":  # attn_impl does not apply (window attention); JSON gives lists
        cfg.update({k: tuple(cfg[k]) for k in ("depths", "num_heads") if k in cfg})
        return SwinTransformer(**cfg, **kw)
    raise ValueError(f"unknown backbone kind {kind!r}")


def resolve(model_config, cfg: dict | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config dict, build kwargs) of a run config's `model` section: `build(cfg, **kw)` is its
    backbone.

    - `cfg` given (the config saved with a checkpoint): that config; nothing is read.
    - `model.backbone_weights` set: the architecture and shape saved with the converted weights
      (their metadata is read here, once; the weights themselves are read by `load`).
    - else `model.backbone`: "vit" is `VisionTransformer(**model.vit)`; a preset name builds that preset.
    Training mode: `model.backbone_mode` frozen | last_k (`model.backbone_last_k` blocks) | full;
    `model.remat`, `model.dtype`, `model.attn_impl` as documented in config_base.
    """
    m = model_config
    if cfg is not None:
        cfg = dict(cfg)
    elif m.backbone_weights:
        meta = read_meta(m.backbone_weights)
        if m.backbone not in ("vit", meta["arch"]):
            raise ValueError(
                f"model.backbone is {m.backbone!r} but {m.backbone_weights} holds {meta['arch']!r}"
            )
        cfg = dict(meta["config"])
    elif m.backbone == "vit":
        cfg = dict(kind="vit", **dict(m.vit))
    else:
        cfg = config(m.backbone)
    kw = dict(
        dtype=m.dtype,
        remat=bool(m.remat),
        trainable_blocks=trainable_blocks(m.backbone_mode, m.backbone_last_k),
        attn_impl=m.attn_impl or None,
    )
    return cfg, kw


def init_params(model: nn.Module, seed: int = 0):
    """Random parameters (jitted: an eager init of ViT-L takes ~20 s).

    Parameter shapes do not depend on the input size (the position embedding's grid comes from
    `img_size`), so the init runs on a small input: it compiles and runs much faster.
    """
    size = 2 * model.patch_size if hasattr(model, "patch_size") else 64
    x = jnp.zeros((1, size, size, 3), jnp.float32)
    return jax.jit(model.init)(jax.random.PRNGKey(seed), x)["params"]


def abstract_params(model: nn.Module):
    size = model.img_size
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    return jax.eval_shape(model.init, jax.random.PRNGKey(0), x)["params"]


# ---------------------------------------------------------------------------------------------------
# Converted weights on disk: <dir>/backbone.json and <dir>/params (Orbax).


def save_params(dst: str | pathlib.Path, params) -> pathlib.Path:
    """Writes converted parameters as Orbax <dst>/params (any converted model: backbones, scGPT);
    returns the absolute `dst`."""
    import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

    dst = pathlib.Path(dst).absolute()
    dst.mkdir(parents=True, exist_ok=True)
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(dst / PARAMS, params, force=True)
    ckptr.wait_until_finished()
    return dst


def save(dst: str | pathlib.Path, arch: str, cfg: dict[str, Any], params, meta: dict) -> None:
    """Writes Orbax params and the JSON metadata (arch, model config, source checksum...)."""
    dst = save_params(dst, params)
    cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}
    # Written last and atomically: its presence says the conversion is complete.
    atomic.write_json(dst / META, dict(arch=arch, config=cfg, **meta), indent=2)


def read_meta(path: str | pathlib.Path) -> dict:
    path = pathlib.Path(path)
    if not (path / META).exists():
        raise FileNotFoundError(
            f"{path} is not a converted backbone directory (no {META}); make one "
            "with `python -m sigmma_jax.convert --arch=... --src=... --dst=...`"
        )
    return json.loads((path / META).read_text())


def _check_tree(expected, found, where: str) -> None:
    flat = lambda t: {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(t, sep="/").items()}
    e, f = flat(expected), flat(found)
    problems = [f"missing {k} {e[k]}" for k in sorted(set(e) - set(f))]
    problems += [f"unexpected {k} {f[k]}" for k in sorted(set(f) - set(e))]
    problems += [
        f"shape of {k}: model {e[k]}, saved {f[k]}" for k in sorted(set(e) & set(f)) if e[k] != f[k]
    ]
    if problems:
        raise ValueError(f"{where} does not fit the model: " + "; ".join(problems))


def _restore(path: pathlib.Path, like):
    """Orbax restore of <path>/params into the structure, shapes and shardings of `like`."""
    import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

    path = path.absolute() / PARAMS
    ckptr = ocp.StandardCheckpointer()
    _check_tree(like, ckptr.metadata(path).item_metadata.tree, str(path))
    default = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def abstract(x):
        sharding = getattr(x, "sharding", None) or default
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    return ckptr.restore(path, jax.tree.map(abstract, like))


def load(
    path: str | pathlib.Path, *, arch: str | None = None, like=None, **build_kwargs
) -> tuple[nn.Module, Any]:
    """(model, params) of a directory written by `sigmma_jax.convert`.

    The model is built from the configuration saved with the weights (so an `--img_size` chosen at
    conversion holds), with `build_kwargs` (dtype, trainable_blocks, attn_impl...). `arch`, when
    given, must match the saved one. `like` (arrays or ShapeDtypeStructs, e.g. the backbone part of
    an initialised train state) gives the restored arrays their shardings; the names and shapes must
    match exactly, and the error lists every difference.
    """
    path = pathlib.Path(path)
    meta = read_meta(path)
    if arch is not None and meta["arch"] != arch:
        raise ValueError(f"{path} holds {meta['arch']!r} weights, not {arch!r}")
    model = build(meta["config"], **build_kwargs)
    return model, _restore(path, abstract_params(model) if like is None else like)
