"""ST-Align's fusion network (`sigmma_jax.models.abfn`) against a numpy re-implementation written
here from the paper's Eqs. 7-9 and the module docstring (the authors' code's form): tokens by a
learned map, LayerNorm'd queries and keys/values, multi-head cross-attention with the softmax over
the other modality's tokens, a GELU FFN per branch, the two concatenated, LayerNorm, ReLU head.
Also: attention stays within a sample (permuting the batch permutes the output), gradients reach
both inputs, dropout acts only in training, and `Concatenate` is one linear map of [a; b].
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sigmma_jax.models import abfn

DIMS = dict(tokens=3, width=16, heads=4, ffn_hidden=8, hidden=24, out_dim=12)
D_IMAGE, D_GENE, BATCH = 10, 7, 5


def _erf(x):
    return np.vectorize(math.erf)(x)


def _gelu(x):  # exact (erf) GELU, torch's default
    return 0.5 * x * (1.0 + _erf(x / np.sqrt(2.0)))


def _layer_norm(x, p, eps=1e-6):  # Flax's LayerNorm: biased variance, epsilon 1e-6
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _dense(x, p):
    return x @ p["kernel"] + p["bias"]


def _softmax(x, axis):
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def _attention(q_in, kv_in, p):
    """Multi-head attention: kernels (in, heads, head_dim), out kernel (heads, head_dim, out)."""
    q = np.einsum("bsi,ihd->bshd", q_in, p["query"]["kernel"]) + p["query"]["bias"]
    k = np.einsum("bsi,ihd->bshd", kv_in, p["key"]["kernel"]) + p["key"]["bias"]
    v = np.einsum("bsi,ihd->bshd", kv_in, p["value"]["kernel"]) + p["value"]["bias"]
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    w = _softmax(logits, -1)  # over the other modality's tokens k, within one sample b
    z = np.einsum("bhqk,bkhd->bqhd", w, v)
    return np.einsum("bqhd,hdo->bqo", z, p["out"]["kernel"]) + p["out"]["bias"]


def _branch(queries, context, p, name):
    z = _attention(
        _layer_norm(queries, p[f"{name}_norm_q"]),
        _layer_norm(context, p[f"{name}_norm_kv"]),
        p[f"{name}_attention"],
    )
    h = _gelu(_dense(z, p[f"{name}_ffn_in"]))
    return _dense(h, p[f"{name}_ffn_out"])


def numpy_abfn(p, image, gene, tokens, width):
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
    b = image.shape[0]
    zi = _dense(image, p["image_tokens"]).reshape(b, tokens, width)
    zg = _dense(gene, p["gene_tokens"]).reshape(b, tokens, width)
    fused = np.concatenate([_branch(zi, zg, p, "image"), _branch(zg, zi, p, "gene")], -1)
    f = _layer_norm(fused.reshape(b, tokens * width), p["norm"])
    f = np.maximum(_dense(f, p["head_in"]), 0.0)
    return _dense(f, p["head_out"])


def _inputs(seed=0, batch=BATCH):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(batch, D_IMAGE)).astype(np.float32),
        rng.normal(size=(batch, D_GENE)).astype(np.float32),
    )


def _randomise(params, seed=1):
    """Every parameter drawn at random (LayerNorm scales and biases, attention biases included),
    so that no term of the reference can hide behind an initial one or zero."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    new = [0.5 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
    return jax.tree.unflatten(tree, new)


@pytest.fixture(scope="module")
def model_and_params():
    model = abfn.ABFN(**DIMS)
    image, gene = _inputs()
    params = model.init(jax.random.PRNGKey(0), image, gene)["params"]
    return model, _randomise(params)


def test_parameter_shapes_are_those_of_the_docstring(model_and_params):
    _, p = model_and_params
    s, w, h = DIMS["tokens"], DIMS["width"], DIMS["heads"]
    assert p["image_tokens"]["kernel"].shape == (D_IMAGE, s * w)
    assert p["gene_tokens"]["kernel"].shape == (D_GENE, s * w)
    for name in ("image", "gene"):
        att = p[f"{name}_attention"]
        for k in ("query", "key", "value"):
            assert att[k]["kernel"].shape == (w, h, w // h)
        assert att["out"]["kernel"].shape == (h, w // h, w)
        assert p[f"{name}_ffn_in"]["kernel"].shape == (w, DIMS["ffn_hidden"])
        assert p[f"{name}_ffn_out"]["kernel"].shape == (DIMS["ffn_hidden"], w // 2)
    assert p["norm"]["scale"].shape == (s * w,)
    assert p["head_in"]["kernel"].shape == (s * w, DIMS["hidden"])
    assert p["head_out"]["kernel"].shape == (DIMS["hidden"], DIMS["out_dim"])


def test_forward_matches_numpy_reference(model_and_params):
    model, p = model_and_params
    image, gene = _inputs(2)
    got = np.asarray(model.apply({"params": p}, image, gene))
    want = numpy_abfn(p, image.astype(np.float64), gene.astype(np.float64), 3, 16)
    assert got.shape == (BATCH, DIMS["out_dim"]) and got.dtype == np.float32
    diff = np.abs(got - want).max()
    assert diff <= 1e-5, diff
    # the two branches are not interchangeable: swapping the inputs' roles changes the output
    swapped = dict(p, image_tokens=p["gene_tokens"], gene_tokens=p["image_tokens"])
    other = np.asarray(model.apply({"params": swapped}, gene, image))
    assert np.abs(other - got).max() > 1e-3


def test_attention_is_over_tokens_not_samples(model_and_params):
    """Eq. 7 as printed sums the softmax over samples j; ABFN attends within a sample, so a row's
    output depends on that row alone: permuting the batch permutes the output, and one sample on
    its own gives the same row."""
    model, p = model_and_params
    image, gene = _inputs(3, batch=6)
    out = np.asarray(model.apply({"params": p}, image, gene))
    perm = np.array([4, 0, 5, 2, 1, 3])
    permuted = np.asarray(model.apply({"params": p}, image[perm], gene[perm]))
    np.testing.assert_allclose(permuted, out[perm], atol=1e-5)
    alone = np.asarray(model.apply({"params": p}, image[2:3], gene[2:3]))
    np.testing.assert_allclose(alone[0], out[2], atol=1e-5)


def test_gradients_reach_both_inputs(model_and_params):
    model, p = model_and_params
    image, gene = _inputs(4)
    gi, gg = jax.grad(lambda a, b: jnp.sum(model.apply({"params": p}, a, b) ** 2), (0, 1))(
        image, gene
    )
    for g in (gi, gg):
        g = np.asarray(g)
        assert np.isfinite(g).all() and (np.abs(g).sum(1) > 0).all()


def test_dropout_only_in_training(model_and_params):
    model, p = model_and_params
    image, gene = _inputs(5)
    ref = np.asarray(model.apply({"params": p}, image, gene))
    # evaluation: deterministic, and no rng needed
    np.testing.assert_array_equal(np.asarray(model.apply({"params": p}, image, gene)), ref)
    with pytest.raises(Exception, match="dropout"):  # training draws from the "dropout" stream
        model.apply({"params": p}, image, gene, train=True)
    rngs = lambda k: {"dropout": jax.random.PRNGKey(k)}  # noqa: E731
    a = np.asarray(model.apply({"params": p}, image, gene, train=True, rngs=rngs(0)))
    b = np.asarray(model.apply({"params": p}, image, gene, train=True, rngs=rngs(1)))
    assert np.abs(a - ref).max() > 1e-4 and np.abs(a - b).max() > 1e-4
    no_dropout = abfn.ABFN(**DIMS, dropout=0.0)
    c = np.asarray(no_dropout.apply({"params": p}, image, gene, train=True, rngs=rngs(0)))
    np.testing.assert_allclose(c, ref, atol=1e-6)


def test_width_must_split_into_heads_and_halves():
    image, gene = _inputs()
    for width, heads in ((15, 5), (18, 4)):
        with pytest.raises(ValueError, match="width"):
            abfn.ABFN(tokens=2, width=width, heads=heads).init(jax.random.PRNGKey(0), image, gene)


def test_concatenate_is_one_linear_map_of_both():
    model = abfn.Concatenate(out_dim=6)
    image, gene = _inputs(6)
    p = _randomise(model.init(jax.random.PRNGKey(0), image, gene)["params"])
    assert p["proj"]["kernel"].shape == (D_IMAGE + D_GENE, 6)
    got = np.asarray(model.apply({"params": p}, image, gene, train=True))
    k, bias = (np.asarray(p["proj"][n], np.float64) for n in ("kernel", "bias"))
    want = np.concatenate([image, gene], -1).astype(np.float64) @ k + bias
    assert np.abs(got - want).max() <= 1e-5
    # the order is [image; gene]: the image's columns meet the kernel's first rows
    np.testing.assert_allclose(got, image @ k[:D_IMAGE] + gene @ k[D_IMAGE:] + bias, atol=1e-5)
