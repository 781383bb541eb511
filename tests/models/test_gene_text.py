"""The text ST tower (`model.st_tower = "text"`): a vision-language model's converted text tower on
the gene sentence as text, its tokens from the model's own tokenizer, its weights placed at
initialisation."""

import jax
import jax.numpy as jnp
import numpy as np
from support import vision_language as vl

from sigmma_jax import families
from sigmma_jax.data import features
from sigmma_jax.models import text


def test_gene_text_is_the_sentence_through_the_models_tokenizer(tiny_shards, tmp_path):
    config, manifest = tiny_shards
    c = config.copy_and_resolve_references()
    c.model.backbone_weights = str(vl.converted("plip", tmp_path / "plip", seed=4))
    genes = manifest["genes"]
    counts = np.zeros((2, len(genes)), np.float32)
    counts[0, [3, 1, 7]] = [9, 5, 2]  # genes 3, 1, 7 in that order
    tokens = features.gene_text(counts, manifest, c)
    tok = text.tokenizer(c.model.backbone_weights)
    want = tok([f"{genes[3]} {genes[1]} {genes[7]}", ""])
    np.testing.assert_array_equal(tokens, want)
    assert tokens.shape == (2, vl.CONTEXT) and tokens.dtype == np.int32
    assert (tokens[0] > 0).sum() >= 5  # start, three gene names (one or more tokens each), end


def test_the_converted_text_tower_is_placed_and_reads_the_tokens(tiny_shards, tmp_path):
    config, manifest = tiny_shards
    c = config.copy_and_resolve_references()
    weights = vl.converted("plip", tmp_path / "plip", seed=5)
    c.model.update(backbone="plip", backbone_weights=str(weights), st_tower="text")
    c.model.he_tower = "whole_tile"
    c.train.scale_weights = (0.0, 0.0, 1.0)
    c.data.tile_features = ("gene_text",)
    family = families.get(c)
    manifest = family.prepare(c, manifest, c.data.shard_dir, tmp_path)
    model, _ = family.build_model(c, manifest)
    batch = family.zeros_batch(manifest, 2)
    params = model.init({"params": jax.random.PRNGKey(0)}, batch, train=False)["params"]
    params = family.pretrained(c, params)
    _, want, tokenizer = text.load(weights)
    for a, b in zip(jax.tree.leaves(params["st"]["text"]), jax.tree.leaves(want)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    tokens = tokenizer(["EPCAM KRT8 CD3E", "COL1A1"])
    tower = text.build(text.read_meta(weights)["config"])
    got = model.bind({"params": params}).st.text(jnp.asarray(tokens))
    np.testing.assert_allclose(got, tower.apply({"params": want}, tokens), atol=1e-6)
