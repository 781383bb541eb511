"""ST-Align's zero-shot spatial domains (arXiv 2411.16793 §4.2-4.3, Table 1; docs/method.md,
"ST-Align"): cluster each held-out slide's spot embeddings, no training, and score the clusters against the
manual layers by the adjusted Rand index (ARI; NMI as a secondary number).

Input (`evaluate`, `draw`): `embeddings["test"]` is a dict with
- "emb": {name: (N, D) float array}, the embeddings to score ("fused_spot", "spot_image",
  "niche_image", "spot_gene", "niche_gene", "image", or a baseline's);
- "slide": (N,) int index into `embeddings["slide_names"]`;
- "label": (N,) int index into `embeddings["label_names"]`, -1 for an unannotated spot;
- "xy": (N, 2) float spot centres in µm (x, y) within their slide (only `draw` reads them);
- "targets": (N, G) expression (not read here).

Protocol, per held-out slide and per embedding (config.eval settings in brackets, defaults in
`DEFAULTS`):
1. Keep the slide's annotated spots (label >= 0). Spots without a layer cannot be scored, and
   clustering them too would let them pull clusters away from the layers the ARI is taken on.
   Spots whose embedding has a non-finite value are dropped as well and counted ("n_nonfinite").
2. k = the number of distinct layers annotated on that slide (7 on DLPFC 151507-151509, 151673;
   5 on 151669-151672, whose donor's annotation has no L1 and L2). The paper does
   not state k; this is what every DLPFC benchmark does.
3. Features [domain_scale, domain_pca]: no per-dimension standardisation by default ("none"):
   an embedding's coordinates share one scale (they leave one linear layer), and z-scoring would
   give near-constant noise dimensions the weight of informative ones ("standard" does it anyway;
   "l2" puts rows on the unit sphere, the geometry the contrastive loss trains). Then PCA, exact
   (full SVD, deterministic), to min(domain_pca, spots, dimensions) components, fitted on the
   slide's own spots, as DLPFC work (GraphST, SpaGCN, STAGATE's and Scanpy's pipelines) clusters
   20-50 PCs: it denoises, and a Gaussian mixture's covariance is well posed on 50 dimensions where
   it is not on 1024 with a few thousand spots. domain_pca = 0 clusters the features unreduced.
4. Cluster [domain_methods] with k clusters: "kmeans" (sklearn KMeans, k-means++, n_init = 10
   restarts, the best inertia kept) and "gmm" (sklearn GaussianMixture, the analogue of the mclust
   that DLPFC work runs; covariance [domain_gmm_covariance] "tied", mclust's "EEE", one full
   covariance shared by all components, as GraphST and STAGATE call mclust; k-means
   initialisation, one EM run, as mclust fits once).
5. Repeat with seeds 0 .. domain_seeds - 1 (the `random_state` of KMeans / GaussianMixture; PCA is
   exact, so a seed changes only the clustering's initialisation). The paper's "± over five runs"
   does not say what a run varies; with a frozen encoder this is the only randomness left.

Reported, per embedding and method: per slide, the ARI and NMI of each seed and their mean ± sd
over seeds; overall, the mean over the slides scored of the per-slide means, the sd across slides
of those means, and the mean of the per-slide sds (the paper's "±"). Sds are population sds
(ddof = 0), as the rest of the project reports them. A slide without annotated spots, or with a
single layer, is skipped for every embedding; an embedding with fewer usable (finite, distinct)
spots than k on a slide is skipped there; both with the reason, in "skipped".

`result["clusters"]` holds the per-spot data `draw` needs: "rows" (slide -> indices into the test
arrays of the annotated spots) and "labels" (embedding -> slide -> method -> seed 0's cluster of
each of those spots, -1 where the spot was dropped). It is a few ints per spot and embedding; drop
it before writing a compact results.json.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.mixture import GaussianMixture
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from sigmma_jax import atomic
from sigmma_jax.evaluation import markdown as md

SPLITS = ("test",)
METHODS = ("kmeans", "gmm")
SCALES = ("none", "l2", "standard")
COVARIANCES = ("full", "tied", "diag", "spherical")
# config.eval settings read here, with the default used when the config has none.
DEFAULTS = {
    "domain_methods": METHODS,
    "domain_pca": 50,
    "domain_scale": "none",
    "domain_seeds": 5,
    "domain_embeddings": (),  # () = every embedding of embeddings["test"]["emb"]
    "domain_gmm_covariance": "tied",  # mclust "EEE"
}
METHOD_NAMES = {"kmeans": "k-means", "gmm": "Gaussian mixture"}
# k-means restarts per seed, the best inertia kept: sklearn's default before 1.4, which the DLPFC
# pipelines of that era ran ("auto" is now 1 for k-means++), and a bad start does not score.
_KMEANS_N_INIT = 10
# mclust fits one EM from one (hierarchical) initialisation; one k-means-initialised EM here.
_GMM_N_INIT = 1
_GMM_MAX_ITER = 200
# Threads: clustering runs with one OpenMP / BLAS thread. A slide is a few thousand spots in
# 50 dimensions, where thread start-up and contention outweigh the work (k-means took 90x longer
# with 2 threads than with 1 on a shared 2-core machine), and k-means sums per thread, so its
# centres differ in the last bits with the thread count (checked): one thread, on any machine.

# Plot: inches per panel, of the legend strip under the panels, and resolution; the PNG is
# exactly `figure_size` pixels (no tight bounding box, so its size does not depend on the text).
PANEL_INCHES = 3.0
DPI = 100
LEGEND_INCHES = 0.6
_UNANNOTATED = (0.85, 0.85, 0.85, 1.0)


def settings(config) -> dict[str, Any]:
    """The settings of config.eval this evaluator reads (`DEFAULTS` for the absent ones), checked."""
    ev = config.eval
    s = {k: ev.get(k, v) for k, v in DEFAULTS.items()}
    s["domain_methods"] = tuple(s["domain_methods"])
    s["domain_embeddings"] = tuple(s["domain_embeddings"])
    unknown = [m for m in s["domain_methods"] if m not in METHODS]
    if unknown or not s["domain_methods"]:
        raise ValueError(f"eval.domain_methods {s['domain_methods']}: expected some of {METHODS}")
    if s["domain_scale"] not in SCALES:
        raise ValueError(f"eval.domain_scale {s['domain_scale']!r}: expected one of {SCALES}")
    if s["domain_gmm_covariance"] not in COVARIANCES:
        raise ValueError(
            f"eval.domain_gmm_covariance {s['domain_gmm_covariance']!r}: expected one of "
            f"{COVARIANCES}"
        )
    if int(s["domain_pca"]) < 0 or int(s["domain_seeds"]) < 1:
        raise ValueError("eval.domain_pca must be >= 0 and eval.domain_seeds >= 1")
    s["domain_pca"], s["domain_seeds"] = int(s["domain_pca"]), int(s["domain_seeds"])
    return s


def features(x: np.ndarray, n_pca: int = 50, scale: str = "none") -> np.ndarray:
    """The clustering features of one slide's spots: `scale` ("none", "l2": unit rows,
    "standard": z-scored columns), then exact PCA to min(n_pca, spots, dimensions) components
    (n_pca = 0: none)."""
    x = np.asarray(x, np.float64)
    if scale == "l2":
        # A zero row stays zero rather than becoming NaN.
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    elif scale == "standard":
        x = StandardScaler().fit_transform(x)
    elif scale != "none":
        raise ValueError(f"unknown scale {scale!r}; expected one of {SCALES}")
    n = min(n_pca, *x.shape)
    if n_pca == 0 or n == 0:
        return x
    return PCA(n_components=n, svd_solver="full").fit_transform(x)


def cluster(
    x: np.ndarray, k: int, method: str, seed: int, covariance: str = "tied"
) -> tuple[np.ndarray, bool]:
    """Cluster labels (0 .. k-1) of the rows of `x` by `method` with `seed`, and whether the fit
    converged (k-means always reports True: Lloyd's iterations stop at sklearn's tolerance)."""
    if method == "kmeans":
        km = KMeans(n_clusters=k, n_init=_KMEANS_N_INIT, random_state=seed).fit(x)
        return km.labels_.astype(np.int64), True
    if method == "gmm":
        gmm = GaussianMixture(
            n_components=k,
            covariance_type=covariance,
            n_init=_GMM_N_INIT,
            max_iter=_GMM_MAX_ITER,
            init_params="kmeans",
            random_state=seed,
        )
        with warnings.catch_warnings():
            # Non-convergence is counted in the result instead ("not_converged").
            warnings.simplefilter("ignore", ConvergenceWarning)
            labels = gmm.fit_predict(x)
        return labels.astype(np.int64), bool(gmm.converged_)
    raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")


def _mean_sd(values: Sequence[float]) -> tuple[float | None, float | None]:
    if len(values) == 0:
        return None, None
    return float(np.mean(values)), float(np.std(values))


def slide_domains(
    x: np.ndarray, layers: np.ndarray, k: int, s: dict[str, Any]
) -> tuple[dict, dict[str, list[int]]]:
    """One embedding on one slide's annotated spots: (scores, {method: seed 0's labels}).

    `x` (spots, D) and `layers` (spots,) are the annotated spots; rows of `x` with a non-finite
    value are dropped (their label in the returned clusters is -1). Scores are {"skipped": reason}
    when fewer than k usable spots remain."""
    finite = np.isfinite(x).all(axis=1)
    n_nonfinite = int((~finite).sum())
    xu, yu = x[finite], layers[finite]
    distinct = len(np.unique(xu, axis=0)) if len(xu) else 0
    if distinct < k:
        reason = (
            f"{distinct} distinct usable spots (of {len(x)} annotated, {n_nonfinite} non-finite) "
            f"< k = {k}"
        )
        return {"skipped": reason}, {}
    z = features(xu, s["domain_pca"], s["domain_scale"])
    out: dict[str, Any] = {
        "n_spots": int(len(xu)),
        "n_nonfinite": n_nonfinite,
        "n_components": int(z.shape[1]),
    }
    drawn: dict[str, list[int]] = {}
    for method in s["domain_methods"]:
        ari, nmi, not_converged = [], [], 0
        for seed in range(s["domain_seeds"]):
            labels, converged = cluster(z, k, method, seed, s["domain_gmm_covariance"])
            not_converged += not converged
            ari.append(float(adjusted_rand_score(yu, labels)))
            nmi.append(float(normalized_mutual_info_score(yu, labels)))
            if seed == 0:
                full = np.full(len(x), -1, np.int64)
                full[finite] = labels
                drawn[method] = full.tolist()
        ari_mean, ari_sd = _mean_sd(ari)
        nmi_mean, nmi_sd = _mean_sd(nmi)
        out[method] = {
            "ari": ari,
            "ari_mean": ari_mean,
            "ari_sd": ari_sd,
            "nmi": nmi,
            "nmi_mean": nmi_mean,
            "nmi_sd": nmi_sd,
            "not_converged": int(not_converged),
        }
    return out, drawn


def overall(per_slide: dict[str, dict], methods: Sequence[str]) -> dict[str, dict]:
    """Per method over the slides scored: mean of the per-slide mean ARI (NMI), sd across slides
    of those means, and mean of the per-slide sds over seeds."""
    out = {}
    for method in methods:
        scored = [r[method] for r in per_slide.values() if method in r]
        ari_mean, ari_sd_slides = _mean_sd([r["ari_mean"] for r in scored])
        nmi_mean, nmi_sd_slides = _mean_sd([r["nmi_mean"] for r in scored])
        out[method] = {
            "ari_mean": ari_mean,
            "ari_sd_slides": ari_sd_slides,
            "ari_sd_seeds": _mean_sd([r["ari_sd"] for r in scored])[0],
            "nmi_mean": nmi_mean,
            "nmi_sd_slides": nmi_sd_slides,
            "nmi_sd_seeds": _mean_sd([r["nmi_sd"] for r in scored])[0],
            "n_slides": len(scored),
        }
    return out


def evaluate(embeddings: dict, config) -> dict:
    """Spatial-domain ARI / NMI of the test split's embeddings (module docstring); plain JSON-able
    values, the same for the same input and config."""
    s = settings(config)
    test = embeddings["test"]
    slide_names = [str(n) for n in embeddings["slide_names"]]
    label_names = [str(n) for n in embeddings["label_names"]]
    slide = np.asarray(test["slide"], np.int64)
    label = np.asarray(test["label"], np.int64)
    emb = test["emb"]
    names = list(s["domain_embeddings"]) or list(emb)

    slides: dict[str, dict] = {}
    rows: dict[str, list[int]] = {}
    for idx in np.unique(slide):
        name = slide_names[idx]
        here = np.flatnonzero(slide == idx)
        annotated = here[label[here] >= 0]
        present = np.unique(label[annotated])
        info: dict[str, Any] = {
            "index": int(idx),
            "n_spots": int(len(here)),
            "n_annotated": int(len(annotated)),
            "k": int(len(present)),
            "layers": [label_names[i] for i in present],
        }
        if len(annotated) == 0:
            info["skipped"] = "no annotated spots"
        elif len(present) < 2:
            info["skipped"] = f"a single annotated layer ({label_names[present[0]]}): no domains"
        else:
            rows[name] = annotated.tolist()
        slides[name] = info

    results: dict[str, dict] = {}
    labels_out: dict[str, dict] = {}
    for name in names:
        if name not in emb:
            results[name] = {"skipped": f"no embedding {name!r} (have {sorted(emb)})"}
            continue
        x_all = np.asarray(emb[name], np.float64)
        per_slide: dict[str, dict] = {}
        labels_out[name] = {}
        for sname, info in slides.items():
            if "skipped" in info:
                per_slide[sname] = {"skipped": info["skipped"]}
                continue
            r = np.asarray(rows[sname])
            with threadpool_limits(1):  # see "Threads" above
                per_slide[sname], drawn = slide_domains(x_all[r], label[r], info["k"], s)
            if drawn:
                labels_out[name][sname] = drawn
        results[name] = {"per_slide": per_slide, "overall": overall(per_slide, s["domain_methods"])}

    # A slide skipped for every embedding is listed once; an embedding's own skips after it.
    skipped = [f"slide {n}: {i['skipped']}" for n, i in slides.items() if "skipped" in i]
    for name, res in results.items():
        if "skipped" in res:
            skipped.append(f"{name}: {res['skipped']}")
            continue
        skipped += [
            f"{name} on {sl}: {r['skipped']}"
            for sl, r in res["per_slide"].items()
            if "skipped" in r and "skipped" not in slides[sl]
        ]
    return {
        "methods": list(s["domain_methods"]),
        "seeds": s["domain_seeds"],
        "pca": s["domain_pca"],
        "scale": s["domain_scale"],
        "gmm_covariance": s["domain_gmm_covariance"],
        "kmeans_n_init": _KMEANS_N_INIT,
        "slides": slides,
        "embeddings": results,
        "skipped": skipped,
        "clusters": {"rows": rows, "labels": labels_out},
    }


# --------------------------------------------------------------------------- markdown


def _fmt(x: Any) -> str:
    if x is None:
        return "–"
    return f"{float(x):.4f}" if math.isfinite(x) else "nan"


def result_markdown(result: dict) -> list[str]:
    """results.md lines: per method an ARI table (rows = embeddings, columns = slides and overall),
    then overall NMI, then what was skipped."""
    slides = list(result["slides"])
    embs = result["embeddings"]
    lines: list[str] = []
    for method in result["methods"]:
        lines += [
            f"## Zero-shot spatial domains: ARI of {METHOD_NAMES[method]} clusters with the "
            "annotated layers (ST-Align Table 1)",
            "",
            f"Per slide: mean ± sd over {result['seeds']} seeds, k = the slide's annotated layers; "
            "overall: mean over slides ± sd across slides, and the mean of the per-slide sds over "
            f"seeds. PCA {result['pca']}, scaling {result['scale']}"
            + (f", covariance {result['gmm_covariance']}." if method == "gmm" else "."),
            "",
        ]
        header = ["embedding"] + [f"{s} (k={result['slides'][s]['k']})" for s in slides]
        header += ["overall ± slides", "± seeds", "slides"]
        rows = []
        for name, res in embs.items():
            if "skipped" in res:
                rows.append([name] + ["skipped"] * (len(slides) + 3))
                continue
            cells = [name]
            for s in slides:
                r = res["per_slide"][s]
                cells.append(
                    "skipped"
                    if "skipped" in r
                    else f"{_fmt(r[method]['ari_mean'])} ± {_fmt(r[method]['ari_sd'])}"
                )
            o = res["overall"][method]
            cells += [
                f"{_fmt(o['ari_mean'])} ± {_fmt(o['ari_sd_slides'])}",
                _fmt(o["ari_sd_seeds"]),
                str(o["n_slides"]),
            ]
            rows.append(cells)
        lines += md.table(header, rows) + [""]
    lines += ["## Zero-shot spatial domains: NMI (mean over slides ± sd across slides)", ""]
    rows = []
    for name, res in embs.items():
        if "skipped" in res:
            rows.append([name] + ["skipped"] * len(result["methods"]))
            continue
        rows.append(
            [name]
            + [
                f"{_fmt(res['overall'][m]['nmi_mean'])} ± {_fmt(res['overall'][m]['nmi_sd_slides'])}"
                for m in result["methods"]
            ]
        )
    lines += md.table(["embedding"] + [METHOD_NAMES[m] for m in result["methods"]], rows) + [""]
    if result["skipped"]:
        lines += ["Skipped:", ""] + [f"- {s}" for s in result["skipped"]] + [""]
    return lines


# --------------------------------------------------------------------------- plot


def match_clusters(clusters: np.ndarray, layers: np.ndarray) -> dict[int, int]:
    """{cluster: layer} by the Hungarian assignment maximising the spots a cluster shares with its
    layer (clusters left over when there are more clusters than layers are not in the dict)."""
    cl, ci = np.unique(clusters, return_inverse=True)
    la, li = np.unique(layers, return_inverse=True)
    overlap = np.zeros((len(cl), len(la)), np.int64)
    np.add.at(overlap, (ci, li), 1)
    r, c = linear_sum_assignment(-overlap)
    return {int(cl[i]): int(la[j]) for i, j in zip(r, c)}


def _palette(n: int) -> np.ndarray:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return np.array([cmap(i % cmap.N) for i in range(max(n, 1))])


def _hexagons(xy: np.ndarray) -> np.ndarray:
    # Pointy-top hexagons of flat-to-flat width = the spot pitch (median distance to the nearest
    # spot): on Visium's grid, whose rows run along x, they tile the slide as its spots do.
    pitch = 1.0
    if len(xy) > 1:
        d, _ = cKDTree(xy).query(xy, k=2)
        pitch = float(np.median(d[:, 1])) or 1.0
    angles = np.deg2rad(30 + 60 * np.arange(6))
    corners = (pitch / math.sqrt(3)) * np.stack([np.cos(angles), np.sin(angles)], 1)
    return xy[:, None, :] + corners[None]


def _paint(ax, hexes: np.ndarray, face: np.ndarray, title: str, note: str | None = None) -> None:
    ax.add_collection(PolyCollection(hexes, facecolors=face, edgecolors="none"))
    ax.set_xlim(hexes[..., 0].min(), hexes[..., 0].max())
    ax.set_ylim(hexes[..., 1].max(), hexes[..., 1].min())  # y down, as in the image
    ax.set_aspect("equal")
    ax.set_axis_off()
    ax.set_title(title, fontsize=8)
    if note:
        ax.text(0.5, 0.5, note, ha="center", va="center", wrap=True, fontsize=7,
                transform=ax.transAxes)  # fmt: skip


def figure_size(result: dict, methods: Sequence[str] | None = None, dpi: int = DPI) -> tuple:
    """(width, height) in pixels of the PNG `draw` writes for `result`."""
    methods = list(methods or result["methods"])
    cols = 1 + len(result["embeddings"]) * len(methods)
    rows = max(len(result["slides"]), 1)
    return (
        round(cols * PANEL_INCHES * dpi),
        round((rows * PANEL_INCHES + LEGEND_INCHES) * dpi),
    )


def draw(
    embeddings: dict,
    result: dict,
    path: str | os.PathLike,
    *,
    methods: Sequence[str] | None = None,
    dpi: int = DPI,
) -> Path:
    """PNG at `path` (written atomically): one row per held-out slide, its annotated layers beside
    each embedding's seed-0 clusters by each method (`methods`, default all of `result`). Spots are
    hexagons at their µm coordinates, y pointing down as in the image; a cluster takes the colour
    of the layer the Hungarian assignment matches it to; unannotated spots are grey."""
    methods = list(methods or result["methods"])
    test = embeddings["test"]
    slide = np.asarray(test["slide"], np.int64)
    label = np.asarray(test["label"], np.int64)
    xy = np.asarray(test["xy"], np.float64)
    label_names = [str(n) for n in embeddings["label_names"]]
    colours = _palette(len(label_names))
    rows, labels = result["clusters"]["rows"], result["clusters"]["labels"]
    panels = [(n, m) for n in result["embeddings"] for m in methods]

    width, height = figure_size(result, methods, dpi)
    fig = Figure(figsize=(width / dpi, height / dpi), layout="constrained")
    axes = fig.subplots(max(len(result["slides"]), 1), 1 + len(panels), squeeze=False)
    for ax_row, (sname, info) in zip(axes, result["slides"].items()):
        here = np.flatnonzero(slide == info["index"])
        if len(here) == 0:
            for ax in ax_row:
                ax.set_axis_off()
            continue
        hexes = _hexagons(xy[here])
        # The layers panel shows every annotated spot, also on a slide that was skipped.
        face = np.tile(_UNANNOTATED, (len(here), 1))
        known = label[here] >= 0
        face[known] = colours[label[here][known]]
        title = f"{sname}: layers (k={info['k']})"
        _paint(ax_row[0], hexes, face, title, info.get("skipped"))
        # Positions within the slide of the spots that were clustered, and their layers.
        position = {int(r): i for i, r in enumerate(here)}
        clustered = np.array([position[r] for r in rows.get(sname, [])], np.int64)
        layer = label[here[clustered]]
        for ax, (name, method) in zip(ax_row[1:], panels):
            res = result["embeddings"][name]
            r = res.get("per_slide", {}).get(sname, res)
            drawn = labels.get(name, {}).get(sname, {}).get(method)
            title = f"{name} · {method}"
            if "skipped" in r or drawn is None:
                note = "skipped: " + r.get("skipped", "not drawn")
                _paint(ax, hexes, np.tile(_UNANNOTATED, (len(here), 1)), title, note)
                continue
            drawn = np.asarray(drawn, np.int64)
            ok = drawn >= 0  # -1: dropped (non-finite embedding), drawn as unannotated
            match = match_clusters(drawn[ok], layer[ok])
            face = np.tile(_UNANNOTATED, (len(here), 1))
            # A cluster no layer is matched to (more clusters than layers) is dark grey.
            face[clustered[ok]] = [
                colours[match[c]] if c in match else (0.3, 0.3, 0.3, 1) for c in drawn[ok]
            ]
            _paint(ax, hexes, face, f"{title}\nARI {r[method]['ari'][0]:.3f} (seed 0)")
    handles = [Patch(color=colours[i], label=n) for i, n in enumerate(label_names)]
    handles.append(Patch(color=_UNANNOTATED, label="unannotated"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8)
    path = Path(path)
    FigureCanvasAgg(fig)
    with atomic.open_atomic(path, "wb") as f:
        fig.savefig(f, format="png", dpi=dpi)
    return path


# results.md: sigmma_jax.evaluation.markdown
markdown = md.per_model("domains", result_markdown)
