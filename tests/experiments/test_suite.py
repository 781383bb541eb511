"""The paper's experiments end to end on a user's slide (configs/generic.py:demo), shrunk to seconds."""

import json
import subprocess
import sys

import numpy as np
import pytest
from support import vision_language as vl
from support.configs import REPO, load_config, shrink
from support.models import random_backbone
from support.slides import pink_slide

from sigmma_jax.experiments import suite, tables
from sigmma_jax.train import loop


@pytest.fixture(scope="module")
def user_slide(tmp_path_factory):
    root = tmp_path_factory.mktemp("slide")
    wsi, cells, *_ = pink_slide(root, side_px=1900, n_cells=1200)
    c = shrink(load_config("generic", "demo"))
    c.data.update(cells=str(cells), wsi=str(wsi))
    c.data.split.block_tiles = 2
    c.train.steps = 2
    c.mesh.data = 1  # one device: the suite's logic, not sharding (tests/train cover 8 devices)
    return c, root


def test_suite_fills_every_table_and_resumes(user_slide, tmp_path, monkeypatch):
    config, _ = user_slide
    config = config.copy_and_resolve_references()
    config.suite.update(
        methods=("frozen_backbone", "bleep", "gene_sentence"),
        seeds=(0,),
        backbones=(
            random_backbone(tmp_path / "vit_a", config, 32, 1),
            random_backbone(tmp_path / "vit_b", config, 48, 2),
        ),
    )
    w = tmp_path / "w"
    out = suite.run_suite(config, w)
    assert json.loads((w / "tables.json").read_text()) == out
    assert (out["n_folds"], out["n_seeds"]) == (1, 1)
    assert list(out["table1"]) == ["frozen_backbone", "bleep", "gene_sentence"]
    for row in out["table1"].values():
        assert all(np.isfinite(row[k]).all() and len(row[k]) == 2 for k in tables.EXPRESSION)
    assert set(out["table1"]["bleep"]["knn_expression"]) == set(tables.EXPRESSION)
    assert list(out["table2"]) == ["bleep", "gene_sentence"]
    assert set(out["table2"]["bleep"]["he_to_st"]) == {"R@5", "R@10", "R@15"}
    assert list(out["table3"]) == ["vit_a", "vit_b"]
    assert all(list(v) == ["frozen_backbone", "sigmma"] for v in out["table3"].values())
    assert list(out["table4"]) == ["no_graph"]  # the one ablation this suite ran
    assert {*tables.EXPRESSION, "he_to_st", "st_to_he", "hest_pcc_gene"} <= set(
        out["table4"]["no_graph"]
    )
    # Every run read the one shard set; Table 3 ran each backbone's own weights.
    assert sorted(p.name for p in w.iterdir()) == [
        "plots",
        "runs",
        "runs.csv",
        "shards",
        "tables.csv",
        "tables.json",
        "tables.md",
    ]
    assert not list((w / "runs").rglob("shards"))
    probe = lambda b: tables.read_run(w, suite.Run("frozen_backbone", 0, 0, b))[0]["trained"][
        "probe"
    ]
    assert probe("vit_a")["pcc_tile_mean"] != probe("vit_b")["pcc_tile_mean"]
    md = (w / "tables.md").read_text()
    for text in (
        "## Table 1",
        "## Table 2",
        "## Table 3",
        "## Table 4",
        "with intercept",
        "HEST PCC per gene",
    ):
        assert text in md
    for t in ("table1", "table2", "table3", "table4"):
        assert (w / "plots" / f"{t}.png").stat().st_size > 0
    assert "table3,vit_b/sigmma,pcc_tile," in (w / "tables.csv").read_text()
    assert len((w / "runs.csv").read_text().splitlines()) == 1 + 3 + 4

    # A second call trains nothing; after an interruption only the unfinished run runs again.
    calls = []
    train = loop.train_and_evaluate
    monkeypatch.setattr(
        loop, "train_and_evaluate", lambda c, d, **k: calls.append(d) or train(c, d, **k)
    )
    assert suite.run_suite(config, w) == out and calls == []
    (w / "runs/main/frozen_backbone/fold0/seed0/results.json").unlink()
    assert suite.run_suite(config, w) == out
    assert calls == [w / "runs/main/frozen_backbone/fold0/seed0"]


def test_command_runs_a_suite_from_the_command_line(user_slide, tmp_path):
    config, root = user_slide
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "sigmma_jax.experiments",
            "--config=configs/generic.py:demo",
            f"--config.data.cells={config.data.cells}",
            f"--config.data.wsi={config.data.wsi}",
            "--config.data.split.block_tiles=2",
            "--config.mesh.data=1",
            "--config.train.global_batch=8",
            "--config.suite.methods=('frozen_backbone',)",
            "--config.suite.seeds=(3,)",
            f"--workdir={tmp_path}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "[1/1] main/frozen_backbone fold 0 seed 3: " in r.stdout
    out = json.loads((tmp_path / "tables.json").read_text())
    assert list(out["table1"]) == ["frozen_backbone"] and out["n_seeds"] == 1


def test_vision_language_models_run_their_own_towers(user_slide, tmp_path):
    """CLIP, PLIP and OmiCLIP (open_clip's CoCa ViT-L/14), converted from their published layouts
    (random weights), as suite.backbones entries: each runs `text_tower` (its image tower on the
    tile, its text tower on the gene sentence) and fills its rows of Tables 1 and 2."""
    config, _ = user_slide
    config = config.copy_and_resolve_references()
    clip = vl.converted("clip-vit-b-32", tmp_path / "clip", seed=1)
    plip = vl.converted("plip", tmp_path / "plip", seed=2)
    omiclip = vl.converted("coca-vit-l-14", tmp_path / "omiclip", seed=3)
    config.suite.update(
        methods=(),  # the main runs are the other test's
        seeds=(0,),
        backbones=(f"clip={clip}", f"plip={plip}", f"omiclip={omiclip}"),
    )
    w = tmp_path / "w"
    out = suite.run_suite(config, w)
    rows = ["clip:text_tower", "plip:text_tower", "omiclip:text_tower"]
    assert list(out["table1"]) == rows and list(out["table2"]) == rows
    assert out["random_init"] == []
    for row in rows:
        assert all(np.isfinite(out["table1"][row][k]).all() for k in tables.EXPRESSION)
    res = {b: tables.read_run(w, suite.Run("text_tower", 0, 0, b))[0] for b in ("clip", "plip")}
    assert res["clip"]["trained"]["probe"] != res["plip"]["trained"]["probe"]
    run_config = json.loads((w / "runs/plip/text_tower/fold0/seed0/run.json").read_text())["config"]
    assert run_config["model"]["st_tower"] == "text"
    assert run_config["model"]["backbone_weights"] == str(plip)
    assert "gene_text" in run_config["data"]["tile_features"]
    md = (w / "tables.md").read_text()
    assert "| plip: its pretrained image and text towers, the gene sentence as text" in md
