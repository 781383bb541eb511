"""ST-Align's batches: fixed shapes, scGPT's tokens a function of the record, both images turned
together, every held-out spot evaluated once in manifest order."""

import jax
import numpy as np

from sigmma_jax import families
from sigmma_jax.data import scgpt_tokens, shards, spot_pipeline


def _run_manifest(config, manifest, tmp_path):
    return families.get(config).prepare(config, manifest, config.data.shard_dir, tmp_path)


def test_tokens_are_the_records_own_and_start_with_cls(tiny_spots, tmp_path):
    config, manifest = tiny_spots
    run = _run_manifest(config, manifest, tmp_path)
    spec = run["features"]
    # without converted weights the vocabulary is the panel's own: every gene has a token
    assert (
        spec["genes_in_vocab"] == len(run["genes"]) and spec["vocab_size"] == len(run["genes"]) + 3
    )
    a = spot_pipeline.SpotSource(config.data.shard_dir, run, "train")
    b = spot_pipeline.SpotSource(config.data.shard_dir, run, "train")
    for i in (0, 5, len(a) - 1):
        x, y = a[i], b[i]
        for k in ("genes", "values", "mask"):
            np.testing.assert_array_equal(x["scgpt"][k], y["scgpt"][k])
        assert x["scgpt"]["genes"][0] == spec["cls_id"] and x["scgpt"]["mask"][0]
        expressed = int((x["counts"] > 0).sum())
        assert int(x["scgpt"]["mask"].sum()) == min(expressed + 1, spec["length"])
    # the tokens are scGPT's for the record's counts, drawn with the record's seed
    rec = a[3]
    want = scgpt_tokens.tokenize(
        rec["counts"],
        np.asarray(spec["tokens"]),
        spec["length"],
        spec["pad_id"],
        spec["cls_id"],
        spec["pad_value"],
        spec["n_bins"],
        np.random.default_rng([int(rec["meta"]["index"]), 0]),
    )
    np.testing.assert_array_equal(rec["scgpt"]["values"], want[1])


def test_augment_turns_both_images_alike():
    rng = np.random.default_rng(0)
    spot = dict(
        spot_image=rng.integers(0, 255, (4, 4, 3), dtype=np.uint8),
        niche_image=rng.integers(0, 255, (6, 6, 3), dtype=np.uint8),
    )
    seen = set()
    for seed in range(40):
        out = spot_pipeline.augment(spot, np.random.default_rng(seed))
        k = next(
            k
            for k in range(8)
            if np.array_equal(out["spot_image"], _dihedral(spot["spot_image"], k))
        )
        np.testing.assert_array_equal(out["niche_image"], _dihedral(spot["niche_image"], k))
        seen.add(k)
    assert len(seen) == 8


def _dihedral(img, k):
    if k & 1:
        img = img.transpose(1, 0, 2)
    if k & 2:
        img = img[:, ::-1]
    if k & 4:
        img = img[::-1]
    return img


def test_eval_batches_cover_the_split_once_in_order(tiny_spots, tmp_path):
    config, manifest = tiny_spots
    run = _run_manifest(config, manifest, tmp_path)
    test = run["splits"]["test"]
    batches = list(spot_pipeline.eval_batches(config.data.shard_dir, run, "test", 8))
    valid = np.concatenate([b["meta"]["valid"] for b in batches])
    index = np.concatenate([b["meta"]["index"] for b in batches])[valid]
    assert valid.sum() == len(test) and len(valid) == -(-len(test) // 8) * 8
    np.testing.assert_array_equal(index, test)
    labels = np.concatenate([b["meta"]["label"] for b in batches])[valid]
    items = shards.items(run)
    assert [run["labels"][j] for j in labels] == [items[i]["label"] for i in test]
    zeros = spot_pipeline.zeros_batch(run, 8)
    shapes = lambda t: jax.tree.map(lambda x: (x.shape, x.dtype), t)  # noqa: E731
    assert shapes(zeros) == shapes(batches[0])
