from support.hest import sample

from sigmma_jax.data import check


def test_reports_a_usable_hest_folder_and_what_is_missing(tmp_path, capsys):
    wsi, cells, *_ = sample(tmp_path, "TENX118")
    sample(tmp_path, "TENX141", seed=1)
    assert check.check([str(tmp_path / "hest")])
    out = capsys.readouterr().out
    assert "TENX118: usable" in out and "TENX141: usable" in out
    assert "pixel_size_um_estimated = 0.2737" in out and "1200x1200 px, 2 level(s)" in out
    assert "sample_ids='('TENX118', 'TENX141')'" in out
    (tmp_path / "hest" / "transcripts" / "TENX141_transcripts.parquet").unlink()
    assert check.check([str(tmp_path / "hest")]) is False
    out = capsys.readouterr().out
    assert "TENX141: NOT usable" in out and "transcripts  MISSING" in out
    assert check.check([str(cells), str(wsi)])
    assert "400 cells x 12 genes (2 control probes dropped)" in capsys.readouterr().out


def test_not_a_data_folder(tmp_path, capsys):
    assert check.check([str(tmp_path)]) is False
    assert "not a HEST folder" in capsys.readouterr().out
    assert check.check([str(tmp_path / "nope")]) is False
