"""The HE backbones of SIGMMA (METHOD.md §2, paper Table 3) and their converted weights.

    from sigmma_jax.models import backbones
    model, params = backbones.load("uni", "weights/uni")      # a directory made by sigmma_jax.convert
    emb = model.apply({"params": params}, images)              # float32 NHWC in [0, 1] -> (B, D)

| arch          | timm model (kwargs in `TIMM`)                | embedding             | D    |
| ------------- | -------------------------------------------- | --------------------- | ---- |
| `uni`         | vit_large_patch16_224, init_values=1e-5      | class token after norm | 1024 |
| `uni2-h`      | vit_giant_patch14_224 as ViT-H/14, 8 registers, SwiGLU-packed, no_embed_class | class token | 1536 |
| `h-optimus-0` | vit_giant_patch14_reg4_dinov2, 4 registers, SwiGLU-packed, img_size=224 | class token | 1536 |
| `resnet50`    | resnet50 (num_classes=0)                     | global average pool   | 2048 |

Normalisation (each model's mean/std) belongs to the backbone. Besides `load`, this module holds what
training needs: `from_config` (the backbone module of a run config), `load_into` (converted weights
into an initialised parameter tree), `param_labels` (frozen / last-k / full) and `layer_decay`
(layer-wise learning-rate decay as an optax transformation).
"""

from __future__ import annotations

import json
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from sigmma_jax import atomic
from sigmma_jax.models.resnet import ResNet
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
}

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


def build_module(cfg: dict[str, Any], **kwargs) -> nn.Module:
    """A module from a full config dict (with "kind"); kwargs go to the constructor (dtype, name...)."""
    cfg = dict(cfg)
    kind = cfg.pop("kind")
    for k in ("mean", "std", "layers"):
        if k in cfg:
            cfg[k] = tuple(cfg[k])
    if "dtype" in kwargs:
        kwargs["dtype"] = jnp.dtype(kwargs["dtype"])
    if kind == "vit":
        return VisionTransformer(**cfg, **kwargs)
    if kind == "resnet":
        return ResNet(**cfg, **kwargs)
    raise ValueError(f"unknown backbone kind {kind!r}")


def build(
    arch: str, *, dtype=jnp.float32, remat: bool = False, name: str | None = None, **overrides
) -> nn.Module:
    """The Flax module of a preset (random weights come from `init_params`)."""
    return build_module(config(arch, **overrides), dtype=dtype, remat=remat, name=name)


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


def save(dst: str | pathlib.Path, arch: str, cfg: dict[str, Any], params, meta: dict) -> None:
    """Writes Orbax params and the JSON metadata (arch, model config, source checksum...)."""
    import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

    dst = pathlib.Path(dst).absolute()
    dst.mkdir(parents=True, exist_ok=True)
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(dst / PARAMS, params, force=True)
    ckptr.wait_until_finished()
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


def _flat(tree, prefix=()) -> dict[str, Any]:
    """{"a/b/kernel": leaf} over nested mappings."""
    if not isinstance(tree, Mapping):
        return {"/".join(prefix): tree}
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, prefix + (str(k),)))
    return out


def _check_tree(expected, found, where: str) -> None:
    e = {k: tuple(v.shape) for k, v in _flat(expected).items()}
    f = {k: tuple(v.shape) for k, v in _flat(found).items()}
    problems = [f"missing {k} {e[k]}" for k in sorted(set(e) - set(f))]
    problems += [f"unexpected {k} {f[k]}" for k in sorted(set(f) - set(e))]
    problems += [
        f"shape of {k}: model {e[k]}, saved {f[k]}" for k in sorted(set(e) & set(f)) if e[k] != f[k]
    ]
    if problems:
        raise ValueError(f"{where} does not fit the model: " + "; ".join(problems))


def restore_params(path: str | pathlib.Path, target):
    """Orbax restore of <path>/params into the structure, shapes and shardings of `target`.

    `target` leaves may be arrays (their sharding is kept) or ShapeDtypeStructs.
    """
    import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

    path = pathlib.Path(path).absolute() / PARAMS
    ckptr = ocp.StandardCheckpointer()
    saved = ckptr.metadata(path).item_metadata.tree
    _check_tree(target, saved, str(path))
    default = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def abstract(x):
        sharding = getattr(x, "sharding", None) or default
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    return ckptr.restore(path, jax.tree.map(abstract, target))


def load(
    arch: str, path: str | pathlib.Path, *, dtype=jnp.float32, remat: bool = False, **overrides
) -> tuple[nn.Module, Any]:
    """(model, params) of a directory written by `sigmma_jax.convert`.

    The model is built from the configuration saved with the weights (so an `--img_size` chosen at
    conversion holds); `overrides` change non-structural fields (e.g. trainable_blocks, attn_impl).
    """
    meta = read_meta(path)
    if meta["arch"] != arch:
        raise ValueError(f"{path} holds {meta['arch']!r} weights, not {arch!r}")
    model = build_module({**meta["config"], **overrides}, dtype=dtype, remat=remat)
    params = restore_params(path, abstract_params(model))
    return model, params


def from_config(model_config, name: str = "backbone") -> nn.Module:
    """The backbone module of a run config's `model` section (for `SIGMMA.setup`).

    - `model.backbone_weights` set: the architecture and shape saved with the converted weights.
    - else `model.backbone` (absent -> "vit"): "vit" builds `VisionTransformer(**model.vit)`; a preset
      name ("uni", "uni2-h", "h-optimus-0", "resnet50") builds that preset.
    Training mode: `model.backbone_mode` "frozen" | "last_k" (the last `model.backbone_last_k` blocks
    get gradients) | "full"; `model.remat`, `model.dtype` as usual; `model.attn_impl` (optional):
    "cudnn" for cuDNN's fused attention on NVIDIA GPUs (bf16; see docs/benchmarks.md).
    """
    get = lambda k, d=None: model_config.get(k, d) if hasattr(model_config, "get") else d
    weights, arch = get("backbone_weights", ""), get("backbone", "vit")
    if weights:
        meta = read_meta(weights)
        if arch not in ("vit", meta["arch"]):
            raise ValueError(f"model.backbone is {arch!r} but {weights} holds {meta['arch']!r}")
        cfg = dict(meta["config"])
    elif arch == "vit":
        cfg = dict(kind="vit", **dict(model_config.vit))
    else:
        cfg = config(arch)
    mode = get("backbone_mode", "full")
    trainable = {"frozen": 0, "full": -1}.get(mode, None)
    if mode in ("last_k", "last-k"):
        trainable = int(get("backbone_last_k", 0))
    if trainable is None:
        raise ValueError(f"backbone_mode must be frozen | last_k | full, got {mode!r}")
    extra = {}
    if cfg["kind"] == "vit" and get("attn_impl", ""):
        extra["attn_impl"] = get("attn_impl")  # "cudnn": fused attention on NVIDIA GPUs (bf16)
    return build_module(
        cfg,
        dtype=get("dtype", "float32"),
        remat=bool(get("remat", False)),
        trainable_blocks=trainable,
        name=name,
        **extra,
    )


def load_into(params, path: str | pathlib.Path, key: str = "backbone"):
    """`params` with `params[key]` replaced by the converted weights in `path`.

    Shapes and names must match exactly (the error lists every difference); the restored arrays get
    the shardings of the arrays they replace, so this works on a replicated train state:
    `state = state.replace(params=backbones.load_into(state.params, config.model.backbone_weights))`.
    """
    restored = restore_params(path, params[key])
    out = dict(params)
    out[key] = restored
    if hasattr(params, "copy") and not isinstance(params, dict):  # FrozenDict
        return params.copy({key: restored})
    return out


# ---------------------------------------------------------------------------------------------------
# Training modes and layer-wise learning-rate decay, by parameter path.
# Paths are walked over nested mappings, so optax's MaskedNode leaves (inside multi_transform) keep
# their place and the numbering does not depend on which leaves a transformation sees.

_BLOCK = re.compile(r"^blocks_(\d+)$")
_RES_BLOCK = re.compile(r"^layer(\d+)_(\d+)$")
_EMBED = ("patch_embed", "cls_token", "reg_token", "pos_embed", "conv1", "bn1")


def _leaf_paths(tree, prefix=()):
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            yield from _leaf_paths(v, prefix + (str(k),))
    else:
        yield prefix


def _map_paths(fn, tree, prefix=()):
    if isinstance(tree, Mapping):
        out = {k: _map_paths(fn, v, prefix + (str(k),)) for k, v in tree.items()}
        return out if isinstance(tree, dict) else type(tree)(out)
    return fn(prefix, tree)


def _is_masked(x) -> bool:
    return type(x).__name__ == "MaskedNode"


class _Layers:
    """timm's layer numbering for layer decay: embeddings 0, block i -> i + 1 (ResNet: bottlenecks in
    order), the final norm (anything after the blocks) -> depth + 1."""

    def __init__(self, tree):
        vit, res = set(), {}
        for path in _leaf_paths(tree):
            for k in path:
                if m := _BLOCK.match(k):
                    vit.add(int(m.group(1)))
                elif m := _RES_BLOCK.match(k):
                    s, j = int(m.group(1)), int(m.group(2))
                    res[s] = max(res.get(s, 0), j + 1)
        self.offsets, total = {}, 0
        for s in sorted(res):
            self.offsets[s] = total
            total += res[s]
        self.depth = len(vit) + total

    def __call__(self, path) -> int:
        for k in path:
            if m := _BLOCK.match(k):
                return int(m.group(1)) + 1
            if m := _RES_BLOCK.match(k):
                return self.offsets[int(m.group(1))] + int(m.group(2)) + 1
        if any(k in _EMBED for k in path):
            return 0
        return self.depth + 1


def num_layers(backbone_params) -> int:
    """Blocks of a backbone parameter tree (ViT blocks or ResNet bottlenecks)."""
    return _Layers(backbone_params).depth


def layer_ids(backbone_params):
    """Per-leaf layer id (see `_Layers`)."""
    layers = _Layers(backbone_params)
    return _map_paths(lambda p, _: layers(p), backbone_params)


def _under(key, fn_backbone, fn_rest, tree):
    """Applies fn_backbone(path, leaf) inside tree[key] (paths relative to it), fn_rest elsewhere."""
    if key is None:
        return fn_backbone(tree)
    out = {k: (fn_backbone(v) if k == key else _map_paths(fn_rest, v)) for k, v in tree.items()}
    return out if isinstance(tree, dict) else type(tree)(out)


def lr_multipliers(params, decay: float, key: str | None = "backbone"):
    """Learning-rate multiplier per leaf: decay ** (depth + 1 - layer_id) inside `params[key]`
    (the whole tree when key is None), 1.0 elsewhere."""

    def backbone(bp):
        layers = _Layers(bp)
        return _map_paths(lambda p, _: float(decay) ** (layers.depth + 1 - layers(p)), bp)

    return _under(key, backbone, lambda p, _: 1.0, params)


def layer_decay(decay: float, key: str | None = "backbone") -> optax.GradientTransformation:
    """Scales each update by its `lr_multipliers` factor; chain it after the backbone's AdamW.

    Multiplying AdamW's final update by s equals running that parameter with learning rate lr * s
    (the decoupled weight decay is scaled by the learning rate too, as in timm's param groups).
    Works inside `optax.multi_transform` (masked leaves are passed through).
    """

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None):
        del params
        if decay == 1.0:
            return updates, state

        def backbone(bu):
            layers = _Layers(bu)

            def scale(path, u):
                if _is_masked(u) or u is None:
                    return u
                return u * jnp.asarray(float(decay) ** (layers.depth + 1 - layers(path)), u.dtype)

            return _map_paths(scale, bu)

        return _under(key, backbone, lambda p, u: u, updates), state

    return optax.GradientTransformation(init, update)


def param_labels(
    params,
    mode: str,
    last_k: int = 0,
    key: str = "backbone",
    trainable: str = "backbone",
    frozen: str = "frozen",
    rest: str = "rest",
):
    """Optimizer labels: `rest` outside `params[key]`; inside, `trainable` or `frozen` by mode.

    mode "full": every backbone leaf trainable; "frozen": none; "last_k": the last `last_k` blocks and
    the final norm (what `trainable_blocks=last_k` lets gradients reach). Give the frozen label
    `optax.set_to_zero()` in `optax.multi_transform`: it keeps no optimizer state.
    """
    if mode not in ("full", "frozen", "last_k", "last-k"):
        raise ValueError(f"mode must be frozen | last_k | full, got {mode!r}")

    def backbone(bp):
        layers = _Layers(bp)
        first = {"full": 0, "frozen": layers.depth + 2}.get(mode, layers.depth + 1 - int(last_k))
        return _map_paths(lambda p, _: trainable if layers(p) >= first else frozen, bp)

    return _under(key, backbone, lambda p, _: rest, params)
