"""`bench encoder --arch=...`: every encoder beside its PyTorch reference, one row each."""

import json
import types

from support import timm_helpers as th

from sigmma_jax.tools.bench import zoo


def test_rows_compare_jax_with_the_reference_and_count_its_parameters(tmp_path):
    th.import_timm()
    out = tmp_path / "zoo.json"
    flags = types.SimpleNamespace(
        arch="uni,hibou-b",
        depth=1,
        batch_sizes="2",
        dtypes="",
        iters=1,
        warmup=0,
        timm="yes",
        threads=0,
        modes="forward",
        timm_setup="",
        out=str(out),
    )
    assert zoo.run(flags) == 0
    rows = {r["arch"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"uni", "hibou-b"}
    for arch, r in rows.items():
        assert r["reduced_depth"] and r["depth"] == 1 and r["batch"] == 2
        assert r["jax_images_per_s"] > 0 and r["reference_images_per_s"] > 0
        assert (
            abs(r["ratio_jax_reference"] - r["jax_images_per_s"] / r["reference_images_per_s"])
            < 1e-9
        )
        # The same architecture: the reference has the same parameters (HF's DINOv2 two more
        # vectors: the mask token of masked-image pretraining, and the class token's position,
        # which the port folds into the class token).
        ref = th.reference_model(arch, depth=1)
        n_ref = sum(p.numel() for p in ref.parameters())
        extra = 2 * r["embed_dim"] if arch == "hibou-b" else 0
        assert round(r["params_m"] * 1e6) == n_ref - extra, arch
    assert rows["hibou-b"]["mpp"] == 0.5 and rows["hibou-b"]["mean"][0] == 0.7068
    table = zoo.markdown_table(list(rows.values()))
    assert "| uni (depth 1) |" in table and "hibou-b (depth 1)" in table
