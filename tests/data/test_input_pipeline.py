import numpy as np
import pytest
from support.tiles import tile

from sigmma_jax.data import graphs, input_pipeline, records


class _FixedRng:
    """Stands in for np.random.Generator to pick one dihedral transform."""

    def __init__(self, k):
        self.k = k

    def integers(self, n):
        return self.k


@pytest.mark.parametrize("k", range(8))
def test_augmentation_keeps_every_cell_on_its_pixels(k):
    t = tile()
    a = input_pipeline.augment(t, _FixedRng(k))
    px = lambda tile: tile["image"][
        np.floor(tile["xy"][:, 1]).astype(int), np.floor(tile["xy"][:, 0]).astype(int)
    ]
    np.testing.assert_array_equal(px(a), px(t))
    # The image is a permutation of the same pixels and blocks follow the coordinates.
    assert sorted(a["image"].reshape(-1, 3).tolist()) == sorted(t["image"].reshape(-1, 3).tolist())
    np.testing.assert_array_equal(a["blocks"], graphs.micro_blocks(a["xy"], 256))
    # Edges never cross a block after augmentation, and expression rides with its cell.
    np.testing.assert_array_equal(a["blocks"][a["senders"]], a["blocks"][a["receivers"]])
    np.testing.assert_array_equal(a["counts"], t["counts"])


def test_augmentation_covers_the_eight_transforms():
    t = tile()
    outs = {input_pipeline.augment(t, _FixedRng(k))["image"].tobytes() for k in range(8)}
    assert len(outs) == 8


def test_block_of_a_cell_on_a_border_is_kept_exactly():
    t = tile(n=3)
    t["xy"] = np.array([[64.0, 10.5], [128.0, 200.25], [10.5, 192.0]], np.float32)
    t["blocks"] = graphs.micro_blocks(t["xy"], 256)
    a = input_pipeline.augment(t, _FixedRng(6))  # mirror x and y
    np.testing.assert_array_equal(a["blocks"], 3 - t["blocks"])


def test_record_roundtrip():
    t = tile()
    back = records.decode(records.encode(t))
    for k in records.FIELDS:
        np.testing.assert_array_equal(back[k], t[k])
        assert back[k].dtype == records.FIELDS[k]
    assert back["cell_ids"].tolist() == t["cell_ids"].tolist()
    assert back["meta"] == t["meta"]


def test_pad_and_collate_layout():
    tiles = [tile(n=n, seed=n) for n in (10, 60, 33)]
    padded = [input_pipeline.pad_tile(t, 64, 512) for t in tiles]
    batch = input_pipeline.collate(padded)
    g = batch["graph"]
    assert batch["image"].shape == (3, 256, 256, 3)
    assert g.nodes["counts"].shape == (3 * 64, 7) and g.senders.shape == (3 * 512,)
    np.testing.assert_array_equal(g.n_node, [64, 64, 64])
    for b, t in enumerate(tiles):
        n, e = len(t["xy"]), len(t["senders"])
        mask = g.nodes["mask"][b * 64 : (b + 1) * 64]
        assert mask.sum() == n and mask[:n].all()
        np.testing.assert_array_equal(g.nodes["counts"][b * 64 : b * 64 + n], t["counts"])
        emask = g.edges["mask"][b * 512 : (b + 1) * 512]
        assert emask.sum() == e
        # Senders are local to the tile's slot: the same wherever the tile sits in the batch.
        np.testing.assert_array_equal(g.senders[b * 512 : b * 512 + e], t["senders"])
        np.testing.assert_array_equal(g.receivers[b * 512 : b * 512 + e], t["receivers"])
    with pytest.raises(ValueError, match="over the budget"):
        input_pipeline.pad_tile(tile(n=70), 64, 512)


def test_train_iterator_batches_and_resumes(tiny_shards):
    config, manifest = tiny_shards
    it = input_pipeline.train_iterator(config.data.shard_dir, manifest, 8, seed=0)
    first = [next(it) for _ in range(3)]
    b = first[0]
    nodes = manifest["budgets"]["nodes"]
    assert b["image"].shape == (8, 256, 256, 3)
    assert b["graph"].nodes["counts"].shape == (8 * nodes, len(manifest["genes"]))
    state = it.get_state()
    expected = next(it)
    it2 = input_pipeline.train_iterator(config.data.shard_dir, manifest, 8, seed=0)
    it2.set_state(state)
    np.testing.assert_array_equal(next(it2)["image"], expected["image"])
    # Every cell of every batch stays inside its micro block's edges after augmentation.
    g = b["graph"]
    blocks = g.nodes["blocks"].reshape(8, nodes, 2)
    snd, rcv = g.senders.reshape(8, -1), g.receivers.reshape(8, -1)
    for i, keep in enumerate(g.edges["mask"].reshape(8, -1)):
        np.testing.assert_array_equal(blocks[i][snd[i][keep]], blocks[i][rcv[i][keep]])


def test_eval_batches_cover_the_split_once(tiny_shards):
    config, manifest = tiny_shards
    n = len(manifest["splits"]["test"])
    batches = list(input_pipeline.eval_batches(config.data.shard_dir, manifest, "test", 8))
    valid = np.concatenate([b["graph"].globals["valid"] for b in batches])
    assert valid.sum() == n and valid[:n].all() and len(valid) % 8 == 0
