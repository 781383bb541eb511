import json

import pytest
from support.runs import history

from sigmma_jax.train import metrics
from sigmma_jax.train.metrics import MetricsWriter, read_history


def test_read_history_skips_truncated_last_line(tmp_path):
    hist = history(5)
    path = tmp_path / "metrics.jsonl"
    text = "".join(json.dumps(h) + "\n" for h in hist)
    path.write_text(text + '{"step": 50, "loss": 1.2')  # killed mid-write
    assert read_history(path) == hist
    path.write_text(text + "\n")  # blank trailing line
    assert read_history(path) == hist


def test_read_history_warns_on_corrupt_middle_line(tmp_path):
    hist = history(3)
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps(hist[0]), '{"step": 1', json.dumps(hist[1]), json.dumps(hist[2])]
    path.write_text("\n".join(lines) + "\n")
    with pytest.warns(UserWarning):
        assert read_history(path) == hist


def test_nan_and_inf_are_written_as_null_so_every_line_is_json(tmp_path):
    def strict(token):  # what a strict JSON reader (jq, JavaScript) does with NaN or Infinity
        raise ValueError(f"not JSON: {token}")

    writer = MetricsWriter(tmp_path, 0)
    writer.write(1, {"loss": float("nan"), "grad_norm": float("inf"), "lr": 1e-4})
    writer.write_evals(1, {"probe": {"pcc_gene_mean": float("nan"), "n_genes": 50}})
    writer.close()
    for name in ("metrics.jsonl", "evals.jsonl"):
        lines = (tmp_path / name).read_text().splitlines()
        assert [json.loads(line, parse_constant=strict) for line in lines] == [
            {"step": 1, "loss": None, "grad_norm": None, "lr": 1e-4}
            if name == "metrics.jsonl"
            else {"step": 1, "probe": {"pcc_gene_mean": None, "n_genes": 50}}
        ]
    # A resumed run rewrites the logs up to its step: still JSON.
    MetricsWriter(tmp_path, 1).close()
    assert (
        json.loads((tmp_path / "metrics.jsonl").read_text(), parse_constant=strict)["loss"] is None
    )


def test_graph_density_averages_the_last_logged_steps():
    history = [
        {
            "step": s,
            "loss": 1.0,
            "graph_meso_degree": float(s),
            "graph_meso_sampled": 0.5,
            "graph_micro_degree": 4.0,
        }
        for s in range(1, 9)
    ] + [{"step": 9, "loss": 1.0}]
    got = metrics.graph_density(history, last=4)
    assert got == {"meso": {"degree": 6.5, "sampled": 0.5}, "micro": {"degree": 4.0}}
    assert metrics.graph_density([{"step": 1, "loss": 2.0}]) == {}
