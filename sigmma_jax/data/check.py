"""What does a folder hold, and can SIGMMA use it?

  python -m sigmma_jax.check_data HEST_DIR                            # a HEST-1k download
  python -m sigmma_jax.check_data XENIUM_OUTPUT_DIR [HE.tif ALIGN.csv] # a raw Xenium bundle
  python -m sigmma_jax.check_data SPACERANGER_DIR [HE.tif]            # Space Ranger outs/
  python -m sigmma_jax.check_data CELLS.h5ad HE.tif                   # the generic format
  python -m sigmma_jax.check_data STORE.zarr [--config=...]          # a SpatialData store
  python -m sigmma_jax.check_data --config=configs/X.py [--config.data.*=...]  # what a run reads

A HEST folder or a Xenium bundle alone is listed from headers and metadata (quick). Cells with their
H&E, and any `--config`, are checked as the run checks them, with the same functions: the config's
values, the reader (counts, ids, centroids, pixel size), where the cells fall against the tissue,
the tile grid, and whether the split leaves a global batch of training tiles and some test tiles
(counted before the tissue filter, which needs every tile's pixels). Visium spots (HEST's Visium
samples, Space Ranger output, an ST-Align config) are checked as ST-Align's preprocessing checks
them: spots with counts over the panel, labels, niches, and the split of spots. Without `--config`
the defaults of configs/default.py (cells) or configs/st_align.py (spots) apply.

Exits 0 when everything found is usable, 1 otherwise.
"""

from __future__ import annotations

import json
import pathlib
import tempfile

import ml_collections
import numpy as np

from sigmma_jax.data import hest, readers, xenium

TIFF_SUFFIXES = (".tif", ".tiff", ".svs", ".btf")


def _wsi(path: pathlib.Path) -> tuple[bool, str]:
    try:
        with readers.WSI(path) as w:
            ps = w.pixel_size_um()
            return True, f"{w.shape[1]}x{w.shape[0]} px, {w.n_levels} level(s), pixel size " + (
                f"{ps:.4f} µm" if ps else "not in the file"
            )
    except readers.InputError as e:
        return False, str(e)


def _parquet(path: pathlib.Path, need: tuple[str, ...]) -> tuple[bool, str]:
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path)
    except Exception as e:
        return False, f"unreadable parquet ({type(e).__name__}: {e})"
    missing = [c for c in need if c not in meta.schema_arrow.names]
    info = f"{meta.metadata.num_rows:,} rows in {meta.num_row_groups} row group(s)"
    return (not missing), info + (f"; MISSING columns {missing}" if missing else "")


def _technology(root: pathlib.Path, sid: str) -> str:
    """A HEST sample's platform for the listing: its metadata's, else what its files say."""
    from sigmma_jax.data import visium

    try:
        return visium.technology(root, sid)
    except readers.InputError:
        return "visium" if visium.hest_visium_paths(root, sid)["st"].exists() else "xenium"


def _h5ad(path: pathlib.Path) -> tuple[bool, str]:
    import anndata

    try:
        a = anndata.read_h5ad(path, backed="r")
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported, not raised
        return False, f"unreadable ({type(e).__name__}: {e})"
    try:
        ok = "spatial" in a.obsm
        return ok, f"{a.n_obs:,} spots x {a.n_vars:,} genes" + (
            "" if ok else ", NO obsm['spatial']"
        )
    finally:
        a.file.close()


def check_hest(root: pathlib.Path) -> bool:
    from sigmma_jax.data import visium

    ids = sorted(
        {p.stem for p in (root / "wsis").glob("*.tif")}
        | {
            p.name.removesuffix("_transcripts.parquet")
            for p in (root / "transcripts").glob("*_transcripts.parquet")
        }
        | {p.stem for p in (root / "st").glob("*.h5ad")}
    )
    if not ids:
        print(
            f"{root}: no wsis/*.tif, st/*.h5ad or transcripts/*_transcripts.parquet: not a HEST "
            "folder"
        )
        return False
    all_ok, usable = True, {"xenium": [], "visium": []}
    for sid in ids:
        tech = _technology(root, sid)
        if tech == "visium":
            p, keys, optional = visium.hest_visium_paths(root, sid), ("wsi", "metadata", "st"), ()
        else:
            p = hest.sample_paths(root, sid)
            keys, optional = ("wsi", "metadata", "transcripts", "cell_seg"), ("cell_seg",)
        lines, ok = [], True
        for key in keys:
            if not p[key].exists():
                required = key not in optional
                ok &= not required
                lines.append(
                    f"  {key:12s} {'MISSING' if required else 'absent'}: {p[key]}"
                    + ("" if required else " (centroids from transcript positions)")
                )
                continue
            if key == "wsi":
                good, info = _wsi(p[key])
            elif key == "metadata":
                ps = json.loads(p[key].read_text()).get("pixel_size_um_estimated")
                good, info = bool(ps), f"pixel_size_um_estimated = {ps}" if ps else "NO pixel size"
            elif key == "transcripts":
                good, info = _parquet(p[key], ("cell_id", "feature_name", "qv", "he_x", "he_y"))
            elif key == "st":
                good, info = _h5ad(p[key])
            else:
                good, info = _parquet(p[key], ("geometry",))
            ok &= good
            lines.append(f"  {key:12s} {'ok' if good else 'BAD'}: {info}")
        print(f"{sid} ({tech}): {'usable' if ok else 'NOT usable'}")
        print("\n".join(lines))
        all_ok &= ok
        if ok:
            usable[tech].append(sid)
    for tech, config in (("xenium", "default"), ("visium", "st_align")):
        if usable[tech]:
            print(
                f"\nrun ({tech}): python -m sigmma_jax.main --config=configs/{config}.py "
                f"--config.data.source=hest --config.data.hest_dir={root} "
                f'--config.data.sample_ids="{tuple(usable[tech])}" --workdir=W'
            )
    return all_ok


def check_xenium(
    root: pathlib.Path,
    he: pathlib.Path | None = None,
    alignment: pathlib.Path | None = None,
    config: ml_collections.ConfigDict | None = None,
) -> bool:
    ok = True
    exp = json.loads((root / "experiment.xenium").read_text())
    print(
        f"{root}: Xenium output, pixel_size = {exp.get('pixel_size')} µm/px, "
        f"panel {exp.get('panel_name', '?')}"
    )
    ok &= bool(exp.get("pixel_size"))
    for name, need in (("cells.parquet", ("cell_id", "x_centroid", "y_centroid")),):
        good, info = _parquet(root / name, need) if (root / name).exists() else (False, "MISSING")
        ok &= good
        print(f"  {name}: {info}")
    h5 = root / "cell_feature_matrix.h5"
    if h5.exists():
        import h5py

        with h5py.File(h5, "r") as f:
            print(f"  cell_feature_matrix.h5: {tuple(f['matrix/shape'][()])} (features x cells)")
    else:
        ok = False
        print("  cell_feature_matrix.h5: MISSING")
    images = sorted(root.glob("*.ome.tif")) + sorted(root.glob("*he*.tif"))
    aligns = sorted(root.glob("*alignment*.csv")) + sorted(root.glob("*keypoints*.csv"))
    print(f"  H&E images here: {[p.name for p in images] or 'none (pass --config.data.wsi)'}")
    print(
        f"  alignment files here: {[p.name for p in aligns] or 'none (pass --config.data.alignment)'}"
    )
    if he is not None and alignment is not None and ok:
        ok &= check_alignment(root, he, alignment, config)
    return ok


def check_alignment(
    root: pathlib.Path,
    he: pathlib.Path,
    alignment: pathlib.Path,
    config: ml_collections.ConfigDict | None = None,
) -> bool:
    """Where the cells land on the H&E, printed before the full read so that a bad alignment is
    still diagnosed; then the whole bundle is read as a run would."""
    try:
        spec, cells_path, _, he, alignment = xenium.bundle_files(root, he, alignment)
        pixel_size = xenium.read_pixel_size(spec)
        align = xenium.read_alignment(alignment, pixel_size)
        _, xy_um = xenium.read_cells(cells_path)
        with readers.WSI(he) as wsi:
            inside = xenium.inside(xenium.um_to_he_px(xy_um, align.matrix, pixel_size), wsi.shape)
        fit = ""
        if align.rms_um is not None:
            fit = f", {align.n_keypoints} keypoints, RMS {align.rms_um:.2f} µm"
        print(f"  alignment ({align.kind}{fit}): H&E level-0 px -> morphology px")
        print(
            "  "
            + np.array2string(align.matrix, precision=6, suppress_small=True).replace("\n", "\n  ")
        )
        print(f"  cells inside the H&E: {inside.mean():.1%} of {len(xy_um)}")
    except readers.InputError as e:
        print(f"NOT usable: {e}")
        return False
    return check_run(
        _config(
            config, source="xenium", xenium_dir=str(root), wsi=str(he), alignment=str(alignment)
        )
    )


def _config(
    config: ml_collections.ConfigDict | None, spots: bool = False, **data
) -> ml_collections.ConfigDict:
    """A copy of `config` (the defaults of configs/default.py, or of configs/st_align.py for
    `spots`, when None) reading `data`."""
    from sigmma_jax import config_base

    if config is None:
        c = config_base.st_align_config() if spots else config_base.base_config()
    else:
        c = ml_collections.ConfigDict(config.to_dict())
    c.data.update(data)
    return c


def check_run(config: ml_collections.ConfigDict, workdir: str | None = None) -> bool:
    """What a run of `config` would read, checked as the run checks it (`shards.preprocess`'s
    checks, before any tile is read): prints one line per slide and the split, or the problem.
    The config's values are checked by the command (`sigmma_jax.check_data`)."""
    from sigmma_jax.data import sources, validate

    if sources.is_spots(config.data):
        return check_spots(config, workdir)
    try:
        with tempfile.TemporaryDirectory() as tmp:  # the synthetic source writes its slide
            slides = sources.load_slides(config, workdir or tmp)
            panel, _ = validate.shared_panel(slides)
            surveys = list(validate.survey(slides, panel, config.data))
            split_of = validate.check_candidates(surveys, config)
    except readers.InputError as e:
        print(f"NOT usable: {e}")
        return False
    for sv in surveys:
        s, g = sv.slide, sv.layout.grid
        print(
            f"{s.name}: {len(s.xy):,} cells x {len(s.genes)} genes ({s.dropped_controls} control "
            f"probes dropped); {s.wsi_path.name}: {s.image_shape[1]}x{s.image_shape[0]} px at "
            f"{s.pixel_size_um:.4f} µm/px; {sv.layout.report['cells_on_tissue']:.0%} of the cells "
            f"on tissue; {len(sv.tiles)} of {g.rows}x{g.cols} tiles with >= "
            f"{config.data.min_cells} cells (at most {sv.fullest})"
        )
        if s.report:
            print(f"  reader: {json.dumps(s.report, default=str)}")
    n = {k: split_of.count(k) for k in ("train", "val", "test")}
    print(
        f"split (before the tissue filter): {n['train']} train, {n['val']} val, {n['test']} test "
        f"tiles; train.global_batch {config.train.global_batch}: usable"
    )
    return True


def check_spots(config: ml_collections.ConfigDict, workdir: str | None = None) -> bool:
    """`check_run` for spots (ST-Align): the slides read, the panel chosen, each slide's spots
    surveyed (counts, labels, niches) and the split of spots refused as preprocessing refuses it."""
    from sigmma_jax.data import sources
    from sigmma_jax.data.spot_shards import SPOTS

    try:
        with tempfile.TemporaryDirectory() as tmp:  # the demo source writes its slides
            slides = sources.load_slides(config, workdir or tmp)
            panel, dropped = SPOTS.panel(slides, None, config)
            reports, _, _ = SPOTS.plan(slides, panel, dropped, config, "", pathlib.Path(tmp))
    except readers.InputError as e:
        print(f"NOT usable: {e}")
        return False
    for s in slides:
        r = reports[s.name]
        labelled = f"{r['spots_labelled']:,} labelled ({len(r['labels'])} labels)"
        print(
            f"{s.name}: {r['spots_total']:,} spots ({r['spots_zero_counts']} without counts over "
            f"the panel), {labelled}; {s.wsi_path.name}: {s.image_shape[1]}x{s.image_shape[0]} px "
            f"at {s.pixel_size_um:.4f} µm/px; spot {r['spot_diameter_um']:g} µm; niche reach "
            f"{r['niche_reach_um']:.0f} µm"
        )
        if s.report:
            print(f"  reader: {json.dumps(s.report, default=str)}")
    print(
        f"panel: {len(panel)} genes; train.global_batch {config.train.global_batch}: usable "
        "(the split of spots passed)"
    )
    return True


def check_spaceranger(
    path: pathlib.Path, wsi: pathlib.Path | None, config: ml_collections.ConfigDict | None
) -> bool:
    """Space Ranger output: its outs/ folders listed; with the H&E (or data.wsi in `config`), read
    as a run reads it."""
    from sigmma_jax.data import visium

    try:
        outs = visium.find_outs(path)
    except readers.InputError as e:
        print(f"NOT usable: {e}")
        return False
    for o in outs:
        print(f"{o}: Space Ranger outs/ ({visium.MATRIX}, spatial/)")
    image = str(wsi) if wsi is not None else (config.data.get("wsi", "") if config else "")
    return check_run(
        _config(config, spots=True, source="spaceranger", spaceranger_dir=str(path), wsi=image)
    )


def check_spatialdata(
    path: pathlib.Path, config: ml_collections.ConfigDict | None, workdir: str | None = None
) -> bool:
    """A SpatialData store: its elements and coordinate systems listed, then read as a run of
    `config` (configs/spatialdata.py's defaults, or ST-Align's when it is a spots config) reads
    it, with data.spatialdata naming the store."""
    from sigmma_jax.data import sources, spatialdata_source

    try:
        sdata = spatialdata_source.open_store(path)
    except readers.InputError as e:
        print(f"NOT usable: {e}")
        return False
    for kind in ("images", "labels", "shapes", "points", "tables"):
        names = sorted(getattr(sdata, kind))
        if names:
            print(f"{path}: {kind}: {', '.join(names)}")
    print(f"{path}: coordinate systems: {', '.join(sdata.coordinate_systems)}")
    spots = config is not None and sources.is_spots(config.data)
    c = _config(config, spots=spots, source="spatialdata")
    c.data.spatialdata.store = str(path)
    return check_run(c, workdir)


def check(
    paths: list[str], config: ml_collections.ConfigDict | None = None, workdir: str | None = None
) -> bool:
    """Checks what `paths` name, read with `config` (see the module docstring); prints a report,
    returns usability. Without paths, `config` names the data."""
    if not paths:
        return check_run(config, workdir)
    path = pathlib.Path(paths[0])
    if not path.exists():
        print(f"{path}: does not exist")
        return False
    if path.is_file():
        return _check_files([path] + [pathlib.Path(p) for p in paths[1:]], config)
    if (path / "experiment.xenium").exists():
        extra = [pathlib.Path(p) for p in paths[1:3]]
        return check_xenium(path, *extra, config=config) if len(extra) == 2 else check_xenium(path)
    if _is_spaceranger(path):
        wsi = pathlib.Path(paths[1]) if len(paths) > 1 else None
        return check_spaceranger(path, wsi, config)
    if readers.is_ome_zarr(path):
        return check_spatialdata(path, config, workdir)
    ok = check_hest(path)
    if ok and config is not None:  # the whole cohort, read as the run reads it
        ok = check_run(_config(config, source="hest", hest_dir=str(path)), workdir)
    return ok


def _is_spaceranger(path: pathlib.Path) -> bool:
    from sigmma_jax.data import visium

    return any(
        (d / visium.MATRIX).exists() and (d / "spatial").is_dir()
        for d in (path, path / "outs", *path.glob("*/outs"))
    )


def _check_files(paths: list[pathlib.Path], config: ml_collections.ConfigDict | None) -> bool:
    """A cells file and an H&E image, in either order; or what is missing or misnamed."""
    kinds = {_kind(p): p for p in paths[:2]}
    cells, wsi = kinds.get("cells"), kinds.get("tiff")
    if cells is not None and wsi is not None:
        return check_run(_config(config, source="generic", cells=str(cells), wsi=str(wsi)))
    if "table" in kinds:
        print(f"{kinds['table']}: a table, not an AnnData .h5ad; {readers.GENERIC_FORMAT}")
    elif cells is not None:
        print(f"{cells}: the generic format needs the H&E TIFF too: check_data {cells} HE.tif")
    elif wsi is not None:
        good, info = _wsi(wsi)
        print(f"{wsi}: {info}")
        if good:
            print(f"an H&E image alone: name its cells too: check_data CELLS.h5ad {wsi}")
    else:
        print(
            f"{paths[0]}: not a HEST folder, a Xenium bundle, a cells .h5ad or a TIFF; see --help"
        )
    return False


def _kind(path: pathlib.Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".h5ad":
        return "cells"
    if suffix in readers.TABLE_SUFFIXES:
        return "table"
    if suffix in TIFF_SUFFIXES:
        return "tiff"
    return "other"
