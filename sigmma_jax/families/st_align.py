"""ST-Align (arXiv 2411.16793) as a family: Visium spots with their niches, four encoders and ABFN,
three contrastive losses, zero-shot domains and gene prediction (docs/method.md, "ST-Align").

Records are spots (`sigmma_jax.data.shards` with the spot kind), batches fixed-shape arrays
(`sigmma_jax.data.spot_pipeline`); the host-side input fitted once per run is scGPT's gene token
table over the panel (`prepare`). The model is `sigmma_jax.models.st_align.STAlign` (or the
`CLIPStyle` baseline, `model.variant="clip"`) around a backbone of the registry for the niche
image; converted weights of the backbone and of scGPT are loaded at initialisation. Inference keeps
every embedding, each encoder's raw output (the frozen baselines), the spots' expression (log1p
of counts normalised to 1e4) and where each spot lies; a finished run draws its held-out slides'
domains and lists each spot's cluster (`domains_test.csv`).
"""

from __future__ import annotations

import csv
import io
import pathlib

import jax
import ml_collections
import numpy as np

from sigmma_jax import atomic, losses
from sigmma_jax.data import features, scgpt_tokens, shards, spot_pipeline, spot_shards
from sigmma_jax.errors import InputError
from sigmma_jax.evaluation import domains, predictors, probe
from sigmma_jax.families.base import Family
from sigmma_jax.families.sigmma import place_backbone_weights
from sigmma_jax.models import abfn, backbones, niche_expression, resnet, scgpt
from sigmma_jax.models import st_align as model_lib

VARIANTS = ("st_align", "clip")
SCGPT_MODES = ("frozen", "full")
ENCODERS = ("specialised", "pretrained")
FUSIONS = ("abfn", "concat")
# What inference keeps of the model's output: its embeddings (projected, unit length) ...
EMBEDDINGS = {
    "st_align": (
        "fused_spot",
        "fused_niche",
        "spot_image",
        "niche_image",
        "spot_gene",
        "niche_gene",
        "image",
    ),
    "clip": ("image", "expression", "joint"),
}
# ... and its encoders' raw outputs, under these names (the frozen baselines read them).
RAW = {"niche_image": "niche_backbone", "spot_gene": "scgpt", "spot_image": "spot_backbone"}
TARGET_SUM = 1e4  # the spots' expression for evaluation: log1p of counts scaled to 1e4 per spot


def scgpt_vocab(config: ml_collections.ConfigDict, panel: list[str]) -> tuple[dict, dict]:
    """(vocab, token settings): the converted scGPT's, or, trained from scratch, the panel's own."""
    m = config.model.scgpt
    if m.weights:
        meta = scgpt.read_meta(m.weights)
        return scgpt.read_vocab(m.weights), dict(
            pad_value=float(meta["pad_value"]), n_bins=int(meta["n_bins"])
        )
    return scgpt_tokens.panel_vocab(panel), dict(pad_value=-2.0, n_bins=int(m.n_bins))


class STAlignFamily(Family):
    name = "st_align"
    # heads' and encoders' dropout; the draws that pick one negative per other cluster
    rng_streams = ("dropout", "negatives")
    evaluators = ("domains", "spot_expression")
    loss_terms = ("spot", "niche", "ns", "clip")  # Eq. 12's order

    # --- records and batching -----------------------------------------------------------------

    def preprocess(self, config, workdir, *, slides=None, panel=None) -> dict:
        return shards.preprocess(
            config, workdir, slides=slides, panel=panel, kind=spot_shards.SPOTS
        )

    def prepare(self, config, manifest, shard_dir, workdir) -> dict:
        """The manifest with scGPT's token table over its panel (`features`), written with the
        run (run.json), so embedding a slide later tokenises it the same way."""
        panel = manifest["genes"]
        vocab, extra = scgpt_vocab(config, panel)
        tokens = scgpt_tokens.gene_tokens(panel, vocab)
        if not (tokens >= 0).any():
            raise InputError(
                f"{config.model.scgpt.weights}: none of the panel's {len(panel)} genes is in "
                "scGPT's vocabulary (gene symbols expected, e.g. MOBP)"
            )
        spec = dict(
            tokens=tokens.tolist(),
            length=scgpt_tokens.seq_len(tokens, config.model.scgpt.max_len),
            pad_id=int(vocab["<pad>"]),
            cls_id=int(vocab["<cls>"]),
            vocab_size=len(vocab),
            niche_tokens=config.model.get("encoders") == "pretrained",
            genes_in_vocab=int((tokens >= 0).sum()),
            **extra,
        )
        return dict(manifest, features=spec)

    def train_iterator(self, config, shard_dir, manifest, mesh):
        return spot_pipeline.train_iterator(
            shard_dir,
            manifest,
            config.train.global_batch,
            seed=config.seed,
            mesh=mesh,
            augment_images=config.data.augment,
            workers=config.data.loader_workers,
            prefetch=config.data.prefetch,
        )

    def eval_batches(self, config, shard_dir, manifest, split, mesh):
        return spot_pipeline.eval_batches(shard_dir, manifest, split, config.eval.batch, mesh)

    def zeros_batch(self, manifest, batch):
        return spot_pipeline.zeros_batch(manifest, batch)

    # --- model and loss -----------------------------------------------------------------------

    def build_model(self, config, manifest, resolved=None):
        """(model, {"backbone": the niche image encoder's config, "scgpt": scGPT's}): from
        `resolved` (saved with a checkpoint) when given, else from the config and, for scGPT, the
        converted weights' metadata or the run's vocabulary (the manifest's `features`)."""
        m = config.model
        resolved = dict(resolved or {})
        cfg, kw = backbones.resolve(m, resolved.get("backbone"))
        backbone = backbones.build(cfg, **kw)
        if m.variant == "clip":
            return (
                model_lib.CLIPStyle(
                    backbone,
                    dim=m.clip_dim,
                    temperature_init=m.temperature_init,
                    learn_temperature=m.learn_temperature,
                    temperature_min=m.temperature_min,
                    negatives=config.train.negatives,
                ),
                dict(backbone=cfg),
            )
        sc = resolved.get("scgpt") or self._scgpt_config(config, manifest)
        pretrained = m.encoders == "pretrained"
        r = m.spot_image
        fusion_kw = dict(out_dim=m.fused_dim)
        fusion = (
            abfn.ABFN(**m.abfn, **fusion_kw)
            if m.fusion == "abfn"
            else abfn.Concatenate(**fusion_kw)
        )
        model = model_lib.STAlign(
            backbone=backbone,
            spot_gene=scgpt.build(sc, dtype=m.dtype),
            fusion=fusion,
            spot_image=None
            if pretrained
            else resnet.ResNet(
                layers=tuple(r.layers),
                width=r.width,
                stem=r.stem,
                norm=r.norm,
                dtype=m.dtype,
                remat=bool(m.remat),
            ),
            niche_gene=None
            if pretrained
            else niche_expression.NicheExpressionEncoder(**m.niche_gene, target_sum=TARGET_SUM),
            embed_dim=m.embed_dim,
            head_dropout=m.head_dropout,
            temperature_init=m.temperature_init,
            learn_temperature=m.learn_temperature,
            temperature_min=m.temperature_min,
            negatives=config.train.negatives,
        )
        return model, dict(backbone=cfg, scgpt=sc)

    def _scgpt_config(self, config, manifest) -> dict:
        m = config.model.scgpt
        if m.weights:
            return dict(scgpt.read_meta(m.weights)["config"])
        return dict(
            ntoken=int(manifest["features"]["vocab_size"]),
            d_model=m.d_model,
            nhead=m.nhead,
            d_hid=m.d_hid,
            nlayers=m.nlayers,
            dropout=m.dropout,
            pad_value=float(manifest["features"]["pad_value"]),
        )

    def check_weights(self, config) -> None:
        super().check_weights(config)
        if config.model.variant != "clip" and config.model.scgpt.weights:
            scgpt.read_meta(config.model.scgpt.weights)

    def pretrained(self, config, params):
        params = place_backbone_weights(config, params)
        w = config.model.get("scgpt", {}).get("weights") if config.model.variant != "clip" else ""
        if w:
            _, weights = scgpt.load(w, like=params["spot_gene"])
            params = {**params, "spot_gene": weights}
        return params

    def frozen_modules(self, config) -> tuple[str, ...]:
        m = config.model
        if m.variant != "clip" and m.scgpt.mode == "frozen":
            return ("spot_gene",)
        return ()

    def loss_fn(self, config):
        if config.model.variant == "clip":
            return losses.clip
        weights = tuple(config.train.loss_weights)
        return lambda out: losses.st_align(out, weights)

    # --- inference and evaluation -------------------------------------------------------------

    def inference_fn(self, model, mode: str = "spots"):
        """mode "spots": every embedding and raw encoder output, with the batch's `meta` and
        counts; "image": the image side alone (an H&E slide without expression)."""

        def spots(params, batch):
            out = model.apply({"params": params}, batch, train=False)
            return dict(out, **batch["meta"], counts=batch["counts"])

        def image(params, batch):
            out = model.apply({"params": params}, batch, method="encode_images")
            return dict(out, **batch["meta"])

        return dict(spots=spots, image=image)[mode]

    def keep(self, out, valid, config):
        """{"emb": {name: (n, D)}, "slide", "label", "xy" (µm), "index", "targets" (log1p of
        counts normalised to 1e4)}; "expression" in "emb" is that expression (the expression-only
        baseline's input: the evaluators reduce it by PCA, as scanpy's pipeline does)."""
        variant = "clip" if "joint" in out else "st_align"
        emb = {k: np.asarray(out[k])[valid] for k in EMBEDDINGS[variant] if k in out}
        for k, name in RAW.items():
            if k in out["raw"]:
                emb[name] = np.asarray(out["raw"][k], np.float32)[valid]
        targets = features.normalized_log1p(np.asarray(out["counts"])[valid], TARGET_SUM)
        if variant == "st_align":  # the CLIP baseline's own "expression" is its projection
            emb["expression"] = targets.astype(np.float32)
        return dict(
            emb=emb,
            slide=np.asarray(out["slide"])[valid],
            label=np.asarray(out["label"])[valid],
            xy=np.asarray(out["xy_um"])[valid],
            index=np.asarray(out["index"])[valid],
            targets=targets,
        )

    def context(self, config, manifest, shard_dir):
        return dict(
            slide_names=list(manifest["slides"]),
            label_names=list(manifest["labels"]),
            gene_names=list(manifest["genes"]),
        )

    def finish(self, workdir, config, manifest, embeddings, context, results):
        """predictors.npz (expression from the image embedding, for `embed`), plots/domains.png
        (each held-out slide's layers beside the clusters of every embedding) and
        domains_test.csv (each test spot's layer and clusters); the clusters leave results.json,
        whose numbers are about them."""
        clusters = {
            name: entry["domains"].pop("clusters", None)
            for name, entry in results.items()
            if isinstance(entry, dict) and isinstance(entry.get("domains"), dict)
        }
        if jax.process_index() != 0:
            return []
        workdir = pathlib.Path(workdir)
        paths = [workdir / predictors.FILE]
        train = embeddings["train"]
        # HEST-Bench's probe with an intercept (SIGMMA's predictors use the same): image -> the
        # panel's log1p expression, for slides embedded later (`sigmma_jax.analysis.spots`).
        key = "image" if "image" in train["emb"] else next(iter(train["emb"]))
        fitted = probe.fit(train["emb"][key], train["targets"], fit_intercept=True)
        predictors.save_probe(paths[0], fitted, manifest["genes"], key)
        if clusters.get("trained") is None:
            return paths
        full = {**embeddings, **context}
        drawn = dict(results["trained"]["domains"], clusters=clusters["trained"])
        paths.append(domains.draw(full, drawn, workdir / "plots" / "domains.png"))
        paths.append(workdir / "domains_test.csv")
        atomic.write_text(paths[-1], _clusters_csv(full, drawn, manifest))
        return paths


def _clusters_csv(embeddings: dict, result: dict, manifest: dict) -> str:
    """One row per annotated test spot: slide, barcode, layer, then its cluster (seed 0) by each
    embedding and method."""
    test = embeddings["test"]
    spots = shards.items(manifest)
    cl = result["clusters"]
    cols = [(e, m) for e, by in cl["labels"].items() for m in next(iter(by.values()), {})]
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["slide", "barcode", "layer"] + [f"{e}/{m}" for e, m in cols])
    for slide, rows in cl["rows"].items():
        for j, i in enumerate(rows):
            spot = spots[int(test["index"][i])]
            row = [slide, spot["barcode"], embeddings["label_names"][int(test["label"][i])]]
            row += [cl["labels"][e].get(slide, {}).get(m, [-1] * len(rows))[j] for e, m in cols]
            w.writerow(row)
    return out.getvalue()


FAMILY = STAlignFamily()
