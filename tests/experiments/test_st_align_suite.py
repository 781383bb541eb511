"""ST-Align's experiments end to end on the tiny synthetic Visium slices: every method through the
same loop, Tables 1-3 filled from the runs' results (with a suite.backbones entry's own frozen-encoder
rows), random-init rows labelled, a rerun resumes."""

import json

import numpy as np
import pytest
from support.models import random_backbone

from sigmma_jax.experiments import st_align_methods, st_align_tables, suite
from sigmma_jax.experiments.tables import mean_sd


@pytest.fixture(scope="module")
def finished_suite(tiny_spots, tmp_path_factory):
    config, _ = tiny_spots
    config = config.copy_and_resolve_references()
    config.suite.update(
        methods=("frozen_backbone", "expression", "scgpt", "clip", "no_ns", "st_align"),
        seeds=(0, 1),
        steps=2,
    )
    w = tmp_path_factory.mktemp("st_align_suite")
    config.suite.backbones = (random_backbone(w.parent / "pathology_vit", config, 32, 3),)
    config.mesh.data = 1  # the suite's logic; tests/train/test_st_align.py covers 8 devices
    return config, w, suite.run_suite(config, w)


def test_every_table_is_filled_from_the_runs(finished_suite):
    config, w, out = finished_suite
    assert json.loads((w / "tables.json").read_text()) == out
    assert (out["n_folds"], out["n_seeds"]) == (1, 2)
    t1 = out["table1"]["kmeans"]
    random = " (random init: no weights)"  # the demo config converts no UNI or scGPT weights
    assert list(t1) == [
        "frozen image encoder, spot image" + random,
        "frozen image encoder, niche image" + random,
        "expression alone (Scanpy: normalise, log1p, PCA)",
        "spot expression encoder alone (scGPT)" + random,
        "CLIP-style image alone",
        "CLIP-style (image ⊕ expression, 32-d each)",
        "ST-Align: spot image (AE-Img)",
        "ST-Align: niche image",
        "ST-Align: spot expression (scGPT)",
        "ST-Align: niche expression (AE-Gene)",
        "ST-Align: fused spot",
        "pathology_vit: frozen image encoder, spot image",  # its weights: no random-init label
        "pathology_vit: frozen image encoder, niche image",
    ]
    assert set(out["table1"]) == {"kmeans", "gmm"}
    assert list(out["table2"]) == ["AE + ABFN, no L_NS", "AE + ABFN + L_NS (ST-Align)"]
    assert set(out["table2"]["AE + ABFN + L_NS (ST-Align)"]) == {"ari_kmeans", "ari_gmm", "mse"}
    t3 = out["table3"]
    assert list(t3) == [
        "frozen image encoder, spot image" + random,
        "frozen image encoder, niche image" + random,
        "CLIP-style image",
        "ST-Align image (spot ⊕ niche)",
        "pathology_vit: frozen image encoder, spot image",
        "pathology_vit: frozen image encoder, niche image",
        st_align_tables.FLOOR,
    ]
    # another encoder: another number than the main runs' frozen encoder
    main = t1["frozen image encoder, spot image" + random]
    own = t1["pathology_vit: frozen image encoder, spot image"]
    assert own["method"] == "frozen_backbone" and main["overall"] != own["overall"]
    for row in t3.values():
        assert list(row["group_mse"]) == ["layer markers", "laminar", "non-laminar"]
        assert np.isfinite(row["overall_mse"]).all()
    md = (w / "tables.md").read_text()
    for title in ("## Table 1", "## Table 2", "## Table 3", "Order (lower is better)"):
        assert title in md
    assert "random init" not in md.split("Order: ")[1].splitlines()[0]  # kept out of the order
    for f in ("tables.csv", "runs.csv", "plots/table1.png", "plots/table2.png", "plots/table3.png"):
        assert (w / f).stat().st_size > 0


def test_a_cell_is_mean_and_sd_over_the_seeds_of_its_runs(finished_suite):
    _, w, out = finished_suite
    runs = [w / "runs" / "main" / "st_align" / "fold0" / f"seed{s}" for s in (0, 1)]
    results = [json.loads((r / "results.json").read_text())["trained"] for r in runs]
    ari = [
        r["domains"]["embeddings"]["fused_spot"]["overall"]["kmeans"]["ari_mean"] for r in results
    ]
    np.testing.assert_allclose(
        out["table1"]["kmeans"]["ST-Align: fused spot"]["overall"], mean_sd(ari)
    )
    assert mean_sd(ari)[1] == pytest.approx(np.std(ari, ddof=1))
    mse = [
        r["spot_expression"]["embeddings"]["image"]["summary"]["overall_mse"]["mean"]
        for r in results
    ]
    np.testing.assert_allclose(
        out["table2"]["AE + ABFN + L_NS (ST-Align)"]["mse"], mean_sd(mse), rtol=1e-12
    )
    # the untrained baselines ran no step; the trained ones the suite's 2
    for method, steps in (("expression", 0), ("frozen_backbone", 0), ("clip", 2), ("no_ns", 2)):
        r = json.loads(
            (w / "runs" / "main" / method / "fold0" / "seed0" / "results.json").read_text()
        )
        assert r["steps"] == steps, method


def test_a_rerun_skips_the_finished_runs(finished_suite, capsys):
    config, w, out = finished_suite
    assert suite.run_suite(config, w) == out
    printed = capsys.readouterr().out
    assert printed.count("finished before, skipped") == 14  # 12 main runs, 2 of pathology_vit


def test_every_method_is_known_to_the_tables():
    """Each row of Tables 1-3 names a registered method, and each method appears in a table."""
    named = {m for m, *_ in st_align_methods.TABLE1 + st_align_methods.TABLE2}
    named |= {m for m, *_ in st_align_methods.TABLE3_GENES}
    assert named == set(st_align_methods.METHODS)
