"""Figures of an embedded slide (OUT of `python -m sigmma_jax.embed`), into OUT/figures/:

- `clusters_<slide>.png`: the H&E overview with the cells coloured by cluster, one panel per scale
  and one for the expression clusters (and the ground-truth domains, when the cells carry them);
- `composition.png`: the cell-type composition of each cluster (when the cells carry a type);
- `markers_<name>.png`: a dot plot of each cluster's top marker genes (OUT/markers_<name>.csv);
- `violins_<name>.png`: the chosen genes' expression across the clusters;
- `expression_<slide>.png`: the chosen genes per tile over the slide: observed (with cells),
  predicted by the probe and by the nearest training tiles.

Plots use matplotlib's Agg canvas directly (Figure + FigureCanvasAgg), and scanpy's plots are asked
for their figure, so drawing never switches the backend of a notebook or another caller.

At a whole slide (0.5 M cells) the maps draw a seeded sample of `MAP_CELLS` cells (a 650 px panel
cannot show more; the title says how many), and the per-cluster figures (legends, composition, dot
plots, violins) show the `SHOWN_CLUSTERS` largest clusters when a clustering has more (they would
be unreadable, and colours repeat past the palette's 60): both are said on the figure.
"""

from __future__ import annotations

import json
import logging
import pathlib

import matplotlib
import ml_collections
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sigmma_jax import atomic
from sigmma_jax.analysis import clusters
from sigmma_jax.data import readers
from sigmma_jax.evaluation import expression

DIR = "figures"
MAP_CELLS = 200_000  # cells drawn per cluster map at most (a seeded sample of the slide's)
SHOWN_CLUSTERS = 60  # clusters in a legend or per-cluster figure at most: the largest


def save(fig, path: pathlib.Path, dpi: int = 120) -> pathlib.Path:
    if fig.canvas is None or not hasattr(fig.canvas, "print_figure"):
        FigureCanvasAgg(fig)
    with atomic.open_atomic(path, "wb") as f:
        fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight")
    return path


def palette(n: int) -> list:
    """n distinct colours: tab20, then tab20b and tab20c."""
    cols = [matplotlib.colormaps[m](i) for m in ("tab20", "tab20b", "tab20c") for i in range(20)]
    return [cols[i % len(cols)] for i in range(n)]


def largest_clusters(labels, n: int = SHOWN_CLUSTERS) -> list[str]:
    """The `n` largest clusters of `labels` (a categorical), in category order."""
    labels = pd.Categorical(labels)
    sizes = np.bincount(labels.codes[labels.codes >= 0], minlength=len(labels.categories))
    keep = np.sort(np.argsort(-sizes, kind="stable")[:n])
    return [str(labels.categories[i]) for i in keep if sizes[i]]


def _shown_note(n_shown: int, n_all: int) -> str:
    return "" if n_shown == n_all else f" ({n_shown} largest of {n_all} clusters shown)"


def overview(tiles, slide: str, max_side: int) -> tuple[np.ndarray | None, tuple[float, float]]:
    """The slide's H&E overview and level-0 px per overview px in (y, x) (None if the image is
    gone)."""
    wsi = tiles.uns["sigmma"]["wsi"][slide]
    try:
        with readers.WSI(wsi) as w:
            return w.thumbnail(max_side)
    except readers.InputError as e:
        logging.warning("no H&E under the maps: %s", e)
        return None, (1.0, 1.0)


def _on_slide(ax, image, scale: tuple[float, float], shape: tuple[int, int]) -> None:
    h, w = shape
    if image is not None:
        sy, sx = scale
        ax.imshow(image, extent=(0, image.shape[1] * sx, image.shape[0] * sy, 0))
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


def cluster_maps(cells, tiles, slide: str, keys: dict[str, str], config, path) -> pathlib.Path:
    """One panel per clustering (and the ground truth): cells coloured by label on the H&E."""
    a = config.analysis
    sel = np.flatnonzero((cells.obs["slide"] == slide).to_numpy())
    drawn = _map_sample(len(sel), a.seed)
    xy = cells.obsm["spatial"][sel[drawn]]
    panels = dict(keys)
    if a.domain_key and a.domain_key in cells.obs:
        panels = {f"ground truth ({a.domain_key})": a.domain_key, **panels}
    image, scale = overview(tiles, slide, a.thumbnail_px)
    shape = tuple(tiles.uns["sigmma"]["image_shape"][slide])
    size = float(np.clip(3e4 / max(len(xy), 1), 0.02, 6))
    ncol = min(3, len(panels))
    nrow = -(-len(panels) // ncol)
    fig = Figure(figsize=(5.4 * ncol, 6.0 * nrow), layout="constrained")
    axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
    for ax in axes[len(panels) :]:
        ax.set_axis_off()
    for ax, (title, key) in zip(axes, panels.items()):
        _on_slide(ax, image, scale, shape)
        labels = pd.Categorical(cells.obs[key].to_numpy()[sel])  # the slide's, all drawn or not
        colours = np.array(palette(len(labels.categories)))
        codes = labels.codes[drawn]
        ok = codes >= 0
        ax.scatter(*xy[ok].T, s=size, c=colours[codes[ok]], linewidths=0, rasterized=True)
        name = title if title.startswith("ground") else f"Leiden on {title}"
        shown = set(largest_clusters(labels))
        note = _shown_note(len(shown), len(labels.categories)).replace("shown", "in the legend")
        ax.set_title(f"{name}: {len(labels.categories)} clusters{note}", fontsize=10)
        handles = [
            matplotlib.lines.Line2D([], [], ls="", marker="o", color=colours[i], label=str(c))
            for i, c in enumerate(labels.categories)
            if str(c) in shown
        ]
        ax.legend(
            handles=handles,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.01),
            ncol=len(handles) if len(handles) <= 10 else -(-len(handles) // 2),
            fontsize=7,
            frameon=False,
            handletextpad=0.1,
            columnspacing=0.6,
        )
    n = f"{len(sel):,} cells" if len(xy) == len(sel) else f"{len(xy):,} of {len(sel):,} cells drawn"
    fig.suptitle(f"{slide}: cells coloured by cluster ({n})")
    return save(fig, path)


def _map_sample(n: int, seed: int) -> np.ndarray:
    """Positions of the cells a map draws: all, or a seeded sample of `MAP_CELLS` (sorted), the
    same in every panel."""
    if n <= MAP_CELLS:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, MAP_CELLS, replace=False))


def composition(cells, keys: dict[str, str], type_key: str, path) -> pathlib.Path:
    """Per clustering, the fraction of each cluster's cells of each type (rows sum to 1; the
    `SHOWN_CLUSTERS` largest clusters)."""
    fig = Figure(figsize=(4.2 * len(keys), 5.0), layout="constrained")
    types = pd.Categorical(cells.obs[type_key].to_numpy())
    for ax, (name, key) in zip(fig.subplots(1, len(keys), squeeze=False)[0], keys.items()):
        labels = cells.obs[key].to_numpy()
        shown = set(largest_clusters(labels))
        table = pd.crosstab(labels, types, normalize="index")
        table = table.loc[[c for c in table.index if str(c) in shown]]
        im = ax.imshow(table.to_numpy(), cmap="viridis", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(table.shape[1]), [str(c) for c in table.columns], rotation=90)
        ax.set_yticks(range(table.shape[0]), [str(c) for c in table.index], fontsize=7)
        ax.set_ylabel("cluster")
        note = _shown_note(len(table), cells.obs[key].nunique())
        ax.set_title(f"Leiden on {name}{note}", fontsize=10)
    fig.colorbar(im, ax=fig.axes, shrink=0.6, label=f"fraction of the cluster's cells ({type_key})")
    return save(fig, path)


def _top_markers(out: pathlib.Path, name: str, n: int = 3) -> dict[str, list[str]]:
    df = pd.read_csv(out / f"markers_{name}.csv", dtype={"cluster": str})
    df = df[df["logfoldchanges"] > 0]
    return {c: g["gene"].head(n).tolist() for c, g in df.groupby("cluster", sort=False)}


def marker_dotplot(log, key: str, top: dict[str, list[str]], path) -> pathlib.Path:
    """scanpy's dot plot of each cluster's top markers (the `SHOWN_CLUSTERS` largest clusters)."""
    import scanpy as sc

    labels = pd.Categorical(log.obs[key].to_numpy())
    shown = largest_clusters(labels)
    title = None
    if len(shown) < len(labels.categories):  # only the shown clusters' cells, as rows
        log = log[log.obs[key].isin(shown).to_numpy()].copy()
        log.obs[key] = log.obs[key].cat.remove_unused_categories()
        title = _shown_note(len(shown), len(labels.categories)).strip(" ()")
    top = {c: genes for c, genes in top.items() if genes and c in set(shown)}
    order = sorted(top, key=lambda c: int(c) if c.isdigit() else c)
    dp = sc.pl.dotplot(
        log, {c: top[c] for c in order}, groupby=key, return_fig=True, show=False, title=title
    )
    dp.make_figure()
    return save(dp.fig, path)


def violins(log, key: str, genes: list[str], seed: int, path) -> pathlib.Path:
    """One row per gene: its log-normalised expression in each cluster (at most 2000 cells drawn
    per cluster, seeded; the `SHOWN_CLUSTERS` largest clusters), in the clusters' map colours."""
    labels = pd.Categorical(log.obs[key].to_numpy())
    shown = set(largest_clusters(labels))
    rng = np.random.default_rng(seed)
    groups, names, colours = [], [], []
    for i, (c, colour) in enumerate(zip(labels.categories, palette(len(labels.categories)))):
        if str(c) not in shown:
            continue
        members = np.flatnonzero(labels.codes == i)
        groups.append(np.sort(rng.choice(members, min(2000, len(members)), replace=False)))
        names.append(str(c))
        colours.append(colour)
    fig = Figure(
        figsize=(max(4.0, 0.45 * len(groups) + 1.5), 1.6 * len(genes)), layout="constrained"
    )
    axes = fig.subplots(len(genes), 1, squeeze=False, sharex=True)[:, 0]
    drawn = log.X[np.concatenate(groups)]  # only the drawn cells' values are read
    start = np.cumsum([0] + [len(m) for m in groups])
    for ax, g in zip(axes, genes):
        x = drawn[:, [log.var_names.get_loc(g)]]
        x = np.asarray(x.toarray() if hasattr(x, "toarray") else x).ravel()
        data = [x[start[i] : start[i + 1]] for i in range(len(groups))]
        # A constant group has no density: shown as its value, not as a failed kernel estimate.
        varied = [i for i, d in enumerate(data) if len(d) > 1 and np.ptp(d) > 0]
        if varied:
            parts = ax.violinplot([data[i] for i in varied], positions=varied, showextrema=False)
            for i, body in zip(varied, parts["bodies"]):
                body.set_facecolor(colours[i])
                body.set_alpha(0.85)
        ax.scatter(range(len(data)), [np.median(d) if len(d) else np.nan for d in data], s=8, c="k")
        ax.set_ylabel(g, rotation=0, ha="right", va="center")
    axes[-1].set_xticks(range(len(groups)), names, rotation=90 if len(groups) > 20 else 0)
    axes[-1].set_xlabel(f"cluster ({key}); dots: medians")
    note = _shown_note(len(groups), len(labels.categories))
    fig.suptitle(f"log-normalised expression per cluster{note}", fontsize=10)
    return save(fig, path)


def chosen_genes(tiles, config) -> list[str]:
    """`analysis.genes` (refused by name if not in the panel), else the most variable genes over the
    tiles (observed, or predicted for an H&E image alone), skipping any that correlates (r > 0.8)
    with one already chosen, so that the figures show different programmes."""
    a = config.analysis
    panel = list(tiles.var_names)
    if a.genes:
        missing = [g for g in a.genes if g not in panel]
        if missing:
            raise readers.InputError(f"analysis.genes not in the run's panel: {missing}")
        return list(a.genes)
    values = np.asarray(tiles.layers["observed"] if "observed" in tiles.layers else tiles.X)
    chosen: list[int] = []
    for i in np.argsort(-values.var(0), kind="stable"):  # most variable first
        r = expression.pearson_rows(
            values[:, chosen].T, np.repeat(values[None, :, i], len(chosen), 0)
        )
        if not chosen or r.max() <= 0.8:
            chosen.append(int(i))
        if len(chosen) == a.n_genes:
            break
    return [panel[i] for i in chosen]


def expression_maps(tiles, slide: str, genes: list[str], config, path) -> pathlib.Path:
    """Rows: genes; columns: observed (with cells), probe and kNN predictions; each tile a square
    over the H&E overview, on one colour scale per gene. Titles give the per-gene PCC over the
    slide's tiles (training tiles included when the run trained on this slide)."""
    t = tiles[(tiles.obs["slide"] == slide).to_numpy()]
    cols = {"probe (H&E)": t.X, "kNN (H&E)": t.layers["knn"]}
    if "observed" in t.layers:
        cols = {"observed": t.layers["observed"], **cols}
    image, scale = overview(tiles, slide, config.analysis.thumbnail_px)
    shape = tuple(tiles.uns["sigmma"]["image_shape"][slide])
    rows, cs = t.obs["row"].to_numpy(), t.obs["col"].to_numpy()
    x0, y0 = t.obs["x0"].to_numpy(), t.obs["y0"].to_numpy()
    side = float((t.obs["x1"] - t.obs["x0"]).iloc[0])
    ox, oy = float(np.median(x0 - cs * side)), float(np.median(y0 - rows * side))
    grid = (rows.max() + 1, cs.max() + 1)
    extent = (ox, ox + grid[1] * side, oy + grid[0] * side, oy)
    fig = Figure(figsize=(4.0 * len(cols) + 0.8, 3.9 * len(genes)), layout="constrained")
    axes = fig.subplots(len(genes), len(cols), squeeze=False)
    for r, g in enumerate(genes):
        j = list(t.var_names).index(g)
        vals = {k: np.asarray(v[:, j]).ravel() for k, v in cols.items()}
        ref = vals.get("observed", vals["probe (H&E)"])
        lo, hi = np.percentile(ref, [1, 99])
        for c, (name, v) in enumerate(vals.items()):
            ax = axes[r, c]
            _on_slide(ax, image, scale, shape)
            img = np.full(grid, np.nan)
            img[rows, cs] = v
            im = ax.imshow(img, extent=extent, cmap="magma", vmin=lo, vmax=hi, alpha=0.85)
            title = f"{g}: {name}"
            if name != "observed" and "observed" in vals:
                r_ = expression.pearson_rows(v[None], vals["observed"][None])[0]
                title += f", r = {r_:.2f}"
            ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=axes[r, :], shrink=0.8, label="log1p counts per tile")
    fig.suptitle(f"{slide}: expression per 128 µm tile")
    return save(fig, path, dpi=100)


def write_all(out: str | pathlib.Path, config: ml_collections.ConfigDict) -> list[pathlib.Path]:
    """Clusters the cells (`clusters.run`, when there are cells) and draws every figure."""
    import anndata

    out = pathlib.Path(out)
    figs = out / DIR
    tiles = anndata.read_h5ad(out / "tiles.h5ad")
    slides = list(dict.fromkeys(tiles.obs["slide"]))
    genes = chosen_genes(tiles, config)
    paths = [expression_maps(tiles, s, genes, config, figs / f"expression_{s}.png") for s in slides]
    if not (out / "cells.h5ad").exists():
        return paths
    result = clusters.run(out, config)
    logging.info("clusters: %s", json.dumps(result))
    cells = anndata.read_h5ad(out / "cells.h5ad")
    names = list(clusters.representations(cells))
    keys = {n: f"leiden_{n}" for n in names}
    for k in [k for k in cells.obsm if k != "spatial"]:
        del cells.obsm[k]  # the embeddings (0.4 GB at 0.5 M cells) are drawn by no figure
    for s in slides:
        paths.append(cluster_maps(cells, tiles, s, keys, config, figs / f"clusters_{s}.png"))
    type_key = config.analysis.cell_type_key
    if type_key and type_key in cells.obs:
        paths.append(composition(cells, keys, type_key, figs / "composition.png"))
    log = clusters.log_expression(cells)
    for n, key in keys.items():
        top = _top_markers(out, n)
        paths.append(marker_dotplot(log, key, top, figs / f"markers_{n}.png"))
        paths.append(violins(log, key, genes, config.analysis.seed, figs / f"violins_{n}.png"))
    return paths
