"""The optimizer: AdamW with warmup + cosine, per-leaf labels for the backbone's training mode, and
layer-wise learning-rate decay (docs/method.md, "Optimisation").

Labels and layer numbers are computed from parameter paths. Paths are walked over nested mappings,
so optax's MaskedNode leaves (inside multi_transform) keep their place and the numbering does not
depend on which leaves a transformation sees.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import ml_collections
import optax

from sigmma_jax import families
from sigmma_jax.models import backbones


def lr_schedule(config: ml_collections.ConfigDict, mult: float = 1.0) -> optax.Schedule:
    """Linear warmup then cosine decay to 1% of the peak."""
    t = config.train
    warmup = min(t.warmup_steps, t.steps - 1)  # short test runs may ask for fewer steps than warmup
    return optax.warmup_cosine_decay_schedule(
        0.0, t.lr * mult, warmup, t.steps, end_value=t.lr * mult * 0.01
    )


# Matrices decay; biases, norms, LayerScale, the temperature and these do not (as in timm and
# big_vision: the tokens and position embedding are not weights of a map).
NO_DECAY = ("pos_embed", "cls_token", "reg_token")


def decay_mask(params):
    """True for the leaves that get weight decay."""

    def decays(path, x) -> bool:
        return x.ndim >= 2 and getattr(path[-1], "key", None) not in NO_DECAY

    return jax.tree_util.tree_map_with_path(decays, params)


def weight_decay(config: ml_collections.ConfigDict) -> optax.ScalarOrSchedule:
    """train.weight_decay, or (train.weight_decay_end >= 0) a cosine from it to that value over the
    run (ST-Align §4.1: 0.04 -> 0.4, as in DINO)."""
    t = config.train
    if t.weight_decay_end < 0:
        return t.weight_decay
    # max(.., 1): an untrained run (train.steps = 0, a baseline) still builds its optimizer
    return optax.cosine_decay_schedule(
        t.weight_decay, max(t.steps, 1), alpha=t.weight_decay_end / t.weight_decay
    )


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """AdamW with `lr_schedule`; the backbone gets its own rate or, frozen, no state at all, as do
    the top-level modules the family keeps frozen (`Family.frozen_modules`: ST-Align's pretrained
    scGPT)."""
    t = config.train
    frozen = families.get(config).frozen_modules(config)
    wd = weight_decay(config)

    def adamw(mult):
        return optax.adamw(lr_schedule(config, mult), weight_decay=wd, mask=decay_mask)

    # Frozen backbone leaves (all in "frozen" mode, those below the last k blocks in "last_k") get
    # set_to_zero: no optimizer state. Layer-wise decay scales the trained backbone leaves' updates.
    backbone = optax.chain(adamw(t.backbone_lr_mult), layer_decay(t.layer_decay))

    def labels(params):
        out = param_labels(params, config.model.backbone_mode, config.model.backbone_last_k)
        if not frozen:
            return out
        return {
            k: jax.tree.map(lambda _: "frozen", v) if k in frozen else v for k, v in out.items()
        }

    return optax.chain(
        optax.clip_by_global_norm(t.grad_clip),
        optax.multi_transform(
            {"backbone": backbone, "frozen": optax.set_to_zero(), "rest": adamw(1.0)}, labels
        ),
    )


_BLOCK = re.compile(r"^blocks_(\d+)$")
_RES_BLOCK = re.compile(r"^layer(\d+)_(\d+)$")
_EMBED = ("patch_embed", "cls_token", "reg_token", "pos_embed", "norm_pre", "conv1", "bn1")


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
    the final norm: exactly the leaves that the backbone built with `backbones.trainable_blocks(mode,
    last_k)` lets gradients reach. Give the frozen label `optax.set_to_zero()` in
    `optax.multi_transform`: it keeps no optimizer state.
    """
    k = backbones.trainable_blocks(mode, last_k)

    def backbone(bp):
        layers = _Layers(bp)
        # Layer ids: embeddings 0, blocks 1..depth, final norm depth + 1 (see _Layers).
        first = 0 if k < 0 else (layers.depth + 2 if k == 0 else layers.depth + 1 - k)
        return _map_paths(lambda p, _: trainable if layers(p) >= first else frozen, bp)

    return _under(key, backbone, lambda p, _: rest, params)
