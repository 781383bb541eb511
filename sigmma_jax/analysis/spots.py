"""A trained ST-Align run applied to Visium slides: `OUT/spots.h5ad` (the command is
`python -m sigmma_jax.embed`, which picks this for an ST-Align run).

1. The run: config and manifest from run.json (gene panel, spot settings, scGPT's token table), the
   latest checkpoint's parameters, the expression predictor fitted at the end of training.
2. The slides, in any Visium form (`config.data`: HEST-1k, Space Ranger, generic spots), are
   preprocessed into OUT/shards with the run's panel and spot settings; every spot with counts is
   embedded, whatever split it would fall in.
3. `spots.h5ad`: one row per spot (obs_names = barcodes; "slide/barcode" with several slides), X the
   raw counts over the panel, obsm["spatial"] the spot centres in level-0 px,
   obsm["st_align_fused"] the fused spot embedding and obsm["st_align_<encoder>"] each encoder's,
   obs["domain"] the zero-shot domains (k-means on PCA of the fused embedding per slide, k = the
   slide's annotated layers when it has labels, else analysis.n_domains), obs["layer"] the labels
   when given, and layers["predicted"] the expression predicted from the image (log1p of counts
   normalised to 1e4, the panel's genes).
4. Written atomically, then `OUT/embed.json` (marks the output complete; a rerun with the same run
   and slides reuses it) and `OUT/figures/domains_<slide>.png`.
"""

from __future__ import annotations

import json
import logging
import pathlib

import ml_collections
import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score

from sigmma_jax import atomic, sharding
from sigmma_jax.analysis.embed import h5ad_safe
from sigmma_jax.data import shards
from sigmma_jax.evaluation import domains, inference, predictors
from sigmma_jax.families.st_align import FAMILY as ST_ALIGN
from sigmma_jax.train import checkpoints, loop, run_info

DONE = "embed.json"
SPOTS = "spots.h5ad"
# obsm names of what inference keeps (families.st_align.EMBEDDINGS and RAW)
OBSM = {
    "fused_spot": "st_align_fused",
    "fused_niche": "st_align_fused_niche",
    "spot_image": "st_align_spot_image",
    "niche_image": "st_align_niche_image",
    "spot_gene": "st_align_spot_gene",
    "niche_gene": "st_align_niche_gene",
    "image": "st_align_image",
}


def slide_config(
    run_config, settings: dict, config, out: pathlib.Path
) -> ml_collections.ConfigDict:
    """The run's config with the slides (`data`), batch, mesh and analysis of `config`, and the
    run's spot settings; nothing trains or is evaluated on the slides' shards."""
    c = ml_collections.ConfigDict(run_config.to_dict())
    c.data = ml_collections.ConfigDict(config.data.to_dict())
    c.data.spots.update({k: v for k, v in settings.items() if k in c.data.spots})
    c.data.update(shard_dir=str(out / "shards"))
    c.eval.batch = config.eval.batch
    c.mesh = ml_collections.ConfigDict(config.mesh.to_dict())
    c.train.global_batch, c.train.steps, c.evals = config.eval.batch, 0, ()
    c.analysis = ml_collections.ConfigDict(config.analysis.to_dict())
    return c


def _every_spot(manifest: dict) -> dict:
    """The manifest with one split, "all", of every spot in record order."""
    n = len(shards.items(manifest))
    return dict(manifest, splits={"all": list(range(n)), "train": [], "val": [], "test": []})


def domains_of(emb: np.ndarray, slide: np.ndarray, label: np.ndarray, n_domains: int, seed: int):
    """Per slide: k-means on PCA (50) of the fused embedding, k = its annotated layers (when it has
    two or more), else `n_domains`; and the ARI with the layers where annotated."""
    out, ari = np.full(len(slide), -1, np.int64), {}
    for s in np.unique(slide):
        rows = np.flatnonzero(slide == s)
        known = label[rows] >= 0
        k = len(np.unique(label[rows][known])) if known.any() else 0
        k = k if k >= 2 else n_domains
        k = min(k, len(rows))
        out[rows], _ = domains.cluster(domains.features(emb[rows], 50), k, "kmeans", seed)
        if known.any():
            ari[int(s)] = float(adjusted_rand_score(label[rows][known], out[rows][known]))
    return out, ari


def embed_spots(run_dir, config: ml_collections.ConfigDict, out) -> dict:
    """Writes OUT/spots.h5ad (module docstring); returns OUT/embed.json's content."""
    import anndata

    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run_config, run_manifest = run_info.read(run_dir)
    c = slide_config(run_config, run_manifest["settings"], config, out)
    manifest = ST_ALIGN.preprocess(c, out, panel=run_manifest["genes"])
    stamp = dict(run=str(pathlib.Path(run_dir).resolve()), shard_hash=manifest["shard_hash"])
    done = out / DONE
    if done.exists():
        old = json.loads(done.read_text())
        if {k: old.get(k) for k in stamp} == stamp and (out / SPOTS).exists():
            logging.info("%s: already embedded with this run and slides; reusing it", out)
            return old
        done.unlink()
    mesh = sharding.make_mesh(c)
    every = _every_spot(dict(manifest, features=run_manifest["features"]))
    model, abstract, mngr = loop.saved_model(run_config, run_dir, run_manifest, mesh)
    params, step = checkpoints.restore_params(mngr, abstract)
    mngr.close()
    apply = inference.make_embed_fn(ST_ALIGN, model, mesh)
    emb = inference.embed_split(ST_ALIGN, apply, params, out / "shards", every, "all", c, mesh)
    probe, genes, key = predictors.load_probe(pathlib.Path(run_dir) / predictors.FILE)
    predicted = probe.predict(emb["emb"][key]).astype(np.float32)
    spots = shards.items(manifest)
    names = manifest["slides"]
    label_names = manifest["labels"]
    clusters, ari = domains_of(
        emb["emb"]["fused_spot"], emb["slide"], emb["label"], c.analysis.n_domains, c.analysis.seed
    )
    barcodes = np.array([t["barcode"] for t in spots], dtype=object)
    slide_of = np.array([names[i] for i in emb["slide"]], dtype=object)
    obs = pd.DataFrame(
        {
            "slide": pd.Categorical(slide_of),
            "domain": pd.Categorical(clusters.astype(str)),
        },
        index=pd.Index(barcodes, dtype=object),
    )
    if label_names:
        obs["layer"] = pd.Categorical(
            ["" if j < 0 else label_names[j] for j in emb["label"]], categories=[""] + label_names
        )
    if len(names) > 1:  # barcodes repeat across slides: obs_names must be unique
        obs.insert(0, "barcode", barcodes)
        obs.index = pd.Index(slide_of + "/" + barcodes, dtype=object)
    counts = _counts(out / "shards", every)
    pixel = {s: manifest["report"]["slides"][s]["pixel_size_um"] for s in names}
    um = np.array([pixel[s] for s in slide_of])[:, None]
    adata = anndata.AnnData(
        X=counts,
        obs=h5ad_safe(obs),
        var=pd.DataFrame(index=pd.Index(manifest["genes"], dtype=object)),
        obsm={
            "spatial": emb["xy"] / um,  # level-0 px of each slide's H&E
            **{OBSM[k]: v for k, v in emb["emb"].items() if k in OBSM},
        },
        layers={"predicted": predicted},
        uns=dict(
            st_align=dict(
                run=stamp["run"],
                step=int(step),
                predicted="log1p of counts normalised to 1e4, from the image embedding "
                f"{key!r} (HEST-Bench's probe with an intercept)",
                domain_ari={names[i]: v for i, v in ari.items()},
            )
        ),
    )
    with atomic.atomic_path(out / SPOTS) as tmp:
        adata.write_h5ad(tmp)
    figures = _figures(emb, clusters, manifest, out / "figures")
    result = dict(
        stamp,
        step=int(step),
        files=[SPOTS, *[str(p.relative_to(out)) for p in figures]],
        spots=len(spots),
        domain_ari={names[i]: v for i, v in ari.items()},
        preprocessing=manifest["report"],
    )
    atomic.write_json(done, result, indent=1)
    return result


def _counts(shard_dir: pathlib.Path, manifest: dict):
    import grain
    import scipy.sparse as sp

    from sigmma_jax.data import records

    src = grain.sources.ArrayRecordDataSource([str(shard_dir / s) for s in manifest["shards"]])
    return sp.csr_matrix(np.stack([records.decode_spot(src[i])["counts"] for i in range(len(src))]))


def _figures(emb: dict, clusters: np.ndarray, manifest: dict, where: pathlib.Path) -> list:
    """figures/domains_<slide>.png: the slide's spots coloured by domain, beside their layers when
    the slide has labels (y pointing down, as in the image)."""
    from matplotlib.figure import Figure

    from sigmma_jax.analysis import figures

    paths = []
    for i, name in enumerate(manifest["slides"]):
        rows = np.flatnonzero(emb["slide"] == i)
        if not len(rows):
            continue
        xy, lab = emb["xy"][rows], emb["label"][rows]
        panels = [("domains (k-means on the fused spot)", clusters[rows], None)]
        if (lab >= 0).any():
            panels.append(("layers", lab, manifest["labels"]))
        fig = Figure(figsize=(5 * len(panels), 5), layout="constrained")
        for ax, (title, values, names) in zip(
            fig.subplots(1, len(panels), squeeze=False)[0], panels
        ):
            colours = figures.palette(int(values.max()) + 1)
            for v in np.unique(values):
                sel = values == v
                label = "unannotated" if v < 0 else (names[v] if names else str(v))
                ax.scatter(
                    xy[sel, 0],
                    xy[sel, 1],
                    s=9,
                    color="lightgrey" if v < 0 else colours[v],
                    label=label,
                )
            ax.set_aspect("equal")
            ax.invert_yaxis()
            ax.set_title(f"{name}: {title}")
            ax.set_xlabel("µm")
            ax.legend(fontsize="x-small", markerscale=1.5, loc="upper right")
        paths.append(figures.save(fig, where / f"domains_{name}.png"))
    return paths
