import json

import matplotlib.image
import numpy as np
import pytest
from support.runs import history

from sigmma_jax import atomic
from sigmma_jax.evaluation import report
from sigmma_jax.evaluation.report import write_results


def _recalls(base):
    return {"R@5": base, "R@10": base + 0.1, "R@15": base + 0.2}


def _retrieval(offset):
    return {
        d: {
            s: _recalls(round(offset + 0.05 * i + 0.01 * j, 4))
            for i, s in enumerate(("micro", "meso", "macro", "combined"))
        }
        for j, d in enumerate(("he_to_st", "st_to_he"))
    }


def _probe(pcc):
    return {
        "pcc_tile_mean": pcc,
        "pcc_tile_sd": 0.1234,
        "mse_tile_mean": 1.5678,
        "mse_tile_sd": 0.4321,
        "pcc_gene_mean": pcc / 2,
        "n_genes": 50,
        "n_components": 256,
    }


def _results():
    return {
        "trained": {"retrieval": _retrieval(0.3), "probe": _probe(0.6111)},
        "initial": {"retrieval": _retrieval(0.05), "probe": _probe(0.2222)},
        "n_test_tiles": 412,
        "n_train_tiles": 1650,
        "split": "spatial_blocks",
        "config": {"latent_dim": 256, "scales": ["micro", "meso", "macro"]},
    }


def test_results_md_has_the_training_tiles_recall_next_to_the_held_out_one(tmp_path):
    res = _results()
    res["trained"]["retrieval_train"] = dict(_retrieval(0.6), n_tiles=412)
    write_results(tmp_path, res)
    md = (tmp_path / "results.md").read_text()
    table = md.split("## Retrieval on 412 training tiles")[1].split("##")[0]
    assert "| direction | R@5% trained | R@10% trained | R@15% trained |" in table
    assert "| HE→ST | 0.7500 | 0.8500 | 0.9500 |" in table  # combined: 0.6 + 3 * 0.05
    assert "| ST→HE | 0.7600 | 0.8600 | 0.9600 |" in table


def _assert_png(path):
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50


def test_write_results_files(tmp_path):
    res = _results()
    write_results(tmp_path, res, history=history())

    with open(tmp_path / "results.json") as f:
        assert json.load(f) == res

    md = (tmp_path / "results.md").read_text()
    for d in ("he_to_st", "st_to_he"):
        for model, scale in (("trained", "combined"), ("initial", "micro")):
            for v in res[model]["retrieval"][d][scale].values():
                assert f"{v:.4f}" in md
    for key in ("pcc_tile_mean", "pcc_tile_sd", "mse_tile_mean", "pcc_gene_mean"):
        assert f"{res['trained']['probe'][key]:.4f}" in md
        assert f"{res['initial']['probe'][key]:.4f}" in md
    assert "412" in md and "1650" in md and "spatial_blocks" in md
    assert "R@5% trained" in md and "| HE→ST | combined |" in md and "| ST→HE | micro |" in md

    _assert_png(tmp_path / "plots" / "recall.png")
    _assert_png(tmp_path / "plots" / "training.png")
    # No temporary files are left behind.
    leftovers = [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def test_write_results_without_history_and_numpy_values(tmp_path):
    res = _results()
    res["trained"]["probe"]["pcc_tile_mean"] = np.float32(0.5)
    res["trained"]["probe"]["n_genes"] = np.int64(50)
    res["seeds"] = np.arange(3)
    res["bad"] = float("nan")
    write_results(tmp_path, res)
    assert not (tmp_path / "plots" / "training.png").exists()
    _assert_png(tmp_path / "plots" / "recall.png")
    text = (tmp_path / "results.json").read_text()
    assert "NaN" not in text  # strict JSON
    loaded = json.loads(text)
    assert loaded["trained"]["probe"]["pcc_tile_mean"] == 0.5
    assert loaded["trained"]["probe"]["n_genes"] == 50
    assert loaded["seeds"] == [0, 1, 2]
    assert loaded["bad"] is None


def test_write_results_only_trained(tmp_path):
    res = {"trained": _results()["trained"], "n_test_tiles": 5}
    write_results(tmp_path, res)
    assert json.loads((tmp_path / "results.json").read_text()) == res
    _assert_png(tmp_path / "plots" / "recall.png")


@pytest.mark.parametrize("target", ["dump", "replace"])
def test_failed_write_leaves_no_results_json(tmp_path, monkeypatch, target):
    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    if target == "dump":
        monkeypatch.setattr(atomic.json, "dumps", boom)
    else:
        monkeypatch.setattr(atomic.os, "replace", boom)
    with pytest.raises(RuntimeError):
        write_results(tmp_path, _results(), history=history())
    assert not (tmp_path / "results.json").exists()
    assert [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")] == []


def test_failed_rewrite_keeps_previous_results(tmp_path, monkeypatch):
    write_results(tmp_path, _results())
    before = (tmp_path / "results.json").read_text()
    monkeypatch.setattr(atomic.json, "dumps", lambda *a, **k: (_ for _ in ()).throw(OSError()))
    with pytest.raises(OSError):
        write_results(tmp_path, {"trained": _results()["trained"], "n_test_tiles": 1})
    assert (tmp_path / "results.json").read_text() == before


def test_chance_level_uses_exact_top_k():
    assert report.chance("R@15", 20) == 3 / 20
    assert report.chance("R@5", 30) == 2 / 30
    assert report.chance("R@10", None) == 0.1


def test_results_md_has_hest_the_probe_inputs_and_the_graph(tmp_path):
    """The probe renders its own sections (headline, HEST's protocol, every input), and the ST
    graph's density is listed per scale."""
    res = _results()
    p = res["trained"]["probe"]
    p.update(input="projected/mean", target_scale="minmax", hest=dict(_probe(0.3)))
    p["variants"] = {
        "projected/mean": _probe(0.6111),
        "projected/concat": dict(_probe(0.5), n_components=192),
    }
    res["graph"] = {"micro": {"degree": 3.7}, "meso": {"degree": 9.6, "sampled": 0.45}}
    write_results(tmp_path, res)
    md = (tmp_path / "results.md").read_text()
    assert "| probe input | projected/mean | – |" in md and "| units | minmax | – |" in md
    hest = md.split("HEST-Benchmark's protocol on the same input")[1].split("What the probe reads")[
        0
    ]
    assert "| PCC per tile | 0.3000 ± 0.1234 | 0.2222 ± 0.1234 |" not in hest  # trained only
    assert "| PCC per tile | 0.3000 ± 0.1234 |" in hest
    inputs = md.split("What the probe reads (trained")[1].split("##")[0]
    assert "| `projected/mean` (headline) | 256 | 0.6111 ± 0.1234 |" in inputs
    assert "| `projected/concat` | 192 | 0.5000 ± 0.1234 |" in inputs
    assert "| meso | 9.6000 | 0.4500 |" in md and "| micro | 3.7000 | – |" in md
