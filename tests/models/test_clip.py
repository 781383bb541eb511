"""CLIP ViT-B/32 and PLIP: image and text towers against open_clip and Hugging Face CLIPModel, the
CoCa-style text tower against open_clip's TextTransformer(embed_cls=True), and the BPE tokenizer
against open_clip's and Hugging Face's.

Narrow random references (O(1) weights, `parity.randomize_`) are saved in the published layouts
(open_clip's .bin, a Hugging Face .safetensors with its tokenizer files beside it), converted with
`convert.convert` and read back with `backbones.load` / `text.load`.
"""

import jax
import numpy as np
import pytest
from support import timm_helpers as th
from support import vision_language as vl
from support.vision_language import CONTEXT, IMAGE, TEXT, TEXT_OV

from sigmma_jax.models import backbones, clip_tokenizer, text
from sigmma_jax.tools import convert
from sigmma_jax.tools.keymaps import clip

STRINGS = [
    "EPCAM KRT8 CD3E PTPRC MS4A1 COL1A1",
    "KRT19;KRT18;KRT8 and CD8A+ T cells infiltrating the stroma",
    "an H&E image of colorectal adenocarcinoma, 20x",
    "a photo of a cat",
    "Hello, World! It's 3.14 o'clock",
    "don't won't I'm you're they've we'll he'd",
    "12345 67890",
    "  lots   of\n\twhitespace  ",
    "naïve café — résumé",
    "Ünïcödé ÀÉÎÕÜ",
    "日本語のテキスト",
    "emoji 🧬🔬 tissue",
    "a-b_c/d\\e",
    "",
    "x" * 300,
    " ".join(f"GENE{i}" for i in range(100)),  # truncated: EOT kept last
    # Cleaned by ftfy / html.unescape (open_clip) but not by Hugging Face's normaliser:
    "“curly quotes” ‘too’",
    "Tom &amp; Jerry &lt;b&gt;",
    "mojibake: Ã©tÃ©",
    "ﬁne ligature",
]
HF_DIFFERS = 4  # the last strings: HF's tokenizer sees them only after open_clip's cleaning
# A special token written out stays one token, in each source's own spelling.
SPECIAL = "{} a written special token {} x"
OPEN_CLIP_SPECIAL = ("<start_of_text>", "<end_of_text>")
HF_SPECIAL = ("<|startoftext|>", "<|endoftext|>")


@pytest.fixture(scope="module")
def open_clip_case(tmp_path_factory):
    """(open_clip model, image (model, params), text (model, params, tokenizer), dir)."""
    ref = vl.open_clip_vit_b_32(seed=3)
    root = tmp_path_factory.mktemp("clip")
    src = vl.save(th.state_dict(ref), root / "open_clip_pytorch_model.bin")
    convert.convert("clip-vit-b-32", src, root / "flax", **IMAGE, **TEXT_OV)
    return ref, backbones.load(root / "flax", arch="clip-vit-b-32"), text.load(root / "flax"), root


@pytest.fixture(scope="module")
def hf_case(tmp_path_factory):
    """PLIP's layout: CLIPModel's model.safetensors (with the position_ids buffers older files
    carry) beside vocab.json + merges.txt."""
    _, torch = th.import_timm()
    ref = vl.hf_plip(seed=5)
    root = tmp_path_factory.mktemp("plip")
    sd = th.state_dict(ref)
    for tower, n in (("text_model", CONTEXT), ("vision_model", 3)):
        sd[f"{tower}.embeddings.position_ids"] = torch.arange(n)[None]
    src = vl.save(sd, root / "model.safetensors")
    vl.hf_vocab_files(root)
    convert.convert("plip", src, root / "flax", **IMAGE, **TEXT_OV)
    return ref, backbones.load(root / "flax", arch="plip"), text.load(root / "flax"), root


def _images(n=3):
    return np.random.default_rng(0).random((n, IMAGE["img_size"], IMAGE["img_size"], 3), np.float32)


def _normalised(x, arch):
    cfg = backbones.config(arch)
    x = (x - np.asarray(cfg["mean"], np.float32)) / np.asarray(cfg["std"], np.float32)
    _, torch = th.import_timm()
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def test_image_embedding_matches_open_clip_and_hf(open_clip_case, hf_case):
    _, torch = th.import_timm()
    x = _images()
    for arch, (ref, (model, params), _, _) in (
        ("clip-vit-b-32", open_clip_case),
        ("plip", hf_case),
    ):
        got = np.asarray(jax.jit(model.apply)({"params": params}, x))
        with torch.inference_mode():
            if arch == "plip":
                want = th.reference_embed(ref, x, model.mean, model.std, arch)  # get_image_features
            else:
                want = ref.encode_image(_normalised(x, arch), normalize=False).numpy()
        assert got.shape == want.shape == (3, IMAGE["proj_dim"]) and model.embed_dim == 32
        diff, cos = th.compare(got, want)
        assert diff < 1e-4 and cos > 0.99999, (arch, diff, cos)
        assert np.abs(want).max() > 0.1  # O(1) embeddings: the bound is not vacuous


def test_text_embedding_matches_open_clip_and_hf(open_clip_case, hf_case):
    _, torch = th.import_timm()
    for arch, (ref, _, (model, params, tok), _) in (
        ("clip-vit-b-32", open_clip_case),
        ("plip", hf_case),
    ):
        ids = tok(STRINGS[:8])  # the converted directory's own tokenizer, cut to the context
        assert ids.shape == (8, CONTEXT) and ids.dtype == np.int32
        got = np.asarray(jax.jit(model.apply)({"params": params}, ids))
        t = torch.from_numpy(ids.astype(np.int64))
        with torch.inference_mode():
            if arch == "plip":
                want = ref.get_text_features(input_ids=t)
                want = getattr(want, "pooler_output", want).numpy()
            else:
                want = ref.encode_text(t, normalize=False).numpy()
        diff, cos = th.compare(got, want)
        assert diff < 1e-4 and cos > 0.99999, (arch, diff, cos)


@pytest.mark.parametrize("correct_cls_mask", [False, True])
def test_coca_text_tower_matches_open_clip(correct_cls_mask):
    """open_clip's CoCa text tower: cls appended, pad-masked keys, pooled last, ln_final after."""
    _, torch = th.import_timm()
    from open_clip.transformer import TextTransformer as Reference

    torch.manual_seed(7)
    cfg = dict(TEXT, vocab_size=49408, mlp="gelu", embed_cls=True, pad_id=0)
    cfg["correct_cls_mask"] = correct_cls_mask
    ref = Reference(
        context_length=CONTEXT,
        vocab_size=49408,
        width=64,
        heads=2,
        layers=2,
        output_dim=32,
        embed_cls=True,
        pad_id=0,
        correct_cls_mask=correct_cls_mask,
        act_layer=torch.nn.GELU,
        output_tokens=True,
    ).eval()
    th.parity.randomize_(ref, 8)
    tower, other = clip.text_state_dict(th.state_dict(ref), clip.OPEN_CLIP)
    tower = {k: v.numpy() for k, v in tower.items()}
    params = clip._text_params(tower, cfg, other)  # pylint: disable=protected-access
    ids = clip_tokenizer.ClipTokenizer.from_files(clip_tokenizer.open_clip_vocab())(
        STRINGS[:6], CONTEXT
    )
    assert (ids == 0).any() and (ids != 0).all(1).any()  # padded and full rows
    model = text.build(cfg)
    got, tokens = jax.jit(model.apply, static_argnames="return_tokens")(
        {"params": params}, ids, return_tokens=True
    )
    with torch.inference_mode():
        want, want_tokens = ref(torch.from_numpy(ids.astype(np.int64)))
    diff, cos = th.compare(got, want.numpy())
    assert diff < 1e-4 and cos > 0.99999, (diff, cos)
    assert np.abs(np.asarray(tokens) - want_tokens.numpy()).max() < 1e-4


def test_tokenizer_matches_open_clip_and_hf(tmp_path):
    th.import_timm()
    import open_clip
    from transformers import CLIPTokenizer

    gz = clip_tokenizer.open_clip_vocab()
    ours = clip_tokenizer.ClipTokenizer.from_files(gz)
    assert ours.vocab_size == 49408 and (ours.sot_id, ours.eot_id) == (49406, 49407)
    ids = ours(STRINGS)
    assert ids.dtype == np.int32 and ids.shape == (len(STRINGS), 77)
    np.testing.assert_array_equal(ids, open_clip.tokenize(STRINGS).numpy())
    np.testing.assert_array_equal(ours(STRINGS, 16), open_clip.tokenize(STRINGS, 16).numpy())
    simple = open_clip.SimpleTokenizer()
    assert all(ours.encode(s) == simple.encode(s) for s in STRINGS)
    long = ids[STRINGS.index("x" * 300)]
    assert (long != 0).all() and long[-1] == ours.eot_id  # cut to 77 with EOT last

    vocab, merges = vl.hf_vocab_files(tmp_path)
    hf = CLIPTokenizer(vocab=str(vocab), merges=str(merges))
    hf.backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    for source in (vocab, tmp_path / "tokenizer.json"):
        np.testing.assert_array_equal(clip_tokenizer.ClipTokenizer.from_files(source)(STRINGS), ids)

    def hf_ids(texts):
        enc = hf(texts, max_length=77, padding="max_length", truncation=True, return_tensors="np")
        return np.where(enc["attention_mask"] == 1, enc["input_ids"], 0)  # HF pads with EOT

    plain = STRINGS[:-HF_DIFFERS]
    np.testing.assert_array_equal(hf_ids(plain), ids[: len(plain)])
    cleaned = [clip_tokenizer.clean(s) for s in STRINGS[-HF_DIFFERS:]]
    np.testing.assert_array_equal(hf_ids(cleaned), ids[len(plain) :])

    special = ours(SPECIAL.format(*OPEN_CLIP_SPECIAL))
    np.testing.assert_array_equal(special, open_clip.tokenize(SPECIAL.format(*OPEN_CLIP_SPECIAL)))
    from_hf = clip_tokenizer.ClipTokenizer.from_files(tmp_path)(SPECIAL.format(*HF_SPECIAL))
    np.testing.assert_array_equal(from_hf, hf_ids([SPECIAL.format(*HF_SPECIAL)]))
    np.testing.assert_array_equal(from_hf, special)
    assert (special == ours.sot_id).sum() == 2


def test_converted_directory_is_self_contained(open_clip_case, hf_case):
    """The vocabulary travels with the weights; the image tower loads like any backbone."""
    for (_, (model, _), (tm, _, tok), root), files in (
        (open_clip_case, ["bpe_simple_vocab_16e6.txt.gz"]),
        (hf_case, ["vocab.json", "merges.txt"]),
    ):
        meta = text.read_meta(root / "flax")
        assert meta["tokenizer"] == dict(files=files, context_length=CONTEXT)
        assert all((root / "flax" / "text" / f).exists() for f in files)
        assert backbones.read_meta(root / "flax")["text"]["dir"] == "text"
        assert tok.context_length == tm.context_length == CONTEXT
        assert (model.pre_norm, model.patch_bias, model.mlp) == (True, False, "quick_gelu")


def test_refuses_a_state_dict_of_another_layout(tmp_path, hf_case):
    _, torch = th.import_timm()
    timm_layout = {
        "patch_embed.proj.weight": torch.zeros(8, 3, 32, 32),
        "cls_token": torch.zeros(1, 1, 8),
    }
    src = vl.save(timm_layout, tmp_path / "model.safetensors")
    with pytest.raises(convert.ConversionError, match="not a CLIP checkpoint") as e:
        convert.convert("plip", src, tmp_path / "out", **IMAGE, **TEXT_OV)
    assert "\n" not in str(e.value) and str(src) in str(e.value)
    assert not (tmp_path / "out").exists()
    # A text tower of the wrong width: every mismatch named.
    src = hf_case[3] / "model.safetensors"
    with pytest.raises(convert.ConversionError, match="wrong shape text_projection"):
        convert.convert("plip", src, tmp_path / "out2", **IMAGE, **{**TEXT_OV, "text.proj_dim": 16})
