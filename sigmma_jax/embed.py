"""Embeds a slide with a trained run and predicts its expression from the H&E:

    python -m sigmma_jax.embed --run=RUN_DIR --config=CONFIG --out=OUT

CONFIG (with the usual --config.data.* overrides) names the slide in any input format the run's
model reads. The model, gene panel and tile or spot settings are the run's.
- A SIGMMA run: the slide's cells, or only an H&E image (configs/generic.py with
  --config.data.wsi=HE.tif and no cells). Writes OUT/tiles.h5ad, OUT/cells.h5ad (with cells), and,
  unless --nofigures, the Leiden clusters of the cell embeddings per scale (in cells.h5ad),
  OUT/clusters.json and OUT/figures/. How: `sigmma_jax.analysis.embed`.
- An ST-Align run: Visium slides (configs/st_align.py with --config.data.*). Writes OUT/spots.h5ad
  (embeddings, zero-shot domains, expression predicted from the image) and OUT/figures/. How:
  `sigmma_jax.analysis.spots`.
- `--spatialdata=STORE.zarr` adds the results to a SpatialData store (the input store itself, or a
  new one): the tile grid and the cells or spots as shapes with their tables, and a spatialdata-plot
  figure of the clusters over the H&E. How: `sigmma_jax.analysis.spatialdata_out`.
"""

import json

from absl import flags, logging

from sigmma_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_bool("figures", True, "Cluster the cells and draw the figures after embedding.")
flags.DEFINE_string(
    "spatialdata",
    None,
    "Also write the results to this SpatialData store (the input store, or a new path); needs "
    "the [spatialdata] extra.",
)


def _store() -> None:
    if FLAGS.spatialdata:
        from sigmma_jax.analysis import spatialdata_out

        done = spatialdata_out.write_store(FLAGS.out, FLAGS.spatialdata, FLAGS.config)
        for path in [done["store"], *done["figures"]]:
            print(path)


def main(argv) -> int:
    del argv
    cli.required("run", "config", "out")
    from sigmma_jax import families
    from sigmma_jax.train import run_info

    if families.name_of(run_info.read(FLAGS.run)[0]) == "st_align":
        from sigmma_jax.analysis import spots

        done = spots.embed_spots(FLAGS.run, FLAGS.config, FLAGS.out)
        logging.info("%s", json.dumps({k: v for k, v in done.items() if k != "preprocessing"}))
        _store()
        return 0
    from sigmma_jax.analysis import embed

    done = embed.embed_slide(FLAGS.run, FLAGS.config, FLAGS.out)
    logging.info("%s", json.dumps({k: v for k, v in done.items() if k != "preprocessing"}))
    if FLAGS.figures:
        from sigmma_jax.analysis import figures

        for path in figures.write_all(FLAGS.out, FLAGS.config):
            print(path)
    _store()
    return 0


if __name__ == "__main__":
    cli.run(main)
