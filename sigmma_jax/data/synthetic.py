"""Synthetic H&E + Xenium-like slide in the "generic" input format (docs/method.md, "Data formats").

``write_synthetic_slide(out_dir, seed=0)`` writes ``slide.ome.tif`` (pyramidal BigTIFF OME, RGB,
256 px zlib tiles, sub-resolutions as SubIFDs) and ``cells.h5ad`` (raw counts, centroids in
level-0 pixels as (x, y), ground-truth ``cell_type`` / ``domain``).  It is meant as a *fair* test
of an H&E <-> expression model: some expression is visible in the pixels (cell type, partly),
some only through context at 60-250 µm, some not at all.  Model, all lengths in µm (a seed gives
the same tissue at any ``pixel_size_um``; only the rendering changes):

* Layout: smooth Gaussian random fields.  Tissue field (300 µm scale + 40 µm roughness, lower near
  the slide border): its lowest 15 % is empty glass.  Tumour field (110 µm + 20 µm): the top 38 %
  of tissue is tumour nests.  Immune aggregates (tertiary-lymphoid-like): Gaussian blobs, radius
  45-90 µm, centred in stroma, ~2 per mm^2.  The rest is stroma.  ``uns["domain_grid"]`` (8 µm
  step, codes index ``uns["domain_categories"]``) keeps the map.
* Cells: jittered grid thinned per domain (1 cell per ~85 µm^2 in aggregates, 130 in nests, 200
  in stroma, times ``cell_density``), then greedy removal of cells whose nuclei would overlap.
  Type mixture per domain; the T-cell share in nests follows a smooth "inflamed" field (hot and
  cold nests); stroma has more lymphocytes near aggregates.
* Morphology couples to type only partly: per type nucleus size, elongation, hematoxylin density,
  vesicular chromatin, cytoplasm rim (eosin/hematoxylin, offset for plasma cells), all with
  per-cell log-normal noise and a slide-wide stain-intensity field.  T and B cells share their
  morphology; tumour nuclei are pleomorphic (pale vesicular to hyperchromatic).  Fibroblasts and
  endothelium lie along the collagen fibres (warped stripes).  Colour is Beer-Lambert:
  RGB = glass * exp(-(OD_H * h + OD_E * e)) with standard H and E optical-density vectors.
* Expression: counts ~ Poisson(mu * Gamma(3)/3), i.e. negative binomial.  mu = library size
  (per type, grows with nucleus area, log-normal noise, smooth RNA-quality field) times a type
  programme (markers, shared genes, housekeeping, filler genes GENE_### that are pure noise or
  weakly type specific) plus programmes set by context or hidden state: interferon (CXCL9,
  CXCL10, STAT1, ...) in tumour cells and macrophages, rising with the T cells within 80 µm; CAF
  (FAP, POSTN, ACTA2, ...) in fibroblasts with tumour cells within 60 µm; hypoxia (VEGFA, CA9,
  ...) in tumour cells deeper than 40 µm inside a nest; TLS chemokines in aggregates; cycling
  (MKI67, TOP2A, CCNB1) at random, invisible.  10 % of each cell's mu comes from its 4 nearest
  neighbours (segmentation bleed).  Six control probes (NegControl*, BLANK*) at ~0.02 per cell.

The Visium demo (synthetic_visium.py) reuses the noise fields, the overlap removal, the cell
stamping (`_stamp_params`, `_stamp_cells`) and the pyramid writer (`write_pyramid`), which the
mosaic of the embedding benchmark (tools/bench/embed.py) reuses too.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import os
import pathlib
from typing import Callable, Iterator

import numpy as np
from scipy import ndimage, sparse, spatial
from scipy.special import expit as _sigmoid

from sigmma_jax import atomic

TYPES = ("tumour", "fibroblast", "T_cell", "B_cell", "plasma", "macrophage", "endothelial")
DOMAINS = ("background", "stroma", "tumour", "immune_aggregate")
# Per type: nucleus radius µm (geometric mean of semi-axes), elongation, hematoxylin OD,
# vesicular (pale centre, dark rim), cytoplasm rim µm, cytoplasm eosin / hematoxylin OD,
# cytoplasm offset µm, mean library size.
_MORPH = np.array(
    [
        # r    elong hem  vesic cyto  c_eos c_hem off  lib
        [5.0, 1.25, 0.80, 1.0, 3.5, 0.25, 0.06, 0.0, 170.0],  # tumour
        [3.3, 3.50, 1.00, 0.2, 0.8, 0.30, 0.02, 0.0, 80.0],  # fibroblast
        [3.4, 1.10, 1.25, 0.0, 0.6, 0.20, 0.05, 0.0, 60.0],  # T cell
        [3.5, 1.10, 1.25, 0.0, 0.6, 0.20, 0.05, 0.0, 65.0],  # B cell
        [3.5, 1.20, 1.15, 0.3, 2.8, 0.30, 0.25, 2.0, 120.0],  # plasma
        [4.3, 1.35, 0.85, 0.5, 4.0, 0.30, 0.10, 0.0, 130.0],  # macrophage
        [3.0, 2.80, 0.95, 0.2, 1.0, 0.25, 0.03, 0.0, 80.0],  # endothelial
    ]
)
# Type mixture per domain (stroma, tumour, aggregate); tumour T share is set per cell below.
_MIX = np.array(
    [
        [0.03, 0.50, 0.10, 0.04, 0.07, 0.12, 0.14],
        [0.80, 0.03, 0.00, 0.01, 0.01, 0.07, 0.02],
        [0.00, 0.04, 0.35, 0.50, 0.02, 0.05, 0.04],
    ]
)
_AREA_PER_CELL = np.array([200.0, 130.0, 85.0])  # µm^2, per domain
_MARKERS = {
    "tumour": "EPCAM KRT8 KRT18 KRT19 CDH1 KRT7 MUC1 CEACAM6 ERBB2 ELF3",
    "fibroblast": "COL1A1 DCN LUM COL1A2 COL3A1 PDGFRA SFRP2 PDGFRB",
    "T_cell": "CD3E CD2 TRAC CD3D CD8A CD4 IL7R GZMK",
    "B_cell": "MS4A1 CD79A CD19 CD22 BANK1 PAX5",
    "plasma": "MZB1 JCHAIN XBP1 SDC1 CD79A",
    "macrophage": "CD68 LYZ CD163 CD14 C1QA MRC1 FCGR3A",
    "endothelial": "PECAM1 VWF CDH5 KDR CLDN5 PLVAP",
}
_SHARED = {
    "PTPRC": dict(T_cell=1.5, B_cell=1.5, macrophage=1.0, plasma=0.5),
    "HLA-DRA": dict(B_cell=1.5, macrophage=2.0, tumour=0.2),
    "CD74": dict(B_cell=1.5, macrophage=1.5, tumour=0.4, endothelial=0.3),
    "VIM": dict(fibroblast=2.0, endothelial=1.5, macrophage=1.0, T_cell=0.5),
    "SPARC": dict(fibroblast=1.5, endothelial=1.0, tumour=0.2),
    "CD52": dict(T_cell=1.0, B_cell=1.0, plasma=0.3),
}
_HOUSEKEEPING = "ACTB GAPDH B2M RPLP0 EEF1A1"
_PROGRAMMES = {  # programme -> (genes, weight per type)
    "ifn": ("CXCL9 CXCL10 STAT1 GBP1 IDO1 CD274", dict(tumour=2.0, macrophage=2.0)),
    "caf": ("FAP POSTN ACTA2 COL11A1 MMP11 CTHRC1", dict(fibroblast=1.2)),
    "hypoxia": ("VEGFA CA9 SLC2A1 ADM NDRG1", dict(tumour=1.0)),
    "tls": ("CXCL13 CCL19 CCL21 LAMP3", dict(T_cell=0.8, fibroblast=1.5, endothelial=1.5)),
    "cycling": ("MKI67 TOP2A CCNB1", dict(tumour=1.0, B_cell=1.0, T_cell=1.0)),
}
CONTROLS = (
    "NegControlProbe_00",
    "NegControlProbe_01",
    "NegControlCodeword_0",
    "NegControlCodeword_1",
    "BLANK_0001",
    "BLANK_0002",
)
_GLASS = np.array([242.0, 240.0, 245.0], np.float32)
# Optical density per unit stain: Ruifrok & Johnston's hematoxylin, an eosin that is a bit
# pinker than theirs (closer to scanned slides).
_STAIN_H = np.array([0.644, 0.717, 0.267], np.float32)
_STAIN_E = np.array([0.10, 0.86, 0.50], np.float32)
_STEP = 8.0  # µm, grid of the layout fields
_STRIP = 256  # rows rendered at a time = one row of tiles


@dataclasses.dataclass(frozen=True)
class SyntheticSlide:
    wsi: pathlib.Path  # pyramidal OME-TIFF
    cells: pathlib.Path  # .h5ad


def _noise(
    rng: np.random.Generator, shape: tuple[int, int], sigma: float, mode: str = "reflect"
) -> np.ndarray:
    z = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode=mode)
    return (z - z.mean()) / z.std()


def _at(field: np.ndarray, step: float, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Bilinear lookup at scattered µm positions; field[i, j] sits at (i*step, j*step)."""
    fy, fx = y / step, x / step
    i = np.clip(fy.astype(int), 0, field.shape[0] - 2)
    j = np.clip(fx.astype(int), 0, field.shape[1] - 2)
    wy, wx = fy - i, fx - j
    top = field[i, j] * (1 - wx) + field[i, j + 1] * wx
    return top * (1 - wy) + (field[i + 1, j] * (1 - wx) + field[i + 1, j + 1] * wx) * wy


def _grid_at(field: np.ndarray, step: float, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Separable bilinear lookup on the (ys x xs) pixel grid of a strip (cheap per pixel)."""
    fy, fx = ys / step, xs / step
    i = np.clip(fy.astype(int), 0, field.shape[0] - 2)
    j = np.clip(fx.astype(int), 0, field.shape[1] - 2)
    wy, wx = (fy - i).astype(np.float32)[:, None], (fx - j).astype(np.float32)
    rows = field[i] * (1 - wy) + field[i + 1] * wy
    return rows[:, j] * (1 - wx) + rows[:, j + 1] * wx


def _layout(rng: np.random.Generator, size_um: float) -> dict:
    """Smooth random fields (µm grids) that define domains, staining and collagen fibres."""
    n = int(np.ceil(size_um / _STEP)) + 2
    yy, xx = np.mgrid[:n, :n] * _STEP
    edge = np.minimum(np.minimum(yy, size_um - yy), np.minimum(xx, size_um - xx))
    border = np.clip(1 - edge / (0.18 * size_um), 0, 1) ** 2
    tissue = _noise(rng, (n, n), 300 / _STEP) + 0.35 * _noise(rng, (n, n), 40 / _STEP)
    tissue -= 1.5 * border
    tumour = _noise(rng, (n, n), 110 / _STEP) + 0.25 * _noise(rng, (n, n), 20 / _STEP)
    f = dict(tissue=tissue, tumour=tumour, thr_tissue=float(np.quantile(tissue, 0.15)))
    f["thr_tumour"] = float(np.quantile(tumour[tissue > f["thr_tissue"]], 0.62))
    # Aggregates: blobs centred in tissue stroma, rough-edged.
    ok = np.flatnonzero(
        (tissue > f["thr_tissue"] + 0.2).ravel() & (tumour < f["thr_tumour"] - 0.3).ravel()
    )
    n_tls = max(1, rng.poisson(2.0 * size_um**2 / 1e6)) if ok.size else 0
    centres = rng.choice(ok, size=min(n_tls, ok.size), replace=False)
    tls = 0.15 * _noise(rng, (n, n), 20 / _STEP)
    for c, r in zip(centres, rng.uniform(45, 90, centres.size)):
        tls += np.exp(-((yy - yy.flat[c]) ** 2 + (xx - xx.flat[c]) ** 2) / (2 * r * r))
    f["tls"] = tls
    f["inflamed"] = 0.5 + 0.5 * np.tanh(_noise(rng, (n, n), 200 / _STEP))
    f["stain"] = 1 + 0.1 * _noise(rng, (n, n), 300 / _STEP)  # section thickness / stain batch
    f["quality"] = 0.15 * _noise(rng, (n, n), 250 / _STEP)  # RNA quality, log scale
    # Collagen: two families of warped stripes (~9 µm period), blended by a smooth weight.
    m = 2 * n
    yy4, xx4 = np.mgrid[:m, :m] * (_STEP / 2)
    phases = []
    for ang in rng.uniform(0, np.pi, 2):
        k = 2 * np.pi / 9.0
        warp = 40 * _noise(rng, (m, m), 60 / 4) + 3 * _noise(rng, (m, m), 15 / 4)
        phases.append(k * (xx4 * np.cos(ang) + yy4 * np.sin(ang)) + warp)
    f["phase"] = np.stack(phases)
    f["blend"] = _sigmoid(3 * _noise(rng, (m, m), 80 / 4))
    f["contrast"] = np.clip(0.5 + 0.5 * _noise(rng, (m, m), 12 / 4), 0, 1)  # broken bundles
    f["grain"] = _noise(rng, (int(size_um / 1.5) + 2,) * 2, 1.0)  # 1.5 µm step
    f = {k: v.astype(np.float32) if isinstance(v, np.ndarray) else v for k, v in f.items()}
    f["domain"] = _domain(f, tissue, tumour, tls)
    return f


def _domain(f: dict, tissue: np.ndarray, tumour: np.ndarray, tls: np.ndarray) -> np.ndarray:
    d = np.where(tumour > f["thr_tumour"], 2, np.where(tls > 0.5, 3, 1))
    return np.where(tissue > f["thr_tissue"], d, 0).astype(np.int8)


def _cells(rng: np.random.Generator, f: dict, size_um: float, density: float) -> dict:
    """Place and type cells, and draw their morphology; positions in µm (x, y)."""
    s = np.sqrt(_AREA_PER_CELL.min() / density)
    g = np.arange(int(size_um / s)) * s
    xy = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    xy = xy + s * (0.5 + rng.uniform(-0.4, 0.4, xy.shape))
    y, x = xy[:, 1], xy[:, 0]
    dom = _domain(f, *(_at(f[k], _STEP, y, x) for k in ("tissue", "tumour", "tls")))
    keep_p = np.where(dom > 0, _AREA_PER_CELL.min() / _AREA_PER_CELL[np.maximum(dom - 1, 0)], 0.0)
    keep = rng.uniform(size=dom.size) < keep_p
    xy, dom = xy[keep], dom[keep]
    y, x = xy[:, 1], xy[:, 0]
    mix = _MIX[dom - 1].copy()
    hot = _at(f["inflamed"], _STEP, y, x)
    mix[:, 2] += np.where(dom == 2, 0.01 + 0.3 * hot**2, 0)  # hot vs cold nests
    near_tls = np.clip(_at(f["tls"], _STEP, y, x), 0, 1)
    mix[:, 2:5] *= np.where(dom == 1, 1 + 3 * near_tls, 1)[:, None]
    cum = np.cumsum(mix / mix.sum(1, keepdims=True), 1)
    ctype = (rng.uniform(size=len(xy))[:, None] > cum).sum(1)
    mp = _MORPH[ctype]
    n = len(xy)
    r = mp[:, 0] * rng.lognormal(0, 0.12, n)
    elong = 1 + (mp[:, 1] - 1) * rng.lognormal(0, 0.3, n)
    a, b = r * np.sqrt(elong), r / np.sqrt(elong)
    # Fibroblasts and endothelium lie along the collagen: perpendicular to the phase gradient.
    g = [[_at(d, _STEP / 2, y, x) for d in np.gradient(ph, _STEP / 2)] for ph in f["phase"]]
    first = _at(f["blend"], _STEP / 2, y, x) > 0.5  # the dominant fibre family
    theta = np.where(first, np.arctan2(g[0][1], -g[0][0]), np.arctan2(g[1][1], -g[1][0]))
    spindle = np.isin(ctype, (1, 6))
    theta = np.where(spindle, theta + rng.normal(0, 0.3, n), rng.uniform(0, np.pi, n))
    keep = _no_overlap(xy, a, b)
    # Tumour nuclei are pleomorphic: wider darkness spread, vesicular to hyperchromatic.
    hem = mp[:, 2] * np.exp(rng.normal(0, np.where(ctype == 0, 0.35, 0.18)))
    hem *= _at(f["stain"], _STEP, y, x)
    c = dict(
        xy=xy,
        domain=dom,
        type=ctype,
        r=r,
        a=a,
        b=b,
        theta=theta,
        hem=hem,
        quality=_at(f["quality"], _STEP, y, x),
        tls=near_tls,
        nucleolus=rng.uniform(-0.3, 0.3, (n, 2)),
        cyto=mp[:, 4] * rng.lognormal(0, 0.2, n),
        ves=mp[:, 3] * rng.uniform(0.3, 1.0, n),
    )
    return {k: v[keep] for k, v in c.items()}


def _no_overlap(xy: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Greedy in index order: a cell is dropped if its nucleus (semi-axes a, b) would overlap a
    kept one's.  Shared with the Visium demo."""
    pairs = spatial.cKDTree(xy).query_pairs(2 * a.max(), output_type="ndarray")
    dist = np.linalg.norm(xy[pairs[:, 0]] - xy[pairs[:, 1]], axis=1)
    pairs = pairs[dist < 0.4 * (a + b)[pairs].sum(1)]
    keep = np.ones(len(xy), bool)
    for i, j in pairs[np.argsort(pairs[:, 1], kind="stable")].tolist():
        keep[j] &= not keep[i]
    return keep


def _genes(rng: np.random.Generator, n_genes: int) -> tuple[list[str], np.ndarray, dict]:
    """Gene names, base weights (type x gene) and context programmes (type x gene each)."""
    groups = [v.split() for v in _MARKERS.values()] + [list(_SHARED), _HOUSEKEEPING.split()]
    groups += [v[0].split() for v in _PROGRAMMES.values()]
    # Round-robin so that a small panel still keeps some of every group.
    named = list(dict.fromkeys(g for tier in itertools.zip_longest(*groups) for g in tier if g))
    names = named[:n_genes] + [f"GENE_{i:03d}" for i in range(max(0, n_genes - len(named)))]
    col = {g: i for i, g in enumerate(names)}
    base = np.full((len(TYPES), n_genes), 0.03)
    for t, genes in enumerate(_MARKERS.values()):
        for g in genes.split():
            if g in col:
                base[t, col[g]] = rng.lognormal(np.log(2.0), 0.5)
    for g, w in _SHARED.items():
        for t, v in w.items():
            if g in col:
                base[TYPES.index(t), col[g]] = v * rng.lognormal(0, 0.2)
    for g in _HOUSEKEEPING.split():
        if g in col:
            base[:, col[g]] = 1.5 * rng.lognormal(0, 0.3, len(TYPES))
    filler = np.arange(len(named), n_genes)
    noise, weak = filler[: len(filler) // 2], filler[len(filler) // 2 :]
    base[:, noise] = 0.15  # pure noise: same rate in every type
    base[:, weak] = 0.1 * rng.lognormal(0, 1.0, (len(TYPES), len(weak)))
    progs = {}
    for p, (genes, w) in _PROGRAMMES.items():
        m = np.zeros_like(base)
        for t, v in w.items():
            for g in genes.split():
                if g in col:
                    m[TYPES.index(t), col[g]] = v * rng.lognormal(np.log(1.5), 0.3)
        progs[p] = m
    return names, base, progs


def _expression(rng: np.random.Generator, f: dict, c: dict, n_genes: int) -> tuple:
    names, base, progs = _genes(rng, n_genes)
    xy, t = c["xy"], c["type"]
    n = len(xy)

    def count_within(mask: np.ndarray, radius: float) -> np.ndarray:
        if not mask.any():
            return np.zeros(n)
        k = spatial.cKDTree(xy[mask]).query_ball_point(xy, radius, return_length=True)
        return k - mask  # a cell is not its own neighbour

    n_t, n_tum = count_within(t == 2, 80.0), count_within(t == 0, 60.0)
    nest = f["domain"] == 2
    depth = ndimage.distance_transform_edt(nest) * _STEP
    score = dict(
        ifn=n_t / (n_t + 10.0),
        caf=n_tum / (n_tum + 5.0),
        hypoxia=np.clip((_at(depth, _STEP, xy[:, 1], xy[:, 0]) - 40) / 160, 0, 1),
        tls=np.clip((c["tls"] - 0.3) / 0.4, 0, 1),
        cycling=(
            rng.uniform(size=n)
            < np.array([0.3, 0.02, 0.05, 0.15, 0, 0.02, 0.02])[t] * np.where(c["domain"] == 3, 2, 1)
        ).astype(float),
    )
    w = base[t].copy()
    for p, m in progs.items():
        w += score[p][:, None] * m[t]
    lib = _MORPH[t, 8] * (c["r"] / _MORPH[t, 0]) ** 2  # bigger nucleus, more transcripts
    lib = lib * rng.lognormal(0, 0.3, n) * np.exp(c["quality"])
    mu = lib[:, None] * w / base.sum(1)[t][:, None]
    if n > 4:  # segmentation bleed from the 4 nearest neighbours
        _, nb = spatial.cKDTree(xy).query(xy, 5)
        mu = 0.9 * mu + 0.025 * sum(mu[nb[:, k]] for k in range(1, 5))
    counts = rng.poisson(mu * rng.gamma(3.0, 1 / 3.0, mu.shape))
    ctrl = rng.poisson(0.02, (n, len(CONTROLS)))
    X = sparse.csr_matrix(np.hstack([counts, ctrl]).astype(np.int32))
    return X, names + list(CONTROLS), score


def _write_cells(
    path: pathlib.Path,
    c: dict,
    X: sparse.csr_matrix,
    genes: list[str],
    f: dict,
    px: float,
    seed: int,
    params: dict,
) -> None:
    import anndata
    import pandas as pd

    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical.from_codes(c["type"], TYPES),
            "domain": pd.Categorical.from_codes(c["domain"] - 1, DOMAINS[1:]),
        },
        # object dtype: pandas 3 would make Arrow strings, which anndata refuses to write
        index=pd.Index([f"cell_{i:06d}" for i in range(len(c["xy"]))], dtype=object),
    )
    var = pd.DataFrame(
        {
            "feature_type": pd.Series(
                ["control" if g in CONTROLS else "gene" for g in genes],
                dtype=object,
                index=pd.Index(genes, dtype=object),
            )
        },
        index=pd.Index(genes, dtype=object),
    )
    ad = anndata.AnnData(
        X=X,
        obs=obs,
        var=var,
        obsm={"spatial": c["xy"] / px},
        uns=dict(
            pixel_size_um=px,
            seed=seed,
            synthetic_params=params,
            domain_categories=list(DOMAINS),
            domain_grid=f["domain"],
            domain_grid_step_um=_STEP,
        ),
    )
    ad.write_h5ad(path, compression="gzip")


def _chromatin(rng: np.random.Generator, px: float) -> np.ndarray:
    """A periodic blotchy texture that every nucleus samples at its own position."""
    return (1 + 0.25 * _noise(rng, (128, 128), 0.5 / px, mode="wrap")).astype(np.float32)


def _cell_pixels(c: dict, px: float) -> dict:
    """Per-cell rendering parameters in level-0 pixels, from the type table `_MORPH`."""
    mp = _MORPH[c["type"]]
    return _stamp_params(
        c["xy"],
        c["a"],
        c["b"],
        c["theta"],
        c["hem"],
        c["ves"],
        c["cyto"],
        mp[:, 5],
        mp[:, 6],
        mp[:, 7],
        c["nucleolus"],
        px,
    )


def _stamp_params(
    xy: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    theta: np.ndarray,
    hem: np.ndarray,
    ves: np.ndarray,
    cyto: np.ndarray,
    c_eos: np.ndarray,
    c_hem: np.ndarray,
    off: np.ndarray,
    nucleolus: np.ndarray,
    px: float,
) -> dict:
    """What `_stamp_cells` draws, per cell, in level-0 pixels (float32 so stamps stay float32).

    µm in: centre `xy` (x, y), nucleus semi-axes `a` >= `b` along angle `theta`, hematoxylin OD
    `hem`, vesicular chromatin `ves` (> 0.6: a nucleolus at `nucleolus` (u, v) in semi-axis
    units), cytoplasm rim `cyto` with eosin / hematoxylin OD `c_eos` / `c_hem`, shifted by `off`
    along the long axis.  Shared with the Visium demo (synthetic_visium.py)."""
    p = dict(
        cy=xy[:, 1] / px,
        cx=xy[:, 0] / px,
        a=a / px,
        b=b / px,
        cos=np.cos(theta),
        sin=np.sin(theta),
        hem=hem,
        ves=ves,
        cyto=cyto / px,
        c_eos=c_eos,
        c_hem=c_hem,
        off=off / px,
        nu=nucleolus[:, 0] * a / px,
        nv=nucleolus[:, 1] * b / px,
    )
    p = {k: np.asarray(v).astype(np.float32) for k, v in p.items()}
    # Half box size, rounded up to a multiple of 4 so that a few batches cover all cells.
    p["box"] = 4 * np.ceil((p["a"] + p["cyto"] + p["off"] + 4) / 4).astype(int)
    return p


def _stamp_cells(
    p: dict,
    px: float,
    y0: int,
    h: int,
    w: int,
    tex: np.ndarray,
    acc_h: np.ndarray,
    acc_e: np.ndarray,
) -> None:
    """Add the H and E optical density of every cell touching rows [y0, y0+h) (batched by box)."""
    touch = (p["cy"] + p["box"] > y0) & (p["cy"] - p["box"] < y0 + h)
    for hb in np.unique(p["box"][touch]):
        i = np.flatnonzero(touch & (p["box"] == hb))
        q = {k: v[i][:, None, None] for k, v in p.items()}
        o = np.arange(-hb, hb + 1)
        iy, ix = np.floor(p["cy"][i]), np.floor(p["cx"][i])
        rows, cols = iy.astype(int)[:, None] + o, ix.astype(int)[:, None] + o
        o = o.astype(np.float32) + np.float32(0.5)
        dy = (o - (p["cy"][i] - iy)[:, None])[:, :, None]
        dx = (o - (p["cx"][i] - ix)[:, None])[:, None, :]
        u, v = dx * q["cos"] + dy * q["sin"], dy * q["cos"] - dx * q["sin"]
        a, b = q["a"], q["b"]
        dn = np.sqrt((u / a) ** 2 + (v / b) ** 2)
        nuc = np.clip((1 - dn) * b + 0.5, 0, 1)  # ~1 px anti-aliased edge
        ves = q["ves"]
        prof = (1 - 0.5 * ves) + 0.9 * ves * np.minimum(dn, 1) ** 6  # pale centre, dark rim
        chrom = tex[(rows % 128)[:, :, None], (cols % 128)[:, None, :]]
        prof = prof * chrom
        if (ves > 0.6).any():  # nucleolus
            prof += (ves > 0.6) * np.exp(
                -((u - q["nu"]) ** 2 + (v - q["nv"]) ** 2) / np.float32(2 * (0.6 / px) ** 2)
            )
        cy_ = q["cyto"]
        dc = np.sqrt(((u - q["off"]) / (a + cy_)) ** 2 + (v / (b + cy_)) ** 2)
        cyt = np.clip((1 - dc) * (b + cy_) * 0.2 + 0.5, 0, 1)  # indistinct border
        hem = q["hem"] * nuc * prof + cyt * (1 - nuc) * q["c_hem"]
        eos = cyt * q["c_eos"] + np.float32(0.1) * nuc
        ok = ((rows >= y0) & (rows < y0 + h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
        flat = ((rows - y0)[:, :, None] * w + cols[:, None, :])[ok]
        acc_h += np.bincount(flat, hem[ok], acc_h.size).astype(np.float32)
        acc_e += np.bincount(flat, eos[ok], acc_e.size).astype(np.float32)


def _render_strip(
    f: dict, cp: dict, px: float, y0: int, h: int, w: int, tex: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    ys, xs = (np.arange(y0, y0 + h) + 0.5) * px, (np.arange(w) + 0.5) * px
    at = lambda k, step=_STEP: _grid_at(f[k], step, ys, xs)  # noqa: E731
    tissue = np.clip((at("tissue") - f["thr_tissue"]) / 0.04, 0, 1)
    tum = _sigmoid((at("tumour") - f["thr_tumour"]) / 0.03)
    agg = (1 - tum) * _sigmoid((at("tls") - 0.5) / 0.03)
    s2 = _STEP / 2
    grain = at("grain", 1.5)
    stripes = [
        (0.5 + 0.5 * np.sin(_grid_at(f["phase"][k], s2, ys, xs) + 0.8 * grain)) ** 3 for k in (0, 1)
    ]
    bl = at("blend", s2)
    fibre = at("contrast", s2) * (bl * stripes[0] + (1 - bl) * stripes[1])
    stroma_e = 0.2 + 0.55 * fibre + 0.03 * grain
    eos = tissue * at("stain") * ((1 - tum - agg) * stroma_e + tum * 0.2 + agg * 0.1 + 0.02 * grain)
    hem = tissue * (0.03 + 0.04 * tum)
    cell_h, cell_e = np.zeros(h * w, np.float32), np.zeros(h * w, np.float32)
    _stamp_cells(cp, px, y0, h, w, tex, cell_h, cell_e)
    hem = hem + cell_h.reshape(h, w)
    eos = eos + 0.7 * (1 - np.exp(-cell_e.reshape(h, w) / 0.7))  # overlaps do not stack up
    od = hem[..., None] * _STAIN_H + eos[..., None] * _STAIN_E
    rgb = _GLASS * np.exp(-od) + 1.5 * rng.standard_normal((h, w, 1), np.float32)
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def _half(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[0] // 2 * 2, img.shape[1] // 2 * 2
    s = img[:h:2, :w:2].astype(np.uint16) + img[1:h:2, :w:2] + img[:h:2, 1:w:2] + img[1:h:2, 1:w:2]
    return ((s + 2) // 4).astype(np.uint8)


def _write_wsi(
    path: pathlib.Path, f: dict, c: dict, px: float, side: int, rng: np.random.Generator
) -> None:
    n_strips = -(-side // _STRIP)
    strip_seeds = rng.integers(2**63, size=n_strips)  # per strip, so strips are independent
    tex = _chromatin(rng, px)
    cp = _cell_pixels(c, px)

    def render(y0: int, h: int) -> np.ndarray:
        rng_strip = np.random.default_rng(strip_seeds[y0 // _STRIP])
        return _render_strip(f, cp, px, y0, h, side, tex, rng_strip)

    write_pyramid(path, (side, side), px, render)


def write_pyramid(
    path: pathlib.Path,
    shape: tuple[int, int],
    px: float,
    render: Callable[[int, int], np.ndarray],
    zlib_level: int | None = None,
    uuid: str | None = None,
) -> None:
    """Pyramidal OME BigTIFF (RGB, 256 px zlib tiles, halved levels down to < 1024 px as SubIFDs)
    of `shape` (rows, cols) level-0 px; `render(y0, h)` gives rows [y0, y0 + h) as uint8 RGB, one
    strip of `_STRIP` rows at a time, in order.  Shared with the Visium demo and the mosaic of
    tools/bench/embed.py.  It holds two strips (one compressed, the next rendered) and level 1
    (a quarter of level 0's bytes).  The OME-XML's UUID is `uuid` if given (the same bytes on
    every run), else a fresh one (tifffile's default)."""
    import tifffile

    height, width = shape
    sides = [min(shape)]
    while sides[-1] >= 1024:
        sides.append(sides[-1] // 2)
    n_strips = -(-height // _STRIP)
    level1 = np.zeros((height // 2, width // 2, 3), np.uint8) if len(sides) > 1 else None

    def strip_at(s: int) -> np.ndarray:
        y0 = s * _STRIP
        strip = render(y0, min(_STRIP, height - y0))
        if level1 is not None:
            small = _half(strip)
            level1[y0 // 2 : y0 // 2 + small.shape[0]] = small
        return strip

    def tiles() -> Iterator[np.ndarray]:
        # Render the next strip while tifffile compresses this one (numpy releases the GIL).
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            nxt = pool.submit(strip_at, 0)
            for s in range(n_strips):
                strip = nxt.result()
                if s + 1 < n_strips:
                    nxt = pool.submit(strip_at, s + 1)
                for x0 in range(0, width, _STRIP):
                    yield strip[:, x0 : x0 + _STRIP]

    # buffersize: compress one strip of tiles at a time rather than buffering up to 512 MB.
    opts = dict(
        tile=(256, 256), compression="zlib", photometric="rgb", buffersize=_STRIP * width * 3
    )
    if zlib_level is not None:
        opts["compressionargs"] = {"level": zlib_level}
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tif:
        tif.write(
            tiles(),
            shape=(height, width, 3),
            dtype=np.uint8,
            subifds=len(sides) - 1,
            metadata={
                "axes": "YXS",
                "PhysicalSizeX": px,
                "PhysicalSizeXUnit": "µm",
                "PhysicalSizeY": px,
                "PhysicalSizeYUnit": "µm",
                **({"UUID": uuid} if uuid else {}),
            },
            **opts,
        )
        level = level1
        for _ in sides[1:]:
            tif.write(level, subfiletype=1, **opts)
            level = _half(level)


_write_pyramid = write_pyramid  # its name in synthetic_visium.py


def _check_params(cells: pathlib.Path, params: dict) -> None:
    # Refuse to reuse files generated with other arguments rather than return them silently.
    import h5py
    from anndata.io import read_elem

    with h5py.File(cells, "r") as fh:
        old = read_elem(fh["uns/synthetic_params"])
    if any(k not in old or float(old[k]) != float(v) for k, v in params.items()):
        raise ValueError(f"{cells} was written with {old}, not {params}; use another out_dir")


def write_synthetic_slide(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    size_um: float = 3840.0,
    pixel_size_um: float = 0.2737,
    n_genes: int = 120,
    cell_density: float = 1.0,
) -> SyntheticSlide:
    """Write `out_dir/slide.ome.tif` and `out_dir/cells.h5ad` (skipped if already there)."""
    if min(size_um, pixel_size_um, cell_density) <= 0 or n_genes < 1:
        raise ValueError("size_um, pixel_size_um, cell_density and n_genes must be positive")
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    slide = SyntheticSlide(wsi=out / "slide.ome.tif", cells=out / "cells.h5ad")
    params = dict(
        seed=seed,
        size_um=size_um,
        pixel_size_um=pixel_size_um,
        n_genes=n_genes,
        cell_density=cell_density,
        version=1,
    )
    if slide.cells.exists():
        _check_params(slide.cells, params)
        if slide.wsi.exists():
            return slide
    rng_layout, rng_cells, rng_expr, rng_pix = np.random.default_rng(seed).spawn(4)
    f = _layout(rng_layout, size_um)
    c = _cells(rng_cells, f, size_um, cell_density)
    if not slide.cells.exists():
        X, genes, _ = _expression(rng_expr, f, c, n_genes)
        with atomic.atomic_path(slide.cells) as tmp:
            _write_cells(tmp, c, X, genes, f, pixel_size_um, seed, params)
    if not slide.wsi.exists():
        with atomic.atomic_path(slide.wsi) as tmp:
            _write_wsi(tmp, f, c, pixel_size_um, round(size_um / pixel_size_um), rng_pix)
    return slide
