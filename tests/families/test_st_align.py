"""An ST-Align run end to end on the tiny synthetic Visium slices (`train_and_evaluate`, as
`python -m sigmma_jax.main --config=configs/st_align.py` runs it): what it writes, checked against
the shards and the evaluators' definitions."""

import csv
import json

import numpy as np

from sigmma_jax.data import shards
from sigmma_jax.evaluation import predictors
from sigmma_jax.train import run_info


def test_results_hold_both_evaluators_for_every_embedding(tiny_spot_run):
    run, config, results = tiny_spot_run
    on_disk = json.loads((run / "results.json").read_text())
    assert on_disk["steps"] == config.train.steps == results["steps"]
    _, manifest = run_info.read(run)
    assert on_disk["n_test_spots"] == len(manifest["splits"]["test"]) > 0
    assert on_disk["n_train_spots"] == len(manifest["splits"]["train"]) > 0
    assert "initial" not in on_disk  # ST-Align's untrained rows are the suite's baselines
    for model in ("trained",):
        dom = on_disk[model]["domains"]
        assert "clusters" not in dom  # per-spot clusters went to domains_test.csv
        assert set(dom["embeddings"]) == set(config.eval.domain_embeddings)
        for res in dom["embeddings"].values():
            for method in ("kmeans", "gmm"):
                ari = res["overall"][method]["ari_mean"]
                assert -0.5 <= ari <= 1.0
        genes = on_disk[model]["spot_expression"]
        assert set(genes["embeddings"]) == set(config.eval.gene_embeddings)
        s = genes["embeddings"]["image"]["summary"]
        assert np.isfinite(s["overall_mse"]["mean"]) and s["overall_mse"]["mean"] > 0
    # held out by donor: no test slide trained
    test_slides, train_slides = _slide_of(manifest, "test"), _slide_of(manifest, "train")
    assert test_slides and not test_slides & train_slides
    assert set(on_disk["trained"]["domains"]["slides"]) == test_slides
    md = (run / "results.md").read_text()
    assert "## domains (trained)" in md and "### Zero-shot spatial domains" in md


def _slide_of(manifest, split):
    spots = shards.items(manifest)
    return {spots[i]["slide"] for i in manifest["splits"][split]}


def test_domains_csv_has_every_annotated_test_spot_and_its_clusters(tiny_spot_run):
    run, config, _ = tiny_spot_run
    _, manifest = run_info.read(run)
    spots = shards.items(manifest)
    with open(run / "domains_test.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    test = [spots[i] for i in manifest["splits"]["test"]]
    annotated = [t for t in test if t["label"]]
    assert len(rows) == len(annotated) > 0
    want = {(t["slide"], t["barcode"]): t["label"] for t in annotated}
    assert {(r["slide"], r["barcode"]): r["layer"] for r in rows} == want
    cols = [c for c in rows[0] if "/" in c]
    assert {c.split("/")[0] for c in cols} == set(config.eval.domain_embeddings)
    for c in cols:  # k clusters per slide, k = its annotated layers
        for slide in {r["slide"] for r in rows}:
            got = {r[c] for r in rows if r["slide"] == slide}
            k = len({r["layer"] for r in rows if r["slide"] == slide})
            assert 1 < len(got) <= k
    assert (run / "plots" / "domains.png").stat().st_size > 0


def test_predictors_are_a_probe_from_the_image_embedding_to_the_panel(tiny_spot_run):
    run, _, _ = tiny_spot_run
    _, manifest = run_info.read(run)
    probe, genes, key = predictors.load_probe(run / predictors.FILE)
    assert key == "image" and list(genes) == manifest["genes"]
    assert probe.coef.shape == (len(genes), probe.components.shape[0])
    assert probe.components.shape[1] == probe.mean.shape[0]
    # with an intercept: a slide's mean expression is not forced through zero
    assert probe.intercept.shape == (len(genes),) and np.abs(probe.intercept).max() > 0
