"""Synthetic DLPFC-like 10x Visium slices in HEST-1k's layout: the ST-Align demo (docs/method.md, "ST-Align").

``write_synthetic_visium(out_dir, seed=0)`` writes six slices of human dorsolateral prefrontal
cortex from three donors as HEST-1k stores DLPFC: ``st/{id}.h5ad`` (all spots of the capture area
in the field, raw counts), ``wsis/{id}.tif`` (pyramidal OME-TIFF H&E), ``metadata/{id}.json``, and
spatialLIBD's ``barcode_level_layer_map.tsv`` (barcode, sample, layer for in-tissue spots).  It is
meant as a *fair* test of ST-Align's two evaluations (spatial domains by ARI against the layers;
nine genes predicted from the image): the layer shows in the pixels through cell density and
morphology, vessels show as red blood cells, but plasma-cell and interneuron genes (IGKC, NPY) are
barely or not at all visible.  Model, all lengths in µm (a seed gives the same tissue at any
``pixel_size_um``; only the rendering changes):

* Geometry.  A square field of ``size_um``.  In a frame turned by a random angle (a multiple of
  90° plus up to ±17°) the pial surface is a smooth random curve (a bend plus 300 µm noise) near
  one side; outside it is glass.  Depth = distance across that frame below the surface plus a
  smooth 2-D warp (100 µm scale, 10 µm, and 3 µm roughness).  Layers L1-L6 and WM are bands of
  depth with relative thicknesses .09 .06 .22 .07 .18 .18 (WM the rest), each varying smoothly
  along the surface (log-sd .15 at 400 µm), scaled so that WM begins at 78 % of the 95th depth
  percentile.  Donors 2, 5, ... lack L1/L2 (like DLPFC donor 2, slices 151669-151672): their edge
  is a cut through the top of L3.  Layer membership is soft across a boundary (12 µm sigmoid).
* Visium.  Spots of 55 µm on the 100 µm hexagonal array (78 rows x 128 columns, column ≡ row
  mod 2, x = 50 col, y = 86.6 row), turned by up to ±2° and shifted so the field lies at a random
  place of the capture area, plus 1 µm jitter; every spot whose disc lies in the field is kept,
  ``in_tissue`` when its centre is.  Barcodes: a fixed bijection of the array position to 16
  letters ACGT, the same on every slide (as a real whitelist); labels join by barcode and sample.
* Cells.  A jittered grid thinned per layer (µm^2 per cell L1 1000, L2 200, L3 360, L4 210, L5
  500, L6 330), type mixture per (soft) layer: L1 mostly small glia, L2 and L4 small dark granular
  neurons, L3 medium pyramidal neurons (pale vesicular nucleus with nucleolus, Nissl-purple
  cytoplasm offset towards the pia), L5 large pyramidal, L6 polymorphic, glia everywhere.  White
  matter: oligodendrocytes (small, dark, round) in chains along iso-depth rows, i.e. parallel to
  the WM boundary, ~620 µm^2 per cell, a few astrocytes and microglia.  3.5 % of grey-matter
  neurons are NPY+ interneurons, looking like their neighbours.  Vessels: 2-5 penetrating ones
  from the surface into the depth (lumen radius 3.5-9 µm, random-walk course) and 1-4 cut across
  (5-14 µm); three in four hold red blood cells (bright eosin discs) filling 30-90 % of the lumen;
  endothelial nuclei line the wall.  Plasma cells in 1-4 small clusters below the pia or beside a
  vessel.  Nuclei may not overlap (greedy, as in synthetic.py).
* Image.  synthetic.py's Beer-Lambert rendering and cell stamps.  Neuropil eosin / hematoxylin
  per layer (L1 pinker, L2/L4 a little bluer), white matter pale-pink with fibre stripes (7 µm
  period) along iso-depth lines, an eosinophilic pial line, vessels with pale lumen and pink wall.
  Staining (H and E strength, eosin hue, glass tint) is a donor effect; a 300 µm field varies it
  within a slice.
* Expression (counts ~ Poisson(mu * Gamma(4)/4): negative binomial).  A cell of type t with soft
  layer membership m contributes lib * w[t, g] * (m . lambda[g]) to gene g (lib per type, growing
  with nucleus area, log-normal noise), the spot sums the cells whose centre lies under its 55 µm
  disc (and 15 % of those up to 10 µm beyond: diffusion) plus neuropil transcripts of its layer
  (SNAP25 in grey matter, myelin genes in WM), times a spot size factor (donor scale, a 250 µm
  RNA-quality field, log-normal noise; 1 % of spots damaged, 2-10 % of their counts) and a donor
  effect per gene (log-sd .15).  Glass spots get ambient RNA only.  Genes: the nine of ST-Align
  with their real patterns (FABP7 L1 and WM astrocytes; CCK L2/3 and L6; PVALB L4, weaker L3/L5;
  PCP4 L5, weaker L6; MOBP WM, weaker L6; SNAP25 all grey matter; IGKC plasma cells; HBB red blood
  cells; NPY the NPY+ interneurons), other spatialLIBD layer and cell-type markers, housekeeping
  genes, and filler GENE_### that are pure noise (half) or weakly biased by layer and type.
  ``uns["synthetic_truth"]`` keeps per spot the layer code and the numbers of cells, red blood
  cells, plasma cells and NPY+ interneurons under the disc.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import pathlib
import uuid

import numpy as np
from scipy import ndimage, sparse, spatial
from scipy.special import expit as _sigmoid

from sigmma_jax import atomic
from sigmma_jax.data.synthetic import (
    _GLASS,
    _STAIN_E,
    _STAIN_H,
    _STEP,
    _STRIP,
    _at,
    _chromatin,
    _grid_at,
    _no_overlap,
    _noise,
    _stamp_cells,
    _stamp_params,
    _write_pyramid,
)
from sigmma_jax.dlpfc import LAYERS, NINE_GENES

TYPES = (
    "astrocyte",
    "microglia",
    "oligodendrocyte",
    "granular",
    "pyramidal",
    "large_pyramidal",
    "polymorphic",
    "endothelial",
    "plasma",
    "erythrocyte",
)
_T = {t: i for i, t in enumerate(TYPES)}
_NEURONS = np.array([_T[t] for t in ("granular", "pyramidal", "large_pyramidal", "polymorphic")])
# Per type: nucleus radius µm, elongation, hematoxylin OD, vesicular chromatin, cytoplasm rim µm,
# cytoplasm eosin / hematoxylin OD, cytoplasm offset µm (towards the pia for pyramids), library.
_MORPH = np.array(
    [
        # r    elong hem   vesic cyto  c_eos c_hem off  lib
        [3.4, 1.15, 0.75, 0.45, 0.6, 0.22, 0.03, 0.0, 30.0],  # astrocyte
        [2.6, 1.90, 1.15, 0.05, 0.4, 0.20, 0.04, 0.0, 20.0],  # microglia
        [2.7, 1.05, 1.45, 0.00, 0.6, 0.10, 0.01, 0.0, 35.0],  # oligodendrocyte
        [3.1, 1.10, 1.10, 0.25, 0.9, 0.28, 0.08, 0.0, 60.0],  # granular neuron
        [4.6, 1.30, 0.60, 1.10, 3.2, 0.32, 0.16, 1.8, 110.0],  # pyramidal neuron
        [6.2, 1.30, 0.55, 1.15, 5.0, 0.34, 0.20, 3.0, 180.0],  # large pyramidal neuron
        [3.9, 1.60, 0.85, 0.60, 1.8, 0.30, 0.10, 0.6, 75.0],  # polymorphic neuron
        [2.8, 3.20, 0.95, 0.20, 0.8, 0.25, 0.03, 0.0, 25.0],  # endothelial
        [3.4, 1.20, 1.15, 0.30, 2.8, 0.30, 0.25, 2.0, 80.0],  # plasma
        [3.7, 1.08, 0.00, 0.00, 0.3, 0.75, 0.00, 0.0, 100.0],  # erythrocyte (no nucleus)
    ]
)
_THICK = np.array([0.09, 0.06, 0.22, 0.07, 0.18, 0.18])  # L1..L6; WM is the rest
_AREA = np.array([1000.0, 200.0, 360.0, 210.0, 500.0, 330.0, 3250.0])  # µm^2 per grid cell
# Type mixture of the jittered-grid cells per layer (astro, micro, oligo, gran, pyr, lpyr, poly);
# WM's oligodendrocytes come in rows on their own, so its grid cells are only the other glia.
_MIX = np.array(
    [
        [0.45, 0.22, 0.08, 0.25, 0.00, 0.00, 0.00],
        [0.08, 0.06, 0.06, 0.75, 0.05, 0.00, 0.00],
        [0.10, 0.07, 0.10, 0.13, 0.60, 0.00, 0.00],
        [0.07, 0.06, 0.08, 0.72, 0.07, 0.00, 0.00],
        [0.10, 0.08, 0.20, 0.07, 0.20, 0.35, 0.00],
        [0.09, 0.07, 0.22, 0.04, 0.05, 0.03, 0.50],
        [0.60, 0.40, 0.00, 0.00, 0.00, 0.00, 0.00],
    ]
)
_NP_EOS = np.array([0.40, 0.29, 0.33, 0.29, 0.35, 0.33, 0.24], np.float32)  # neuropil, per layer
_NP_HEM = np.array([0.04, 0.065, 0.05, 0.065, 0.05, 0.05, 0.025], np.float32)
_SPOT_UM, _PITCH_UM = 55.0, 100.0
_ARRAY = (78, 128)  # Visium capture area: rows x columns
_SOFT = 12.0  # µm, width of the soft layer membership across a boundary
_ROW_UM = 26.0  # µm between WM oligodendrocyte rows
_NAT = dict(  # shorthands for the gene table below
    ast=_T["astrocyte"],
    mic=_T["microglia"],
    oli=_T["oligodendrocyte"],
    gra=_T["granular"],
    pyr=_T["pyramidal"],
    lpy=_T["large_pyramidal"],
    pol=_T["polymorphic"],
    end=_T["endothelial"],
    pla=_T["plasma"],
    ery=_T["erythrocyte"],
)
_GREY = (1, 1, 1, 1, 1, 1, 0.2)
# gene -> (expression per cell type, layer profile L1..WM or None (flat), neuropil per layer).
# Expression is in counts per cell at membership 1; "npy" means the NPY+ interneurons.
_GENES = {
    # the nine
    "FABP7": (dict(ast=8.0, oli=0.3), (3, 0.6, 0.4, 0.4, 0.4, 0.6, 2.5), None),
    "CCK": (dict(gra=2, pyr=3, lpy=2, pol=3), (0.2, 2.5, 2, 0.5, 0.5, 1.8, 0.05), None),
    "PVALB": (dict(gra=1.5, pyr=1.2, lpy=1.2, pol=0.8), (0.05, 0.2, 0.8, 3, 0.8, 0.2, 0.02), None),
    "PCP4": (dict(gra=0.6, pyr=1.5, lpy=3.5, pol=2), (0.1, 0.2, 0.3, 0.6, 3, 1.3, 0.1), None),
    "MOBP": (dict(oli=2.5), (0.2, 0.2, 0.3, 0.4, 0.6, 1.2, 3), (0, 0, 0, 0, 0.05, 0.3, 2)),
    "SNAP25": (dict(gra=4, pyr=6, lpy=8, pol=5, ast=0.2), _GREY, (1, 1, 1, 1, 1, 1, 0.25)),
    "IGKC": (dict(pla=120.0), None, None),
    "HBB": (dict(ery=4.0), None, None),
    "NPY": (dict(npy=15.0), None, None),
    # other spatialLIBD layer markers
    "RELN": (dict(gra=2.0), (4, 0.5, 0.3, 0.3, 0.3, 0.3, 0.05), None),
    "AQP4": (dict(ast=6.0), (2.5, 1, 1, 1, 1, 1, 1.5), None),
    "HPCAL1": (dict(gra=1.5, pyr=2.5), (0.2, 2.5, 2, 0.6, 0.6, 0.5, 0.05), None),
    "CUX2": (dict(gra=1.5, pyr=1.5), (0.1, 3, 2.5, 1.5, 0.2, 0.1, 0.02), None),
    "CARTPT": (dict(gra=1, pyr=1), (0.1, 2, 1.5, 0.2, 0.1, 0.1, 0.02), None),
    "ENC1": (dict(gra=2, pyr=2.5, lpy=2.5, pol=2), (0.3, 2, 2, 1.5, 1, 0.8, 0.05), None),
    "RORB": (dict(gra=2.5, pyr=1), (0.05, 0.2, 0.6, 3, 1.2, 0.3, 0.02), None),
    "FEZF2": (dict(lpy=2.5, pyr=1, pol=1), (0.05, 0.05, 0.2, 0.3, 3, 1.2, 0.02), None),
    "BCL11B": (dict(lpy=2.5, pyr=1, pol=1.5), (0.05, 0.1, 0.3, 0.4, 2.5, 1.5, 0.05), None),
    "TRABD2A": (dict(lpy=2.0, pyr=0.5), (0, 0, 0.1, 0.2, 3, 1, 0), None),
    "NR4A2": (dict(pol=2.5, pyr=1), (0.05, 0.1, 0.2, 0.2, 0.6, 3, 0.2), None),
    "NTNG2": (dict(pol=2.5, lpy=1), (0.05, 0.1, 0.2, 0.3, 1, 3, 0.1), None),
    "KRT17": (dict(pol=1.2), (0, 0, 0, 0, 0.3, 2.5, 0.1), None),
    "MBP": (dict(oli=5.0), (0.3, 0.3, 0.4, 0.5, 0.8, 1.5, 3), (0, 0, 0, 0.1, 0.2, 0.8, 4)),
    "PLP1": (dict(oli=5.0), (0.3, 0.3, 0.4, 0.5, 0.8, 1.5, 3), (0, 0, 0, 0.1, 0.2, 0.6, 3)),
    "GFAP": (dict(ast=6.0), (3, 0.5, 0.4, 0.4, 0.4, 0.6, 3), None),
    # cell types
    "MOG": (dict(oli=1.5), (0.3, 0.3, 0.4, 0.5, 0.8, 1.5, 2.5), None),
    "CLDN11": (dict(oli=1.5), None, None),
    "OLIG2": (dict(oli=1.2, ast=0.2), None, None),
    "SLC17A7": (dict(gra=1.5, pyr=2.5, lpy=2.5, pol=1.5), _GREY, None),
    "NEFL": (dict(pyr=2.5, lpy=4), (0.2, 0.5, 1.2, 0.8, 1.5, 1, 0.1), None),
    "SYT1": (dict(gra=3, pyr=3, lpy=4, pol=3), _GREY, (0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0)),
    "CAMK2A": (dict(gra=2, pyr=2.5, lpy=2.5, pol=2), _GREY, None),
    "GAD1": (dict(npy=8.0, gra=0.2), None, None),
    "SST": (dict(npy=6.0), None, None),
    "SLC1A2": (dict(ast=2.5), None, (0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.1)),
    "ALDH1L1": (dict(ast=1.5), None, None),
    "CX3CR1": (dict(mic=1.5), None, None),
    "P2RY12": (dict(mic=1.5), None, None),
    "C1QB": (dict(mic=2.0), None, None),
    "CLDN5": (dict(end=3.0), None, None),
    "FLT1": (dict(end=2.0), None, None),
    "VWF": (dict(end=1.5), None, None),
    "JCHAIN": (dict(pla=25.0), None, None),
    "MZB1": (dict(pla=8.0), None, None),
    "HBA1": (dict(ery=2.5), None, None),
    "HBA2": (dict(ery=2.0), None, None),
}
_HOUSEKEEPING = ("ACTB", "GAPDH", "B2M", "RPLP0", "EEF1A1", "MALAT1")
_MIN_AREA = _AREA.min()


@dataclasses.dataclass(frozen=True)
class SyntheticVisium:
    hest_dir: pathlib.Path  # st/, wsis/, metadata/ as HEST-1k
    sample_ids: tuple[str, ...]
    labels: pathlib.Path  # spatialLIBD's barcode_level_layer_map.tsv


# ---------------------------------------------------------------------------------- geometry


def _geometry(rng: np.random.Generator, size_um: float, has_pia: bool) -> dict:
    """The frame, surface curve, layer boundaries and warp of one slice (µm)."""
    s = size_um
    phi = rng.integers(4) * np.pi / 2 + rng.uniform(-0.3, 0.3)
    g = dict(size=s, has_pia=has_pia, n=np.array([np.cos(phi), np.sin(phi)]))
    g["t"] = np.array([-g["n"][1], g["n"][0]])
    u = np.arange(-s, s + _STEP, _STEP)  # covers the field's diagonal
    z1 = lambda sigma: _noise(rng, (1, u.size), (0.01, sigma / _STEP))[0]  # noqa: E731
    bend = rng.uniform(-0.24, 0.24) / s * u**2  # a gyrus: the surface sags or bulges
    g["u"] = u
    g["surface"] = rng.uniform(0.10, 0.18) * s + bend + 0.02 * s * z1(300.0)
    # Boundaries: cumulative thickness, each layer's own smooth variation along the surface.
    thick = _THICK[:, None] * np.exp(0.15 * np.stack([z1(400.0) for _ in _THICK]))
    cum = np.cumsum(thick, 0)
    m = int(np.ceil(s / _STEP)) + 2
    g["warp"] = (
        10 * _noise(rng, (m, m), 100 / _STEP) + 3 * _noise(rng, (m, m), 25 / _STEP)
    ).astype(np.float32)
    yy, xx = np.mgrid[:m, :m] * _STEP
    d = _depth(g, xx.ravel(), yy.ravel())
    # Scale: white matter begins at 78 % of the 95th percentile of tissue depth, so every layer
    # shows; a donor without L1/L2 starts at L3 (its edge is a cut, 3 soft widths above L3).
    top = cum[1] if not has_pia else np.zeros(u.size)
    scale = 0.78 * np.quantile(d[d > 0], 0.95) / (cum[5] - top).mean()
    g["bounds"] = scale * (cum - top) - (0 if has_pia else 3 * _SOFT)
    return g


def _frame(g: dict, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(along the surface, across it) coordinates of field points (µm)."""
    c = g["size"] / 2
    u = (x - c) * g["t"][0] + (y - c) * g["t"][1]
    return u, (x - c) * g["n"][0] + (y - c) * g["n"][1] + c


def _from_frame(g: dict, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c = g["size"] / 2
    return c + u * g["t"][0] + (v - c) * g["n"][0], c + u * g["t"][1] + (v - c) * g["n"][1]


def _depth(g: dict, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """µm below the tissue edge (negative on glass)."""
    u, v = _frame(g, x, y)
    return v - np.interp(u, g["u"], g["surface"]) + _at(g["warp"], _STEP, y, x)


def _layers(g: dict, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Depth, hard layer index (0..6) and soft membership (7 x N) at field points."""
    d = _depth(g, x, y)
    u, _ = _frame(g, x, y)
    b = np.stack([np.interp(u, g["u"], bk) for bk in g["bounds"]])
    hard = (d[None] > b).sum(0)
    below = _sigmoid((d[None] - b) / _SOFT)  # 6 x N: how much a point lies below boundary k
    soft = np.concatenate([1 - below[:1], below[:-1] - below[1:], below[-1:]])
    return d, hard, soft


def _towards_pia(g: dict, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Angle of -grad(depth): where the apical dendrite of a pyramidal neuron points."""
    e = 2.0
    gx = _depth(g, x + e, y) - _depth(g, x - e, y)
    gy = _depth(g, x, y + e) - _depth(g, x, y - e)
    return np.arctan2(-gy, -gx)


# ----------------------------------------------------------------------------- Visium spots


def _barcodes(index: np.ndarray) -> np.ndarray:
    """A bijection of 32-bit integers (odd multipliers, xor-shifts), written as 16 ACGT letters."""
    x = index.astype(np.uint64)
    m32 = np.uint64(0xFFFFFFFF)
    x = (x * np.uint64(0x9E3779B1) + np.uint64(0x7F4A7C15)) & m32
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x85EBCA6B)) & m32
    x ^= x >> np.uint64(13)
    digits = (x[:, None] >> (2 * np.arange(15, -1, -1, dtype=np.uint64))) & np.uint64(3)
    letters = np.array(list("ACGT"))[digits.astype(int)]
    return np.array(["".join(r) + "-1" for r in letters], dtype=object)


def _spots(rng: np.random.Generator, size_um: float) -> dict:
    """The capture area's spots whose disc lies inside the field."""
    rows, cols = np.mgrid[: _ARRAY[0], : _ARRAY[1]]
    ok = (rows % 2) == (cols % 2)
    rows, cols = rows[ok], cols[ok]
    ax, ay = cols * _PITCH_UM / 2, rows * _PITCH_UM * np.sqrt(3) / 2
    # Where the field's centre falls on the capture area, and how the area is turned.
    span = np.array([ax.max(), ay.max()])
    lo = np.minimum(size_um / 2 * 1.05, span / 2)
    centre = rng.uniform(lo, span - lo)
    th = np.deg2rad(rng.uniform(-2, 2))
    dx, dy = ax - centre[0], ay - centre[1]
    x = size_um / 2 + dx * np.cos(th) - dy * np.sin(th)
    y = size_um / 2 + dx * np.sin(th) + dy * np.cos(th)
    x, y = x + rng.normal(0, 1.0, x.size), y + rng.normal(0, 1.0, y.size)
    r = _SPOT_UM / 2
    inside = (x >= r) & (x <= size_um - r) & (y >= r) & (y <= size_um - r)
    return dict(
        row=rows[inside],
        col=cols[inside],
        x=x[inside],
        y=y[inside],
        barcode=_barcodes(rows[inside] * _ARRAY[1] + cols[inside]),
    )


# ------------------------------------------------------------------------------------- cells


def _vessels(rng: np.random.Generator, g: dict) -> list[dict]:
    """Centre lines (µm, x y), lumen radius and blood fill of the slice's vessels."""
    s, out = g["size"], []
    cortex = g["bounds"][5].mean()
    for _ in range(2 + rng.poisson(1.5)):  # penetrating: from the surface into the depth
        u0 = rng.uniform(-0.45, 0.45) * s
        v = np.interp(u0, g["u"], g["surface"]) + rng.uniform(0, 60)
        u, ang, pts = u0, rng.uniform(-0.3, 0.3), []
        for _ in range(int(rng.uniform(0.3, 0.9) * cortex)):  # 1 µm steps
            pts.append((u, v))
            ang += rng.normal(0, 0.02)
            u, v = u + np.sin(ang), v + np.cos(ang)
        pts = np.array(pts)
        out.append(
            dict(xy=np.stack(_from_frame(g, pts[:, 0], pts[:, 1]), 1), r=rng.uniform(3.5, 9))
        )
    for _ in range(1 + rng.poisson(1.0)):  # cut across
        xy = rng.uniform(0.05, 0.95, (1, 2)) * s
        if _depth(g, xy[:, 0], xy[:, 1])[0] > 30:
            out.append(dict(xy=xy, r=rng.uniform(5, 14)))
    for v in out:
        v["fill"] = 0.0 if rng.uniform() < 0.25 else rng.uniform(0.3, 0.9)
    return out


def _vessel_raster(g: dict, vessels: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distance (µm) to the nearest vessel centre line, that vessel and its radius (2 µm grid)."""
    m = int(np.ceil(g["size"] / 2)) + 2
    label = np.zeros((m, m), np.int32)
    for k, v in enumerate(vessels):
        i = np.round(v["xy"] / 2).astype(int)
        i = i[((i >= 0) & (i < m)).all(1)]  # the part of the course inside the field
        label[i[:, 1], i[:, 0]] = k + 1
    if not label.any():
        return np.full((m, m), np.inf, np.float32), label - 1, np.zeros((m, m), np.float32)
    dist, (iy, ix) = ndimage.distance_transform_edt(label == 0, return_indices=True)
    which = label[iy, ix] - 1
    radius = np.array([v["r"] for v in vessels])[which]
    return (2 * dist).astype(np.float32), which, radius.astype(np.float32)


def _cells(rng: np.random.Generator, g: dict, vessels: list[dict], raster: tuple) -> dict:
    """Place cells, type them and draw their morphology; positions in µm (x, y)."""
    s = g["size"]
    sp = np.sqrt(_MIN_AREA)
    grid = np.arange(int(s / sp)) * sp
    xy = np.stack(np.meshgrid(grid, grid), -1).reshape(-1, 2)
    xy = xy + sp * (0.5 + rng.uniform(-0.4, 0.4, xy.shape))
    d, hard, _ = _layers(g, xy[:, 0], xy[:, 1])
    keep = (d > 0) & (rng.uniform(size=len(xy)) < _MIN_AREA / _AREA[hard])
    xy_grid = xy[keep]
    # White matter oligodendrocytes: short chains (~4 cells, 7.5 µm apart) along iso-depth rows,
    # each chain a little off its row and tilted, so rows read as fibre tracts, not ruled lines.
    wm_top = g["bounds"][5].min()
    rows_d = np.arange(wm_top, 1.5 * s, _ROW_UM) + rng.uniform(0, _ROW_UM)
    chains = []
    for dr in rows_d:
        u = -s + rng.exponential(40.0)
        while u < s:
            k = 1 + rng.geometric(0.3)
            along = 7.5 * np.arange(k) + rng.normal(0, 1.2, k)
            tilt, d0 = rng.normal(0, 0.12), dr + rng.normal(0, 6.0)
            chains.append(np.stack([u + along * np.cos(tilt), d0 + along * np.sin(tilt)]))
            u += along[-1] + rng.exponential(70.0)
    ud = np.concatenate(chains, 1) if chains else np.zeros((2, 0))
    ud[1] += rng.normal(0, 1.0, ud.shape[1])
    x, y = _from_frame(g, ud[0], ud[1] + np.interp(ud[0], g["u"], g["surface"]))
    for _ in range(2):  # invert the warp: move along the depth axis until depth = row depth
        ok = (x > -50) & (x < s + 50) & (y > -50) & (y < s + 50)
        x, y, ud = x[ok], y[ok], ud[:, ok]
        err = _depth(g, x, y) - ud[1]
        x, y = x - err * g["n"][0], y - err * g["n"][1]
    inside = (x >= 0) & (x < s) & (y >= 0) & (y < s)
    xy_rows = np.stack([x, y], 1)[inside]
    xy_rows = xy_rows[_layers(g, xy_rows[:, 0], xy_rows[:, 1])[1] == 6]
    # Plasma cells: small clusters below the pia or beside a vessel.
    centres = []
    for _ in range(1 + rng.poisson(1.2)):
        if g["has_pia"] and (rng.uniform() < 0.5 or not vessels):
            u0 = rng.uniform(-0.45, 0.45) * s
            v0 = np.interp(u0, g["u"], g["surface"]) + rng.uniform(10, 50)
            centres.append(np.array(_from_frame(g, u0, v0)))
        elif vessels:
            v = vessels[rng.integers(len(vessels))]
            p = v["xy"][rng.integers(len(v["xy"]))]
            a = rng.uniform(0, 2 * np.pi)
            centres.append(p + (v["r"] + 10) * np.array([np.cos(a), np.sin(a)]))
    xy_pla = [c + rng.normal(0, 12.0, (3 + rng.poisson(3), 2)) for c in centres]
    xy_pla = np.concatenate(xy_pla) if xy_pla else np.zeros((0, 2))
    n_pla, n_rows = len(xy_pla), len(xy_rows)
    xy = np.concatenate([xy_pla, xy_rows, xy_grid])
    d, hard, soft = _layers(g, xy[:, 0], xy[:, 1])
    mix = soft.T @ _MIX
    cum = np.cumsum(mix / mix.sum(1, keepdims=True), 1)
    ctype = (rng.uniform(size=len(xy))[:, None] > cum).sum(1)
    ctype[:n_pla] = _T["plasma"]
    ctype[n_pla : n_pla + n_rows] = _T["oligodendrocyte"]
    m = _morph(rng, ctype, g, xy)
    keep = _no_overlap(xy, m["a"], m["b"]) & (d > 0)
    keep &= (xy >= 0).all(1) & (xy < s).all(1)
    if vessels:  # nothing inside a vessel but its own cells
        dist, _, radius = raster
        i = np.clip((xy / 2).astype(int), 0, dist.shape[0] - 1)
        keep &= dist[i[:, 1], i[:, 0]] > radius[i[:, 1], i[:, 0]] + 4
    c = dict(xy=xy, type=ctype, **m)
    c = {k: v[keep] for k, v in c.items()}
    neuron = np.isin(c["type"], _NEURONS)
    p_npy = np.array([0.035, 0.05, 0.03, 0.03, 0.03, 0.05, 0.0])
    c["npy"] = neuron & (rng.uniform(size=neuron.size) < p_npy[_layers(g, *c["xy"].T)[1]])
    return _concat(c, _vessel_cells(rng, g, vessels))


def _morph(rng: np.random.Generator, ctype: np.ndarray, g: dict, xy: np.ndarray) -> dict:
    mp = _MORPH[ctype]
    n = len(ctype)
    r = mp[:, 0] * rng.lognormal(0, 0.12, n)
    elong = 1 + (mp[:, 1] - 1) * rng.lognormal(0, 0.3, n)
    pyramid = np.isin(ctype, (_T["pyramidal"], _T["large_pyramidal"]))
    theta = np.where(
        pyramid | (ctype == _T["polymorphic"]),
        _towards_pia(g, xy[:, 0], xy[:, 1]) + rng.normal(0, np.where(pyramid, 0.25, 0.8), n),
        rng.uniform(0, 2 * np.pi, n),
    )
    return dict(
        r=r,
        a=r * np.sqrt(elong),
        b=r / np.sqrt(elong),
        theta=theta,
        hem=mp[:, 2] * np.exp(rng.normal(0, 0.18, n)),
        ves=mp[:, 3] * rng.uniform(0.3, 1.0, n),
        cyto=mp[:, 4] * rng.lognormal(0, 0.2, n),
        c_eos=mp[:, 5] * rng.lognormal(0, 0.1, n),
        nucleolus=rng.uniform(-0.3, 0.3, (n, 2)),
    )


def _vessel_cells(rng: np.random.Generator, g: dict, vessels: list[dict]) -> dict:
    """Endothelial nuclei along the walls and red blood cells in the lumen."""
    xy, ctype, theta = [], [], []
    for v in vessels:
        p, r = v["xy"], v["r"]
        if len(p) > 1:
            tang = np.gradient(p, axis=0)
            ang = np.arctan2(tang[:, 1], tang[:, 0])
            k = np.arange(rng.integers(30), len(p), 30)
            side = np.where(np.arange(k.size) % 2 == 0, 1.0, -1.0)
            nrm = np.stack([-np.sin(ang[k]), np.cos(ang[k])], 1)
            xy.append(p[k] + (side * (r + 1.2))[:, None] * nrm)
            theta.append(ang[k])
        else:
            a = rng.uniform(0, 2 * np.pi) + np.arange(4) * np.pi / 2
            xy.append(p + (r + 1.2) * np.stack([np.cos(a), np.sin(a)], 1))
            theta.append(a + np.pi / 2)
        ctype.append(np.full(len(xy[-1]), _T["endothelial"]))
        # Red blood cells: anywhere in the lumen, fill x lumen area / cell area of them.
        n_rbc = int(v["fill"] * (2 * r * len(p) + np.pi * r * r) / (np.pi * 3.7**2))
        if n_rbc:
            j = rng.integers(len(p), size=n_rbc)
            rad = (r - 2.5) * np.sqrt(rng.uniform(size=n_rbc)) * (r > 2.5)
            a = rng.uniform(0, 2 * np.pi, n_rbc)
            xy.append(p[j] + rad[:, None] * np.stack([np.cos(a), np.sin(a)], 1))
            theta.append(rng.uniform(0, np.pi, n_rbc))
            ctype.append(np.full(n_rbc, _T["erythrocyte"]))
    if not xy:
        return {}
    xy, ctype, theta = np.concatenate(xy), np.concatenate(ctype), np.concatenate(theta)
    ok = (_depth(g, xy[:, 0], xy[:, 1]) > 2) & (xy >= 0).all(1) & (xy < g["size"]).all(1)
    m = _morph(rng, ctype, g, xy)
    m["theta"] = theta
    c = dict(xy=xy, type=ctype, **m)
    c = {k: v[ok] for k, v in c.items()}
    c["npy"] = np.zeros(ok.sum(), bool)
    return c


def _concat(a: dict, b: dict) -> dict:
    return {k: np.concatenate([a[k], b[k]]) for k in a} if b else a


# -------------------------------------------------------------------------------- expression


def _gene_table(rng: np.random.Generator, n_genes: int) -> tuple[list[str], dict]:
    """Gene names and, per gene: type weights (types x genes), layer profile (7 x genes),
    neuropil (7 x genes), NPY+ interneuron counts (genes)."""
    nine = [g for genes in NINE_GENES.values() for g in genes]
    markers = [g for g in _GENES if g not in nine]
    cell = [g for g in markers if _GENES[g][1] is None]
    layer = [g for g in markers if g not in cell]
    # Round-robin so that a small panel still keeps some of every group.
    rest = [x for t in itertools.zip_longest(layer, cell, _HOUSEKEEPING) for x in t if x]
    named = (nine + rest)[:n_genes]
    names = named + [f"GENE_{i:03d}" for i in range(n_genes - len(named))]
    n_t = len(TYPES)
    w = np.zeros((n_t, n_genes))
    lam = np.ones((len(LAYERS), n_genes))
    npil = np.zeros((len(LAYERS), n_genes))
    npy = np.zeros(n_genes)
    for j, gname in enumerate(named):
        if gname in _HOUSEKEEPING:
            w[:, j] = 1.5 * rng.lognormal(0, 0.3, n_t)
            w[_T["erythrocyte"], j] = 0
            npil[:, j] = 0.3
            continue
        types, prof, neuropil = _GENES[gname]
        for t, v in types.items():
            if t == "npy":
                npy[j] = v
            else:
                w[_NAT[t], j] = v
        if prof is not None:
            lam[:, j] = prof
        if neuropil is not None:
            npil[:, j] = neuropil
    filler = np.arange(len(named), n_genes)
    noise, weak = filler[: len(filler) // 2], filler[len(filler) // 2 :]
    w[:, noise] = 0.3  # pure noise: the same rate everywhere
    w[:, weak] = 0.3 * rng.lognormal(0, 0.8, (n_t, len(weak)))
    lam[:, weak] = rng.lognormal(0, 0.4, (len(LAYERS), len(weak)))
    w[_T["erythrocyte"], filler] = 0
    return names, dict(w=w, lam=lam, npil=npil, npy=npy)


def _expression(
    rng: np.random.Generator,
    g: dict,
    c: dict,
    spots: dict,
    table: dict,
    donor: dict,
) -> tuple[sparse.csr_matrix, dict]:
    _, _, soft = _layers(g, *c["xy"].T)
    t = c["type"]
    # Size factor: a typical neuron (library 100) holds w[t, g] counts of gene g.
    lib = _MORPH[t, 8] / 100 * (c["r"] / _MORPH[t, 0]) ** 2 * rng.lognormal(0, 0.25, len(t))
    mu_cell = lib[:, None] * table["w"][t] * (soft.T @ table["lam"])
    mu_cell += c["npy"][:, None] * table["npy"]
    # Spots: the cells under the disc, 15 % of those up to 10 µm beyond it (diffusion).
    sxy = np.stack([spots["x"], spots["y"]], 1)
    near = spatial.cKDTree(c["xy"]).query_ball_point(sxy, _SPOT_UM / 2 + 10)
    i = np.repeat(np.arange(len(sxy)), [len(k) for k in near])
    j = np.concatenate([np.asarray(k, int) for k in near]) if len(i) else np.zeros(0, int)
    dist = np.linalg.norm(c["xy"][j] - sxy[i], axis=1)
    under = dist <= _SPOT_UM / 2
    weights = sparse.csr_matrix((np.where(under, 1.0, 0.15), (i, j)), shape=(len(sxy), len(t)))
    mu = weights @ mu_cell
    d_spot, hard, soft_spot = _layers(g, sxy[:, 0], sxy[:, 1])
    covered = np.clip(d_spot / _SPOT_UM + 0.5, 0, 1)  # share of the disc over tissue
    mu += 60.0 * covered[:, None] * (soft_spot.T @ table["npil"])
    in_tissue = d_spot > 0
    ambient = mu[in_tissue].mean(0) if in_tissue.any() else np.zeros(mu.shape[1])
    mu += 0.01 * ambient  # ambient RNA everywhere, glass included
    quality = _noise(rng, (int(g["size"] / _STEP) + 2,) * 2, 250 / _STEP)
    size = donor["scale"] * np.exp(0.15 * _at(quality, _STEP, sxy[:, 1], sxy[:, 0]))
    size *= rng.lognormal(0, 0.2, len(sxy))
    damaged = in_tissue & (rng.uniform(size=len(sxy)) < 0.01)
    size[damaged] *= rng.uniform(0.02, 0.1, damaged.sum())
    mu *= size[:, None] * donor["gene"]
    counts = rng.poisson(mu * rng.gamma(4.0, 1 / 4.0, mu.shape))

    def count_of(mask: np.ndarray) -> np.ndarray:  # cells of `mask` under each spot's disc
        hit = sparse.csr_matrix(((under & mask[j]).astype(np.int32), (i, j)), shape=weights.shape)
        return np.asarray(hit.sum(1)).ravel().astype(np.int32)

    truth = dict(
        layer=np.where(in_tissue, hard, -1).astype(np.int8),
        n_cells=count_of(t != _T["erythrocyte"]),
        n_erythrocytes=count_of(t == _T["erythrocyte"]),
        n_plasma=count_of(t == _T["plasma"]),
        n_npy=count_of(c["npy"]),
        damaged=damaged,
    )
    return sparse.csr_matrix(counts.astype(np.int32)), truth


# --------------------------------------------------------------------------------- rendering


def _fields(rng: np.random.Generator, g: dict, raster: tuple) -> dict:
    """µm grids the renderer interpolates: depth, neuropil stain, white matter, fibres, vessels."""
    s = g["size"]
    n = int(np.ceil(s / _STEP)) + 2
    yy, xx = np.mgrid[:n, :n] * _STEP
    d, _, soft = _layers(g, xx.ravel(), yy.ravel())
    f = dict(depth=d.reshape(n, n))
    f["eos"] = (_NP_EOS @ soft).reshape(n, n)
    f["hem"] = (_NP_HEM @ soft).reshape(n, n)
    f["wm"] = soft[6].reshape(n, n)
    f["stain"] = 1 + 0.08 * _noise(rng, (n, n), 300 / _STEP)
    # White matter fibres: stripes along iso-depth lines (7 µm period), wavy and broken.
    m = 2 * n
    y4, x4 = np.mgrid[:m, :m] * (_STEP / 2)
    d4 = _depth(g, x4.ravel(), y4.ravel()).reshape(m, m)
    f["phase"] = 2 * np.pi * d4 / 7.0 + 2.0 * _noise(rng, (m, m), 20 / 4)
    f["contrast"] = np.clip(0.5 + 0.5 * _noise(rng, (m, m), 12 / 4), 0, 1)
    f["grain"] = _noise(rng, (int(s / 1.5) + 2,) * 2, 1.0)  # 1.5 µm step
    dist, _, radius = raster
    f["lumen"] = np.clip((radius - dist) / 2 + 0.5, 0, 1)
    f["wall"] = np.clip((radius + 3 - dist) / 2 + 0.5, 0, 1) - f["lumen"]
    return {k: v.astype(np.float32) for k, v in f.items()}


def _render_strip(
    f: dict,
    cp: dict,
    px: float,
    y0: int,
    h: int,
    w: int,
    tex: np.ndarray,
    stain: dict,
    rng: np.random.Generator,
) -> np.ndarray:
    ys, xs = (np.arange(y0, y0 + h) + 0.5) * px, (np.arange(w) + 0.5) * px
    at = lambda k, step=_STEP: _grid_at(f[k], step, ys, xs)  # noqa: E731

    def present(k: str, step: float) -> bool:  # skip fields that are zero along this strip
        i0, i1 = int(ys[0] / step), int(ys[-1] / step) + 2
        return bool(f[k][i0:i1].any())

    d = at("depth")
    tissue = np.clip(d / 1.5 + 0.5, 0, 1)
    grain = at("grain", 1.5)
    eos = at("eos") + 0.03 * grain
    hem = at("hem") + 0.01 * grain
    if stain["pia"]:  # the glia limitans: a thin eosinophilic line along the pia
        eos += 0.3 * np.exp(-np.maximum(d, 0) / 4.0)
    if present("wm", _STEP):
        stripes = (0.5 + 0.5 * np.sin(at("phase", _STEP / 2) + 0.8 * grain)) ** 3
        eos += at("wm") * (0.08 + 0.2 * at("contrast", _STEP / 2) * stripes)
    if present("wall", 2.0):
        lumen, wall = at("lumen", 2.0), at("wall", 2.0)
        eos = eos * (1 - lumen - wall) + 0.03 * lumen + 0.45 * wall
        hem = hem * (1 - lumen - wall) + 0.04 * wall
    scale = tissue * at("stain")
    cell_h, cell_e = np.zeros(h * w, np.float32), np.zeros(h * w, np.float32)
    _stamp_cells(cp, px, y0, h, w, tex, cell_h, cell_e)
    hem = scale * hem + cell_h.reshape(h, w)
    eos = scale * eos + 0.8 * (1 - np.exp(-cell_e.reshape(h, w) / 0.8))
    od = hem[..., None] * stain["h"] + eos[..., None] * stain["e"]
    rgb = stain["glass"] * np.exp(-od) + 1.5 * rng.standard_normal((h, w, 1), np.float32)
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def _write_wsi(
    path: pathlib.Path,
    g: dict,
    raster: tuple,
    c: dict,
    donor: dict,
    px: float,
    rng: np.random.Generator,
    uid: str,
) -> None:
    side = round(g["size"] / px)
    n_strips = -(-side // _STRIP)
    strip_seeds = rng.integers(2**63, size=n_strips)  # per strip, so strips are independent
    tex = _chromatin(rng, px)
    f = _fields(rng, g, raster)
    t = c["type"]
    mp = _MORPH[t]
    cp = _stamp_params(
        c["xy"],
        c["a"],
        c["b"],
        c["theta"],
        c["hem"],
        c["ves"],
        c["cyto"],
        c["c_eos"],
        mp[:, 6],
        mp[:, 7],
        c["nucleolus"],
        px,
    )
    stain = dict(
        h=(_STAIN_H * donor["hem"]).astype(np.float32),
        e=(donor["eos_vec"] * donor["eos"]).astype(np.float32),
        glass=donor["glass"].astype(np.float32),
        pia=g["has_pia"],
    )

    def render(y0: int, h: int) -> np.ndarray:
        rng_strip = np.random.default_rng(strip_seeds[y0 // _STRIP])
        return _render_strip(f, cp, px, y0, h, side, tex, stain, rng_strip)

    # zlib level 1: a quarter of the time of the default 6, for files ~6 % larger.
    _write_pyramid(path, (side, side), px, render, zlib_level=1, uuid=uid)


# ------------------------------------------------------------------------------------ writer


def _donor(rng: np.random.Generator, n_genes: int) -> dict:
    """What the slices of one donor share: expression scale and staining."""
    e = _STAIN_E * rng.lognormal(0, 0.06, 3)
    return dict(
        scale=rng.lognormal(0, 0.25),
        gene=rng.lognormal(0, 0.15, n_genes),
        hem=rng.lognormal(0, 0.10),
        eos=rng.lognormal(0, 0.12),
        eos_vec=e / np.linalg.norm(e) * np.linalg.norm(_STAIN_E),
        glass=_GLASS + rng.uniform(-3, 3, 3),
    )


def _write_st(
    path: pathlib.Path,
    spots: dict,
    X: sparse.csr_matrix,
    genes: list[str],
    truth: dict,
    g: dict,
    px: float,
    params: dict,
) -> None:
    import anndata
    import pandas as pd

    in_tissue = (_depth(g, spots["x"], spots["y"]) > 0).astype(np.int64)
    col_px, row_px = spots["x"] / px, spots["y"] / px
    obs = pd.DataFrame(
        {
            "in_tissue": in_tissue,
            "array_row": spots["row"].astype(np.int64),
            "array_col": spots["col"].astype(np.int64),
            "pxl_col_in_fullres": col_px,
            "pxl_row_in_fullres": row_px,
        },
        # object dtype: pandas 3 would make Arrow strings, which anndata refuses to write
        index=pd.Index(spots["barcode"], dtype=object),
    )
    var = pd.DataFrame(index=pd.Index(genes, dtype=object))
    ad = anndata.AnnData(
        X=X,
        obs=obs,
        var=var,
        obsm={"spatial": np.stack([col_px, row_px], 1).astype(np.float64)},
        uns=dict(
            synthetic_params=params,
            synthetic_truth={k: np.asarray(v) for k, v in truth.items()},
            layer_names=list(LAYERS),
        ),
    )
    ad.write_h5ad(path, compression="gzip")


def _check_params(out: pathlib.Path, sample_ids: list[str], params: dict) -> None:
    # Refuse to reuse files generated with other arguments rather than mix or return them.
    import h5py
    from anndata.io import read_elem

    for sid in sample_ids:
        meta, st = out / "metadata" / f"{sid}.json", out / "st" / f"{sid}.h5ad"
        if meta.exists():
            old = json.loads(meta.read_text()).get("synthetic_params", {})
            where = meta
        elif st.exists():
            with h5py.File(st, "r") as fh:
                old = read_elem(fh["uns/synthetic_params"]) if "uns/synthetic_params" in fh else {}
            where = st
        else:
            continue
        if any(k not in old or float(old[k]) != float(v) for k, v in params.items()):
            raise ValueError(f"{where} was written with {old}, not {params}; use another out_dir")


def write_synthetic_visium(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    n_slices: int = 6,
    slices_per_donor: int = 2,
    size_um: float = 2600.0,
    pixel_size_um: float = 0.725,
    n_genes: int = 120,
) -> SyntheticVisium:
    """Write DLPFC-like Visium slices SYN01.. in HEST-1k's layout under `out_dir` (files already
    there are kept, after checking they were made with these arguments)."""
    n_nine = sum(len(v) for v in NINE_GENES.values())
    if min(n_slices, slices_per_donor) < 1 or min(size_um, pixel_size_um) <= 0:
        raise ValueError("n_slices, slices_per_donor, size_um and pixel_size_um must be positive")
    if size_um < 4 * _PITCH_UM:
        raise ValueError(f"size_um must be at least {4 * _PITCH_UM} (a few spots across)")
    if n_genes < n_nine:
        raise ValueError(f"n_genes must be at least {n_nine} (ST-Align's nine genes)")
    out = pathlib.Path(out_dir)
    ids = [f"SYN{i + 1:02d}" for i in range(n_slices)]
    result = SyntheticVisium(
        hest_dir=out, sample_ids=tuple(ids), labels=out / "barcode_level_layer_map.tsv"
    )
    params = dict(
        seed=seed,
        n_slices=n_slices,
        slices_per_donor=slices_per_donor,
        size_um=size_um,
        pixel_size_um=pixel_size_um,
        n_genes=n_genes,
        version=1,
    )
    _check_params(out, ids, params)
    paths = {
        sid: (
            out / "st" / f"{sid}.h5ad",
            out / "wsis" / f"{sid}.tif",
            out / "metadata" / f"{sid}.json",
        )
        for sid in ids
    }
    if result.labels.exists() and all(p.exists() for ps in paths.values() for p in ps):
        return result
    # Independent streams per donor and per slice (a slice does not depend on n_slices).
    root = np.random.SeedSequence(seed)
    genes, table = _gene_table(np.random.default_rng(root.spawn(1)[0]), n_genes)
    label_rows = []
    for k, sid in enumerate(ids):
        donor_k = k // slices_per_donor
        donor = _donor(np.random.default_rng([seed, 1, donor_k]), n_genes)
        rng_geo, rng_cells, rng_expr, rng_pix = np.random.default_rng([seed, 2, k]).spawn(4)
        g = _geometry(rng_geo, size_um, has_pia=donor_k % 3 != 1)
        spots = _spots(rng_geo, size_um)
        vessels = _vessels(rng_geo, g)
        st, wsi, meta = paths[sid]
        d, hard, _ = _layers(g, spots["x"], spots["y"])
        label_rows += [
            f"{b}\t{sid}\t{LAYERS[h]}\n" for b, h, t in zip(spots["barcode"], hard, d > 0) if t
        ]
        if st.exists() and wsi.exists() and meta.exists():
            continue
        raster = _vessel_raster(g, vessels)
        c = _cells(rng_cells, g, vessels, raster)
        if not st.exists():
            X, truth = _expression(rng_expr, g, c, spots, table, donor)
            with atomic.atomic_path(st) as tmp:
                _write_st(tmp, spots, X, genes, truth, g, pixel_size_um, params)
        if not wsi.exists():
            with atomic.atomic_path(wsi) as tmp:
                # A UUID from the arguments, not a fresh one: the same arguments, the same bytes.
                name = json.dumps(dict(params, sample_id=sid), sort_keys=True)
                uid = str(uuid.uuid5(uuid.NAMESPACE_URL, "sigmma_jax.synthetic_visium/" + name))
                _write_wsi(tmp, g, raster, c, donor, pixel_size_um, rng_pix, uid)
        if not meta.exists():
            side = round(size_um / pixel_size_um)
            atomic.write_json(
                meta,
                dict(
                    pixel_size_um_estimated=pixel_size_um,
                    pixel_size_um_embedded=pixel_size_um,
                    spot_diameter=_SPOT_UM,
                    inter_spot_dist=_PITCH_UM,
                    st_technology="Visium",
                    species="Homo sapiens",
                    patient=f"donor{donor_k + 1}",
                    dataset_title="synthetic DLPFC",
                    fullres_px_width=side,
                    fullres_px_height=side,
                    spots_under_tissue=int((d > 0).sum()),
                    synthetic_params=params,
                ),
            )
    if not result.labels.exists():
        atomic.write_text(result.labels, "".join(label_rows))
    return result
