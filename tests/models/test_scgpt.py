"""scGPT in Flax against scGPT's own code rebuilt in torch (tests/support/scgpt_reference.py): random
small models written as released folders, converted, loaded and compared; the converter's refusals;
the command; and the tokenizer against scGPT's binning and collator (scgpt/preprocess.py,
scgpt/data_collator.py, scgpt/tasks/cell_emb.py at cebd6fa), re-implemented below from that code.
"""

import json
import subprocess
import sys
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from support import cli
from support import scgpt_reference as ref

from sigmma_jax import convert as convert_command
from sigmma_jax.data import scgpt_tokens as tok
from sigmma_jax.errors import InputError
from sigmma_jax.models import scgpt
from sigmma_jax.tools import scgpt_convert
from sigmma_jax.tools.convert import ConversionError, read_state_dict

N_GENES = 20


@pytest.fixture(scope="module", params=["post", "pre"])
def release(request, tmp_path_factory):
    """(norm scheme, torch model, vocab, converted dir, module, params). The "post" folder's vocab
    lacks <eoc>, which the converter appends."""
    scheme = request.param
    root = tmp_path_factory.mktemp(f"scgpt_{scheme}")
    drop = ("<eoc>",) if scheme == "post" else ()
    m, vocab = ref.write_release(
        root / "src", N_GENES, norm_scheme=scheme, drop_specials=drop, seed=len(scheme)
    )
    scgpt_convert.convert(root / "src", root / "dst")
    module, params = scgpt.load(root / "dst")
    return scheme, m, vocab, root / "dst", module, params


def _batch(vocab, seed=0):
    """Tokens of random spots over a panel with two genes absent from the vocabulary: rows of
    different lengths (a row of zeros too), so padding is exercised; one value above max_value."""
    rng = np.random.default_rng(seed)
    panel = [f"G{i}" for i in range(N_GENES)] + ["ABSENT1", "ABSENT2"]
    counts = rng.poisson(2.0, (5, len(panel))).astype(np.float32)
    counts *= rng.random(counts.shape) < np.array([[1.0], [0.6], [0.3], [0.1], [0.0]])
    tokens = tok.gene_tokens(panel, vocab)
    length = tok.seq_len(tokens, max_len=16)
    genes, values, mask = tok.tokenize_batch(
        counts, tokens, length, vocab["<pad>"], vocab["<cls>"], -2.0, 51, rng
    )
    values[0, 2] = 1000.0  # clamped at 512 by the value encoder
    assert len(set(mask.sum(1).tolist())) >= 4  # rows of different lengths
    return genes, values, mask


def module_config(module) -> dict:
    return {f: getattr(module, f) for f in scgpt.FIELDS}


def test_parity_with_scgpt(release):
    scheme, m, vocab, _, module, params = release
    assert module.norm_scheme == scheme and module.ntoken == len(vocab) == N_GENES + 3
    genes, values, mask = _batch(vocab)
    out = jax.jit(module.apply)({"params": params}, genes, values, mask)
    expected = ref.cls_embedding(m, genes, values, vocab["<pad>"])
    assert out.shape == (len(genes), 32) and out.dtype == jnp.float32
    diff = float(np.abs(np.asarray(out) - expected).max())
    assert diff <= 1e-4, diff
    # Values are clamped at max_value (512): above it, nothing changes.
    at_max = values.copy()
    at_max[0, 2] = 512.0
    np.testing.assert_array_equal(
        jax.jit(module.apply)({"params": params}, genes, at_max, mask), out
    )
    # The norm schemes really differ: the weights under the other scheme are far off.
    other = scgpt.build(
        dict(module_config(module), norm_scheme={"post": "pre", "pre": "post"}[scheme])
    )
    far = np.abs(np.asarray(other.apply({"params": params}, genes, values, mask)) - expected).max()
    assert far > 0.1


def test_padding_gets_no_attention(release):
    _, _, vocab, _, module, params = release
    genes, values, mask = _batch(vocab, seed=1)
    apply = jax.jit(module.apply)
    out = np.asarray(apply({"params": params}, genes, values, mask))
    rng = np.random.default_rng(3)
    g2 = np.where(mask, genes, rng.integers(0, N_GENES, genes.shape)).astype(np.int32)
    v2 = np.where(mask, values, rng.normal(0, 30, values.shape)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(apply({"params": params}, g2, v2, mask)), out)
    # More padding: the same embeddings.
    pad = lambda a, v: np.pad(a, ((0, 0), (0, 7)), constant_values=v)
    longer = apply({"params": params}, pad(genes, 0), pad(values, -2.0), pad(mask, False))
    np.testing.assert_allclose(np.asarray(longer), out, atol=1e-6)


def test_dropout_draws_from_the_dropout_stream(release):
    _, _, vocab, _, module, params = release
    genes, values, mask = _batch(vocab)
    eval_out = jax.jit(module.apply)({"params": params}, genes, values, mask)
    train = jax.jit(
        lambda key: module.apply(
            {"params": params}, genes, values, mask, train=True, rngs={"dropout": key}
        )
    )
    a, b, c = (
        train(jax.random.PRNGKey(0)),
        train(jax.random.PRNGKey(0)),
        train(jax.random.PRNGKey(1)),
    )
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-2 and np.abs(a - eval_out).max() > 1e-2
    no_drop = scgpt.build(dict(module_config(module), dropout=0.0))
    d = jax.jit(partial(no_drop.apply, train=True))(
        {"params": params}, genes, values, mask, rngs={"dropout": jax.random.PRNGKey(0)}
    )
    np.testing.assert_allclose(d, eval_out, atol=1e-6)


def test_bfloat16_compute_keeps_float32_output(release):
    _, _, vocab, path, _, params = release
    module, _ = scgpt.load(path, dtype=jnp.bfloat16)
    genes, values, mask = _batch(vocab)
    lo = jax.jit(module.apply)({"params": params}, genes, values, mask)
    hi = jax.jit(scgpt.build(module_config(module)).apply)({"params": params}, genes, values, mask)
    assert lo.dtype == jnp.float32
    cos = (lo * hi).sum(-1) / (jnp.linalg.norm(lo, axis=-1) * jnp.linalg.norm(hi, axis=-1))
    assert float(cos.min()) > 0.99


def test_converted_directory_holds_vocab_and_metadata(release):
    scheme, _, vocab, path, _, _ = release
    meta = scgpt.read_meta(path)
    assert scgpt.read_vocab(path) == vocab
    assert meta["pad_id"] == vocab["<pad>"] and meta["cls_id"] == vocab["<cls>"]
    assert meta["pad_value"] == -2.0 and meta["n_bins"] == 51
    assert meta["appended_tokens"] == (["<eoc>"] if scheme == "post" else [])
    assert meta["config"]["norm_scheme"] == scheme  # args.json's pre_norm
    assert meta["source"]["attention_naming"] == "Wqkv"
    assert len(meta["source"]["weights"]["sha256"]) == 64 and meta["converted"]


def test_load_gives_the_shardings_of_like(release):
    _, _, _, path, module, params = release
    mesh = Mesh(np.array(jax.devices()), ("data",))
    rep = NamedSharding(mesh, P())
    like = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=rep), params)
    _, restored = scgpt.load(path, like=like)
    leaves = jax.tree.leaves(restored)
    assert all(x.sharding == rep for x in leaves)
    np.testing.assert_array_equal(
        restored["encoder"]["embedding"]["embedding"], params["encoder"]["embedding"]["embedding"]
    )
    bad = {k: v for k, v in like.items() if k != "value_encoder"}
    with pytest.raises(ValueError, match="unexpected value_encoder/linear1/bias"):
        scgpt.load(path, like=bad)


def test_all_three_attention_namings_convert_alike(tmp_path):
    m, vocab = ref.write_release(tmp_path, N_GENES)
    cfg = scgpt.config_from_args(ref.release_args(m), ntoken=len(vocab))
    flat = {}
    for naming in scgpt_convert.NAMINGS:
        sd = {k: v.numpy() for k, v in ref.state_dict(m, naming).items()}
        params, found = scgpt_convert.convert_state_dict(sd, cfg)
        assert found == naming
        flat[naming] = traverse_util.flatten_dict(params, sep="/")
    for naming in ("Wqkv", "_impl.Wqkv"):
        assert flat[naming].keys() == flat["in_proj"].keys()
        for k, v in flat["in_proj"].items():
            np.testing.assert_array_equal(flat[naming][k], v, err_msg=k)
    w = m.transformer_encoder.layers[1].self_attn.in_proj_weight.detach().numpy()
    np.testing.assert_array_equal(
        flat["Wqkv"]["transformer_encoder/layers_1/self_attn/in_proj/kernel"], w.T
    )


def test_refusal_lists_every_missing_unused_and_misshaped_key(tmp_path):
    m, vocab = ref.write_release(tmp_path, N_GENES)
    cfg = scgpt.config_from_args(ref.release_args(m), ntoken=len(vocab))
    sd = read_state_dict(tmp_path / "best_model.pt")
    assert any(k.startswith("cls_decoder.") for k in sd)  # heads present and silently dropped
    scgpt_convert.convert_state_dict(sd, cfg)
    bad = dict(sd)
    del bad["transformer_encoder.layers.1.self_attn.Wqkv.bias"]
    bad["value_encoder.linear2.weight"] = np.zeros((32, 31), np.float32)
    bad["batch_encoder.embedding.weight"] = np.zeros((3, 32), np.float32)
    with pytest.raises(ConversionError) as e:
        scgpt_convert.convert_state_dict(bad, cfg)
    msg = str(e.value)
    assert "3 problem(s)" in msg and "Wqkv attention keys" in msg
    assert "missing key transformer_encoder.layers.1.self_attn.Wqkv.bias" in msg
    assert "unused key batch_encoder.embedding.weight" in msg
    assert (
        "wrong shape value_encoder.linear2.weight: expected shape (32, 32), found (32, 31)" in msg
    )
    assert "decoder" not in msg.replace("batch_encoder", "")
    # A deeper checkpoint than args.json says: its extra layer is named.
    deeper = scgpt.config_from_args(dict(ref.release_args(m), nlayers=1), ntoken=len(vocab))
    with pytest.raises(
        ConversionError, match=r"unused key transformer_encoder\.layers\.1\.linear1"
    ):
        scgpt_convert.convert_state_dict(sd, deeper)
    # An embedding of another vocabulary size.
    with pytest.raises(ConversionError, match=r"wrong shape encoder\.embedding\.weight"):
        scgpt_convert.convert_state_dict(sd, dict(cfg, ntoken=len(vocab) + 1))


def test_config_from_args_refuses_what_is_not_ported():
    args = dict(embsize=32, nheads=4, d_hid=48, nlayers=2, dropout=0.2, pad_value=-2)
    cfg = scgpt.config_from_args(args, ntoken=10)
    assert cfg == dict(
        ntoken=10, d_model=32, nhead=4, d_hid=48, nlayers=2, dropout=0.2, pad_value=-2.0,
        max_value=512.0, norm_scheme="post",
    )  # fmt: skip
    with pytest.raises(InputError, match="input_emb_style 'category'"):
        scgpt.config_from_args(dict(args, input_emb_style="category"), ntoken=10)
    with pytest.raises(InputError, match="use_batch_labels"):
        scgpt.config_from_args(dict(args, use_batch_labels=True), ntoken=10)
    with pytest.raises(InputError, match="lacks embsize"):
        scgpt.config_from_args({"nheads": 4, "d_hid": 4, "nlayers": 1}, ntoken=10)


def test_read_meta_names_what_the_directory_is(tmp_path):
    with pytest.raises(InputError, match="not a converted scGPT directory .no scgpt.json"):
        scgpt.read_meta(tmp_path)
    (tmp_path / "backbone.json").write_text("{}")
    with pytest.raises(InputError, match="an image backbone's converted weights"):
        scgpt.read_meta(tmp_path)
    (tmp_path / "scgpt.json").write_text(json.dumps({"arch": "uni", "config": {}}))
    with pytest.raises(InputError, match="not the metadata of converted scGPT weights"):
        scgpt.read_vocab(tmp_path)


def test_command_converts_a_release_folder(tmp_path, capsys):
    m, vocab = ref.write_release(tmp_path / "src", N_GENES, naming="in_proj")
    dst = tmp_path / "flax"
    rc = cli.run(convert_command, ["--arch=scgpt", f"--src={tmp_path / 'src'}", f"--dst={dst}"])
    out = capsys.readouterr().out
    assert rc == 0 and "as scgpt: 2 layers, d_model 32, 23 tokens" in out, out
    meta = json.loads((dst / "scgpt.json").read_text())
    assert meta["source"]["weights"]["sha256"] == scgpt_convert.sha256(
        tmp_path / "src" / "best_model.pt"
    )
    assert meta["source"]["attention_naming"] == "in_proj"
    module, params = scgpt.load(dst)
    genes, values, mask = _batch(vocab)
    diff = np.abs(np.asarray(module.apply({"params": params}, genes, values, mask))
                  - ref.cls_embedding(m, genes, values, vocab["<pad>"])).max()  # fmt: skip
    assert diff <= 1e-4
    # A refused conversion exits 1 with the reason and writes nothing.
    sd = torch.load(tmp_path / "src" / "best_model.pt", weights_only=True)
    del sd["encoder.enc_norm.bias"]
    torch.save(sd, tmp_path / "src" / "best_model.pt")
    bad = tmp_path / "bad"
    rc = cli.run(convert_command, ["--arch=scgpt", f"--src={tmp_path / 'src'}", f"--dst={bad}"])
    assert rc == 1 and "missing key encoder.enc_norm.bias" in capsys.readouterr().err
    assert not bad.exists()
    rc = cli.run(convert_command, ["--arch=scgpt", f"--src={tmp_path / 'nowhere'}", f"--dst={bad}"])
    assert rc == 1 and "expected a released scGPT folder" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------
# Tokens. scGPT's code (scgpt/preprocess.py `_digitize`, `binning`; the numpy path), as written.


def _scgpt_digitize(x: np.ndarray, bins: np.ndarray, side="both") -> np.ndarray:
    assert x.ndim == 1 and bins.ndim == 1

    left_digits = np.digitize(x, bins)
    if side == "one":
        return left_digits

    right_difits = np.digitize(x, bins, right=True)

    rands = np.random.rand(len(x))  # uniform random numbers

    digits = rands * (right_difits - left_digits) + left_digits
    digits = np.ceil(digits).astype(np.int64)
    return digits


def _scgpt_binning(row: np.ndarray, n_bins: int) -> np.ndarray:
    dtype = row.dtype
    if row.max() == 0:
        return np.zeros_like(row, dtype=dtype)

    if row.min() <= 0:
        non_zero_ids = row.nonzero()
        non_zero_row = row[non_zero_ids]
        bins = np.quantile(non_zero_row, np.linspace(0, 1, n_bins - 1))
        non_zero_digits = _scgpt_digitize(non_zero_row, bins)
        binned_row = np.zeros_like(row, dtype=np.int64)
        binned_row[non_zero_ids] = non_zero_digits
    else:
        bins = np.quantile(row, np.linspace(0, 1, n_bins - 1))
        binned_row = _scgpt_digitize(row, bins)
    return binned_row.astype(dtype)


def _scgpt_tokens(row, gene_ids, cls_id, pad_id, pad_value, max_length):
    """get_batch_cell_embeddings' Dataset.__getitem__ then DataCollator(do_binning=True,
    do_padding=True) for a row no longer than max_length (no sampling), in numpy."""
    nonzero_idx = np.nonzero(row)[0]
    values = row[nonzero_idx]
    genes = gene_ids[nonzero_idx]
    genes = np.insert(genes, 0, cls_id)
    values = np.insert(values, 0, pad_value).astype(np.float32)
    values[1:] = _scgpt_binning(row=values[1:], n_bins=51)
    n = max_length - len(genes)
    genes = np.concatenate([genes, np.full(n, pad_id)])
    values = np.concatenate([values, np.full(n, pad_value, np.float32)])
    return genes, values, genes != pad_id


def _same_draws(monkeypatch, seed):
    """np.random.rand, which scGPT calls, drawing what np.random.default_rng(seed) draws."""
    monkeypatch.setattr(np.random, "rand", np.random.default_rng(seed).random)


ROWS = {
    "ties": np.array([3, 3, 3, 3, 1, 1, 7, 3, 3, 2, 1, 1, 3, 3], np.float32),
    "zeros and ties": np.array([0, 5, 5, 0, 1, 5, 5, 2, 0, 5, 9, 1], np.float32),
    "one value": np.array([0, 0, 4, 0], np.float32),
    "continuous": np.random.default_rng(0).gamma(2.0, 3.0, 200).astype(np.float32),
    "zeros": np.zeros(6, np.float32),
}


@pytest.mark.parametrize("name", sorted(ROWS))
def test_binning_matches_scgpt(name, monkeypatch):
    row = ROWS[name]
    for n_bins in (5, 51):  # 51 last: the checks below look at it
        _same_draws(monkeypatch, 11)
        expected = _scgpt_binning(row.copy(), n_bins)
        got = tok.binning(row.copy(), n_bins, np.random.default_rng(11))
        np.testing.assert_array_equal(got, expected)
        assert got.dtype == row.dtype
    if name == "ties":  # equal values spread over the bins they tie with
        assert len(set(got[row == 3].tolist())) > 1
    if name == "continuous":
        assert got.min() == 1 and got.max() == 50


def test_tokens_are_what_scgpt_feeds_its_model(monkeypatch):
    rng = np.random.default_rng(5)
    panel = [f"G{i}" for i in range(12)] + ["NOT_IN_VOCAB"]
    vocab = {f"G{i}": 40 + i for i in range(12)} | {"<pad>": 3, "<cls>": 4, "<eoc>": 5}
    tokens = tok.gene_tokens(panel, vocab)
    assert tokens[-1] == -1 and tokens[0] == 40
    length = tok.seq_len(tokens, max_len=1200)
    assert length == 13  # <cls> + the 12 genes with a token
    for seed in range(4):
        counts = rng.poisson(1.5, len(panel)).astype(np.float32)
        counts[[2, 12]] = [0.0, 9.0]  # a zero; the absent gene is expressed
        genes, values, mask = tok.tokenize(
            counts, tokens, length, 3, 4, -2.0, 51, np.random.default_rng(seed)
        )
        assert genes.dtype == np.int32 and values.dtype == np.float32 and mask.dtype == bool
        assert genes.shape == values.shape == mask.shape == (length,)
        # scGPT drops the genes absent from the vocabulary before it tokenizes.
        _same_draws(monkeypatch, seed)
        keep = tokens >= 0
        eg, ev, em = _scgpt_tokens(counts[keep], tokens[keep], 4, 3, -2.0, length)
        np.testing.assert_array_equal(genes, eg)
        np.testing.assert_array_equal(values, ev)
        np.testing.assert_array_equal(mask, em)
        assert genes[0] == 4 and values[0] == -2.0 and 42 not in genes
        n = 1 + np.count_nonzero(counts[:12])
        assert mask[:n].all() and not mask[n:].any() and (genes[n:] == 3).all()
        assert (values[n:] == -2.0).all()


def test_sampling_keeps_cls_and_is_seeded():
    panel = [f"G{i}" for i in range(60)]
    vocab = tok.panel_vocab(panel)
    tokens = tok.gene_tokens(panel, vocab)
    length = tok.seq_len(tokens, max_len=16)
    assert length == 16
    counts = np.random.default_rng(0).poisson(3.0, 60).astype(np.float32) + 1.0
    run = lambda seed, n=length: tok.tokenize(
        counts, tokens, n, 0, 1, -2.0, 51, np.random.default_rng(seed)
    )
    g, v, m = run(7)
    assert m.all() and g[0] == 1 and v[0] == -2.0 and len(set(g.tolist())) == 16
    g2, v2, _ = run(7)
    np.testing.assert_array_equal(g, g2)
    np.testing.assert_array_equal(v, v2)
    assert not np.array_equal(run(8)[0], g)
    # Binning comes first, over every expressed gene: each sampled pair is a pair of the full
    # tokenization drawn with the same seed.
    full_g, full_v, _ = run(7, 61)
    pairs = dict(zip(full_g.tolist(), full_v.tolist()))
    assert all(pairs[a] == b for a, b in zip(g.tolist(), v.tolist()))
    # Sampling picks among all genes, not the first ones.
    picked = np.concatenate([run(s)[0][1:] for s in range(10)])
    assert picked.max() > vocab["G40"]


def test_a_row_of_zeros_is_cls_alone():
    tokens = np.array([5, -1, 6, 7])
    g, v, m = tok.tokenize(np.zeros(4), tokens, 4, 0, 1, -2.0, 51, np.random.default_rng(0))
    np.testing.assert_array_equal(g, [1, 0, 0, 0])
    np.testing.assert_array_equal(v, [-2.0] * 4)
    np.testing.assert_array_equal(m, [True, False, False, False])
    with pytest.raises(ValueError, match="non-negative"):
        tok.tokenize(-np.ones(4), tokens, 4, 0, 1, -2.0, 51, np.random.default_rng(0))


def test_panel_vocab_and_seq_len():
    vocab = tok.panel_vocab(["A", "B", "C"])
    assert vocab == {"<pad>": 0, "<cls>": 1, "<eoc>": 2, "A": 3, "B": 4, "C": 5}
    with pytest.raises(ValueError, match="more than once"):
        tok.panel_vocab(["A", "B", "A"])
    with pytest.raises(ValueError, match="special tokens"):
        tok.panel_vocab(["A", "<cls>"])
    tokens = tok.gene_tokens(["A", "X", "C"], vocab)
    np.testing.assert_array_equal(tokens, [3, -1, 5])
    assert tok.seq_len(tokens, 1200) == 3 and tok.seq_len(tokens, 2) == 2
    assert tok.seq_len(np.array([-1, -1]), 1200) == 1


def test_tokens_module_does_not_import_jax():
    code = "import sys, sigmma_jax.data.scgpt_tokens; sys.exit('jax' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
