"""Checks of slides against their images and of the tiles they give, shared by the run
(`shards.preprocess`) and `check_data`, so that both give the same answer on the same config.

The readers refuse what one file shows wrong (NaN, negative or non-integer counts, cells off the
image, a pixel size no scanner produces). What needs the tile grid or the image is checked here:
- where the cells fall against the tissue (a thumbnail's tissue mask): centroids in µm instead of
  level-0 pixels crowd into the image's top-left corner; x and y exchanged put the cells on glass.
  The fraction of cells on tissue goes into the preprocessing report either way.
- the tiles: an image smaller than one tile, no tile with enough cells, and a split that leaves
  fewer training tiles than one global batch, or no test tile. Before any tile is read this is
  checked on an upper bound (the tiles with enough cells); after the filters on the real tiles.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Iterator

import ml_collections
import numpy as np
import scipy.ndimage
import scipy.sparse as sp

from sigmma_jax.data import readers, splits, tiling
from sigmma_jax.errors import InputError

# A cell closer than this to tissue counts as on it (segmentation and registration are not exact).
_ON_TISSUE_MARGIN_UM = 20.0
# Below this share of cells on tissue the run warns (and x/y exchanged is tested).
_ON_TISSUE_LOW = 0.5


@dataclasses.dataclass
class Layout:
    """A slide laid on its tile grid."""

    grid: tiling.TileGrid
    tile_of_cell: np.ndarray  # flat tile index per cell (row * cols + col), -1 outside the grid
    local: np.ndarray  # (n, 2) tile-pixel coordinates
    report: dict  # where the cells fall against the tissue (into the preprocessing report)


def lay_out(slide: readers.Slide, d: ml_collections.ConfigDict) -> Layout:
    """The slide's tile grid and its cells' tiles, after checking that the cells sit on the image
    as level-0 pixel centroids should."""
    grid = tiling.tile_grid(slide, d.target_mpp, d.tile_px)
    h, w = slide.image_shape
    ps = slide.pixel_size_um
    if grid.rows == 0 or grid.cols == 0:
        raise InputError(
            f"{slide.wsi_path}: the image ({w}x{h} px at {ps:g} µm/px = {w * ps:.0f}x{h * ps:.0f} "
            f"µm) is smaller than one tile ({d.tile_px} px at {d.target_mpp:g} µm/px = "
            f"{d.tile_px * d.target_mpp:g} µm)"
        )
    flat, local = tiling.assign_cells(slide, grid)
    return Layout(grid, flat, local, placement(slide))


def placement(slide: readers.Slide) -> dict:
    """Where the cells fall against the tissue of a thumbnail; refuses centroids in µm and x/y
    exchanged, warns when few cells lie on tissue."""
    with readers.WSI(slide.wsi_path) as wsi:
        thumb, (sy, sx) = wsi.thumbnail()
    tissue = tiling.tissue_mask(thumb)
    source = slide.cells_file or slide.name
    xy, ps = slide.xy, slide.pixel_size_um
    h, w = slide.image_shape
    share = float(tissue.mean())
    # Tissue over (nearly) all of the image or none of it says nothing about where cells belong.
    informative = 0.01 < share < 0.95
    margin = max(1, round(_ON_TISSUE_MARGIN_UM / (ps * max(sx, sy))))
    near = scipy.ndimage.binary_dilation(tissue, iterations=margin)

    def on_tissue(p: np.ndarray) -> float:
        r = np.clip((p[:, 1] / sy).astype(int), 0, near.shape[0] - 1)
        c = np.clip((p[:, 0] / sx).astype(int), 0, near.shape[1] - 1)
        return float(near[r, c].mean()) if len(p) else 0.0

    on = on_tissue(xy)
    report = dict(cells_on_tissue=round(on, 3), image_tissue_fraction=round(share, 3))
    if len(xy) == 0:
        return report

    # Centroids in µm at p µm/px all lie within the top-left p-th of each side of the image. Real
    # cells there (a slide with several sections, one of them measured) sit on their own tissue,
    # which the cells' box covers, while the same points divided by p scatter over the others'.
    top = xy.max(0)
    if ps < 0.8 and top[0] <= ps * w * 1.02 and top[1] <= ps * h * 1.02:
        x1, y1 = int(top[0] / sx) + margin + 1, int(top[1] / sy) + margin + 1
        covered = tissue[:y1, :x1].sum() / max(tissue.sum(), 1)
        if not informative or (covered < 0.5 and on_tissue(xy / ps) >= 0.8):
            raise InputError(
                f"{source}: all {len(xy)} cells lie in the top-left {top[0] / w:.0%} x "
                f"{top[1] / h:.0%} of the {w}x{h} px image {slide.wsi_path.name} (x <= "
                f"{top[0]:.0f}, y <= {top[1]:.0f}), where centroids in µm would lie at {ps:g} "
                f"µm/px; cell centroids must be in level-0 pixels of the H&E (µm / {ps:g})"
            )
    if informative and on < _ON_TISSUE_LOW:
        swapped = xy[:, ::-1]
        inside = (swapped[:, 0] < w) & (swapped[:, 1] < h)
        if inside.all():
            on_swapped = on_tissue(swapped)
            report["cells_on_tissue_if_xy_exchanged"] = round(on_swapped, 3)
            if on_swapped >= on + 0.3:
                raise InputError(
                    f"{source}: x and y look exchanged: {on:.0%} of the cells lie on tissue of "
                    f"{slide.wsi_path.name} as given, {on_swapped:.0%} with x and y swapped; "
                    "centroids are (x, y) = (column, row) in level-0 pixels"
                )
        logging.warning(
            "%s: only %.0f%% of the cells lie on tissue of %s; is it the H&E of these cells?",
            source,
            100 * on,
            slide.wsi_path.name,
        )
    return report


@dataclasses.dataclass
class Survey:
    """One slide before any tile is read: its counts over the panel, its layout, the cells that
    can be used (inside the grid, with transcripts) and the tiles that may pass the filters."""

    slide: readers.Slide
    counts: sp.csr_matrix
    layout: Layout
    usable: np.ndarray
    tiles: list[dict]
    fullest: int  # the most usable cells in one tile


def shared_panel(
    slides: list[readers.Slide], panel: list[str] | None = None
) -> tuple[list[str], dict[str, int]]:
    """Genes present in every slide, sorted (so shards do not depend on the reader's gene order);
    and how many genes each slide loses. With `panel` (a trained run's), every slide must have each
    of its genes: a slide lacking one is refused by name, never zero-filled (docs/method.md)."""
    if panel is not None:
        for s in slides:
            missing = sorted(set(panel) - set(s.genes))
            if missing:
                raise readers.InputError(
                    f"slide {s.name}: {len(missing)} genes of the run's panel are missing: "
                    + ", ".join(missing[:20])
                    + (" ..." if len(missing) > 20 else "")
                )
        return list(panel), {s.name: len(s.genes) - len(panel) for s in slides}
    common = set(slides[0].genes)
    for s in slides[1:]:
        common &= set(s.genes)
    if not common:
        raise readers.InputError("the slides share no gene: " + ", ".join(s.name for s in slides))
    panel = sorted(common)
    return panel, {s.name: len(s.genes) - len(panel) for s in slides}


def panel_counts(slide: readers.Slide, panel: list[str]) -> sp.csr_matrix:
    col_of = {g: i for i, g in enumerate(slide.genes)}
    return slide.counts[:, [col_of[g] for g in panel]].tocsr()


def survey(
    slides: list[readers.Slide], panel: list[str], d: ml_collections.ConfigDict
) -> Iterator[Survey]:
    """Each slide laid out and checked (`lay_out`), one at a time."""
    for slide in slides:
        counts = panel_counts(slide, panel)
        layout = lay_out(slide, d)
        # A cell without transcripts carries nothing to align.
        usable = (layout.tile_of_cell >= 0) & (np.asarray(counts.sum(1)).ravel() > 0)
        tiles, fullest = candidate_tiles(slide.name, layout, usable, d)
        yield Survey(slide, counts, layout, usable, tiles, fullest)


def grids(surveys: list[Survey], d: ml_collections.ConfigDict) -> str:
    """The tiles each slide is cut into, with its pixel size (the usual culprit)."""
    return "; ".join(
        f"{s.slide.name}: {s.layout.grid.rows}x{s.layout.grid.cols} tiles of "
        f"{d.tile_px * d.target_mpp:g} µm at {s.slide.pixel_size_um:g} µm/px, at most "
        f"{s.fullest} in one tile"
        for s in surveys
    )


def check_candidates(surveys: list[Survey], config: ml_collections.ConfigDict) -> list[str]:
    """The split of the tiles that may pass the filters, refused as `split_tiles` refuses it, or
    when no tile has enough cells."""
    d = config.data
    if d.min_cells == 0:  # tiles without cells count too: only the tissue filter can tell
        return []
    tiles = [t for s in surveys for t in s.tiles]
    if not tiles:
        raise InputError(
            f"no tile has data.min_cells = {d.min_cells} cells with transcripts or more"
            + (f" within data.node_budget = {d.node_budget}" if d.overflow == "drop" else "")
            + ": "
            + grids(surveys, d)
        )
    slides = [s.slide for s in surveys]
    groups = splits.sample_groups(slides)
    return split_tiles(tiles, [s.name for s in slides], config, estimate=True, groups=groups)


def candidate_tiles(
    slide: str, layout: Layout, usable: np.ndarray, d: ml_collections.ConfigDict
) -> tuple[list[dict], int]:
    """The tiles that may pass the filters before any pixel is read: enough usable cells (and
    within the node budget when overflow drops), with the most cells any tile has."""
    flat = layout.tile_of_cell[usable & (layout.tile_of_cell >= 0)]
    ids, n = np.unique(flat, return_counts=True)
    keep = n >= d.min_cells
    if d.overflow == "drop":
        keep &= n <= d.node_budget
    cols = layout.grid.cols
    tiles = [
        dict(slide=slide, row=int(t) // cols, col=int(t) % cols, n_cells=int(k))
        for t, k in zip(ids[keep], n[keep])
    ]
    return tiles, int(n.max(initial=0))


def split_tiles(
    tiles: list[dict],
    slide_names: list[str],
    config: ml_collections.ConfigDict,
    estimate: bool = False,
    groups: dict[str, str] | None = None,
    unit: str = "tiles",
) -> list[str]:
    """The split of `tiles` (or spots: `unit`), refused when training or evaluation could not run
    on it; `estimate` marks tiles counted before the filters that read pixels; `groups` (sample ->
    group) are held out together when splitting by sample."""
    split_of = splits.make_splits(tiles, slide_names, config.data.split, groups)
    problem = split_problem(split_of, config, unit)
    if problem:
        when = " (tiles with enough cells, before the tissue filter)" if estimate else ""
        raise InputError(problem + when + _advice(tiles, slide_names, config, groups, unit))
    return split_of


def split_problem(split_of: list[str], config: ml_collections.ConfigDict, unit="tiles") -> str:
    """What makes a split unusable for `config`, or '' (training needs a global batch of training
    tiles (spots), when it runs; evaluation some test ones, when there are evaluators)."""
    n = {s: split_of.count(s) for s in ("train", "val", "test")}
    batch = config.train.global_batch
    sizes = f"{len(split_of)} (train {n['train']}, val {n['val']}, test {n['test']})"
    if config.train.steps > 0 and n["train"] < batch:
        return (
            f"the split leaves {n['train']} training {unit} of {sizes}, fewer than "
            f"train.global_batch = {batch}"
        )
    if config.evals and n["test"] == 0:
        return f"the split leaves no test {unit[:-1]} of {sizes}; the evaluation needs some"
    return ""


def _advice(
    tiles: list[dict],
    slide_names: list[str],
    config: ml_collections.ConfigDict,
    groups: dict[str, str] | None,
    unit: str,
) -> str:
    """What to change: the first split setting that would give a usable split, when one does."""
    s, batch = config.data.split, config.train.global_batch
    by = s.by if s.by != "auto" else ("sample" if len(slide_names) > 1 else "space")
    if by == "space":
        trials = [("block_tiles", b) for b in range(s.block_tiles - 1, 0, -1)]
    else:
        n_folds = len(splits.sample_folds(slide_names, groups))
        trials = [("fold", k) for k in range(n_folds) if k != s.fold]
    for key, value in trials:
        split = ml_collections.ConfigDict(s.to_dict())
        split[key] = value
        if not split_problem(splits.make_splits(tiles, slide_names, split, groups), config, unit):
            return f"; --config.data.split.{key}={value} would do (or lower train.global_batch)"
    if len(tiles) <= batch:
        return (
            f"; too few {unit} ({len(tiles)}) for a batch of {batch}: lower "
            "--config.train.global_batch, or add tissue (more slides, a larger region)"
        )
    return "; lower --config.train.global_batch or change --config.data.split"
