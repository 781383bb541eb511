"""ST-Align's records: Visium spots with their niches (ST-Align §3.1, §4.1; docs/method.md,
"ST-Align"), as a kind of `sigmma_jax.data.shards` (which orchestrates, resumes and writes
manifests).

- The panel: the genes every slide has, then (data.spots.n_hvg > 0) the most variable of them,
  scanpy's `highly_variable_genes` ("seurat" flavour on normalised log1p counts, slides as batches),
  with `data.spots.keep_genes` always in when the slides have them (ST-Align's nine genes).
- A spot's niche is the spot and its `niche_k` nearest spots of the slide (§4.1: "the three nearest
  neighboring spots"); the niche's expression is the mean of its spots' raw counts (Eq. 2). Ties
  on the perfect hexagonal grid (six neighbours at 100 µm) go to the KD-tree's order: the same
  for the same spots, so reruns agree.
- Images: the spot image is the square of `crop_um` around the spot centre (the 55 µm spot by
  default) resampled to `crop_px` (the paper's 28 × 28); the niche image the square of `niche_um`
  around the mean centre of the niche's spots, resampled to `niche_px` (224 for UNI). Lengths are
  physical: slides at any µm/px give the same crops.
- Per slide, a pre-clustering of the spots (k-means on PCA of normalised log1p counts), for the
  authors' one-negative-per-other-cluster contrast (`train.negatives`).
- Splits: a spot's `row` / `col` are its cell on a grid of `grid_um` (100 µm, the Visium pitch), so
  spatial blocks work as for tiles; ST-Align's own protocol holds out whole slides.
A chunk is a band of `data.chunk_rows` grid rows of one slide. Spots without counts are dropped
(counted in the report); labels (`Slide.labels`) ride along for evaluation only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import pathlib
from typing import Any

import ml_collections
import numpy as np
import scipy.sparse as sp
from scipy import spatial

from sigmma_jax import atomic
from sigmma_jax.data import features, readers, records, splits, tiling, validate
from sigmma_jax.data.tile_shards import write_shard
from sigmma_jax.errors import InputError

SPOT_KEYS = (
    "crop_um",
    "crop_px",
    "niche_k",
    "niche_um",
    "niche_px",
    "n_hvg",
    "keep_genes",
    "preclusters",
    "grid_um",
)


def hvg_panel(
    slides: list[readers.Slide], shared: list[str], n_hvg: int, keep: tuple[str, ...]
) -> list[str]:
    """The `n_hvg` most variable of the `shared` genes (scanpy seurat flavour on normalised log1p
    counts, one batch per slide) with the `keep` genes added, in `shared`'s (sorted) order."""
    if not n_hvg or len(shared) <= n_hvg:
        return list(shared)
    import anndata
    import scanpy as sc

    x = sp.vstack([validate.panel_counts(s, shared) for s in slides]).tocsr()
    adata = anndata.AnnData(x.astype(np.float32))
    adata.var_names = [str(g) for g in shared]
    adata.obs["slide"] = np.repeat([s.name for s in slides], [len(s.xy) for s in slides])
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    batch = "slide" if len(slides) > 1 else None
    sc.pp.highly_variable_genes(adata, n_top_genes=n_hvg, flavor="seurat", batch_key=batch)
    chosen = set(adata.var_names[adata.var["highly_variable"].to_numpy()]) | set(keep)
    return [g for g in shared if g in chosen]


def niches(xy: np.ndarray, k: int) -> np.ndarray:
    """(n, k + 1) indices: each spot first, then its k nearest spots (fewer spots: all)."""
    n = len(xy)
    k = min(k, n - 1)
    _, idx = spatial.cKDTree(xy).query(xy, k + 1)
    idx = np.asarray(idx).reshape(n, k + 1)
    # A spot whose centre another spot shares would not come first; put it there.
    first = idx[:, 0] == np.arange(n)
    if not first.all():
        for i in np.flatnonzero(~first):
            others = [j for j in idx[i] if j != i][:k]
            idx[i] = [i, *others]
    return idx


def preclusters(counts: sp.csr_matrix, k: int, seed: int = 0) -> np.ndarray:
    """Per-spot cluster of one slide: k-means (k, or fewer spots) on up to 20 PCs of normalised
    log1p counts; the authors' code draws one negative from each other cluster."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    n = counts.shape[0]
    k = max(1, min(k, n))
    if k == 1:
        return np.zeros(n, np.int32)
    x = features.normalized_log1p(counts.toarray(), 1e4)
    z = PCA(min(20, *x.shape), svd_solver="full", random_state=seed).fit_transform(x)
    return KMeans(k, n_init=4, random_state=seed).fit_predict(z).astype(np.int32)


@dataclasses.dataclass
class SpotChunk:
    name: str
    slide: str
    wsi_path: pathlib.Path
    pixel_size_um: float
    xy: np.ndarray  # (n, 2) level-0 px centres of this chunk's spots
    niche_xy: np.ndarray  # (n, 2) level-0 px mean centre of each spot's niche
    counts: np.ndarray  # (n, genes) raw
    niche_counts: np.ndarray  # (n, genes) mean raw counts of the niche's spots
    barcodes: np.ndarray  # (n,)
    niche_barcodes: list[list[str]]
    labels: np.ndarray  # (n,) str ("" unannotated)
    clusters: np.ndarray  # (n,) int
    rows: np.ndarray  # (n,) grid row
    cols: np.ndarray  # (n,) grid col
    settings: dict
    shard_hash: str
    out_dir: pathlib.Path


def _box(x: float, y: float, side_px: float) -> tuple[float, float, float, float]:
    h = side_px / 2
    return x - h, y - h, x + h, y + h


def run_spot_chunk(c: SpotChunk) -> dict:
    """Writes one chunk's shard, then its sidecar (the proof of completion); returns the sidecar."""
    s = c.settings
    crop, niche = s["crop_um"] / c.pixel_size_um, s["niche_um"] / c.pixel_size_um
    spots, payload = [], []
    with readers.WSI(c.wsi_path) as wsi:
        for i in range(len(c.xy)):
            (x, y), (nx, ny) = c.xy[i], c.niche_xy[i]
            meta = dict(
                slide=c.slide,
                row=int(c.rows[i]),
                col=int(c.cols[i]),
                x=float(x),
                y=float(y),
                label=str(c.labels[i]),
                precluster=int(c.clusters[i]),
                niche=list(c.niche_barcodes[i]),
            )
            payload.append(
                records.encode_spot(
                    dict(
                        spot_image=tiling.read_region(wsi, _box(x, y, crop), s["crop_px"]),
                        niche_image=tiling.read_region(wsi, _box(nx, ny, niche), s["niche_px"]),
                        counts=c.counts[i],
                        niche_counts=c.niche_counts[i],
                        barcode=c.barcodes[i],
                        meta=meta,
                    )
                )
            )
            spots.append(
                dict(
                    slide=c.slide,
                    row=meta["row"],
                    col=meta["col"],
                    barcode=str(c.barcodes[i]),
                    label=meta["label"],
                )
            )
    rep = dict(spots_kept=len(spots), spots_labelled=int(sum(1 for t in spots if t["label"])))
    side = dict(
        hash=c.shard_hash, shard=write_shard(c.out_dir, c.name, payload), spots=spots, report=rep
    )
    atomic.write_json(c.out_dir / f"{c.name}.json", side)
    return side


@dataclasses.dataclass
class _SlideSpots:
    """One slide's spots with counts, ready to be cut into chunks."""

    slide: readers.Slide
    xy: np.ndarray  # (n, 2) level-0 px
    counts: np.ndarray  # (n, genes) raw, float32
    niche: np.ndarray  # (n, k + 1) spot indices: itself, then its nearest spots
    barcodes: np.ndarray
    labels: np.ndarray  # str, "" unannotated
    clusters: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    report: dict


def _survey(slide: readers.Slide, panel: list[str], sp_: ml_collections.ConfigDict) -> _SlideSpots:
    counts = validate.panel_counts(slide, panel)
    slide.counts = None  # the panel copy replaces it: one copy of the counts in memory
    usable = np.flatnonzero(np.asarray(counts.sum(1)).ravel() > 0)
    if len(usable) <= sp_.niche_k:
        raise InputError(
            f"{slide.cells_file or slide.name}: {len(usable)} spots with counts over the panel; a "
            f"niche needs {sp_.niche_k + 1}"
        )
    xy = slide.xy[usable]
    niche = niches(xy, sp_.niche_k)
    labels = np.full(len(usable), "", dtype=object)
    if slide.labels is not None:
        labels = np.asarray(slide.labels, dtype=object)[usable]
    labels = labels.astype(str)
    um = xy * slide.pixel_size_um
    found, n = np.unique(labels[labels != ""], return_counts=True)
    report = dict(
        spots_total=len(slide.xy),
        spots_zero_counts=len(slide.xy) - len(usable),
        spots_labelled=int((labels != "").sum()),
        labels={str(k): int(v) for k, v in zip(found, n)},
        pixel_size_um=slide.pixel_size_um,
        spot_diameter_um=slide.spot_diameter_um,
        # how far a niche reaches: its farthest spot's centre, median over spots
        niche_reach_um=float(np.median(np.linalg.norm(xy[niche[:, -1]] - xy, axis=1)))
        * slide.pixel_size_um,
        reader=slide.report,
    )
    return _SlideSpots(
        slide=slide,
        xy=xy,
        counts=counts[usable].toarray().astype(np.float32),
        niche=niche,
        barcodes=np.asarray(slide.cell_ids)[usable],
        labels=labels,
        clusters=preclusters(counts[usable], sp_.preclusters),
        rows=np.floor(um[:, 1] / sp_.grid_um).astype(np.int64),
        cols=np.floor(um[:, 0] / sp_.grid_um).astype(np.int64),
        report=report,
    )


def _builder(ss: _SlideSpots, sel: np.ndarray, name: str, settings, h: str, out_dir):
    """The chunk of spots `sel`, built when it runs (a chunk copies its spots' counts)."""

    def build() -> SpotChunk:
        members = ss.niche[sel]
        return SpotChunk(
            name=name,
            slide=ss.slide.name,
            wsi_path=ss.slide.wsi_path,
            pixel_size_um=ss.slide.pixel_size_um,
            xy=ss.xy[sel],
            niche_xy=ss.xy[members].mean(1),
            counts=ss.counts[sel],
            niche_counts=ss.counts[members].mean(1),
            barcodes=ss.barcodes[sel],
            niche_barcodes=[[str(b) for b in ss.barcodes[m]] for m in members],
            labels=ss.labels[sel],
            clusters=ss.clusters[sel],
            rows=ss.rows[sel],
            cols=ss.cols[sel],
            settings=settings,
            shard_hash=h,
            out_dir=out_dir,
        )

    return build


class SpotKind:
    """The spot records of ST-Align for `shards.preprocess`."""

    unit = "spots"
    version = records.SPOT_VERSION
    rate = ("spots", "spots_kept")  # what the progress bar counts per second
    run_chunk = staticmethod(run_spot_chunk)

    def settings(self, d: ml_collections.ConfigDict) -> dict[str, Any]:
        out = {k: d.spots[k] for k in SPOT_KEYS}
        out["keep_genes"] = list(out["keep_genes"])
        return dict(out, chunk_rows=d.chunk_rows)

    def hash_extra(self, config: ml_collections.ConfigDict, slides) -> dict:
        """The labels ride in the records: a corrected label table is other shards."""
        h = hashlib.sha256()
        for s in slides:
            labels = s.labels if s.labels is not None else np.zeros(0, str)
            h.update("\n".join(map(str, labels)).encode() + b"\0")
            h.update(str(s.spot_diameter_um).encode())
        return {"labels": h.hexdigest()[:16]}

    def panel(self, slides, panel, config) -> tuple[list[str], dict[str, int]]:
        not_spots = [s.name for s in slides if not s.spot_diameter_um]
        if not_spots:
            raise InputError(
                f"ST-Align reads spots (Visium), but {', '.join(not_spots)} holds cells: use a "
                "Visium source (hest with Visium samples, spaceranger, or generic spots)"
            )
        shared, dropped = validate.shared_panel(slides, panel)
        if panel is not None:  # a trained run's panel
            return shared, dropped
        sp_ = config.data.spots
        chosen = hvg_panel(slides, shared, sp_.n_hvg, tuple(sp_.keep_genes))
        return chosen, {s.name: len(s.genes) - len(chosen) for s in slides}

    def plan(self, slides, panel, genes_dropped, config, h: str, out_dir: pathlib.Path):
        """(per-slide report, [(chunk name, build)], the slides in words): every slide's spots,
        niches and clusters, after refusing a split of them that could not train or evaluate."""
        d = config.data
        settings = self.settings(d)
        slide_report, chunks, candidates, words = {}, [], [], []
        for slide in slides:
            ss = _survey(slide, panel, d.spots)
            slide_report[slide.name] = dict(ss.report, genes_not_shared=genes_dropped[slide.name])
            words.append(
                f"{slide.name}: {len(ss.xy)} spots with counts at {slide.pixel_size_um:g} µm/px"
            )
            candidates += [
                dict(slide=slide.name, row=int(r), col=int(c)) for r, c in zip(ss.rows, ss.cols)
            ]
            for ci, r0 in enumerate(
                range(int(ss.rows.min()), int(ss.rows.max()) + 1, d.chunk_rows)
            ):
                sel = np.flatnonzero((ss.rows >= r0) & (ss.rows < r0 + d.chunk_rows))
                if len(sel):
                    name = f"{slide.name}-{ci:04d}"
                    chunks.append((name, _builder(ss, sel, name, settings, h, out_dir)))
        groups = splits.sample_groups(slides)
        validate.split_tiles(
            candidates, [s.name for s in slides], config, groups=groups, unit="spots"
        )
        logging.info("spots: %s", "; ".join(words))
        return slide_report, chunks, "; ".join(words)

    def nothing_passed(self, config, where: str, report: dict) -> InputError:
        return InputError(f"no spot with counts over the panel among {where}: {report}")

    def extra(self, items: list[dict], config) -> dict:
        """The annotated labels, sorted: a spot's label is its index here (-1 unannotated)."""
        return {"labels": sorted({t["label"] for t in items if t["label"]})}


SPOTS = SpotKind()
