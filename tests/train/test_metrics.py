import json

import pytest
from support.runs import history

from sigmma_jax.train.metrics import read_history


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
