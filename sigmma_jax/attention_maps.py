"""Class-token attention maps of the backbone's last block (paper Fig. 3):

    python -m sigmma_jax.attention_maps --weights=weights/uni --out=figs tile1.png tile2.png

Writes `<name>_attention.png` and `.npy` per tile. How: `sigmma_jax.tools.attention_maps`.
"""

import pathlib

import numpy as np
from absl import app, flags

from sigmma_jax import cli
from sigmma_jax.models import backbones
from sigmma_jax.tools import attention_maps

FLAGS = flags.FLAGS
flags.DEFINE_string("weights", "", "Converted backbone directory ('' = random init of --arch).")


def main(argv) -> int:
    cli.required("out")
    paths = argv[1:]
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
