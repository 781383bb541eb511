import numpy as np
import pytest
from support.slides import write_cells, write_tiff

from sigmma_jax.data import readers, tiling


# HEST-1k Xenium slides: 0.2737 (most), 0.2125 (TENX95, TENX99), 0.1369 (TENX116, TENX117), 0.3639
# (NCBI785); 0.5 is the tiles' own.
@pytest.mark.parametrize("pixel_size_um", [0.2737, 0.2125, 0.1369, 0.3639, 0.5])
def test_tiles_are_cut_in_microns_whatever_the_pixel_size(tmp_path, pixel_size_um):
    # A red square at x in [150, 200) µm, y in [40, 90) µm on pink tissue.
    side = int(round(400 / pixel_size_um))
    img = np.empty((side, side, 3), np.uint8)
    img[:] = (230, 160, 200)
    um = lambda v: int(round(v / pixel_size_um))
    img[um(40) : um(90), um(150) : um(200)] = (200, 0, 0)
    wsi = write_tiff(tmp_path / "he.tif", img, pixel_size_um)
    # One cell in the square's centre: µm (175, 65) -> tile (row 0, col 1), tile px (94, 130).
    cells = write_cells(
        tmp_path / "c.h5ad", [[175 / pixel_size_um, 65 / pixel_size_um]], [[1]], ["A"]
    )
    slide = readers.read_generic(cells, wsi)
    grid = tiling.tile_grid(slide, 0.5, 256)
    assert (grid.rows, grid.cols) == (3, 3)  # 400 µm / 128 µm
    flat, local = tiling.assign_cells(slide, grid)
    assert flat[0] == 1
    np.testing.assert_allclose(local[0], [94, 130], atol=1e-3)
    with readers.WSI(wsi) as w:
        tile = tiling.read_tile(w, grid, 0, 1)
    assert tile.shape == (256, 256, 3)
    red = (tile[..., 0] > 150) & (tile[..., 1] < 60)
    # The square covers tile px x in [44, 144), y in [80, 180); its interior is red, around it is not.
    assert red[84:176, 48:140].all()
    assert (
        not red[:76].any()
        and not red[184:].any()
        and not red[:, :40].any()
        and not red[:, 148:].any()
    )
    assert tile[130, 94, 0] < 230  # the cell (y=130, x=94) sits on red pixels


def test_tissue_fraction():
    white = np.full((64, 64, 3), 242, np.uint8)
    pink = np.empty((64, 64, 3), np.uint8)
    pink[:] = (220, 140, 180)
    assert tiling.tissue_fraction(white) == 0.0
    assert tiling.tissue_fraction(pink) == 1.0
    half = white.copy()
    half[:32] = pink[:32]
    assert tiling.tissue_fraction(half) == pytest.approx(0.5)
