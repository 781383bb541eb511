"""The one config schema every `configs/*.py` file starts from.

Paper-scale values are the defaults; `apply_demo` swaps in a model and schedule small enough for a laptop
CPU, so any config can be tried with `--config=configs/X.py:demo` before it goes to a TPU.
"""

from __future__ import annotations

import ml_collections

from sigmma_jax import dlpfc
from sigmma_jax.models import backbones


def _evaluator_defaults(names) -> dict:
    # Imported here, not at the top: preprocessing's workers import this module and never build
    # a config, and the evaluators bring scikit-learn and matplotlib.
    from sigmma_jax import evaluation

    return evaluation.defaults(names)


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0

    # --- data: readers -> tiles and graphs -> shards (docs/method.md, "Data") -------------------------------
    c.data = d = ml_collections.ConfigDict()
    d.source = "generic"  # "synthetic" | "generic" | "hest" | "xenium" | "spatialdata"
    d.cells = ""  # generic: .h5ad of cells (raw counts, obsm['spatial'] in level-0 px)
    d.wsi = ""  # generic: (pyramidal) TIFF of the H&E
    d.pixel_size_um = 0.0  # 0: read from the OME/TIFF metadata
    # Counts must be raw (integers); True takes non-integer X as it is (e.g. ambient-corrected).
    d.allow_non_integer_counts = False
    d.hest_dir = ""
    d.sample_ids = ()
    # Held-out groups of samples ("SAMPLE=GROUP", e.g. a donor) where the metadata names none or
    # the wrong one: HEST's DLPFC samples name no patient, so each slice would be its own fold and
    # a donor's other slices would train (spatialLIBD: 3 donors of 4 slices).
    d.sample_groups = ()
    d.min_qv = 20.0  # HEST transcripts below this Phred quality are not counted
    d.xenium_dir = ""  # raw Xenium output folder (experiment.xenium, cells.parquet, ...)
    d.alignment = ""  # H&E -> morphology alignment: 3x3 affine CSV or keypoints CSV
    # A SpatialData zarr store (spatialdata-io: Xenium, Visium, CosMx, MERSCOPE...): the H&E image,
    # the table of counts and the coordinate system linking them ("": the only one); centroids:
    # "" (the shapes or labels the table annotates) or an obsm key of positions in
    # coordinate_system (CosMx: "global"); um_per_unit: µm per unit of the cells' coordinates
    # (Xenium, MERSCOPE: 1; CosMx: its pixel size) unless data.pixel_size_um gives the H&E's, or
    # the Visium array pitch does.
    d.spatialdata = ml_collections.ConfigDict(
        dict(store="", image="", table="", coordinate_system="", centroids="", um_per_unit=1.0)
    )
    # size_um: 3.84 mm, 809 tiles (635 train, 174 held out). At 2.56 mm the demo had 257 training
    # tiles and 68 held out, too few to train on and to measure with (docs/benchmarks.md).
    d.synthetic = ml_collections.ConfigDict(
        dict(seed=0, size_um=3840.0, pixel_size_um=0.2737, n_genes=120, cell_density=1.0, dir="")
    )  # dir: where the slide is generated ("" -> <workdir>/slide)
    d.shard_dir = ""  # "" -> <workdir>/shards
    d.target_mpp = 0.5  # µm per pixel of the tiles (20x)
    d.tile_px = 256
    d.min_cells = 8  # tiles with fewer cells are dropped
    d.min_tissue = 0.25  # tiles with a smaller tissue fraction are dropped
    d.node_budget = 256  # cells per tile after padding; tiles above it follow `overflow`
    d.overflow = "subsample"  # "subsample" (seeded, counted) | "drop" (counted)
    d.graph = "knn"  # "knn" | "radius" | "delaunay", restricted to micro blocks
    # "tile": the graph built over the whole tile, then only the edges whose two cells share a micro
    # block kept (the paper's E_micro ⊆ E) | "block": built inside each micro block (before 2026-12-03)
    d.micro_graph = "tile"
    d.knn_k = 6
    d.radius_px = 30.0
    d.chunk_rows = 4  # tile rows per shard chunk: the unit of resume and of parallel work
    d.workers = 2  # preprocessing processes
    d.engine = "local"  # what runs the chunks: "local" (data.workers processes) | "beam"
    d.beam_options = ""  # for "beam": "--runner=X ..."; "": DirectRunner, data.workers processes
    # by: "auto" (leave-one-sample-out when there are several slides, else spatial blocks),
    # "sample" (test on slide number `fold`), "space" (blocks of block_tiles^2 tiles).
    # Precomputed per-cell embeddings (stemo, Novae, scGPT...): obsm[cell_embedding_key] of an .h5ad
    # whose obs_names are the cell ids; cell_embeddings names it ("{slide}" -> the slide's name;
    # "" -> the generic format's cells file). Stored with each tile's cells.
    d.cell_embeddings = ""
    d.cell_embedding_key = ""
    # What the graph tower embeds per cell: "counts" (normalised log1p counts), "pca" (PCA of them
    # fitted on the training tiles' cells, data.node_pca components), "embedding" (the stored ones).
    d.node_features = "counts"
    d.node_pca = 50
    # Per-tile inputs computed once per run on the host (sigmma_jax.data.features.TILE_FEATURES):
    # "expression_pcs" (BLEEP: PCs of the tile's expression, Harmony across slides), "gene_sentence"
    # (OmiCLIP: the tile's most expressed genes as tokens).
    d.tile_features = ()
    d.expression_pcs = ml_collections.ConfigDict(dict(n=50, target_sum=1e4, harmony=True))
    d.sentence_length = 50
    d.split = ml_collections.ConfigDict(
        dict(by="auto", fold=0, block_tiles=4, test_fraction=0.2, val_fraction=0.0, seed=0)
    )
    d.augment = True  # dihedral flips/rotations of image and cells together
    d.loader_workers = 0  # Grain worker processes (0: in the main process)
    d.prefetch = 2

    # --- model (docs/method.md) -------------------------------------------------------------------
    c.model = m = ml_collections.ConfigDict()
    m.family = "sigmma"  # sigmma_jax.families: "sigmma" | "st_align" (st_align_config)
    # Towers by name (sigmma_jax.models.sigmma): HE "multi_crop" (SIGMMA's 21 crops) | "whole_tile";
    # ST "graph" (the hierarchical cell graph, model.st) | "mlp" (tile expression MLP, model.mlp).
    m.he_tower = "multi_crop"
    m.st_tower = "graph"
    m.embed_dim = 256  # shared latent dim
    m.head_dropout = 0.1
    m.heads = "shared"  # one projection head per modality | "per_scale": one per modality and scale
    # The ViT used when model.backbone == "vit" (any shape); UNI's shape by default.
    m.vit = ml_collections.ConfigDict(
        {k: v for k, v in backbones.ARCHS["uni"].items() if k != "kind"}
    )
    # "vit": VisionTransformer(**m.vit) | a preset of sigmma_jax.models.backbones: "uni", "uni2-h",
    # "h-optimus-0", "resnet50". With backbone_weights set, the converted directory decides.
    m.backbone = "uni"
    # Converted once with `python -m sigmma_jax.convert --arch=uni --src=.../pytorch_model.bin
    # --dst=weights/uni` (README); "" -> random init.
    m.backbone_weights = "weights/uni"
    m.backbone_mode = "full"  # "frozen" | "last_k" | "full"
    m.backbone_last_k = 4  # blocks trained in "last_k" mode (and the final norm)
    # Rematerialise each backbone block in the backward pass. Paper scale needs it: 64 tiles are
    # 1,344 crops per step, 168 per device on 8 GPUs, and full fine-tuning of UNI at 168 crops runs
    # out of memory on an 80 GB H100 without it (6.2 GiB with it, docs/benchmarks.md); check a
    # config with `python -m sigmma_jax.bench step --config=...` before launching it.
    m.remat = True
    m.dtype = "bfloat16"  # compute dtype of the HE encoder; params stay float32
    m.attn_impl = ""  # "" lets XLA choose; "cudnn": fused attention on NVIDIA GPUs (bf16)
    m.st = ml_collections.ConfigDict(
        dict(
            hidden=256,
            layers_per_scale=1,
            target_sum=100.0,
            edge_hidden=32,
            edge_sampling="gumbel",  # "gumbel" | "full" (ablation: fully connect each block) | "none"
            gumbel_tau=0.5,
            straight_through=True,
            # "expectation": edge weights are probabilities | "threshold": p > 0.5 (docs/method.md)
            eval_edges="expectation",
            edge_prior=0.5,  # fraction of candidate pairs sampled at initialisation
            # Meso / macro candidates: "adjacent" (the paper's neighbour-patch constraint: two cells
            # of the block in different sub-blocks that share a side) | "block" (any pair of the
            # block not yet an edge: before 2026-12-03, and the fully connected ablations)
            candidates="adjacent",
        )
    )
    # input: "log1p_normalized" (the tile's summed counts scaled to target_sum, then log1p: library-
    # size normalised, as the graph tower's cells are) | "log1p_counts" (raw: log1p of what Task 1
    # predicts; before 2026-12-03) | a tile feature, e.g. "expression_pcs"
    m.mlp = ml_collections.ConfigDict(
        dict(hidden=256, layers=2, input="log1p_normalized", target_sum=1e4)
    )
    # The OmiCLIP-style tower: a transformer over the tile's gene sentence (data.tile_features)
    m.gene_sentence = ml_collections.ConfigDict(
        dict(width=256, depth=4, num_heads=8, mlp_ratio=4.0)
    )
    m.l2_normalize = True  # unit-length embeddings out of the heads (BLEEP: False)
    m.temperature_init = 0.07
    m.learn_temperature = True
    m.temperature_min = 0.01

    # --- optimisation --------------------------------------------------------------------------------
    c.train = t = ml_collections.ConfigDict()
    t.global_batch = 64
    t.steps = 20_000
    t.warmup_steps = 500
    t.lr = 1e-4
    t.backbone_lr_mult = 0.1
    # Layer-wise lr decay of the backbone: blocks_j of L gets decay ** (L - j), the embeddings
    # decay ** (L + 1), the final norm 1 (timm's numbering); 1.0 is off.
    t.layer_decay = 1.0
    t.weight_decay = 0.05
    # > 0: weight decay follows a cosine from weight_decay to this (ST-Align: 0.04 -> 0.4); < 0: fixed
    t.weight_decay_end = -1.0
    t.grad_clip = 1.0
    t.log_every = 50
    t.checkpoint_every = 1000
    t.keep_checkpoints = 3
    t.loss = "info_nce"  # sigmma_jax.losses.LOSSES
    # micro, meso, macro; (0, 0, 1) is the single-scale ablation (trained and evaluated on macro)
    t.scale_weights = (1.0, 1.0, 1.0)

    # The device mesh (sigmma_jax.sharding): batches split over data x fsdp devices; -1 on one axis
    # takes the devices the other leaves. fsdp > 1 splits parameters, gradients and optimizer state
    # over that many devices (launch/README.md, "Data parallel or FSDP").
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
    # Where each state leaf lives: (regex over its path, "fsdp" | "replicate" | a PartitionSpec
    # tuple), first match wins; "fsdp" leaves under min_fsdp_bytes stay replicated (a bias saves
    # less memory than its gather costs). With mesh.fsdp = 1 every leaf is a replica.
    c.sharding = ml_collections.ConfigDict(
        dict(rules=(("step|rng", "replicate"), (".*", "fsdp")), min_fsdp_bytes=2**20)
    )

    # Evaluators by name (sigmma_jax.evaluation.EVALUATORS), run at the end of training and, when
    # eval_every > 0, every eval_every steps; results are keyed by evaluator.
    # retrieval_train: the same recall on as many training tiles (the gap to retrieval is overfitting)
    c.evals = ("retrieval", "retrieval_train", "probe", "knn_expression")
    c.eval_every = 0
    c.eval = e = ml_collections.ConfigDict()
    e.batch = 64
    e.initial = True  # also evaluate the model at initialisation (results_initial.json)
    # Each evaluator's own settings, described where they are read (its module's DEFAULTS): Task
    # 1's targets, genes and probe, BLEEP's neighbours.
    e.update(_evaluator_defaults(c.evals))

    # The paper's experiments (python -m sigmma_jax.experiments; sigmma_jax.experiments.methods):
    # every method x fold x seed, Table 3 for each backbone given as NAME (converted weights in
    # weights/NAME) or NAME=DIR. folds () -> every fold of the shard set; steps > 0 replaces
    # train.steps in every trained run.
    c.suite = ml_collections.ConfigDict(
        dict(
            methods=(
                "frozen_backbone",
                "single_scale_clip",
                "bleep",
                "gene_sentence",
                "sigmma",
                "graph_single_scale_full",
                "graph_multiscale_full",
            ),
            seeds=(0, 1, 2),
            folds=(),
            backbones=(),
            steps=0,
        )
    )

    # --- using a trained run: `python -m sigmma_jax.embed` (sigmma_jax.analysis) -----------------------
    # Only data, eval.batch, mesh and this section of the config given to `embed` are read; the
    # model, gene panel and tile settings are the run's.
    c.analysis = a = ml_collections.ConfigDict()
    a.n_neighbors = 15  # scanpy neighbours of each cell, per scale
    a.resolution = 0.5  # Leiden resolution
    a.seed = 0
    a.domain_key = "domain"  # cell obs column of ground-truth domains (ARI), if present
    a.cell_type_key = "cell_type"  # cell obs column of cell types (composition heatmap), if present
    a.genes = ()  # genes for violins and expression maps; () = the most variable, mutually r <= 0.8
    a.n_genes = 4  # how many when `genes` is empty
    a.thumbnail_px = 1024  # the slide overview under the maps, longest side
    return c


def _demo_backbone(c: ml_collections.ConfigDict) -> None:
    """Both demos' image backbone: a small ViT at 32 px, random init, float32, no remat."""
    c.model.vit.update(
        dict(
            img_size=32,
            patch_size=8,
            width=96,
            depth=3,
            num_heads=4,
            mlp_ratio=2.0,
            init_values=0.1,
        )
    )
    c.model.backbone, c.model.backbone_weights = "vit", ""
    c.model.dtype = "float32"  # bfloat16 is slower than float32 on CPUs
    c.model.remat = False  # a small model fits; on CPUs remat recomputes without saving memory


def apply_demo(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Shrinks model and schedule to minutes on two CPU cores; data settings are left alone."""
    _demo_backbone(c)
    c.model.embed_dim = 64
    c.model.st.update(dict(hidden=64, edge_hidden=16))
    c.model.gene_sentence.update(dict(width=64, depth=2, num_heads=4, mlp_ratio=2.0))
    c.data.node_budget = 160
    c.data.workers = 2
    c.train.update(
        dict(
            global_batch=32,
            steps=400,
            warmup_steps=40,
            lr=2e-3,
            backbone_lr_mult=1.0,
            weight_decay=1e-4,
            log_every=20,
            checkpoint_every=200,
        )
    )
    c.eval.batch = 64
    # The demo suite (python -m sigmma_jax.experiments, 7 methods x 3 seeds) trains each run for 300
    # steps instead of 400 so that it fits in 45 minutes on two CPU cores (README).
    c.suite.steps = 300
    return c


# Sections of the SIGMMA schema that mean nothing to ST-Align (tiles, cell graphs, Task 1 / 2).
_SIGMMA_ONLY = {
    "data": (
        "target_mpp",
        "tile_px",
        "min_cells",
        "min_tissue",
        "node_budget",
        "overflow",
        "graph",
        "micro_graph",
        "knn_k",
        "radius_px",
        "cell_embeddings",
        "cell_embedding_key",
        "node_features",
        "node_pca",
        "tile_features",
        "expression_pcs",
        "sentence_length",
        "synthetic",
        "xenium_dir",
        "alignment",
    ),
    "model": ("he_tower", "st_tower", "st", "mlp", "gene_sentence", "l2_normalize", "heads"),
    "train": ("scale_weights", "loss"),
    # "eval": SIGMMA's evaluators' settings (`st_align_config`)
}


def st_align_config() -> ml_collections.ConfigDict:
    """ST-Align (arXiv 2411.16793) at the paper's scale: Visium spots and their niches, four
    encoders, ABFN, three contrastive losses (docs/method.md, "ST-Align"). Shares the data sources,
    mesh, optimiser and schedule keys with SIGMMA's schema; SIGMMA's tile and graph keys are gone."""
    c = base_config()
    for section, keys in _SIGMMA_ONLY.items():
        for k in keys:
            del c[section][k]
    for k in _evaluator_defaults(c.evals):
        del c.eval[k]
    d, m, t = c.data, c.model, c.train
    m.family = "st_align"
    # "st_align" | "clip" (the CLIP / PLIP baseline: the niche image encoder on the spot image and
    # an FC layer to clip_dim, against an FC layer from the spot's expression, §4.2)
    m.variant = "st_align"
    m.clip_dim = 32
    # --- data: Visium in the forms users have it (README, "ST-Align"; docs/method.md, "Visium")
    d.source = "hest"  # "hest" (Visium samples of HEST-1k) | "spaceranger" | "generic" | "spatialdata" | "synthetic_visium"
    d.spaceranger_dir = (
        ""  # a Space Ranger outs/ folder, a sample folder holding one, or a folder of them
    )
    # spaceranger: the full-resolution H&E: a path, a pattern with "{sample}", or "" (the one TIFF
    # in the sample folder); generic: the TIFF beside data.cells (an .h5ad of spots)
    d.wsi = ""
    # Domain labels, for evaluation only: an obs column of the spots' .h5ad, or a table joined by
    # barcode in spatialLIBD's layout (barcode, sample, layer; barcode_level_layer_map.tsv).
    d.labels = ""
    d.spots = ml_collections.ConfigDict(
        dict(
            crop_um=55.0,  # spot image: the square around the spot (the 55 µm spot)
            crop_px=28,  # ... resampled to the paper's 28 x 28 (§3.2)
            niche_k=3,  # a niche: the spot and its 3 nearest spots (§4.1)
            niche_um=256.0,  # niche image: the square around the niche's spots (covers the four)
            niche_px=224,  # ... resampled to the niche encoder's input (UNI: 224, §3.2)
            diameter_um=55.0,  # generic spots: their diameter (HEST / Space Ranger: Visium's 55 µm)
            n_hvg=2000,  # panel: the most variable shared genes (0: every shared gene)
            keep_genes=dlpfc.NINE,  # always in the panel when the slides have them (Table 3)
            preclusters=8,  # per-slide k-means clusters for train.negatives="other_clusters"
            grid_um=100.0,  # spatial blocks (data.split.by="space") on the 100 µm spot pitch
        )
    )
    d.synthetic_visium = ml_collections.ConfigDict(
        dict(
            seed=0,
            n_slices=6,
            slices_per_donor=2,
            size_um=2600.0,
            pixel_size_um=0.725,
            n_genes=120,
            dir="",  # where the slices are generated ("" -> <workdir>/slides)
        )
    )
    d.split.update(by="sample", block_tiles=10)  # whole slides held out (§4.3: six DLPFC slices)
    # --- model (§3.2-3.3; docs/method.md, "ST-Align")
    m.backbone, m.backbone_weights = "uni", "weights/uni"  # the niche image encoder (§3.2: UNI)
    m.backbone_mode = "full"  # the authors' code trains UNI
    # AE-Img: ResNet-50 from scratch on the spot images (the code's CIFAR stem: no downsampling of
    # 28 px); GroupNorm instead of the paper's SyncBN (docs/method.md).
    m.spot_image = ml_collections.ConfigDict(
        dict(layers=(3, 4, 6, 3), width=64, stem="cifar", norm="group")
    )
    # The spot expression encoder: scGPT, converted once (`python -m sigmma_jax.convert
    # --arch=scgpt`); "" trains this architecture from scratch over the panel's genes.
    m.scgpt = ml_collections.ConfigDict(
        dict(
            weights="weights/scgpt",
            mode="frozen",  # "frozen" (the paper: a pretrained feature extractor) | "full"
            max_len=1200,  # tokens per spot (scGPT's embedding default), <cls> included
            d_model=512,
            nhead=8,
            d_hid=512,
            nlayers=12,
            dropout=0.2,
            n_bins=51,
        )
    )
    # AE-Gene: the niche expression encoder (§4.1: transformer, 6 layers, 8 heads, dropout 0.1)
    m.niche_gene = ml_collections.ConfigDict(
        dict(tokens=8, width=512, depth=6, heads=8, mlp_dim=1024, dropout=0.1)
    )
    # ABFN (§3.3): s tokens of width l (the code: 8 x 512), two-way cross-attention
    m.abfn = ml_collections.ConfigDict(
        dict(tokens=8, width=512, heads=8, ffn_hidden=64, hidden=2048, dropout=0.1)
    )
    m.fusion = "abfn"  # "abfn" | "concat" (Table 2: concatenation instead of ABFN)
    # "specialised": AE-Img and AE-Gene | "pretrained" (Table 2, without the trainable encoders:
    # the spot image through the niche image encoder, the niche expression through scGPT)
    m.encoders = "specialised"
    m.embed_dim = 512  # each encoder's projection, the space of L_spot and L_niche
    m.fused_dim = 1024  # ABFN's output, the space of L_NS
    m.temperature_init = 0.1  # the code's τ
    m.learn_temperature = False
    m.temperature_min = 0.01
    # --- optimisation (§4.1): AdamW, cosine with warm-up, weight decay 0.04 -> 0.4 (cosine)
    t.loss_weights = (0.3, 0.3)  # λ1 (L_spot), λ2 (L_niche); L_NS weighs 1 - λ1 - λ2 (Eq. 12)
    # "in_batch": every other spot of the global batch | "other_clusters": one negative from each
    # other pre-cluster of the batch (the authors' code)
    t.negatives = "in_batch"
    t.global_batch = 192  # the code: 64 per GPU on 3 GPUs
    t.lr = 5e-4 * 192 / 256  # the code: 5e-4 x batch / 256
    t.backbone_lr_mult = 1.0  # the code: one learning rate
    t.weight_decay, t.weight_decay_end = 0.04, 0.4
    # 100 epochs of STimage-1K4M (1.3 M spots at 192 a batch) is 677 k steps: set it for a cohort.
    t.steps = 20_000
    t.warmup_steps = 1000
    t.checkpoint_every = 1000
    c.evals = ("domains", "spot_expression")
    c.eval.initial = False  # the suite's untrained rows are the frozen baselines
    # Zero-shot domains and gene prediction: their modules' DEFAULTS, with the paper's five
    # embeddings named (the module's default, (), clusters whatever a model gives)
    c.eval.update(_evaluator_defaults(c.evals))
    c.eval.domain_embeddings = (
        "fused_spot",
        "spot_image",
        "niche_image",
        "spot_gene",
        "niche_gene",
    )
    c.suite = ml_collections.ConfigDict(
        dict(
            # Tables 1-3: every method, baseline and ablation (sigmma_jax.experiments.st_align_methods)
            methods=(
                "frozen_backbone",
                "expression",
                "scgpt",
                "st_align",
                "clip",
                "no_ns",
                "concat",
                "pretrained_encoders",
            ),
            seeds=(0, 1, 2),
            folds=(),
            backbones=(),
            steps=0,
        )
    )
    # `embed`: a slide's domains when it has no labels to take k from (DLPFC's layers: 7)
    c.analysis.n_domains = 7
    return c


def apply_st_align_demo(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """ST-Align's model and schedule shrunk to minutes on two CPU cores; data settings kept, but
    for the image sizes, which follow the small encoders."""
    _demo_backbone(c)
    c.model.spot_image.update(dict(layers=(1, 1, 1, 1), width=16))
    c.model.scgpt.update(dict(weights="", mode="full", d_model=64, nhead=4, d_hid=128, nlayers=2))
    c.model.niche_gene.update(dict(tokens=4, width=64, depth=2, heads=4, mlp_dim=128))
    c.model.abfn.update(dict(tokens=4, width=64, heads=4, ffn_hidden=32, hidden=256))
    c.model.embed_dim, c.model.fused_dim = 64, 128
    c.data.spots.update(niche_px=32, n_hvg=0)
    c.data.workers = 2
    c.train.update(
        dict(
            global_batch=64,
            steps=300,
            warmup_steps=30,
            lr=2e-3,
            log_every=20,
            checkpoint_every=150,
        )
    )
    c.eval.batch = 64
    # The suite on the first held-out donor only (3 seeds x 8 methods: about an hour on 2 cores);
    # --config.suite.folds="()" runs every donor.
    c.suite.folds = (0,)
    return c


def parse_arg(arg: str | None) -> set[str]:
    """`--config=configs/x.py:demo,foo` -> {"demo", "foo"}."""
    return {a for a in (arg or "").split(",") if a}


# How SIGMMA's graph, baselines and Task 1 were before 2026-12-03 (docs/method.md, "Before
# 2026-12-03"): `--config=configs/X.py:legacy` reproduces the runs of that time bit for bit.
LEGACY = {
    "data.micro_graph": "block",
    "model.st.candidates": "block",
    "model.mlp.input": "log1p_counts",
    "eval.probe_scales": "concat",
    "eval.equal_width": False,
    "eval.probe_intercept": False,
    "eval.target_scale": "none",
}


def apply_legacy(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    for key, value in LEGACY.items():
        *sections, name = key.split(".")
        node = c
        for part in sections:
            node = node[part]
        node[name] = value
    return c


def sigmma_config(source: str, arg: str | None) -> ml_collections.ConfigDict:
    """SIGMMA's config for a data source; the config file's argument adds "demo" (`apply_demo`)
    and "legacy" (`LEGACY`), e.g. `--config=configs/generic.py:demo,legacy`."""
    c = base_config()
    c.data.source = source
    args = parse_arg(arg)
    if "demo" in args:
        apply_demo(c)
    if "legacy" in args:
        apply_legacy(c)
    return c


def hest_config(sample_ids: tuple[str, ...], arg: str | None) -> ml_collections.ConfigDict:
    """A HEST-1k cohort: `--config.data.hest_dir=DIR` names the download (README)."""
    c = sigmma_config("hest", arg)
    c.data.sample_ids = tuple(sample_ids)
    return c
