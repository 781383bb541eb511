"""ST-Align's spot image encoder (AE-Img): the ResNet with a CIFAR stem (a 3x3/1 conv, no pool:
28-px spots keep their resolution) and GroupNorm, against timm's ResNet built the same way (its
stem swapped, torch's GroupNorm with gcd(32, channels) groups) with the same random weights."""

import math

import jax
import numpy as np
import pytest
from support import timm_helpers as th

from sigmma_jax.models import resnet
from sigmma_jax.tools.bench import parity

# timm's plain stem is 64 wide whatever the stages: parity at 64 (the demo's 16 is the same code)
WIDTH, LAYERS = 64, (1, 2, 1, 1)


def _timm_resnet(seed=0):
    timm, torch = th.import_timm()
    from timm.models.resnet import Bottleneck, ResNet

    def group_norm(channels, **kw):
        return torch.nn.GroupNorm(math.gcd(resnet.GROUPS, channels), channels, eps=1e-5)

    torch.manual_seed(seed)
    m = ResNet(
        Bottleneck,
        LAYERS,
        num_classes=0,
        channels=tuple(WIDTH * 2**s for s in range(4)),
        norm_layer=group_norm,
    )
    m.conv1 = torch.nn.Conv2d(3, WIDTH, 3, 1, 1, bias=False)  # the CIFAR stem
    m.maxpool = torch.nn.Identity()
    parity.randomize_(m, seed + 1)
    return m.eval()


def _torch_key(path: tuple[str, ...]) -> str:
    """Flax path -> timm key: layer2_1/conv1/kernel -> layer2.1.conv1.weight (GroupNorm's "gn"
    level dropped)."""
    parts = []
    for p in path:
        if p == "gn":
            continue
        if p.startswith(("layer", "downsample_")) and "_" in p:
            p = p.replace("_", ".")
        parts.append({"kernel": "weight", "scale": "weight"}.get(p, p))
    return ".".join(parts)


def _params_from(torch_model, flax_params):
    sd = {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}
    flat, tree = jax.tree_util.tree_flatten_with_path(flax_params)
    out = []
    for path, leaf in flat:
        names = tuple(k.key for k in path)
        w = sd.pop(_torch_key(names))
        if names[-1] == "kernel":  # OIHW -> HWIO
            w = w.transpose(2, 3, 1, 0)
        assert w.shape == leaf.shape, names
        out.append(w)
    assert not sd, f"timm weights left over: {sorted(sd)}"  # every timm weight used
    return jax.tree.unflatten(tree, out)


@pytest.fixture(scope="module")
def models():
    model = resnet.ResNet(layers=LAYERS, width=WIDTH, stem="cifar", norm="group")
    x = np.zeros((1, 28, 28, 3), np.float32)
    variables = model.init(jax.random.PRNGKey(0), x)
    assert set(variables) == {"params"}  # GroupNorm: no running statistics to carry
    tm = _timm_resnet()
    return model, _params_from(tm, variables["params"]), tm


def test_matches_timm_resnet_with_the_same_stem_and_norm(models):
    model, params, tm = models
    x = np.random.default_rng(0).uniform(size=(3, 28, 28, 3)).astype(np.float32)
    got = np.asarray(model.apply({"params": params}, x))
    want = th.timm_embed(tm, x, model.mean, model.std)
    assert got.shape == want.shape == (3, model.embed_dim) == (3, WIDTH * 8 * 4)
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, atol=1e-4 * scale, rtol=1e-4)


def test_cifar_stem_keeps_the_resolution_the_imagenet_stem_divides_by_four():
    x = np.zeros((1, 28, 28, 3), np.float32)
    shapes = {}
    for stem in resnet.STEMS:
        m = resnet.ResNet(layers=(1, 1, 1, 1), width=8, stem=stem, norm="group")
        _, state = m.init_with_output(jax.random.PRNGKey(0), x, capture_intermediates=True)
        shapes[stem] = state["intermediates"]["layer1_0"]["__call__"][0].shape[1:3]
    assert shapes == {"cifar": (28, 28), "imagenet": (7, 7)}
    with pytest.raises(ValueError, match="stem"):
        resnet.ResNet(layers=(1, 1, 1, 1), width=8, stem="tiny").init(jax.random.PRNGKey(0), x)
    with pytest.raises(ValueError, match="norm"):
        resnet.ResNet(layers=(1, 1, 1, 1), width=8, norm="batch").init(jax.random.PRNGKey(0), x)
