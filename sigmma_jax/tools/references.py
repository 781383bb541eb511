"""The PyTorch reference of each registered backbone: the implementation its weights were published
for (timm, Hugging Face `transformers`, open_clip), built with random weights. The parity tests,
`bench parity` and `bench encoder` compare the Flax backbone with it.

    model = references.build("uni", depth=2)           # torch.nn.Module in eval mode
    emb = references.embed("uni", model, x)            # x: (B, 3, H, W) float32, normalised

torch and the reference's library are imported only here and only when called (`pip install
'sigmma_jax[test]'`). Each entry of `REFERENCES` is (build(arch, **overrides), embed(model, x)); the
embedding is the one the Flax backbone returns.
"""

from __future__ import annotations

from typing import Any, Callable

from sigmma_jax import atomic
from sigmma_jax.models import backbones


def _timm_build(arch: str, **overrides):
    import timm  # pylint: disable=import-outside-toplevel

    name, kw = backbones.timm_kwargs(arch, **overrides)
    return timm.create_model(name, pretrained=False, **kw).eval()


def _call(model, x):
    return model(x)


def _token_mean(model, x):
    """Virchow2's card: the class token beside the mean of the patch tokens (registers left out)."""
    tokens = model(x)
    prefix = model.num_prefix_tokens
    import torch  # pylint: disable=import-outside-toplevel

    return torch.cat([tokens[:, 0], tokens[:, prefix:].mean(1)], -1)


def _hf_dinov2_build(arch: str, **overrides):
    """transformers' Dinov2WithRegistersModel with the preset's shape (Hibou's published layout)."""
    from transformers import (  # pylint: disable=import-outside-toplevel
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersModel,
    )

    c = backbones.config(arch, **overrides)
    config = Dinov2WithRegistersConfig(
        hidden_size=c["width"],
        num_hidden_layers=c["depth"],
        num_attention_heads=c["num_heads"],
        mlp_ratio=4,
        image_size=c["img_size"],
        patch_size=c["patch_size"],
        num_register_tokens=c["reg_tokens"],
        use_swiglu_ffn=c["mlp"] == "swiglu_packed",
        layerscale_value=c["init_values"],
        layer_norm_eps=1e-6,
    )
    return Dinov2WithRegistersModel(config).eval()


_hf_dinov2_build.library = "transformers"


def _pooler(model, x):
    return model(pixel_values=x).pooler_output


def _open_clip_coca_build(arch: str, text: dict | None = None, decoder: dict | None = None, **ov):
    """open_clip.create_model('coca_ViT-L-14') with the preset's shape (OmiCLIP's architecture)."""
    import open_clip  # pylint: disable=import-outside-toplevel (after timm_helpers' shim)

    c = backbones.config(arch, **ov)
    if c["pool_dim"] != c["proj_dim"]:
        raise ValueError("open_clip's CoCa pools and projects at one width (embed_dim)")
    base = open_clip.get_model_config("coca_ViT-L-14")
    vision = dict(
        base["vision_cfg"],
        image_size=c["img_size"],
        patch_size=c["patch_size"],
        width=c["width"],
        layers=c["depth"],
        head_width=c["width"] // c["num_heads"],
        mlp_ratio=c["mlp_ratio"],
        attn_pooler_heads=c["pool_heads"],
        attn_pooler_queries=c["pool_queries"],
    )
    model = open_clip.create_model(
        "coca_ViT-L-14",
        pretrained=None,
        embed_dim=c["proj_dim"],
        vision_cfg=vision,
        text_cfg={**base["text_cfg"], **(text or {})},
        multimodal_cfg={**base["multimodal_cfg"], **(decoder or {})},
    )
    return model.eval()


_open_clip_coca_build.library = "open_clip"


def _encode_image(model, x):
    return model.encode_image(x, normalize=False)


def _conch_build(arch: str, text: dict | None = None, **ov):
    """CONCH (conch_ViT-B-16): timm ViT-B/16 trunk + attentional pooler, `tools/conch_torch.py`."""
    from sigmma_jax.tools import conch_torch  # pylint: disable=import-outside-toplevel

    c = backbones.config(arch, **ov)
    if c["pool_dim"] != c["proj_dim"]:
        raise ValueError("CONCH pools and projects at one width (embed_dim)")
    shape = {
        k: c[k] for k in ("img_size", "patch_size", "width", "depth", "num_heads", "mlp_ratio")
    }
    model = conch_torch.Conch(
        **shape,
        embed_dim=c["proj_dim"],
        embed_dim_caption=c["width"],  # CONCH: 768, the trunk's width
        pool_heads=c["pool_heads"],
        **({"text": text} if text else {}),
    )
    model.proj_contrast_embedding = c.get("proj_contrast", True)
    return model


_conch_build.library = "timm"


def _conch_encode_image(model, x):
    """CONCH's encode_image(normalize=False) with the preset's proj_contrast."""
    return model.encode_image(x, normalize=False, proj_contrast=model.proj_contrast_embedding)


def _hf_clip_build(arch: str, **overrides):
    """transformers' CLIPModel with the preset's shape (the layout of vinid/plip and
    openai/clip-vit-base-patch32); overrides named "text.<field>" shape the text tower."""
    from transformers import CLIPConfig, CLIPModel  # pylint: disable=import-outside-toplevel

    from sigmma_jax.models import text  # pylint: disable=import-outside-toplevel

    t = text.config(
        arch, **{k[5:]: overrides.pop(k) for k in list(overrides) if k.startswith("text.")}
    )
    c = backbones.config(arch, **overrides)
    if c["proj_dim"] != t["proj_dim"]:
        raise ValueError("CLIPModel projects both towers to one width (projection_dim)")
    vision = dict(
        hidden_size=c["width"],
        intermediate_size=int(c["width"] * c["mlp_ratio"]),
        num_hidden_layers=c["depth"],
        num_attention_heads=c["num_heads"],
        image_size=c["img_size"],
        patch_size=c["patch_size"],
        hidden_act=c["mlp"],
        layer_norm_eps=c["ln_eps"],
    )
    # eos_token_id 2: the legacy value of PLIP's config, which pools at the highest id (the EOT).
    language = dict(
        vocab_size=t["vocab_size"],
        hidden_size=t["width"],
        intermediate_size=int(t["width"] * t["mlp_ratio"]),
        num_hidden_layers=t["depth"],
        num_attention_heads=t["num_heads"],
        max_position_embeddings=t["context_length"],
        hidden_act=t["mlp"],
        layer_norm_eps=t["ln_eps"],
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )
    config = CLIPConfig(text_config=language, vision_config=vision, projection_dim=c["proj_dim"])
    return CLIPModel(config).eval()


_hf_clip_build.library = "transformers"


def _image_features(model, x):
    """CLIPModel.get_image_features (transformers 5 returns it as the output's pooler_output)."""
    out = model.get_image_features(pixel_values=x)
    return getattr(out, "pooler_output", out)


def _ctranspath_build(arch: str, dynamic_img_size: bool = False, **overrides):
    """timm swin_tiny_patch4_window7_224 with TransPath's ConvStem (`tools/ctranspath_torch.py`)
    as embed_layer, num_classes=0; `dynamic_img_size` lets it take other input sizes."""
    import timm  # pylint: disable=import-outside-toplevel

    from sigmma_jax.tools import ctranspath_torch  # pylint: disable=import-outside-toplevel

    c = backbones.config(arch, **overrides)
    model = timm.create_model(
        "swin_tiny_patch4_window7_224",
        pretrained=False,
        num_classes=0,
        embed_layer=ctranspath_torch.conv_stem(),
        img_size=c["img_size"],
        embed_dim=c["width"],
        depths=tuple(c["depths"]),
        num_heads=tuple(c["num_heads"]),
        window_size=c["window_size"],
        mlp_ratio=c["mlp_ratio"],
        dynamic_img_size=dynamic_img_size,
    )
    return model.eval()


_ctranspath_build.library = "timm"


REFERENCES: dict[str, tuple[Callable[..., Any], Callable[[Any, Any], Any]]] = {
    **{arch: (_timm_build, _call) for arch in backbones.TIMM},
    "virchow2": (_timm_build, _token_mean),
    "hibou-b": (_hf_dinov2_build, _pooler),
    "hibou-l": (_hf_dinov2_build, _pooler),
    "conch": (_conch_build, _conch_encode_image),
    "coca-vit-l-14": (_open_clip_coca_build, _encode_image),
    "clip-vit-b-32": (_hf_clip_build, _image_features),
    "plip": (_hf_clip_build, _image_features),
    "ctranspath": (_ctranspath_build, _call),
}


def _entry(arch: str):
    if arch not in REFERENCES:
        raise ValueError(f"no PyTorch reference for {arch!r}; known: {sorted(REFERENCES)}")
    return REFERENCES[arch]


def describe(arch: str) -> dict[str, Any]:
    """What the reference is, for the converted weights' metadata and the benchmark: timm's model
    name and kwargs, or the builder's library (its `library` attribute) and docstring's first line."""
    builder = _entry(arch)[0]
    if builder is _timm_build:
        name, kw = backbones.TIMM[arch]
        return dict(library="timm", model=name, kwargs=atomic.jsonable(kw))
    doc = (builder.__doc__ or "").strip().splitlines()
    return dict(library=getattr(builder, "library", "torch"), model=doc[0] if doc else "")


def versions(arch: str) -> dict[str, str]:
    """torch's version and the reference library's (for benchmark records)."""
    import importlib  # pylint: disable=import-outside-toplevel

    import torch  # pylint: disable=import-outside-toplevel

    lib = describe(arch)["library"]
    out = dict(torch=torch.__version__)
    try:
        out[lib] = importlib.import_module(lib).__version__
    except (ImportError, AttributeError):
        pass
    return out


def build(arch: str, **overrides):
    """The reference model of preset `arch` (random weights, eval mode); `overrides` as in
    `backbones.config` (depth=2, img_size=...)."""
    return _entry(arch)[0](arch, **overrides)


def embed(arch: str, model, x):
    """The reference's embedding of normalised NCHW float images, under torch.inference_mode."""
    import torch  # pylint: disable=import-outside-toplevel

    with torch.inference_mode():
        return _entry(arch)[1](model, x)
