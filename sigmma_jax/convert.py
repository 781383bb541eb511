"""Converts a PyTorch backbone, or a released scGPT model folder, to Flax once (nothing is
downloaded; see the README):

    python -m sigmma_jax.convert --arch=uni --src=pytorch_model.bin --dst=weights/uni
    python -m sigmma_jax.convert --arch=uni --src=pytorch_model.bin --dst=weights/uni_256 --img_size=256
    python -m sigmma_jax.convert --arch=scgpt --src=scGPT_human --dst=weights/scgpt

How: `sigmma_jax.tools.convert`, `sigmma_jax.tools.scgpt_convert` (--arch=scgpt; --src is the
folder holding args.json, vocab.json and best_model.pt).
"""

import json
import sys

from absl import app, flags

from sigmma_jax import cli
from sigmma_jax.tools import convert, scgpt_convert

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "src",
    None,
    "pytorch_model.bin / .pt / .pth / .safetensors; for --arch=scgpt, the model folder.",
)
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
    if FLAGS.arch == "scgpt":
        return _scgpt(overrides)
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
        + (f"; text tower -> {FLAGS.dst}/text ({meta['text']['layout']})" if "text" in meta else "")
    )
    return 0


def _scgpt(overrides: dict) -> int:
    if FLAGS.img_size:
        raise app.UsageError("--img_size applies to image backbones, not --arch=scgpt")
    try:
        meta = scgpt_convert.convert(FLAGS.src, FLAGS.dst, ignore=FLAGS.ignore, **overrides)
    except convert.ConversionError as e:
        print(f"conversion failed: {e}", file=sys.stderr)
        return 1
    c, w, added = meta["config"], meta["source"]["weights"], meta["appended_tokens"]
    print(
        f"converted {FLAGS.src} ({meta['source']['tensors']} tensors, {w['file']} sha256 "
        f"{w['sha256'][:16]}..., {meta['source']['attention_naming']} attention keys) -> "
        f"{FLAGS.dst} as scgpt: {c['nlayers']} layers, d_model {c['d_model']}, "
        f"{c['ntoken']} tokens" + (f" ({', '.join(added)} appended)" if added else "")
    )
    return 0


if __name__ == "__main__":
    cli.run(main)
