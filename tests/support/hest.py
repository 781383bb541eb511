"""A tiny HEST-1k Xenium sample with the real layout: wsis/, metadata/, transcripts/, xenium_seg/."""

import json
import pathlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
import tifffile

from sigmma_jax.data import readers
from support.slides import pink_slide


def write_hest_sample(
    root,
    sample_id,
    image,
    pixel_size_um,
    xy,
    counts,
    genes,
    cell_ids,
    seed=0,
    seg_missing=5,
    row_group_size=500,
    meta=None,
    seg_ids=None,
):
    """Writes the sample so that reading it back must give exactly `counts` and `xy`:
    extra transcripts are all of kinds the reader must drop (qv < 20, unassigned).

    `cell_ids` may be str, bytes (NCBI783's transcripts) or int (other samples); the segmentation's
    ids (its GeoDataFrame index) are `seg_ids`, by default `cell_ids`. `meta` adds to or replaces
    metadata fields (patient, dataset_title, a wrong pixel_size_um_embedded...)."""
    root = pathlib.Path(root)
    rng = np.random.default_rng(seed)
    for sub in ("wsis", "metadata", "transcripts", "xenium_seg"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    with tifffile.TiffWriter(root / "wsis" / f"{sample_id}.tif", bigtiff=True) as t:
        t.write(image, subifds=1, tile=(256, 256), compression="zlib", photometric="rgb")
        t.write(
            image[::2, ::2], subfiletype=1, tile=(256, 256), compression="zlib", photometric="rgb"
        )
    (root / "metadata" / f"{sample_id}.json").write_text(
        json.dumps(
            {
                "pixel_size_um_estimated": pixel_size_um,
                "pixel_size_um_embedded": pixel_size_um,
                "st_technology": "Xenium",
                "species": "Homo sapiens",
                "magnification": "40x",
                "fullres_px_width": image.shape[1],
                "fullres_px_height": image.shape[0],
                **(meta or {}),
            }
        )
    )
    no_seg = set(rng.choice(len(cell_ids), seg_missing, replace=False).tolist())
    rows = dict(cell_id=[], feature_name=[], qv=[], he_x=[], he_y=[])

    def add(cid, gene, qv, x, y):
        rows["cell_id"].append(cid)
        rows["feature_name"].append(gene)
        rows["qv"].append(qv)
        rows["he_x"].append(x)
        rows["he_y"].append(y)

    for i, cid in enumerate(cell_ids):
        for g in np.flatnonzero(counts[i]):
            for _ in range(int(counts[i, g])):
                # Cells without a polygon get transcripts on the centroid, so the mean is exact.
                jx, jy = (0.0, 0.0) if i in no_seg else rng.normal(0, 2.0, 2)
                add(cid, genes[g], float(rng.uniform(20, 40)), xy[i, 0] + jx, xy[i, 1] + jy)
        add(cid, genes[0], float(rng.uniform(5, 19.9)), xy[i, 0], xy[i, 1])  # low quality
    unassigned = {int: -1, bytes: b"UNASSIGNED"}.get(type(cell_ids[0]), "UNASSIGNED")
    for _ in range(50):
        add(unassigned, genes[1], 30.0, *rng.uniform(0, min(image.shape[:2]), 2))
    order = rng.permutation(len(rows["cell_id"]))
    n = len(order)
    table = pa.table(
        {
            "transcript_id": pa.array(np.arange(n, dtype=np.uint64)),
            "cell_id": pa.array(np.asarray(rows["cell_id"])[order]),
            "overlaps_nucleus": pa.array(rng.integers(0, 2, n).astype(np.uint8)),
            "feature_name": pa.array(np.asarray(rows["feature_name"])[order]).dictionary_encode(),
            "x_location": pa.array(np.asarray(rows["he_x"])[order] * pixel_size_um, pa.float32()),
            "y_location": pa.array(np.asarray(rows["he_y"])[order] * pixel_size_um, pa.float32()),
            "z_location": pa.array(rng.uniform(10, 20, n).astype(np.float32)),
            "qv": pa.array(np.asarray(rows["qv"], np.float32)[order]),
            "fov_name": pa.array(["A1"] * n),
            "nucleus_distance": pa.array(np.zeros(n, np.float32)),
            "he_x": pa.array(np.asarray(rows["he_x"])[order]),
            "he_y": pa.array(np.asarray(rows["he_y"])[order]),
        }
    )
    pq.write_table(
        table,
        root / "transcripts" / f"{sample_id}_transcripts.parquet",
        row_group_size=row_group_size,
    )
    keep = [i for i in range(len(cell_ids)) if i not in no_seg]
    squares = [shapely.box(xy[i, 0] - 4, xy[i, 1] - 3, xy[i, 0] + 4, xy[i, 1] + 3) for i in keep]
    pq.write_table(
        pa.table(
            {
                "geometry": pa.array(shapely.to_wkb(squares)),
                "__index_level_0__": pa.array(np.asarray(seg_ids or cell_ids)[keep]),
            }
        ),
        root / "xenium_seg" / f"{sample_id}_xenium_cell_seg.parquet",
    )
    return root


def sample(tmp_path, sample_id="TENX999", seed=0, meta=None, ids=None, seg_ids=None, **kw):
    (tmp_path / f"generic_{sample_id}").mkdir(parents=True)
    wsi, cells, xy, counts, genes = pink_slide(tmp_path / f"generic_{sample_id}", seed=seed, **kw)
    ids = ids or [f"cell{i}" for i in range(len(xy))]
    with readers.WSI(wsi) as w:
        image = w.read(0, w.shape[0], 0, w.shape[1])
    write_hest_sample(
        tmp_path / "hest",
        sample_id,
        image,
        (meta or {}).get("pixel_size_um_estimated", 0.2737),
        xy,
        counts,
        genes,
        ids,
        seed=seed,
        meta=meta,
        seg_ids=seg_ids,
    )
    return wsi, cells, xy, counts, genes
