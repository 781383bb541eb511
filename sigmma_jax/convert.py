"""Converts a PyTorch backbone to Flax once (nothing is downloaded; see the README):

    python -m sigmma_jax.convert --arch=uni --src=pytorch_model.bin --dst=weights/uni
    python -m sigmma_jax.convert --arch=uni --src=pytorch_model.bin --dst=weights/uni_256 --img_size=256

How: `sigmma_jax.tools.convert`.
"""

import json
import sys

from absl import flags

from sigmma_jax import cli
from sigmma_jax.tools import convert

FLAGS = flags.FLAGS
flags.DEFINE_string("src", None, "pytorch_model.bin / .pt / .pth / .safetensors")
flags.DEFINE_string("dst", None, "Output directory.")
flags.DEFINE_string("ignore", None, r"Regex of source keys to drop, e.g. '^head\.'.")
flags.DEFINE_multi_string(
    "override", [], "Override a preset field (a JSON value), e.g. --override=depth=2."
)


def _value(v: str):
    try:
        return json.loads(v)
    except json.JSONDecodeError:
        return v


def main(argv) -> int:
    del argv
    cli.required("src", "dst")
    overrides = {k: _value(v) for k, _, v in (kv.partition("=") for kv in FLAGS.override)}
    try:
        meta = convert.convert(
            FLAGS.arch,
            FLAGS.src,
            FLAGS.dst,
            img_size=FLAGS.img_size or None,
            ignore=FLAGS.ignore,
            **overrides,
        )
    except convert.ConversionError as e:
        print(f"conversion failed: {e}", file=sys.stderr)
        return 1
    resampled = meta.get("pos_embed_resampled")
    print(
        f"converted {FLAGS.src} ({meta['source']['tensors']} tensors, sha256 "
        f"{meta['source']['sha256'][:16]}...) -> {FLAGS.dst} as {FLAGS.arch}"
        + (f"; pos_embed resampled {resampled}" if resampled else "")
    )
    return 0


if __name__ == "__main__":
    cli.run(main)
