"""The three scales of SIGMMA and their grids: one definition for data, model, loss and evaluation.

A tile is cut into `GRID[s]` × `GRID[s]` blocks at scale s (docs/method.md, "Blocks"): 4×4 micro
blocks, 2×2 meso, the whole tile at macro. The HE encoder crops the image on these grids; the ST
encoder restricts edges to these blocks; the loss and the evaluation have one term per scale.
Only a cell's micro block (bx, by) is stored: its coarser blocks follow by integer division, so a cell
never changes block between scales (nor under the dihedral augmentation, which mirrors block indices).
"""

from __future__ import annotations

SCALES = ("micro", "meso", "macro")
GRID = {"micro": 4, "meso": 2, "macro": 1}  # blocks (and HE crops) per side of the tile
MICRO_PER_SIDE = GRID["micro"]
N_CROPS = sum(n * n for n in GRID.values())  # HE crops per tile: 16 + 4 + 1


def block_ids(blocks, per_side: int):
    """Block id at a scale with `per_side` blocks per side, from (..., 2) micro blocks (bx, by).

    Works on numpy and jax arrays alike (the data pipeline builds graphs with it, the ST encoder
    finds candidate pairs with it).
    """
    b = blocks.astype("int32") // (MICRO_PER_SIDE // per_side)
    return b[..., 1] * per_side + b[..., 0]
