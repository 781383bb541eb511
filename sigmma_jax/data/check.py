"""What does a folder hold, and can SIGMMA use it? Reads headers and metadata only, so it is quick.

  python -m sigmma_jax.check_data HEST_DIR                            # a HEST-1k download
  python -m sigmma_jax.check_data XENIUM_OUTPUT_DIR [HE.tif ALIGN.csv] # a raw Xenium bundle
  python -m sigmma_jax.check_data CELLS.h5ad HE.tif                   # the generic format

Exits 0 when everything found is usable, 1 otherwise.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

from sigmma_jax.data import hest, readers, xenium


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


def check_hest(root: pathlib.Path) -> bool:
    ids = sorted(
        {p.stem for p in (root / "wsis").glob("*.tif")}
        | {
            p.name.removesuffix("_transcripts.parquet")
            for p in (root / "transcripts").glob("*_transcripts.parquet")
        }
    )
    if not ids:
        print(f"{root}: no wsis/*.tif or transcripts/*_transcripts.parquet: not a HEST folder")
        return False
    all_ok = True
    for sid in ids:
        p = hest.sample_paths(root, sid)
        lines, ok = [], True
        for key in ("wsi", "metadata", "transcripts", "cell_seg"):
            if not p[key].exists():
                required = key != "cell_seg"
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
            else:
                good, info = _parquet(p[key], ("geometry",))
            ok &= good
            lines.append(f"  {key:12s} {'ok' if good else 'BAD'}: {info}")
        print(f"{sid}: {'usable' if ok else 'NOT usable'}")
        print("\n".join(lines))
        all_ok &= ok
    usable = [
        s
        for s in ids
        if all(hest.sample_paths(root, s)[k].exists() for k in ("wsi", "metadata", "transcripts"))
    ]
    if usable:
        print(
            f"\nrun: python -m sigmma_jax.main --config=configs/default.py --config.data.source=hest "
            f"--config.data.hest_dir={root} --config.data.sample_ids='{tuple(usable)}' --workdir=W"
        )
    return all_ok


def check_xenium(
    root: pathlib.Path, he: pathlib.Path | None = None, alignment: pathlib.Path | None = None
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
        ok &= check_alignment(root, he, alignment)
    return ok


def check_alignment(root: pathlib.Path, he: pathlib.Path, alignment: pathlib.Path) -> bool:
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
        s = xenium.read_xenium(root, he, alignment)
    except readers.InputError as e:
        print(f"NOT usable: {e}")
        return False
    r = s.report
    print(
        f"{s.name}: {len(s.xy)} cells, {len(s.genes)} genes ({s.dropped_controls} control/other "
        f"features dropped, {r['matrix_columns_without_cell']} matrix columns without a cell); "
        f"H&E {s.pixel_size_um:.4f} µm/px, image {s.image_shape[1]}x{s.image_shape[0]} px: usable"
    )
    return True


def check_generic(cells: pathlib.Path, wsi: pathlib.Path) -> bool:
    try:
        s = readers.read_generic(cells, wsi)
    except readers.InputError as e:
        print(f"NOT usable: {e}")
        return False
    print(
        f"{cells.name}: {len(s.xy):,} cells x {len(s.genes)} genes ({s.dropped_controls} control "
        f"probes dropped); {wsi.name}: {s.image_shape[1]}x{s.image_shape[0]} px at "
        f"{s.pixel_size_um:.4f} µm/px: usable"
    )
    return True


def check(paths: list[str]) -> bool:
    """Checks what `paths` name (see the module docstring); prints a report, returns usability."""
    path = pathlib.Path(paths[0])
    if not path.exists():
        print(f"{path}: does not exist")
        return False
    if path.suffix == ".h5ad":
        if len(paths) < 2:
            print("the generic format needs the H&E TIFF too: check_data CELLS.h5ad HE.tif")
            return False
        return check_generic(path, pathlib.Path(paths[1]))
    if (path / "experiment.xenium").exists():
        extra = [pathlib.Path(p) for p in paths[1:3]]
        return check_xenium(path, *extra) if len(extra) == 2 else check_xenium(path)
    return check_hest(path)
