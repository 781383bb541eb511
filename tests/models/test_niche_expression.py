"""AE-Gene (`sigmma_jax.models.niche_expression`) against torch: the same weights in torch's
pre-LayerNorm `nn.TransformerEncoderLayer` (exact GELU, batch first) behind the token MLP give the
same niche embedding; the input is scanpy's normalize_total + log1p of the niche's counts."""

import jax
import numpy as np
import pytest
import torch

from sigmma_jax.models import niche_expression

GENES, BATCH = 30, 4
DIMS = dict(tokens=3, width=16, depth=2, heads=4, mlp_dim=24, mlp_hidden=(20, 12))


def _counts(seed=0):
    rng = np.random.default_rng(seed)
    counts = rng.poisson(3.0, size=(BATCH, GENES)).astype(np.float32)
    counts[1] = 0  # an empty niche stays zero after normalisation
    return counts


def _t(x):
    return torch.tensor(np.asarray(x, np.float64))


def _torch_layer(p, width, heads, mlp_dim):
    layer = torch.nn.TransformerEncoderLayer(
        width, heads, mlp_dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
    ).double()
    att = p["attention"]
    with torch.no_grad():
        # flax's (in, heads, head_dim) kernels -> torch's stacked (3 * width, width) in-projection
        w = [att[k]["kernel"].reshape(width, width).T for k in ("query", "key", "value")]
        b = [att[k]["bias"].reshape(width) for k in ("query", "key", "value")]
        layer.self_attn.in_proj_weight.copy_(_t(np.concatenate(w, 0)))
        layer.self_attn.in_proj_bias.copy_(_t(np.concatenate(b, 0)))
        layer.self_attn.out_proj.weight.copy_(_t(att["out"]["kernel"].reshape(width, width).T))
        layer.self_attn.out_proj.bias.copy_(_t(att["out"]["bias"]))
        for mine, theirs in (("fc1", layer.linear1), ("fc2", layer.linear2)):
            theirs.weight.copy_(_t(p[mine]["kernel"].T))
            theirs.bias.copy_(_t(p[mine]["bias"]))
        for mine, theirs in (("norm1", layer.norm1), ("norm2", layer.norm2)):
            theirs.weight.copy_(_t(p[mine]["scale"]))
            theirs.bias.copy_(_t(p[mine]["bias"]))
            theirs.eps = 1e-6  # flax's LayerNorm epsilon
    return layer.eval()


def torch_ae_gene(p, counts, tokens, width, depth, heads, mlp_dim, mlp_hidden):
    x = torch.tensor(counts, dtype=torch.float64)
    x = torch.log1p(x / x.sum(-1, keepdim=True).clamp(min=1.0) * 1e4)
    gelu = torch.nn.GELU()  # exact
    for i in range(len(mlp_hidden)):
        d = p[f"token_mlp_{i}"]
        x = gelu(x @ _t(d["kernel"]) + _t(d["bias"]))
    x = x @ _t(p["token_out"]["kernel"]) + _t(p["token_out"]["bias"])
    x = x.reshape(len(counts), tokens, width) + _t(p["pos_embed"])
    for i in range(depth):
        x = _torch_layer(p[f"blocks_{i}"], width, heads, mlp_dim)(x)
    ln = p["norm"]
    x = torch.nn.functional.layer_norm(x, (width,), _t(ln["scale"]), _t(ln["bias"]), eps=1e-6)
    return x.mean(1).detach().numpy()


@pytest.fixture(scope="module")
def model_and_params():
    model = niche_expression.NicheExpressionEncoder(**DIMS)
    params = model.init(jax.random.PRNGKey(0), _counts())["params"]
    # every parameter random (norm scales and biases included): nothing hides behind 1 or 0
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    params = jax.tree.unflatten(
        tree, [0.4 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)]
    )
    return model, jax.tree.map(np.asarray, params)


def test_matches_torch_transformer_encoder(model_and_params):
    model, p = model_and_params
    counts = _counts(1)
    got = np.asarray(model.apply({"params": p}, counts))
    want = torch_ae_gene(p, counts, **DIMS)
    assert got.shape == (BATCH, DIMS["width"])
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)


def test_normalisation_is_scanpys_and_the_scale_of_a_niche_does_not_matter(model_and_params):
    model, p = model_and_params
    counts = _counts(2)
    x = np.asarray(niche_expression.normalized_log1p(counts, 1e4))
    total = counts.sum(1, keepdims=True)
    want = np.log1p(np.divide(counts, np.maximum(total, 1)) * 1e4)
    np.testing.assert_allclose(x, want, rtol=1e-6)
    assert (x[1] == 0).all()
    # the mean of a niche's spots or their sum: the same embedding (Eq. 2 normalised per niche)
    a = np.asarray(model.apply({"params": p}, counts))
    b = np.asarray(model.apply({"params": p}, 4 * counts))
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_dropout_acts_only_in_training(model_and_params):
    model, p = model_and_params
    counts = _counts(3)
    ref = np.asarray(model.apply({"params": p}, counts))
    a = model.apply({"params": p}, counts, train=True, rngs={"dropout": jax.random.PRNGKey(0)})
    assert np.abs(np.asarray(a) - ref).max() > 1e-4
    with pytest.raises(ValueError, match="divisible"):
        niche_expression.NicheExpressionEncoder(width=18, heads=4).init(
            jax.random.PRNGKey(0), counts
        )
