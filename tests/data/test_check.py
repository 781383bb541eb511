import numpy as np
import pytest
from support.configs import preprocessing_only, tiny_config
from support.hest import sample
from support.slides import tissue_slide, write_cells, write_tiff

from sigmma_jax.data import check, readers, shards


def test_reports_a_usable_hest_folder_and_what_is_missing(tmp_path, capsys):
    wsi, cells, *_ = sample(tmp_path, "TENX118")
    sample(tmp_path, "TENX141", seed=1)
    assert check.check([str(tmp_path / "hest")])
    out = capsys.readouterr().out
    assert "TENX118 (xenium): usable" in out and "TENX141 (xenium): usable" in out
    assert "pixel_size_um_estimated = 0.2737" in out and "1200x1200 px, 2 level(s)" in out
    assert """--config.data.sample_ids="('TENX118', 'TENX141')\"""" in out
    (tmp_path / "hest" / "transcripts" / "TENX141_transcripts.parquet").unlink()
    assert check.check([str(tmp_path / "hest")]) is False
    out = capsys.readouterr().out
    assert "TENX141 (xenium): NOT usable" in out and "transcripts  MISSING" in out
    # Cells with their H&E are read as a run reads them; with the defaults (batch 64) four tiles
    # are too few, with a config that only preprocesses they are usable.
    assert check.check([str(cells), str(wsi)]) is False
    assert capsys.readouterr().out.strip() == (
        "NOT usable: the split leaves 0 training tiles of 4 (train 0, val 0, test 4), fewer than "
        "train.global_batch = 64 (tiles with enough cells, before the tissue filter); too few "
        "tiles (4) for a batch of 64: lower --config.train.global_batch, or add tissue (more "
        "slides, a larger region)"
    )
    assert check.check([str(wsi), str(cells)], preprocessing_only(tiny_config()))
    out = capsys.readouterr().out
    assert "cells: 400 cells x 12 genes (2 control probes dropped)" in out
    assert "100% of the cells on tissue; 4 of 2x2 tiles with >= 8 cells" in out
    assert out.strip().endswith("usable")


def test_not_a_data_folder(tmp_path, capsys):
    assert check.check([str(tmp_path)]) is False
    assert "not a HEST folder" in capsys.readouterr().out
    assert check.check([str(tmp_path / "nope")]) is False


def test_a_table_or_an_image_alone_is_named_for_what_it_is(tmp_path, capsys):
    wsi, *_ = tissue_slide(tmp_path)
    table = tmp_path / "cells.csv"
    table.write_text("cell_id,x,y,EPCAM\nc1,10,20,3\n")
    assert check.check([str(table), str(wsi)]) is False
    assert capsys.readouterr().out.strip() == (
        f"{table}: a table, not an AnnData .h5ad; {readers.GENERIC_FORMAT}"
    )
    assert check.check([str(wsi)]) is False
    assert capsys.readouterr().out.splitlines() == [
        f"{wsi}: 2000x2000 px, 1 level(s), pixel size 0.2737 µm",
        f"an H&E image alone: name its cells too: check_data CELLS.h5ad {wsi}",
    ]


def _um(tmp, wsi, cells, xy, counts, genes):
    write_cells(cells, xy * 0.2737, counts, genes)


def _swapped(tmp, wsi, cells, xy, counts, genes):
    write_cells(cells, xy[:, ::-1], counts, genes)


def _log_counts(tmp, wsi, cells, xy, counts, genes):
    write_cells(cells, xy, np.log1p(counts), genes)


def _one_cell(tmp, wsi, cells, xy, counts, genes):
    write_cells(cells, xy[:1], counts[:1], genes)


def _image(side_px):
    def spoil(tmp, wsi, cells, xy, counts, genes):
        write_tiff(wsi, np.full((side_px, side_px, 3), (220, 140, 180), np.uint8), 0.2737)
        write_cells(cells, xy % side_px, counts, genes)

    return spoil


def _glass_float(tmp, wsi, cells, xy, counts, genes):
    write_tiff(wsi, np.full((2000, 2000, 3), 300.0, np.float32), 0.2737)


CASES = {  # the cases on its probe slide (2000 px at 0.2737 µm/px, 1,400 cells)
    "um_coordinates": (
        {},
        _um,
        "{cells}: all 1400 cells lie in the top-left 27% x 27% of the 2000x2000 px image "
        "he.ome.tif (x <= 547, y <= 547), where centroids in µm would lie at 0.2737 µm/px; cell "
        "centroids must be in level-0 pixels of the H&E (µm / 0.2737)",
    ),
    "xy_swapped": (
        dict(tissue=(0, 0, 2000, 700)),
        _swapped,
        "{cells}: x and y look exchanged: 39% of the cells lie on tissue of he.ome.tif as given, "
        "100% with x and y swapped; centroids are (x, y) = (column, row) in level-0 pixels",
    ),
    "log_counts": (
        {},
        _log_counts,
        "{cells}: X holds non-integer values (e.g. 1.099); raw counts are required (normalised or "
        "log-transformed data cannot be used as counts); "
        "--config.data.allow_non_integer_counts=True takes them as they are",
    ),
    "pixel_size_5": (
        dict(pixel_size_um=5.0),
        None,
        "{wsi}: pixel size 5 µm/px is outside what H&E scanners produce (0.08–2.0 µm/px; 40x ≈ "
        "0.25, 20x ≈ 0.5): fix the slide's metadata or pass "
        "--config.data.pixel_size_um=<µm per level-0 pixel>",
    ),
    "one_cell": (
        {},
        _one_cell,
        "no tile has data.min_cells = 8 cells with transcripts or more: cells: 4x4 tiles of "
        "128 µm at 0.2737 µm/px, at most 1 in one tile",
    ),
    "all_cells_in_one_tile": (
        dict(tissue=(0, 0, 400, 400)),
        None,
        "the split leaves 0 training tiles of 1 (train 0, val 0, test 1), fewer than "
        "train.global_batch = 8 (tiles with enough cells, before the tissue filter); too few "
        "tiles (1) for a batch of 8: lower --config.train.global_batch, or add tissue (more "
        "slides, a larger region)",
    ),
    "image_of_one_tile": (
        {},
        _image(500),
        "the split leaves 0 training tiles of 1 (train 0, val 0, test 1), fewer than "
        "train.global_batch = 8 (tiles with enough cells, before the tissue filter); too few "
        "tiles (1) for a batch of 8: lower --config.train.global_batch, or add tissue (more "
        "slides, a larger region)",
    ),
    "image_smaller_than_a_tile": (
        {},
        _image(400),
        "{wsi}: the image (400x400 px at 0.2737 µm/px = 109x109 µm) is smaller than one tile "
        "(256 px at 0.5 µm/px = 128 µm)",
    ),
    "every_tile_in_test": (
        dict(block_tiles=4),
        None,
        "the split leaves 0 training tiles of 16 (train 0, val 0, test 16), fewer than "
        "train.global_batch = 8 (tiles with enough cells, before the tissue filter); "
        "--config.data.split.block_tiles=2 would do (or lower train.global_batch)",
    ),
    "float_pixels_out_of_range": (
        {},
        _glass_float,
        "{wsi}: float pixels range over [300, 300]; expected [0, 1] or [0, 255]: save the H&E as "
        "8-bit RGB",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_check_data_agrees_with_the_run(tmp_path, capsys, case):
    """check_data and preprocessing refuse the same input with the same line, and the refused run
    leaves nothing that looks complete."""
    kw, spoil, message = CASES[case]
    slide_kw = {k: v for k, v in kw.items() if k == "tissue"}
    wsi, cells, xy, counts, genes = tissue_slide(tmp_path, **slide_kw)
    if spoil is not None:
        spoil(tmp_path, wsi, cells, xy, counts, genes)
    c = tiny_config(tmp_path / "shards")
    c.data.update(source="generic", cells=str(cells), wsi=str(wsi))
    c.data.pixel_size_um = kw.get("pixel_size_um", 0.0)
    c.data.split.block_tiles = kw.get("block_tiles", 2)
    expected = message.format(cells=cells, wsi=wsi)
    assert check.check([], c) is False
    assert capsys.readouterr().out.strip() == f"NOT usable: {expected}"
    with pytest.raises(readers.InputError) as e:
        shards.preprocess(c, tmp_path)
    assert str(e.value) == expected
    assert not (tmp_path / "shards" / "manifest.json").exists()


def test_the_probe_slide_itself_is_usable_for_both(tmp_path, capsys):
    wsi, cells, *_ = tissue_slide(tmp_path)
    c = tiny_config(tmp_path / "shards")
    c.data.update(source="generic", cells=str(cells), wsi=str(wsi))
    assert check.check([], c)
    assert (
        capsys.readouterr()
        .out.strip()
        .endswith(
            "split (before the tissue filter): 12 train, 0 val, 4 test tiles; "
            "train.global_batch 8: usable"
        )
    )
    m = shards.preprocess(c, tmp_path)
    assert m["report"]["split_tiles"] == dict(train=12, val=0, test=4)
    assert m["report"]["slides"]["cells"]["cells_on_tissue"] == 1.0


def test_cells_of_one_section_among_several_are_not_taken_for_microns(tmp_path, capsys):
    """A slide with tissue beyond the measured section: its cells lie in the top-left corner, as
    centroids in µm would, but on their own tissue; divided by the pixel size they would not."""
    wsi, cells, *_ = tissue_slide(tmp_path, tissue=(0, 0, 500, 500))
    image = np.full((2000, 2000, 3), 243, np.uint8)
    for x0, y0 in ((0, 0), (1000, 0), (0, 1000), (1000, 1000)):  # four sections, one measured
        image[y0 : y0 + 500, x0 : x0 + 500] = (220, 140, 180)
    write_tiff(wsi, image, 0.2737)
    c = preprocessing_only(tiny_config(tmp_path / "shards"))
    c.data.update(source="generic", cells=str(cells), wsi=str(wsi))
    assert check.check([], c), capsys.readouterr().out
    assert "100% of the cells on tissue; 3 of 4x4 tiles" in capsys.readouterr().out


def test_visium_in_hest_and_space_ranger_layouts_is_checked_as_st_align_reads_it(tmp_path, capsys):
    from support.visium import visium_spots, write_hest_visium, write_spaceranger

    from sigmma_jax import config_base

    spots = visium_spots()
    n_in = int(spots.in_tissue.sum())
    hest_dir = write_hest_visium(tmp_path / "hest", "V1", spots)
    assert check.check([str(hest_dir)])
    out = capsys.readouterr().out
    assert "V1 (visium): usable" in out
    assert f"st           ok: {len(spots.xy):,} spots x {len(spots.genes)} genes" in out
    assert "run (visium): python -m sigmma_jax.main --config=configs/st_align.py" in out
    (hest_dir / "st" / "V1.h5ad").unlink()
    assert check.check([str(hest_dir)]) is False
    assert "st           MISSING" in capsys.readouterr().out
    # Space Ranger: with ST-Align's defaults (the paper's batch) one small slide is too few spots
    sr = write_spaceranger(tmp_path / "sr" / "S1", spots)
    assert check.check([str(tmp_path / "sr"), str(sr.image)]) is False
    out = capsys.readouterr().out
    assert f"{sr.outs}: Space Ranger outs/" in out
    assert out.strip().splitlines()[-1].startswith("NOT usable: the split leaves ")
    assert f"train.global_batch = {config_base.st_align_config().train.global_batch}" in out
    # ... with a smaller batch, every in-tissue spot with counts is read at the array's µm/px
    c = config_base.st_align_config()
    c.train.global_batch = 8
    c.data.split.by = "space"  # one slide: spatial blocks
    assert check.check([str(tmp_path / "sr"), str(sr.image)], c)
    out = capsys.readouterr().out
    assert f"S1: {n_in:,} spots (0 without counts over the panel)" in out
    assert "spot 55 µm; niche reach 100 µm" in out and out.strip().endswith("passed)")
