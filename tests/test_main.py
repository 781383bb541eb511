"""The whole run, as `python -m sigmma_jax.main` does it, on small data."""

import importlib.util
import json

from conftest import tiny_config
from test_hest import _sample

from sigmma_jax import train


def _load_config(name, arg=None):
    spec = importlib.util.spec_from_file_location(name, f"configs/{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg)


def _shrink(c):
    """The test suite's tiny model and schedule on any config."""
    tiny = tiny_config()
    c.model, c.train, c.eval = tiny.model, tiny.train, tiny.eval
    c.data.update(workers=1, chunk_rows=2)
    return c


def _assert_results(workdir, n_test):
    r = json.loads((workdir / "results.json").read_text())
    assert r["n_test_tiles"] == n_test > 0
    for which in ("trained", "untrained"):
        for d in ("he_to_st", "st_to_he"):
            for s in ("micro", "meso", "macro", "combined"):
                assert set(r[which]["retrieval"][d][s]) == {"R@5", "R@10", "R@15"}
                assert 0 <= r[which]["retrieval"][d][s]["R@15"] <= 1
        assert {"pcc_tile_mean", "pcc_tile_sd", "mse_tile_mean", "pcc_gene_mean"} <= set(
            r[which]["probe"]
        )
    for f in ("results.md", "plots/recall.png", "plots/training.png", "metrics.jsonl"):
        assert (workdir / f).stat().st_size > 0


def test_demo_config_runs_end_to_end(tmp_path):
    c = _shrink(_load_config("demo"))
    c.data.synthetic.update(size_um=1024.0, n_genes=40)
    c.data.split.block_tiles = 2
    r = train.train_and_evaluate(c, tmp_path)
    _assert_results(tmp_path, r["n_test_tiles"])


def test_luad_config_runs_on_a_hest_folder(tmp_path):
    for i, sid in enumerate(("TENX118", "TENX141")):
        _sample(tmp_path, sid, seed=i, side_px=1900, n_cells=1200)
    c = _shrink(_load_config("luad", "demo"))
    c.data.hest_dir = str(tmp_path / "hest")
    r = train.train_and_evaluate(c, tmp_path / "run")
    manifest = json.loads((tmp_path / "run" / "shards" / "manifest.json").read_text())
    assert {manifest["tiles"][i]["slide"] for i in manifest["splits"]["test"]} == {"TENX118"}
    _assert_results(tmp_path / "run", r["n_test_tiles"])
