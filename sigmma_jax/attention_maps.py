"""Class-token attention maps of the backbone's last block (paper Fig. 3):

    python -m sigmma_jax.attention_maps --run=RUN_DIR --out=figs [--tiles=NAME,...]
    python -m sigmma_jax.attention_maps --weights=weights/uni --out=figs tile1.png tile2.png

With --run: the run's trained backbone beside its base backbone (the converted weights it started
from, or its initialisation), on tiles of a shard set (--shards: the run's own by default, or an
embedding's OUT/shards), with the tiles' cell centroids drawn on top; tiles by name (SLIDE_ROW_COL,
as in tiles.h5ad) or the --n_tiles with the most cells. Writes `<name>_attention.png` and `.npy`
per tile. How: `sigmma_jax.tools.attention_maps`.
"""

import pathlib

import numpy as np
from absl import app, flags

from sigmma_jax import cli
from sigmma_jax.models import backbones
from sigmma_jax.tools import attention_maps

FLAGS = flags.FLAGS
flags.DEFINE_string("weights", "", "Converted backbone directory ('' = random init of --arch).")
flags.DEFINE_string(
    "shards", "", "With --run: the shard set whose tiles are drawn ('' = the run's)."
)
flags.DEFINE_list("tiles", [], "With --run: tile names SLIDE_ROW_COL ([] = --n_tiles tiles).")
flags.DEFINE_integer("n_tiles", 4, "With --run and no --tiles: this many tiles, most cells first.")


def main(argv) -> int:
    cli.required("out")
    paths = argv[1:]
    if FLAGS.run:
        from sigmma_jax.analysis import fig3

        written = fig3.write(FLAGS.run, FLAGS.out, FLAGS.shards, FLAGS.tiles, FLAGS.n_tiles)
        for path in written:
            print(path)
        return 0
    if not paths:
        raise app.UsageError("name one or more tile images (PNG/JPEG/TIFF), all the same size")
    if FLAGS.weights:
        model, params = backbones.load(FLAGS.weights)
    else:
        model = backbones.build(FLAGS.arch)
        params = backbones.init_params(model)
    tiles = np.stack([attention_maps.read_tile(p) for p in paths])
    names = [pathlib.Path(p).stem for p in paths]
    for path in attention_maps.save_attention_maps(model, params, tiles, FLAGS.out, names):
        print(path)
    return 0


if __name__ == "__main__":
    cli.run(main)
