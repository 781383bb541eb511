"""The tables from made-up runs: layout, means and spreads, orders."""

import numpy as np
import pytest

from sigmma_jax import config_base
from sigmma_jax.experiments import tables
from sigmma_jax.experiments.suite import Run


def _results(rng, retrieval=True, knn=False):
    probe = dict(
        pcc_tile_mean=rng.uniform(0.3, 0.7),
        pcc_tile_sd=rng.uniform(0.1, 0.3),
        mse_tile_mean=rng.uniform(0.5, 2.0),
        mse_tile_sd=rng.uniform(0.1, 0.5),
        pcc_gene_mean=rng.uniform(0.3, 0.8),
        n_genes=50,
    )
    trained = dict(probe=probe)
    if knn:
        trained["knn_expression"] = dict(probe)
    if retrieval:
        trained["retrieval"] = {
            d: {"combined": {k: rng.uniform(0, 1) for k in tables.RECALLS}}
            for d in tables.DIRECTIONS
        }
    return dict(trained=trained, steps=10, n_test_tiles=40, n_train_tiles=160)


def test_rows_are_mean_and_sd_over_folds_and_seeds():
    rng = np.random.default_rng(0)
    finished = {}
    for method in ("frozen_backbone", "bleep", "gene_sentence", "sigmma", "graph_multiscale_full"):
        for fold in (0, 1):
            for seed in (0, 1, 2):
                finished[Run(method, fold, seed)] = _results(
                    rng, retrieval=method != "frozen_backbone", knn=method == "bleep"
                )
    for backbone in ("resnet50", "uni"):
        for method in ("frozen_backbone", "sigmma"):
            for fold in (0, 1):
                for seed in (0, 1, 2):
                    finished[Run(method, fold, seed, backbone)] = _results(rng)
    out = tables.collect(finished)
    assert (out["n_folds"], out["n_seeds"]) == (2, 3)
    assert list(out["table1"]) == ["frozen_backbone", "bleep", "gene_sentence", "sigmma"]
    vals = [
        finished[Run("sigmma", f, s)]["trained"]["probe"]["pcc_tile_mean"]
        for f in (0, 1)
        for s in (0, 1, 2)
    ]
    assert out["table1"]["sigmma"]["pcc_tile"] == pytest.approx(
        [np.mean(vals), np.std(vals, ddof=1)]
    )
    r5 = [
        finished[Run("bleep", f, s)]["trained"]["retrieval"]["st_to_he"]["combined"]["R@5"]
        for f in (0, 1)
        for s in (0, 1, 2)
    ]
    assert out["table2"]["bleep"]["st_to_he"]["R@5"] == pytest.approx(
        [np.mean(r5), np.std(r5, ddof=1)]
    )
    assert "frozen_backbone" not in out["table2"]  # no ST side
    assert set(out["table1"]["bleep"]["knn_expression"]) == {"pcc_tile", "mse_tile", "pcc_gene"}
    assert list(out["table3"]) == ["resnet50", "uni"]
    uni = [
        finished[Run("frozen_backbone", f, s, "uni")]["trained"]["probe"]["mse_tile_mean"]
        for f in (0, 1)
        for s in (0, 1, 2)
    ]
    assert out["table3"]["uni"]["frozen_backbone"]["mse_tile"] == pytest.approx(
        [np.mean(uni), np.std(uni, ddof=1)]
    )
    # Table 4 names its rows; (a) is the gene-sentence model, and rows not run are absent.
    assert list(out["table4"]) == ["no_graph", "graph_multiscale_full", "sigmma"]
    assert out["table4"]["no_graph"]["pcc_gene"] == out["table1"]["gene_sentence"]["pcc_gene"]
    assert out["table4"]["sigmma"]["he_to_st"] == out["table2"]["sigmma"]["he_to_st"]

    config = config_base.base_config()
    md = tables.markdown(out, finished, config)
    assert "2 fold(s) × 3 seed(s)" in md and "with intercept" in md and "HEST PCC per gene" in md
    order = md.split("Order by PCC per tile: ")[1].splitlines()[0]
    ranked = sorted(out["table1"], key=lambda m: -out["table1"][m]["pcc_tile"][0])
    assert [part.split()[0] for part in order.split(" > ")] == ranked
    assert "## Per fold" in md and "| main/sigmma |" in md
    csv = tables.csv_text(out)
    assert f"table1,sigmma,pcc_tile,{np.mean(vals):.6g},{np.std(vals, ddof=1):.6g}" in csv
    assert "table3,uni/frozen_backbone,mse_tile," in csv
    assert "table2,bleep,he_to_st/R@5," in csv


def test_a_single_run_has_zero_spread():
    out = tables.collect({Run("sigmma", 0, 0): _results(np.random.default_rng(1))})
    assert out["table1"]["sigmma"]["pcc_gene"][1] == 0.0 and out["n_seeds"] == 1


def test_probe_inputs_graph_density_and_whole_tile_variants():
    """Each run's probe variants and ST graph reach the tables: per-gene PCC per input (mean ±
    sd over runs), edges per cell per Table 4 row, and the SIGMMA variants' own table."""
    rng = np.random.default_rng(1)
    finished = {}
    for method in ("gene_sentence", "sigmma", "graph_multiscale_full", "sigmma_heads_per_scale"):
        for seed in (0, 1, 2):
            res = _results(rng)
            p = res["trained"]["probe"]
            p.update(input="projected/mean", n_components=64, hest=dict(pcc_gene_mean=0.5))
            if method != "gene_sentence":
                p["variants"] = {
                    v: dict(pcc_gene_mean=rng.uniform(0.3, 0.8))
                    for v in (
                        "projected/micro",
                        "projected/mean",
                        "projected/concat",
                        "backbone/macro",
                    )
                }
                degree = 30.0 if method == "graph_multiscale_full" else 10.0
                res["graph"] = {"micro": {"degree": 3.0}, "macro": {"degree": degree}}
            finished[Run(method, 0, seed)] = res
    out = tables.collect(finished)
    got = out["table1"]["sigmma"]["inputs"]["projected/concat"]
    want = [
        finished[Run("sigmma", 0, s)]["trained"]["probe"]["variants"]["projected/concat"][
            "pcc_gene_mean"
        ]
        for s in (0, 1, 2)
    ]
    assert got == pytest.approx([np.mean(want), np.std(want, ddof=1)])
    assert out["table1"]["sigmma"]["hest_pcc_gene"] == [0.5, 0.0]
    assert out["table4"]["graph_multiscale_full"]["graph"]["macro"]["degree"] == [30.0, 0.0]
    assert list(out["whole_tile"]) == ["sigmma", "sigmma_heads_per_scale"]
    md = tables.markdown(out, finished, config_base.base_config())
    assert "| (c) graph, three scales, fully connected |" in md and "3.0 / – / 30.0 |" in md
    section = md.split("## Task 1 by what the probe reads")[1].split("##")[0]
    assert "`projected/micro` | `projected/mean` | `projected/concat` | `backbone/macro`" in section
    assert "## Why SIGMMA's backbone embeds the whole tile" in md
    assert "whole_tile,sigmma_heads_per_scale,pcc_gene" in tables.csv_text(out)


def test_vision_language_rows_and_random_init_backbones():
    """A vision-language model's runs (suite.backbones, `text_tower`) are rows of Tables 1 and 2
    under its name; a backbone without weights is labelled and left out of every order."""
    rng = np.random.default_rng(2)
    finished = {}
    for seed in (0, 1):
        finished[Run("gene_sentence", 0, seed)] = _results(rng)
        finished[Run("text_tower", 0, seed, "plip")] = _results(rng)
        finished[Run("text_tower", 0, seed, "clip")] = _results(rng)
        for method in ("frozen_backbone", "sigmma"):
            finished[Run(method, 0, seed, "ctranspath")] = _results(rng)
    # clip wins both tasks by far: as random init it must still not be ranked
    for seed in (0, 1):
        res = finished[Run("text_tower", 0, seed, "clip")]["trained"]
        res["probe"]["pcc_tile_mean"] = 0.99
        res["retrieval"]["he_to_st"]["combined"]["R@5"] = 0.99
    out = tables.collect(finished, random_init={"clip", "ctranspath"})
    assert list(out["table1"]) == ["gene_sentence", "plip:text_tower", "clip:text_tower"]
    assert list(out["table2"]) == ["gene_sentence", "plip:text_tower", "clip:text_tower"]
    assert out["random_init"] == ["clip", "ctranspath"]
    vals = [
        finished[Run("text_tower", 0, s, "plip")]["trained"]["probe"]["pcc_tile_mean"]
        for s in (0, 1)
    ]
    assert out["table1"]["plip:text_tower"]["pcc_tile"] == pytest.approx(
        [np.mean(vals), np.std(vals, ddof=1)]
    )
    md = tables.markdown(out, finished, config_base.base_config())
    assert (
        "| plip: its pretrained image and text towers, the gene sentence as text (`text_tower`) |"
        in md
    )
    assert (
        "clip: its pretrained image and text towers, the gene sentence as text (random init" in md
    )
    assert "ctranspath (random init: no weights): `sigmma`" in md
    orders = [
        line
        for line in md.splitlines()
        if (line.startswith("Order by") or line.startswith("- seed")) and "gene_sentence" in line
    ]
    assert len(orders) == 6  # Tables 1 and 2: overall and per seed
    assert all("clip:" not in line and "plip:text_tower" in line for line in orders), orders
