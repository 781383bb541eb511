"""ST-Align's spot gene-expression prediction (arXiv 2411.16793 §4.2 and §4.4, Table 3;
docs/method.md, "ST-Align"): a frozen image embedding of each spot, an MLP trained on 80 % of a
held-out slide's spots, MSE of its predictions on the other 20 %, mean ± sd over the slides.

Input (`evaluate`): `embeddings["test"]` is a dict with
- "emb": {name: (N, D) float array}, the embeddings (the image-only one is "image"; a baseline's
  under its own name);
- "slide": (N,) int index into `embeddings["slide_names"]`;
- "xy": (N, 2) float spot centres in µm (x, y) within their slide (read by gene_split = "space");
- "targets": (N, G) float64, log1p of each spot's counts normalised to 1e4, over the panel
  `embeddings["gene_names"]` (G names);
- "label": (N,) layer index (not read here).

Protocol, per held-out slide (config.eval settings in brackets, defaults in `DEFAULTS`):
1. Split its spots [gene_split, gene_train_fraction] into round(0.8 n) training spots and the rest
   for testing. "random" (the paper's) draws the split uniformly: a test spot's neighbours, 100 µm
   away and sharing most of its tissue context and expression, are then mostly in training, so the
   score is partly interpolation between neighbours. "space" holds out a spatial block instead:
   the 20 % of spots nearest to a randomly drawn spot of the slide (a disc, cut by the tissue
   edge), which such leakage reaches only along the block's rim.
2. Standardise the embedding on the training spots (sklearn StandardScaler) and fit an MLP
   (sklearn MLPRegressor: ReLU hidden layers [gene_mlp_hidden] = (256,), Adam, lr 1e-3, L2 1e-4,
   minibatches of min(200, n), at most [gene_mlp_max_iter] = 200 epochs; with
   [gene_mlp_early_stopping] it keeps 10 % of the training spots aside and stops after 10 epochs
   without a validation gain of 1e-4, restoring the best epoch's weights) to the training spots'
   targets of the genes of [gene_groups] found in the panel, all in one multi-output MLP, and,
   with [gene_panel] = "hvg", a second MLP to the whole panel (the run's highly variable genes;
   "none" skips it). The MLP fits the targets standardised on the training spots (a gene constant
   there is only centred) and its predictions are mapped back: the output layer starts near zero,
   so raw log1p targets would spend the first epochs learning each gene's mean (a slide's 3000
   training spots are only 15 minibatches an epoch) and early stopping would take that progress
   for learning from the image; and unscaled, the high-variance genes would dominate the shared
   hidden layer. MSE and PCC are in the targets' own log1p units, the paper's.
3. Score the test spots: MSE per gene, and Pearson r per gene across the test spots (0 where
   either side is constant, `expression.pearson_rows`). The floor: MSE per gene of predicting the
   gene's training mean for every test spot ("train_mean"); an embedding that carries no
   information about a gene does no better than it.
4. Repeat [gene_seeds] times: seed i draws split i (`split(xy, fraction, (i, slide index))`,
   so slides get independent splits) and initialises and shuffles MLP i (random_state i); a
   slide's number is the mean over seeds. The paper states no repeats and an MLP of unstated size.

Summaries as the paper's Table 3: per gene, the mean ± sd over slides of the per-slide MSE; per
group (layer markers FABP7, CCK, PVALB; laminar PCP4, MOBP, SNAP25; non-laminar IGKC, HBB, NPY)
the mean over its genes found, per slide and then mean ± sd over slides; "overall" the mean over
all genes found (the paper's overall is the mean of its nine columns). Sds are population sds
(ddof = 0), as elsewhere in the project. Genes of gene_groups absent from the panel are listed in
"missing" and left out of every mean. A slide with fewer than 50 spots (ST-Align's own filter,
§4.1) is skipped with the reason, as is an embedding absent from "emb" or with non-finite values
on a slide.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPRegressor
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from sigmma_jax import dlpfc
from sigmma_jax.evaluation import markdown as md
from sigmma_jax.evaluation.expression import pearson_rows

SPLITS = ("test",)
SPLIT_KINDS = ("random", "space")
PANELS = ("hvg", "none")
# ST-Align Table 3's genes and groups, in its column order.
GENE_GROUPS = tuple(dlpfc.NINE_GENES.items())
# config.eval settings read here, with the default used when the config has none.
DEFAULTS = {
    "gene_embeddings": ("image",),
    "gene_train_fraction": 0.8,
    "gene_split": "random",
    "gene_mlp_hidden": (256,),
    "gene_mlp_max_iter": 200,
    "gene_mlp_early_stopping": True,
    "gene_seeds": 3,
    "gene_groups": GENE_GROUPS,
    "gene_panel": "hvg",
}
FLOOR = "train_mean"
MIN_SPOTS = 50
# sklearn's own defaults, passed explicitly so the protocol is stated here and not by the version.
_MLP = dict(
    activation="relu",
    solver="adam",
    alpha=1e-4,
    batch_size="auto",
    learning_rate_init=1e-3,
    validation_fraction=0.1,
    n_iter_no_change=10,
    tol=1e-4,
)


def settings(config) -> dict[str, Any]:
    """The settings of config.eval this evaluator reads (`DEFAULTS` for the absent ones), checked."""
    ev = config.eval
    s = {k: ev.get(k, v) for k, v in DEFAULTS.items()}
    s["gene_embeddings"] = tuple(s["gene_embeddings"])
    s["gene_mlp_hidden"] = tuple(int(h) for h in s["gene_mlp_hidden"])
    s["gene_groups"] = tuple(
        (str(g), tuple(str(n) for n in genes)) for g, genes in s["gene_groups"]
    )
    s["gene_train_fraction"] = float(s["gene_train_fraction"])
    s["gene_mlp_max_iter"], s["gene_seeds"] = int(s["gene_mlp_max_iter"]), int(s["gene_seeds"])
    s["gene_mlp_early_stopping"] = bool(s["gene_mlp_early_stopping"])
    if s["gene_split"] not in SPLIT_KINDS:
        raise ValueError(f"eval.gene_split {s['gene_split']!r}: expected one of {SPLIT_KINDS}")
    if s["gene_panel"] not in PANELS:
        raise ValueError(f"eval.gene_panel {s['gene_panel']!r}: expected one of {PANELS}")
    if not 0 < s["gene_train_fraction"] < 1:
        raise ValueError("eval.gene_train_fraction must be in (0, 1)")
    if s["gene_seeds"] < 1 or s["gene_mlp_max_iter"] < 1 or not s["gene_mlp_hidden"]:
        raise ValueError("eval.gene_seeds, eval.gene_mlp_max_iter >= 1; gene_mlp_hidden not empty")
    return s


def split(
    xy: np.ndarray, fraction: float = 0.8, seed: int | Sequence[int] = 0, kind: str = "random"
) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices (sorted) of one slide's spots at `xy`: round(fraction * n) for
    training; the test spots drawn at random ("random") or the ones nearest to a random spot
    ("space", ties by index). `seed` seeds numpy's default_rng (an int or a sequence of ints)."""
    xy = np.asarray(xy, np.float64)
    n = len(xy)
    n_train = int(round(fraction * n))
    rng = np.random.default_rng(seed)
    if kind == "random":
        order = rng.permutation(n)
    elif kind == "space":
        centre = xy[rng.integers(n)]
        # Farthest first: the last n - n_train spots, nearest to the centre, are held out.
        order = np.argsort(-np.linalg.norm(xy - centre, axis=1), kind="stable")
    else:
        raise ValueError(f"unknown split {kind!r}; expected one of {SPLIT_KINDS}")
    return np.sort(order[:n_train]), np.sort(order[n_train:])


def fit_predict(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    *,
    hidden: Sequence[int] = (256,),
    max_iter: int = 200,
    early_stopping: bool = True,
    seed: int = 0,
) -> tuple[np.ndarray, int]:
    """(test predictions (n_test, genes), epochs run) of the MLP of the module docstring, fitted on
    the standardised `x_train` to the standardised `y_train`; predictions in `y_train`'s units."""
    scaler = StandardScaler().fit(x_train)
    y_scaler = StandardScaler().fit(y_train)
    mlp = MLPRegressor(
        hidden_layer_sizes=tuple(hidden),
        max_iter=max_iter,
        early_stopping=early_stopping,
        random_state=seed,
        **_MLP,
    )
    # One BLAS thread: minibatches of 200 spots are too small to split, and threads fought over
    # them (6x slower with 2 threads than with 1 on a shared 2-core machine); one thread also
    # keeps the numbers independent of the machine's core count.
    with warnings.catch_warnings(), threadpool_limits(1):
        # Hitting max_iter is reported as the epochs run instead of a warning per fit.
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp.fit(scaler.transform(x_train), y_scaler.transform(y_train))
        pred = mlp.predict(scaler.transform(x_test)).reshape(len(x_test), -1)
    pred = y_scaler.inverse_transform(pred)
    return pred, int(mlp.n_iter_)


def gene_scores(pred: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(MSE per gene, Pearson r per gene across spots) of predictions (spots, genes)."""
    return ((pred - true) ** 2).mean(axis=0), pearson_rows(pred.T, true.T)


def _mean_sd(values: Sequence[float]) -> dict[str, float | None]:
    if len(values) == 0:
        return {"mean": None, "sd": None}
    return {"mean": float(np.mean(values)), "sd": float(np.std(values))}


def _slide_record(
    mse: np.ndarray, pcc: np.ndarray | None, genes: list[str], groups: dict[str, list[str]]
) -> dict:
    # mse, pcc: (seeds, genes) of one slide -> its per-gene, per-group and overall numbers.
    m = mse.mean(axis=0)
    per_gene = dict(zip(genes, m.tolist()))
    rec: dict[str, Any] = {
        "mse": per_gene,
        "group_mse": {g: float(np.mean([per_gene[n] for n in ns])) for g, ns in groups.items()},
        "overall_mse": float(m.mean()),
    }
    if pcc is not None:
        p = pcc.mean(axis=0)
        rec["pcc"] = dict(zip(genes, p.tolist()))
        rec["overall_pcc"] = float(p.mean())
    return rec


def _summary(per_slide: dict[str, dict], genes: list[str], groups: dict[str, list[str]]) -> dict:
    scored = [r for r in per_slide.values() if "skipped" not in r]
    out: dict[str, Any] = {"n_slides": len(scored)}
    if genes:
        out["mse"] = {g: _mean_sd([r["mse"][g] for r in scored]) for g in genes}
        out["group_mse"] = {g: _mean_sd([r["group_mse"][g] for r in scored]) for g in groups}
        out["overall_mse"] = _mean_sd([r["overall_mse"] for r in scored])
        if scored and "pcc" in scored[0]:
            out["pcc"] = {g: _mean_sd([r["pcc"][g] for r in scored]) for g in genes}
            out["overall_pcc"] = _mean_sd([r["overall_pcc"] for r in scored])
    panels = [r["panel"] for r in scored if "panel" in r]
    if panels:
        out["panel"] = {k: _mean_sd([p[k] for p in panels]) for k in panels[0] if k != "n_genes"}
    return out


def evaluate(embeddings: dict, config) -> dict:
    """Spot expression MSE / PCC from the test split's embeddings (module docstring); plain
    JSON-able values, the same for the same input and config."""
    s = settings(config)
    test = embeddings["test"]
    slide_names = [str(n) for n in embeddings["slide_names"]]
    panel = [str(n) for n in embeddings["gene_names"]]
    slide = np.asarray(test["slide"], np.int64)
    xy = np.asarray(test["xy"], np.float64)
    targets = np.asarray(test["targets"], np.float64)
    if targets.shape != (len(slide), len(panel)):
        raise ValueError(f"targets {targets.shape} vs {len(slide)} spots x {len(panel)} genes")
    if not np.isfinite(targets).all():
        raise ValueError("targets have non-finite values")
    emb = test["emb"]

    index = {}
    for i, g in enumerate(panel):
        index.setdefault(g, i)  # a duplicated name: its first column
    groups = {g: [n for n in ns if n in index] for g, ns in s["gene_groups"]}
    groups = {g: ns for g, ns in groups.items() if ns}
    genes = [n for ns in groups.values() for n in ns]
    missing = [n for _, ns in s["gene_groups"] for n in ns if n not in index]
    cols = np.array([index[n] for n in genes], np.int64)
    with_panel = s["gene_panel"] == "hvg"

    slides: dict[str, dict] = {}
    splits: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for idx in np.unique(slide):
        name = slide_names[idx]
        here = np.flatnonzero(slide == idx)
        if len(here) < MIN_SPOTS:
            slides[name] = {
                "n_spots": int(len(here)),
                "skipped": f"{len(here)} < {MIN_SPOTS} spots",
            }
            continue
        # Split i of slide idx: a seed sequence of both, so slides get independent splits.
        splits[name] = [
            tuple(
                here[p]
                for p in split(xy[here], s["gene_train_fraction"], [i, idx], s["gene_split"])
            )
            for i in range(s["gene_seeds"])
        ]
        tr, te = splits[name][0]
        slides[name] = {"n_spots": int(len(here)), "n_train": int(len(tr)), "n_test": int(len(te))}

    # The floor: each gene's training mean, per split.
    floor_slides: dict[str, dict] = {}
    for name, info in slides.items():
        if "skipped" in info:
            floor_slides[name] = {"skipped": info["skipped"]}
            continue
        mse, panel_mse = [], []
        for tr, te in splits[name]:
            mean = targets[tr].mean(axis=0)
            err = ((targets[te] - mean) ** 2).mean(axis=0)
            mse.append(err[cols])
            panel_mse.append(float(err.mean()))
        rec = _slide_record(np.array(mse), None, genes, groups) if genes else {}
        if with_panel:
            rec["panel"] = {"mse": float(np.mean(panel_mse)), "n_genes": len(panel)}
        floor_slides[name] = rec

    results: dict[str, dict] = {}
    for ename in s["gene_embeddings"]:
        if ename not in emb:
            results[ename] = {"skipped": f"no embedding {ename!r} (have {sorted(emb)})"}
            continue
        x = np.asarray(emb[ename], np.float64)
        per_slide: dict[str, dict] = {}
        for name, info in slides.items():
            if "skipped" in info:
                per_slide[name] = {"skipped": info["skipped"]}
                continue
            rows = np.concatenate(splits[name][0])
            bad = int((~np.isfinite(x[rows]).all(axis=1)).sum())
            if bad:
                per_slide[name] = {"skipped": f"{bad} spots with non-finite embedding values"}
                continue
            mse, pcc, epochs, p_mse, p_pcc, p_epochs = [], [], [], [], [], []
            for i, (tr, te) in enumerate(splits[name]):
                fit = dict(
                    hidden=s["gene_mlp_hidden"],
                    max_iter=s["gene_mlp_max_iter"],
                    early_stopping=s["gene_mlp_early_stopping"],
                    seed=i,
                )
                if genes:
                    pred, n = fit_predict(x[tr], targets[tr][:, cols], x[te], **fit)
                    m, p = gene_scores(pred, targets[te][:, cols])
                    mse.append(m), pcc.append(p), epochs.append(n)
                if with_panel:
                    pred, n = fit_predict(x[tr], targets[tr], x[te], **fit)
                    m, p = gene_scores(pred, targets[te])
                    p_mse.append(float(m.mean())), p_pcc.append(float(p.mean())), p_epochs.append(n)
            rec = {"epochs": float(np.mean(epochs)) if epochs else None}
            if genes:
                rec.update(_slide_record(np.array(mse), np.array(pcc), genes, groups))
            if with_panel:
                rec["panel"] = {
                    "mse": float(np.mean(p_mse)),
                    "pcc": float(np.mean(p_pcc)),
                    "epochs": float(np.mean(p_epochs)),
                    "n_genes": len(panel),
                }
            per_slide[name] = rec
        results[ename] = {"per_slide": per_slide, "summary": _summary(per_slide, genes, groups)}

    skipped = [f"slide {n}: {i['skipped']}" for n, i in slides.items() if "skipped" in i]
    for ename, res in results.items():
        if "skipped" in res:
            skipped.append(f"{ename}: {res['skipped']}")
        else:
            skipped += [
                f"{ename} on {n}: {r['skipped']}"
                for n, r in res["per_slide"].items()
                if "skipped" in r and "skipped" not in slides[n]
            ]
    return {
        "split": s["gene_split"],
        "train_fraction": s["gene_train_fraction"],
        "seeds": s["gene_seeds"],
        "mlp": {
            "hidden": list(s["gene_mlp_hidden"]),
            "max_iter": s["gene_mlp_max_iter"],
            "early_stopping": s["gene_mlp_early_stopping"],
            **_MLP,
        },
        "genes": genes,
        "groups": groups,
        "missing": missing,
        "panel_genes": len(panel) if with_panel else 0,
        "slides": slides,
        "embeddings": results,
        FLOOR: {"per_slide": floor_slides, "summary": _summary(floor_slides, genes, groups)},
        "skipped": skipped,
    }


# --------------------------------------------------------------------------- markdown


def _fmt(x: Any) -> str:
    if x is None:
        return "–"
    return f"{float(x):.4f}" if math.isfinite(x) else "nan"


def _pm(d: dict | None) -> str:
    return "–" if d is None or d["mean"] is None else f"{_fmt(d['mean'])} ± {_fmt(d['sd'])}"


def _rows(result: dict) -> list[tuple[str, dict]]:
    # The embeddings, then the floor, labelled.
    rows = list(result["embeddings"].items())
    return rows + [(f"{FLOOR} (floor)", result[FLOOR])]


def result_markdown(result: dict) -> list[str]:
    """results.md lines: Table 3 (rows = embeddings and the training-mean floor, columns = genes,
    groups and overall, mean ± sd over slides), the same for PCC, the nine genes' MSE per slide
    (columns = slides and overall), the whole panel's per slide, and what was missing or skipped."""
    slides = list(result["slides"])
    genes, groups = result["genes"], result["groups"]
    how = (
        f"{result['split']} {round(100 * result['train_fraction'])} % / "
        f"{round(100 * (1 - result['train_fraction']))} % split of each slide's spots, "
        f"{result['seeds']} seeds, MLP {tuple(result['mlp']['hidden'])}"
    )
    lines: list[str] = []
    if genes:
        lines += [
            "## Spot gene expression from the embedding: MSE per gene (mean ± sd over slides; "
            "ST-Align Table 3)",
            "",
            f"{how}; {FLOOR}: predicting each gene's training mean, the floor.",
            "",
        ]
        header = ["embedding"] + genes + list(groups) + ["overall"]
        rows = []
        for name, res in _rows(result):
            if "skipped" in res:
                rows.append([name] + ["skipped"] * (len(header) - 1))
                continue
            sm = res["summary"]
            rows.append(
                [name]
                + [_pm(sm.get("mse", {}).get(g)) for g in genes]
                + [_pm(sm.get("group_mse", {}).get(g)) for g in groups]
                + [_pm(sm.get("overall_mse"))]
            )
        lines += md.table(header, rows) + [""]
        lines += ["## Spot gene expression: Pearson r per gene across test spots", ""]
        rows = [
            [name]
            + [_pm(res["summary"]["pcc"].get(g)) for g in genes]
            + [_pm(res["summary"]["overall_pcc"])]
            for name, res in result["embeddings"].items()
            if "skipped" not in res and "pcc" in res["summary"]
        ]
        lines += md.table(["embedding"] + genes + ["overall"], rows) + [""]
        lines += [f"## Spot gene expression: MSE over the {len(genes)} genes per slide", ""]
        rows = []
        for name, res in _rows(result):
            if "skipped" in res:
                rows.append([name] + ["skipped"] * (len(slides) + 1))
                continue
            cells = [name]
            for s in slides:
                r = res["per_slide"][s]
                cells.append("skipped" if "skipped" in r else _fmt(r["overall_mse"]))
            rows.append(cells + [_pm(res["summary"].get("overall_mse"))])
        lines += md.table(["embedding"] + slides + ["overall"], rows) + [""]
    if result["panel_genes"]:
        lines += [
            f"## Spot gene expression: the whole panel ({result['panel_genes']} genes), MSE "
            "(Pearson r) per slide, mean over genes",
            "",
        ]
        rows = []
        for name, res in _rows(result):
            if "skipped" in res:
                rows.append([name] + ["skipped"] * (len(slides) + 1))
                continue
            cells = [name]
            for s in slides:
                p = res["per_slide"][s].get("panel")
                if p is None:
                    cells.append("skipped")
                else:
                    cells.append(_fmt(p["mse"]) + (f" ({_fmt(p['pcc'])})" if "pcc" in p else ""))
            p = res["summary"].get("panel", {})
            cell = _pm(p.get("mse")) + (f" ({_pm(p['pcc'])})" if "pcc" in p else "")
            rows.append(cells + [cell])
        lines += md.table(["embedding"] + slides + ["overall"], rows) + [""]
    if result["missing"]:
        lines += [f"Not in the panel (left out): {', '.join(result['missing'])}.", ""]
    if result["skipped"]:
        lines += ["Skipped:", ""] + [f"- {s}" for s in result["skipped"]] + [""]
    return lines


# results.md: sigmma_jax.evaluation.markdown
markdown = md.per_model("spot_expression", result_markdown)
