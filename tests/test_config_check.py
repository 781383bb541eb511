"""Every enumerated config value and the numeric ranges that matter are checked at start-up."""

import pytest
from support.configs import load_config, tiny_config

from sigmma_jax import config_check, losses


@pytest.mark.parametrize("name", ["demo", "default", "generic", "luad", "idc", "xenium"])
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
