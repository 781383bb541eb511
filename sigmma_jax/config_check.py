"""Every config value checked at start-up, in one place: a bad value stops the run (and
preprocessing, and `check_data`) before any work, with one line naming the key, the value and what
is allowed.

Names are read from the registries of the code that uses them (readers, towers, losses,
evaluators...), so a value becomes valid as soon as its implementation is registered. Numeric ranges
are those the code needs. A key that does not exist never gets here: ml_collections refuses it while
the command line is parsed.
"""

from __future__ import annotations

import difflib
import shlex
from typing import Any, Callable, Iterable

import ml_collections

from sigmma_jax.errors import ConfigError


def allowed_names() -> dict[str, Iterable[str]]:
    """Config key -> the names it may take (for `evals`, each of its list)."""
    # Imported here: the registries pull in the model and the evaluators, which the config schema
    # (and a command's --help) does not need.
    from sigmma_jax import evaluation, families, losses
    from sigmma_jax.data import features, graphs, shards, sources, splits, tile_shards
    from sigmma_jax.evaluation import expression, probe
    from sigmma_jax.families import st_align as st_align_family
    from sigmma_jax.models import backbones, sigmma, st_align, st_encoder

    return {
        "data.source": sources.SOURCES,
        "data.engine": shards.ENGINES,
        "data.overflow": tile_shards.OVERFLOW,
        "data.graph": graphs.METHODS,
        "data.micro_graph": graphs.SCOPES,
        "data.node_features": features.NODE_FEATURES,
        "data.tile_features": features.TILE_FEATURES,  # each of the list
        "data.split.by": splits.SPLIT_BY,
        "model.family": families.FAMILIES,
        "model.backbone_mode": backbones.TRAINING_MODES,
        "model.he_tower": sigmma.HE_TOWERS,
        "model.st_tower": sigmma.ST_TOWERS,
        "model.st.edge_sampling": st_encoder.EDGE_SAMPLING,
        "model.st.eval_edges": st_encoder.EVAL_EDGES,
        "model.st.candidates": st_encoder.CANDIDATES,
        "model.heads": sigmma.HEADS,
        "model.mlp.input": ("log1p_counts", "log1p_normalized", *features.TILE_FEATURES),
        "model.dtype": ("float32", "bfloat16", "float16"),
        # jax.nn.dot_product_attention's implementations ("": XLA chooses)
        "model.attn_impl": ("", "xla", "cudnn"),
        "train.loss": losses.LOSSES,
        "eval.probe_embedding": probe.EMBEDDINGS,
        "eval.target": expression.TARGETS,
        "eval.target_scale": expression.TARGET_SCALES,
        "eval.probe_scales": expression.SCALE_READS,
        "evals": evaluation.EVALUATORS,  # each of the list
        "model.variant": st_align_family.VARIANTS,
        "model.encoders": st_align_family.ENCODERS,
        "model.fusion": st_align_family.FUSIONS,
        "model.scgpt.mode": st_align_family.SCGPT_MODES,
        "train.negatives": st_align.NEGATIVES,
    }


# Keys whose value is a list, each item checked against the names.
LISTS = ("evals", "data.tile_features")


def _positive(v) -> bool:
    return v > 0


def _non_negative(v) -> bool:
    return v >= 0


def _fraction(v) -> bool:
    return 0 <= v <= 1


# key -> (test, what it must be). Keys of configs that lack a section (a tool's own config) are
# skipped.
RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "data.pixel_size_um": (_non_negative, ">= 0 (0 reads it from the slide's metadata)"),
    "data.target_mpp": (_positive, "> 0"),
    "data.tile_px": (_positive, "> 0"),
    "data.min_cells": (_non_negative, ">= 0"),
    "data.min_tissue": (_fraction, "in [0, 1]"),
    "data.min_qv": (_non_negative, ">= 0"),
    "data.node_budget": (_positive, "> 0"),
    "data.knn_k": (_positive, "> 0"),
    "data.radius_px": (_positive, "> 0"),
    "data.chunk_rows": (_positive, "> 0"),
    "data.workers": (_non_negative, ">= 0"),
    "data.loader_workers": (_non_negative, ">= 0"),
    "data.split.fold": (_non_negative, ">= 0"),
    "data.split.block_tiles": (_positive, "> 0"),
    "data.split.test_fraction": (_fraction, "in [0, 1]"),
    "data.split.val_fraction": (_fraction, "in [0, 1]"),
    "data.synthetic.size_um": (_positive, "> 0"),
    "data.synthetic.pixel_size_um": (_positive, "> 0"),
    "data.synthetic.n_genes": (_positive, "> 0"),
    "model.embed_dim": (_positive, "> 0"),
    "model.head_dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "model.backbone_last_k": (_non_negative, ">= 0"),
    "model.st.hidden": (_positive, "> 0"),
    "model.st.layers_per_scale": (_positive, "> 0"),
    "model.st.target_sum": (_positive, "> 0"),
    "model.st.edge_hidden": (_positive, "> 0"),
    "model.st.gumbel_tau": (_positive, "> 0"),
    "model.st.edge_prior": (lambda v: 0 < v < 1, "in (0, 1)"),
    "model.temperature_init": (_positive, "> 0"),
    "model.temperature_min": (_positive, "> 0"),
    "train.global_batch": (_positive, "> 0"),
    "train.steps": (_non_negative, ">= 0"),
    "train.warmup_steps": (_non_negative, ">= 0"),
    "train.lr": (_positive, "> 0"),
    "train.backbone_lr_mult": (_non_negative, ">= 0"),
    "train.layer_decay": (_positive, "> 0"),
    "train.weight_decay": (_non_negative, ">= 0"),
    "train.grad_clip": (_positive, "> 0"),
    "train.log_every": (_positive, "> 0"),
    "train.checkpoint_every": (_positive, "> 0"),
    "train.keep_checkpoints": (_positive, "> 0"),
    "eval_every": (_non_negative, ">= 0 (0: only at the end)"),
    "eval.batch": (_positive, "> 0"),
    "eval.pca_components": (_positive, "> 0"),
    "eval.n_genes": (_positive, "> 0"),
    "eval.knn_k": (_positive, "> 0"),
    "mesh.data": (lambda v: v == -1 or v > 0, "-1 (every device) or > 0"),
    "mesh.fsdp": (lambda v: v == -1 or v > 0, "-1 (every device) or > 0"),
    "sharding.min_fsdp_bytes": (_non_negative, ">= 0"),
    "data.spots.crop_um": (_positive, "> 0"),
    "data.spots.crop_px": (_positive, "> 0"),
    "data.spots.niche_k": (_positive, "> 0"),
    "data.spots.niche_um": (_positive, "> 0"),
    "data.spots.niche_px": (_positive, "> 0"),
    "data.spots.diameter_um": (_positive, "> 0"),
    "data.spots.n_hvg": (_non_negative, ">= 0 (0: every shared gene)"),
    "data.spots.preclusters": (_positive, "> 0"),
    "data.spots.grid_um": (_positive, "> 0"),
    "model.fused_dim": (_positive, "> 0"),
    "model.clip_dim": (_positive, "> 0"),
    "model.scgpt.max_len": (lambda v: v >= 2, ">= 2 (<cls> and one gene)"),
}


def _get(config: ml_collections.ConfigDict, key: str):
    node = config
    for part in key.split("."):
        if not isinstance(node, (ml_collections.ConfigDict, dict)) or part not in node:
            return _MISSING
        node = node[part]
    return node


_MISSING = object()


def _bad(key: str, value, must: str) -> ConfigError:
    return ConfigError(f"config.{key} = {value!r}: {must}")


def _check_name(key: str, value, allowed: Iterable[str]) -> None:
    allowed = list(allowed)
    if value in allowed:
        return
    close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise _bad(key, value, "expected one of " + ", ".join(map(repr, allowed)) + hint)


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the first bad value of `config`."""
    for key, allowed in allowed_names().items():
        value = _get(config, key)
        if value is _MISSING:
            continue
        for v in value if key in LISTS else (value,):
            _check_name(key, v, allowed)
    for key, (ok, must) in RANGES.items():
        value = _get(config, key)
        if value is _MISSING:
            continue
        try:
            good = ok(value)
        except TypeError:
            good = False
        if not good:
            raise _bad(key, value, f"must be {must}")
    _check_combinations(config)


def _check_combinations(config: ml_collections.ConfigDict) -> None:
    weights = _get(config, "train.scale_weights")
    if weights is not _MISSING and (
        len(weights) != 3 or min(weights) < 0 or not any(w > 0 for w in weights)
    ):
        raise _bad(
            "train.scale_weights",
            tuple(weights),
            "must be 3 weights >= 0 (micro, meso, macro), at least one > 0",
        )
    evals = _get(config, "evals")
    if evals is not _MISSING:
        from sigmma_jax import families

        family = families.get(config)
        foreign = [e for e in evals if e not in family.evaluators]
        if foreign:
            raise _bad(
                "evals",
                tuple(evals),
                f"{', '.join(map(repr, foreign))} cannot evaluate a {family.name} model; its "
                f"evaluators are {', '.join(map(repr, family.evaluators))}",
            )
    methods = _get(config, "suite.methods")
    if methods is not _MISSING:
        from sigmma_jax.experiments import suite

        known = suite.experiment(config)[0].METHODS
        for m in methods:
            _check_name("suite.methods", m, known)
    weights = _get(config, "train.loss_weights")
    if weights is not _MISSING and (
        len(weights) != 2 or min(weights) < 0 or sum(weights) > 1 + 1e-9
    ):
        raise _bad(
            "train.loss_weights",
            tuple(weights),
            "must be 2 weights >= 0 (λ1 of L_spot, λ2 of L_niche) with λ1 + λ2 <= 1 (L_NS weighs "
            "1 - λ1 - λ2)",
        )
    scgpt = _get(config, "model.scgpt")
    if scgpt is not _MISSING and scgpt.mode == "frozen" and not scgpt.weights:
        raise ConfigError(
            "config.model.scgpt.mode = 'frozen' needs converted weights (model.scgpt.weights); "
            "without them scGPT trains from scratch: --config.model.scgpt.mode=full"
        )
    wd_end = _get(config, "train.weight_decay_end")
    if wd_end is not _MISSING and wd_end >= 0 and config.train.weight_decay <= 0:
        raise _bad(
            "train.weight_decay", config.train.weight_decay, "must be > 0 for a schedule to end"
        )
    _check_beam_options(config)
    split = _get(config, "data.split")
    if split is not _MISSING and split.test_fraction + split.val_fraction >= 1:
        raise ConfigError(
            f"config.data.split: test_fraction {split.test_fraction} + val_fraction "
            f"{split.val_fraction} leave no tile for training; their sum must be < 1"
        )
    rules = _get(config, "sharding.rules")
    if rules is not _MISSING:
        _check_sharding_rules(rules)
    temps = _get(config, "model.temperature_min"), _get(config, "model.temperature_init")
    if _MISSING not in temps and temps[1] < temps[0]:
        raise _bad(
            "model.temperature_init", temps[1], f"must be >= model.temperature_min {temps[0]}"
        )


def _check_sharding_rules(rules) -> None:
    import re

    for rule in rules:
        ok = isinstance(rule, (tuple, list)) and len(rule) == 2 and isinstance(rule[0], str)
        if ok:
            try:
                re.compile(rule[0])
            except re.error:
                ok = False
        strategy = rule[1] if ok else None
        explicit = isinstance(strategy, (tuple, list)) and all(
            a is None or a in ("data", "fsdp") or isinstance(a, (tuple, list)) for a in strategy
        )
        if not ok or not (strategy in ("fsdp", "replicate") or explicit):
            raise _bad(
                "sharding.rules",
                rule,
                'each rule must be (regex over a state path, "fsdp" | "replicate" | a '
                'PartitionSpec tuple over "data"/"fsdp", e.g. (None, "fsdp"))',
            )


def _check_beam_options(config: ml_collections.ConfigDict) -> None:
    """data.beam_options must split into shell words and begin with an option: Beam drops words it
    cannot parse with only a warning."""
    if _get(config, "data.engine") != "beam":
        return
    options = config.data.beam_options
    try:
        words = shlex.split(options)
    except ValueError as e:
        raise _bad("data.beam_options", options, f"must split like shell words ({e})") from e
    if words and not words[0].startswith("--"):
        raise _bad(
            "data.beam_options",
            options,
            'must be pipeline options, e.g. "--runner=DirectRunner --direct_num_workers=4"',
        )
