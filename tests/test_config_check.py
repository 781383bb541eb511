"""Every enumerated config value and the numeric ranges that matter are checked at start-up."""

import pytest
from support.configs import load_config, tiny_config

from sigmma_jax import config_check
from sigmma_jax.data.readers import InputError
from sigmma_jax.train import losses


@pytest.mark.parametrize("name", ["demo", "default", "generic", "luad", "idc", "xenium"])
def test_the_repository_configs_are_valid(name):
    config_check.validate(load_config(name))
    config_check.validate(load_config(name, "demo"))


@pytest.mark.parametrize(
    "key,value,message",
    [
        (
            "data.source",
            "hset",
            "expected one of 'synthetic', 'generic', 'hest', 'xenium' (did you mean 'hest'?)",
        ),
        ("data.overflow", "dorp", "expected one of 'subsample', 'drop' (did you mean 'drop'?)"),
        ("data.graph", "knnn", "expected one of 'knn', 'radius', 'delaunay' (did you mean 'knn'?)"),
        ("data.split.by", "slide", "expected one of 'auto', 'sample', 'space'"),
        (
            "model.backbone_mode",
            "last-k",
            "expected one of 'frozen', 'last_k', 'full' (did you mean 'last_k'?)",
        ),
        (
            "model.he_tower",
            "multicrop",
            "expected one of 'multi_crop', 'whole_tile' (did you mean 'multi_crop'?)",
        ),
        ("model.st_tower", "gnn", "expected one of 'graph', 'mlp'"),
        (
            "model.st.edge_sampling",
            "gumble",
            "expected one of 'gumbel', 'full', 'none' (did you mean 'gumbel'?)",
        ),
        ("model.st.eval_edges", "mean", "expected one of 'expectation', 'threshold'"),
        ("train.loss", "infonce", "expected one of 'info_nce' (did you mean 'info_nce'?)"),
        ("eval.probe_embedding", "he", "expected one of 'projected', 'backbone'"),
        ("data.pixel_size_um", -1.0, "must be >= 0 (0 reads it from the slide's metadata)"),
        ("data.node_budget", 0, "must be > 0"),
        ("data.min_tissue", 1.5, "must be in [0, 1]"),
        ("data.split.test_fraction", -0.1, "must be in [0, 1]"),
        ("data.split.block_tiles", 0, "must be > 0"),
        ("train.global_batch", 0, "must be > 0"),
        ("model.st.edge_prior", 1.0, "must be in (0, 1)"),
    ],
)
def test_a_bad_value_is_one_line_naming_key_value_and_what_is_allowed(key, value, message):
    c = tiny_config()
    *path, last = key.split(".")
    node = c
    for p in path:
        node = node[p]
    node[last] = value
    with pytest.raises(InputError) as e:
        config_check.validate(c)
    assert str(e.value) == f"config.{key} = {value!r}: {message}"


def test_evaluators_scale_weights_and_split_fractions():
    c = tiny_config()
    c.evals = ("retrieval", "probes")
    with pytest.raises(InputError) as e:
        config_check.validate(c)
    assert str(e.value) == (
        "config.evals = 'probes': expected one of 'retrieval', 'probe', 'knn_expression' "
        "(did you mean 'probe'?)"
    )
    c = tiny_config()
    c.train.scale_weights = (0.0, 0.0, 0.0)
    with pytest.raises(InputError) as e:
        config_check.validate(c)
    assert str(e.value) == (
        "config.train.scale_weights = (0.0, 0.0, 0.0): must be 3 weights >= 0 (micro, meso, "
        "macro), at least one > 0"
    )
    c = tiny_config()
    c.data.split.update(test_fraction=0.6, val_fraction=0.4)
    with pytest.raises(InputError) as e:
        config_check.validate(c)
    assert str(e.value) == (
        "config.data.split: test_fraction 0.6 + val_fraction 0.4 leave no tile for training; "
        "their sum must be < 1"
    )


def test_allowed_names_come_from_the_registries(monkeypatch):
    c = tiny_config()
    c.train.loss = "bleep"
    with pytest.raises(InputError):
        config_check.validate(c)
    monkeypatch.setitem(losses.LOSSES, "bleep", losses.multiscale_info_nce)
    config_check.validate(c)  # registered: valid, with no list to update here
