"""Every enumerated config value and the numeric ranges that matter are checked at start-up."""

import pytest
from support.configs import load_config, tiny_config

from sigmma_jax import config_check, losses


@pytest.mark.parametrize(
    "name", ["demo", "default", "generic", "luad", "idc", "xenium", "st_align"]
)
def test_the_repository_configs_are_valid(name):
    config_check.validate(load_config(name))
    config_check.validate(load_config(name, "demo"))


def _names(key):
    """What `key` is checked against: read from the registries (other work adds names to them);
    the suite's methods are those of the config's model family."""
    if key == "suite.methods":
        from sigmma_jax.experiments import suite

        return suite.experiment(tiny_config())[0].METHODS
    return config_check.allowed_names()[key]


def _set(c, key, value):
    *path, last = key.split(".")
    node = c
    for p in path:
        node = node[p]
    node[last] = value


@pytest.mark.parametrize(
    "key,value,hint",
    [
        ("data.source", "hset", "hest"),
        ("data.overflow", "dorp", "drop"),
        ("data.graph", "knnn", "knn"),
        ("data.split.by", "sampel", "sample"),
        ("model.backbone_mode", "last-k", "last_k"),
        ("model.he_tower", "multicrop", "multi_crop"),
        ("model.st_tower", "grahp", "graph"),
        ("model.st.edge_sampling", "gumble", "gumbel"),
        ("model.st.eval_edges", "expectaton", "expectation"),
        ("train.loss", "infonce", "info_nce"),
        ("eval.probe_embedding", "projectd", "projected"),
        ("data.micro_graph", "tiel", "tile"),
        ("data.node_features", "pcaa", "pca"),
        ("eval.target", "log1p_normalised", "log1p_normalized"),
        # Lists: each name is checked, the bad one named.
        ("data.tile_features", ("gene_sentense",), "gene_sentence"),
        ("suite.methods", ("sigmma", "bleeep"), "bleep"),
    ],
)
def test_a_bad_name_is_one_line_with_what_is_allowed(key, value, hint):
    c = tiny_config()
    _set(c, key, value)
    with pytest.raises(config_check.ConfigError) as e:
        config_check.validate(c)
    allowed = ", ".join(map(repr, _names(key)))
    bad = value[-1] if isinstance(value, tuple) else value
    assert str(e.value) == (
        f"config.{key} = {bad!r}: expected one of {allowed} (did you mean {hint!r}?)"
    )


@pytest.mark.parametrize(
    "key,value,must",
    [
        ("data.pixel_size_um", -1.0, ">= 0 (0 reads it from the slide's metadata)"),
        ("data.node_budget", 0, "> 0"),
        ("data.min_tissue", 1.5, "in [0, 1]"),
        ("data.split.test_fraction", -0.1, "in [0, 1]"),
        ("data.split.block_tiles", 0, "> 0"),
        ("train.global_batch", 0, "> 0"),
        ("model.st.edge_prior", 1.0, "in (0, 1)"),
    ],
)
def test_a_value_out_of_range_is_one_line(key, value, must):
    c = tiny_config()
    _set(c, key, value)
    with pytest.raises(config_check.ConfigError) as e:
        config_check.validate(c)
    assert str(e.value) == f"config.{key} = {value!r}: must be {must}"


def test_evaluators_scale_weights_and_split_fractions():
    c = tiny_config()
    c.evals = ("retrieval", "probes")
    with pytest.raises(config_check.ConfigError) as e:
        config_check.validate(c)
    allowed = ", ".join(map(repr, _names("evals")))
    assert (
        str(e.value)
        == f"config.evals = 'probes': expected one of {allowed} (did you mean 'probe'?)"
    )
    c = tiny_config()
    c.train.scale_weights = (0.0, 0.0, 0.0)
    with pytest.raises(config_check.ConfigError) as e:
        config_check.validate(c)
    assert str(e.value) == (
        "config.train.scale_weights = (0.0, 0.0, 0.0): must be 3 weights >= 0 (micro, meso, "
        "macro), at least one > 0"
    )
    c = tiny_config()
    c.data.split.update(test_fraction=0.6, val_fraction=0.4)
    with pytest.raises(config_check.ConfigError) as e:
        config_check.validate(c)
    assert str(e.value) == (
        "config.data.split: test_fraction 0.6 + val_fraction 0.4 leave no tile for training; "
        "their sum must be < 1"
    )


def test_allowed_names_come_from_the_registries(monkeypatch):
    c = tiny_config()
    c.train.loss = "a_new_loss"
    with pytest.raises(config_check.ConfigError):
        config_check.validate(c)
    monkeypatch.setitem(losses.LOSSES, "a_new_loss", losses.LOSSES["info_nce"])
    config_check.validate(c)  # registered: valid, with no list to update here


@pytest.mark.parametrize(
    "key,value,hint",
    [
        ("model.variant", "clip_", "clip"),
        ("model.fusion", "concatenate", "concat"),
        ("model.encoders", "pretrain", "pretrained"),
        ("train.negatives", "other_cluster", "other_clusters"),
        ("suite.methods", ("st_align", "no_nss"), "no_ns"),
    ],
)
def test_st_align_names_are_checked_against_its_registries(key, value, hint):
    c = load_config("st_align", "demo")
    _set(c, key, value)
    with pytest.raises(config_check.ConfigError) as e:
        config_check.validate(c)
    bad = value[-1] if isinstance(value, tuple) else value
    assert str(e.value).startswith(f"config.{key} = {bad!r}: expected one of ")
    assert str(e.value).endswith(f"(did you mean {hint!r}?)")


def test_st_align_loss_weights_scgpt_and_evaluators_of_the_family():
    def error(**changes):
        c = load_config("st_align", "demo")
        for k, v in changes.items():
            _set(c, k.replace("__", "."), v)
        with pytest.raises(config_check.ConfigError) as e:
            config_check.validate(c)
        return str(e.value)

    for w in [(0.6, 0.6), (-0.1, 0.5), (0.5,)]:
        assert error(train__loss_weights=w).startswith(
            f"config.train.loss_weights = {w!r}: must be"
        )
    msg = error(model__scgpt__mode="frozen")
    assert msg.startswith("config.model.scgpt.mode = 'frozen' needs converted weights")
    msg = error(evals=("domains", "retrieval"))
    assert "'retrieval' cannot evaluate a st_align model" in msg
    assert "its evaluators are 'domains', 'spot_expression'" in msg
    # and SIGMMA's runs cannot take ST-Align's evaluators
    c = tiny_config()
    c.evals = ("retrieval", "domains")
    with pytest.raises(config_check.ConfigError, match="'domains' cannot evaluate a sigmma model"):
        config_check.validate(c)
    msg = error(train__weight_decay=0.0, train__weight_decay_end=0.4)
    assert msg.startswith("config.train.weight_decay = 0.0: must be > 0 for a schedule to end")
    # the ablation without L_NS is valid: λ1 + λ2 = 1
    c = load_config("st_align", "demo")
    c.train.loss_weights = (0.5, 0.5)
    config_check.validate(c)


def test_the_dlpfc_config_groups_the_twelve_slices_by_donor():
    from sigmma_jax import dlpfc
    from sigmma_jax.data import splits

    c = load_config("st_align", "dlpfc")
    config_check.validate(c)
    assert len(c.data.sample_ids) == 12 and set(dlpfc.PAPER_SLICES) <= set(dlpfc.HEST_IDS)
    groups = dict(g.split("=") for g in c.data.sample_groups)
    folds = splits.sample_folds(list(c.data.sample_ids), groups)
    assert [len(f) for f in folds] == [4, 4, 4]
    assert folds[1] == [
        "MISC8",
        "MISC7",
        "MISC6",
        "MISC5",
    ]  # 151669-151672: the donor without L1/L2
