"""Tessellation of a slide into tiles at the target resolution (docs/method.md, "Data").

Tiles are laid on a grid in µm, so a slide at 0.2737 or 0.2125 µm/px gives tiles of the same physical
size: 256 px at 0.5 µm/px = 128 µm. Pixels are resampled from level 0 with an anti-aliasing filter.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import Image

from sigmma_jax.data.readers import WSI, Slide


@dataclasses.dataclass(frozen=True)
class TileGrid:
    tile_px: int
    scale: float  # level-0 pixels per tile pixel = target_mpp / pixel_size_um
    rows: int
    cols: int

    def box(self, row: int, col: int) -> tuple[float, float, float, float]:
        """Level-0 box (x0, y0, x1, y1) of a tile, fractional."""
        s = self.tile_px * self.scale
        return col * s, row * s, (col + 1) * s, (row + 1) * s


def tile_grid(slide: Slide, target_mpp: float, tile_px: int) -> TileGrid:
    scale = target_mpp / slide.pixel_size_um
    h, w = slide.image_shape
    # Only whole tiles: a partial tile at the border would mix tissue with padding.
    return TileGrid(tile_px, scale, int(h // (tile_px * scale)), int(w // (tile_px * scale)))


def assign_cells(slide: Slide, grid: TileGrid) -> tuple[np.ndarray, np.ndarray]:
    """Per cell: flat tile index (row * cols + col, or -1 outside the grid) and tile-pixel xy."""
    t = slide.xy / grid.scale  # level-0 px -> target px
    rc = np.floor(t[:, ::-1] / grid.tile_px).astype(np.int64)  # (row, col)
    inside = (rc[:, 0] < grid.rows) & (rc[:, 1] < grid.cols) & (rc >= 0).all(1)
    flat = np.where(inside, rc[:, 0] * grid.cols + rc[:, 1], -1)
    local = (t - rc[:, ::-1] * grid.tile_px).astype(np.float32)
    return flat, local


def read_tile(wsi: WSI, grid: TileGrid, row: int, col: int) -> np.ndarray:
    """(tile_px, tile_px, 3) uint8 tile resampled from level 0."""
    return read_region(wsi, grid.box(row, col), grid.tile_px)


def read_region(wsi: WSI, box: tuple[float, float, float, float], size_px: int) -> np.ndarray:
    """(size_px, size_px, 3) uint8: the level-0 box (x0, y0, x1, y1), fractional, resampled with
    an anti-aliasing filter; outside the image is white glass (a spot's niche at the border)."""
    x0, y0, x1, y1 = box
    # One pixel of margin so the filter has support at the border.
    rx0, ry0 = math.floor(x0) - 1, math.floor(y0) - 1
    rx1, ry1 = math.ceil(x1) + 1, math.ceil(y1) + 1
    region = wsi.read(ry0, ry1, rx0, rx1)
    img = Image.fromarray(region).resize(
        (size_px, size_px),
        Image.Resampling.BILINEAR,
        box=(x0 - rx0, y0 - ry0, x1 - rx0, y1 - ry0),
    )
    return np.asarray(img)


def tissue_mask(img: np.ndarray) -> np.ndarray:
    """Pixels that are stained (saturated or dark), as opposed to white glass."""
    f = img.astype(np.int16)
    saturation = f.max(-1) - f.min(-1)
    return (saturation > 20) | (f.mean(-1) < 200)


def tissue_fraction(img: np.ndarray) -> float:
    """Fraction of a tile's pixels that are tissue."""
    return float(tissue_mask(img).mean())
