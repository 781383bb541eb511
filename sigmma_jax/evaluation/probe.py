"""Task 1 by HEST-Benchmark's linear probe on the HE embeddings (docs/method.md, "Gene expression
prediction"): StandardScaler -> PCA -> Ridge, fit on the training tiles, scored on the test tiles.

The headline reads every method at the same width (`eval.equal_width`: at most `model.embed_dim`
PCA components, whatever the number of scales), its own tile embedding (`eval.probe_scales`: the
mean of its scales), with an intercept and targets scaled per gene to [0, 1]
(`eval.target_scale`), so a predictor right up to each gene's mean is not scored as wrong. Beside
it: `hest`, HEST-Benchmark's own protocol (no intercept, log1p units; its per-gene PCC is the
leaderboard's number), and `variants`, the same probe on each scale alone, the mean, the old
concatenation and the backbone's embeddings, each labelled with its width.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import Ridge
from sklearn.preprocessing import StandardScaler

from sigmma_jax.evaluation import expression, genes
from sigmma_jax.evaluation import markdown as md

SPLITS = ("train", "test")
DEFAULTS = {
    **expression.DEFAULTS,
    **genes.DEFAULTS,
    "pca_components": 256,  # HEST-Bench's PCA width
    "probe_embedding": "projected",  # EMBEDDINGS: the heads' embeddings | the backbone's
    "probe_scales": "mean",  # expression.SCALE_READS
    "equal_width": True,  # at most model.embed_dim components (`components`)
    "probe_intercept": True,  # HEST-Bench's has none: the results' "hest" is its protocol
}
# eval.probe_embedding -> the embeddings' key: the model's projected scales or the backbone's
EMBEDDINGS = {"projected": "he", "backbone": "he_backbone"}
# Ridge's lsqr iteration cap, as in HEST-Benchmark. The tolerance is tighter than sklearn's 1e-4
# (HEST's) so the probe returns the ridge optimum itself: at 1e-4 lsqr stops early enough to move
# per-tile PCC by ~1e-3 relative. PCA features have orthogonal columns, so this costs little.
_RIDGE_MAX_ITER = 1000
_RIDGE_TOL = 1e-8


@dataclasses.dataclass
class Probe:
    """A fitted probe as plain arrays (saved with a run, never pickled): StandardScaler -> PCA ->
    ridge; `predict` is the composition of the three."""

    mean: np.ndarray  # (features,) StandardScaler
    scale: np.ndarray  # (features,)
    pca_mean: np.ndarray  # (features,)
    components: np.ndarray  # (k, features)
    coef: np.ndarray  # (genes, k)
    intercept: np.ndarray  # (genes,): zeros without intercept

    def predict(self, x: np.ndarray) -> np.ndarray:
        z = (
            (np.asarray(x, np.float64) - self.mean) / self.scale - self.pca_mean
        ) @ self.components.T
        return z @ self.coef.T + self.intercept


def fit(
    train_x: np.ndarray,
    train_y: np.ndarray,
    *,
    n_components: int = 256,
    alpha_genes: int | None = None,
    fit_intercept: bool = False,
    seed: int = 0,
) -> Probe:
    """HEST-Benchmark's probe on every column of `train_y`: StandardScaler, exact PCA capped at
    min(n_train, n_features) components, ridge with alpha = 100 / (components * alpha_genes), lsqr.

    `alpha_genes` defaults to the number of columns, as HEST sets it; a probe fitted on more genes
    with HEST's 50 keeps HEST's alpha, and since ridge fits each gene on its own, its predictions of
    those 50 genes are the HEST probe's. The PCA features are centred on the training tiles, so with
    `fit_intercept` the coefficients are the same and the intercept is each gene's training mean.
    """
    train_x, train_y = np.asarray(train_x, np.float64), np.asarray(train_y, np.float64)
    scaler = StandardScaler().fit(train_x)
    n_comp = min(n_components, *train_x.shape)
    x_tr = scaler.transform(train_x)
    pca = PCA(n_components=n_comp, svd_solver="full", random_state=seed).fit(x_tr)
    z_tr = pca.transform(x_tr)
    alpha = 100.0 / (z_tr.shape[1] * (alpha_genes or train_y.shape[1]))
    ridge = Ridge(
        alpha=alpha,
        solver="lsqr",
        fit_intercept=fit_intercept,
        max_iter=_RIDGE_MAX_ITER,
        tol=_RIDGE_TOL,
        random_state=seed,
    ).fit(z_tr, train_y)
    return Probe(
        mean=scaler.mean_,
        scale=scaler.scale_,
        pca_mean=pca.mean_,
        components=pca.components_,
        coef=np.atleast_2d(ridge.coef_),
        intercept=np.broadcast_to(ridge.intercept_, (train_y.shape[1],)).astype(np.float64),
    )


def linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    *,
    genes: np.ndarray | None = None,
    n_components: int = 256,
    fit_intercept: bool = False,
    target_scale: str = "none",
    seed: int = 0,
) -> dict[str, float]:
    """HEST-Benchmark linear probe (`fit`) on the columns `genes` of the targets (None: all;
    `sigmma_jax.evaluation.genes` chooses them as HEST-Benchmark does), scored on the test tiles.

    `train_y` / `test_y` are tile expression targets (`expression.tile_targets`). Two deliberate
    differences from HEST-Benchmark, both numerical: PCA is exact (full SVD; HEST's sklearn "auto"
    turns randomized and unseeded for 1024-d embeddings, which moved the metrics by ~1% in our
    checks), and lsqr runs to tol 1e-8 (see _RIDGE_TOL).

    Caveat of "no intercept" (HEST's): the PCA features are centred on the training tiles, so the
    probe predicts each gene's deviation from zero, not from its training mean. Per-gene PCC (HEST's
    metric) is blind to that, but per-tile PCC and MSE (SIGMMA's) are not: they pay for the
    missing gene means. `fit_intercept=True` adds the training mean back, all else equal.

    Returns per-tile Pearson (over the chosen genes) and per-tile MSE as mean and population sd
    (ddof=0) across test tiles, and per-gene Pearson (across test tiles) averaged over genes.
    A tile or gene whose true or predicted values are exactly constant counts as Pearson 0.
    `target_scale` ("none" | "minmax") are the units of the scores (`expression.target_range`, from
    the training tiles); ridge is equivariant to them, so it is the same as fitting in them.
    """
    train_x, test_x = np.asarray(train_x, np.float64), np.asarray(test_x, np.float64)
    train_y, test_y = np.asarray(train_y, np.float64), np.asarray(test_y, np.float64)
    if train_x.shape[0] != train_y.shape[0] or test_x.shape[0] != test_y.shape[0]:
        raise ValueError("x and y must have the same number of tiles")
    if train_x.shape[1] != test_x.shape[1] or train_y.shape[1] != test_y.shape[1]:
        raise ValueError("train and test must have the same feature and gene dimensions")
    if genes is not None:
        train_y, test_y = train_y[:, genes], test_y[:, genes]
    probe = fit(train_x, train_y, n_components=n_components, fit_intercept=fit_intercept, seed=seed)
    units = expression.target_range(train_y, target_scale)
    return {
        **expression.scores(probe.predict(test_x), test_y, units),
        "n_components": int(probe.coef.shape[1]),
        "fit_intercept": bool(fit_intercept),
    }


def components(config, scales: str) -> int:
    """The PCA components the probe keeps at most when it reads `scales`: eval.pca_components, and
    with eval.equal_width no more than the joint space's width, so a model's number of scales does
    not set it. The concatenation keeps its own width (as wide as its scales together): what it
    measured before equal widths."""
    e = config.eval
    if e.equal_width and scales != "concat":
        return min(e.pca_components, config.model.embed_dim)
    return e.pca_components


def variants(split: dict, embedding: str) -> list[str]:
    """The inputs `evaluate` reports for a split's embeddings: "EMBEDDING/SCALES" for each scale
    alone and, with several, their mean and concatenation; the projected ones only when the
    headline reads them (a frozen backbone's heads are untrained)."""
    out = []
    for name, key in EMBEDDINGS.items():
        if name == "projected" and embedding != "projected":
            continue
        scales = list(split[key])
        out += [f"{name}/{s}" for s in scales] + (
            [f"{name}/mean", f"{name}/concat"] if len(scales) > 1 else []
        )
    return out


def _headline_settings(config) -> dict:
    e = config.eval
    return dict(fit_intercept=e.probe_intercept, target_scale=e.target_scale)


# HEST-Benchmark's own protocol, in `linear_probe`'s keywords
HEST_SETTINGS = dict(fit_intercept=False, target_scale="none")


def _probe_input(embeddings: dict, config, read: str, **kw) -> dict:
    embedding, scales = read.split("/")
    key = EMBEDDINGS[embedding]
    train, test = embeddings["train"], embeddings["test"]
    return linear_probe(
        expression.features(train, key, scales),
        train["targets"],
        expression.features(test, key, scales),
        test["targets"],
        genes=embeddings["genes"],
        n_components=components(config, scales),
        **kw,
    )


def learning_curve(
    embeddings: dict, config, reads: list[str], sizes: list[int], repeats: int = 3, seed: int = 0
) -> dict[str, dict[int, list[float]]]:
    """Per-gene PCC of the headline probe on seeded subsets of `n` training tiles for each n of
    `sizes` (at most all of them) and each input of `reads`: {read: {n: [mean, sd] over
    repeats}}. Where the concatenation of scales stops costing against their mean is where there
    are enough tiles for its width."""
    own = _headline_settings(config)
    train = embeddings["train"]
    n_train = len(train["targets"])
    rng = np.random.default_rng(seed)
    out: dict[str, dict[int, list[float]]] = {r: {} for r in reads}
    for n in sorted({min(n, n_train) for n in sizes}):
        subsets = []  # each draw's training split, shared by every input
        for _ in range(repeats):
            idx = np.sort(rng.choice(n_train, n, replace=False))
            subsets.append(
                {
                    k: ({s: x[idx] for s, x in v.items()} if isinstance(v, dict) else v[idx])
                    for k, v in train.items()
                }
            )
        for read in reads:
            vals = [
                _probe_input(dict(embeddings, train=sub), config, read, **own)["pcc_gene_mean"]
                for sub in subsets
            ]
            out[read][int(n)] = [
                float(np.mean(vals)),
                float(np.std(vals, ddof=1)) if repeats > 1 else 0.0,
            ]
    return out


def evaluate(embeddings: dict, config) -> dict:
    """The probe on the genes of `embeddings["genes"]`: the headline (module docstring) on
    eval.probe_embedding read as eval.probe_scales, `hest` (HEST-Benchmark's protocol on the same
    input) and `variants` (every input of `variants`, with the headline's settings). Each probe is
    fitted once: the headline's input among the variants, and HEST's protocol when it is the
    headline's, reuse the headline's fit."""
    e = config.eval
    own = _headline_settings(config)
    read = f"{e.probe_embedding}/{e.probe_scales}"
    headline = _probe_input(embeddings, config, read, **own)
    result = dict(headline, input=read, target=e.target, target_scale=e.target_scale)
    hest = (
        headline
        if own == HEST_SETTINGS
        else _probe_input(embeddings, config, read, **HEST_SETTINGS)
    )
    result["hest"] = {k: hest[k] for k in ("pcc_gene_mean", "pcc_tile_mean", "mse_tile_mean")}
    result["variants"] = {
        v: headline if v == read else _probe_input(embeddings, config, v, **own)
        for v in variants(embeddings["train"], e.probe_embedding)
    }
    return result


def markdown(by_model: dict, results: dict) -> list[str]:
    """The headline table; HEST-Benchmark's protocol on the same input; then every input variant
    of the trained model (or the first column), per-tile PCC, MSE and per-gene PCC at its width."""
    del results
    lines = [
        "## Gene expression prediction: linear probe on HE embeddings (mean ± sd over test tiles)",
        "",
        *expression.table(by_model),
        "",
    ]
    hest = {m: r["hest"] for m, r in by_model.items() if "hest" in r}
    if hest:
        lines += [
            "HEST-Benchmark's protocol on the same input (no intercept, log1p units; its per-gene "
            "PCC is the leaderboard's number):",
            "",
            *expression.table(hest),
            "",
        ]
    model, result = next(((m, r) for m, r in by_model.items() if r.get("variants")), (None, {}))
    if result:
        lines += [f"What the probe reads ({model}; the headline's settings):", ""]
        rows = [
            [
                f"`{v}`" + (" (headline)" if v == result.get("input") else ""),
                str(s["n_components"]),
                f"{md.fmt(s['pcc_tile_mean'])} ± {md.fmt(s['pcc_tile_sd'])}",
                f"{md.fmt(s['mse_tile_mean'])} ± {md.fmt(s['mse_tile_sd'])}",
                md.fmt(s["pcc_gene_mean"]),
            ]
            for v, s in result["variants"].items()
        ]
        header = ["input", "width", "PCC per tile", "MSE per tile", "PCC per gene"]
        lines += md.table(header, rows) + [""]
    return lines
