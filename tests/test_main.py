"""The whole run, as `python -m sigmma_jax.main` does it, on small data."""

import json

from support.configs import load_config, shrink
from support.hest import sample

from sigmma_jax.train import loop


def _assert_results(workdir, n_test):
    r = json.loads((workdir / "results.json").read_text())
    assert r["n_test_tiles"] == n_test > 0
    for which in ("trained", "initial"):
        for d in ("he_to_st", "st_to_he"):
            for s in ("micro", "meso", "macro", "combined"):
                for e in ("retrieval", "retrieval_train"):
                    assert set(r[which][e][d][s]) == {"R@5", "R@10", "R@15"}
                    assert 0 <= r[which][e][d][s]["R@15"] <= 1
        assert r[which]["retrieval_train"]["n_tiles"] == min(n_test, r["n_train_tiles"])
        for e in ("probe", "knn_expression"):
            assert {"pcc_tile_mean", "pcc_tile_sd", "mse_tile_mean", "pcc_gene_mean"} <= set(
                r[which][e]
            )
    for f in ("results.md", "plots/recall.png", "plots/training.png", "metrics.jsonl"):
        assert (workdir / f).stat().st_size > 0


def test_demo_config_runs_end_to_end(tiny_run):
    run, _ = tiny_run  # configs/demo.py, shrunk (tests/conftest.py)
    r = json.loads((run / "results.json").read_text())
    _assert_results(run, r["n_test_tiles"])
    for f in ("run.json", "predictors.npz"):  # what using the model on other slides needs
        assert (run / f).stat().st_size > 0
    # The run ends by saying where its results are.
    log = (run.parent / "tiny_run.log").read_text().splitlines()
    files = ("results.md", "results.json", "plots/recall.png", "plots/training.png")
    files += ("predictors.npz",)
    assert log[-1] == "results: " + ", ".join(str(run / f) for f in files)
    assert (
        "evaluating the trained model (retrieval, retrieval_train, probe, knn_expression)"
        in "\n".join(log)
    )


def test_luad_config_runs_on_a_hest_folder(tmp_path):
    for i, sid in enumerate(("TENX118", "TENX141")):
        sample(tmp_path, sid, seed=i, side_px=1900, n_cells=1200)
    c = shrink(load_config("luad", "demo"))
    c.data.hest_dir = str(tmp_path / "hest")
    r = loop.train_and_evaluate(c, tmp_path / "run")
    manifest = json.loads((tmp_path / "run" / "shards" / "manifest.json").read_text())
    assert {manifest["tiles"][i]["slide"] for i in manifest["splits"]["test"]} == {"TENX118"}
    _assert_results(tmp_path / "run", r["n_test_tiles"])
