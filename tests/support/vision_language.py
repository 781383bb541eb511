"""Vision-language models for tests: narrow random references (O(1) weights) of CLIP ViT-B/32 in
open_clip's layout, of PLIP in Hugging Face's and of open_clip's CoCa ViT-L/14 (OmiCLIP's
architecture, Loki's checkpoint.pt), saved as published (with the tokenizer's files) and converted,
image and text towers, into the directory a run or a suite.backbones entry reads."""

import gzip
import json
import pathlib

from sigmma_jax.models import clip_tokenizer
from sigmma_jax.tools import convert
from support import timm_helpers as th

IMAGE = dict(img_size=64, patch_size=32, width=64, depth=2, num_heads=2, proj_dim=32)
CONTEXT = 16
TEXT = dict(width=64, depth=2, num_heads=2, context_length=CONTEXT, proj_dim=32)  # the real vocab
TEXT_OV = {f"text.{k}": v for k, v in TEXT.items()}


def hf_vocab_files(root):
    """open_clip's vocabulary written as a Hugging Face vocab.json + merges.txt (what
    openai/clip-vit-base-patch32 publishes)."""
    tok = clip_tokenizer.ClipTokenizer.from_bpe_gz(clip_tokenizer.open_clip_vocab())
    rename = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {rename.get(k, k): v for k, v in tok.encoder.items()}
    (root / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = gzip.open(clip_tokenizer.open_clip_vocab()).read().decode("utf-8").split("\n")
    merges = lines[1 : clip_tokenizer.N_MERGES + 1]
    (root / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return root / "vocab.json", root / "merges.txt"


def save(sd, path):
    _, torch = th.import_timm()
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save(sd, str(path))
    return path


def open_clip_vit_b_32(seed: int):
    """open_clip ViT-B-32 with OpenAI's QuickGELU, narrowed, randomised."""
    _, torch = th.import_timm()
    import open_clip

    torch.manual_seed(seed)
    vision = dict(
        image_size=IMAGE["img_size"],
        patch_size=IMAGE["patch_size"],
        width=IMAGE["width"],
        layers=IMAGE["depth"],
        head_width=IMAGE["width"] // IMAGE["num_heads"],
    )
    language = dict(context_length=CONTEXT, vocab_size=49408, width=64, heads=2, layers=2)
    model = open_clip.create_model(
        "ViT-B-32",
        pretrained=None,
        force_quick_gelu=True,
        embed_dim=IMAGE["proj_dim"],
        vision_cfg=vision,
        text_cfg=language,
    ).eval()
    th.parity.randomize_(model, seed + 1)
    return model


def hf_plip(seed: int):
    """PLIP's reference (a Hugging Face CLIPModel), narrowed, randomised."""
    return th.reference_model("plip", seed=seed, **IMAGE, **TEXT_OV)


# open_clip's CoCa, narrowed: the image tower's and pooler's Flax overrides, the reference's text and
# decoder shapes (open_clip names; the real CLIP vocabulary), the Flax text tower's overrides.
COCA = dict(depth=2, width=64, num_heads=2, img_size=56, patch_size=14, pool_queries=4)
COCA.update(pool_dim=32, proj_dim=32, pool_heads=2)
COCA_REF_TEXT = dict(width=64, heads=2, layers=2, vocab_size=49408, context_length=CONTEXT)
COCA_TEXT_OV = {"text.context_length": CONTEXT, "text.width": 64, "text.depth": 2}
COCA_TEXT_OV.update({"text.num_heads": 2, "text.proj_dim": 32})


def open_clip_coca(seed: int):
    """open_clip's coca_ViT-L-14, narrowed, randomised."""
    return th.reference_model(
        "coca-vit-l-14",
        seed=seed,
        **COCA,
        text=COCA_REF_TEXT,
        decoder=dict(COCA_REF_TEXT, layers=1),
    )


def converted(arch: str, root: pathlib.Path, seed: int = 0) -> pathlib.Path:
    """A random `arch` ("clip-vit-b-32": open_clip's .bin; "plip": HF's model.safetensors beside
    vocab.json + merges.txt; "coca-vit-l-14": open_clip's CoCa as Loki's checkpoint.pt) converted
    into root/flax; returns that directory."""
    root.mkdir(parents=True, exist_ok=True)
    if arch == "clip-vit-b-32":
        src = save(th.state_dict(open_clip_vit_b_32(seed)), root / "open_clip_pytorch_model.bin")
    elif arch == "plip":
        src = save(th.state_dict(hf_plip(seed)), root / "model.safetensors")
        hf_vocab_files(root)
    else:
        src = save(th.state_dict(open_clip_coca(seed)), root / "checkpoint.pt")
        convert.convert(arch, src, root / "flax", **COCA, **COCA_TEXT_OV)
        return root / "flax"
    convert.convert(arch, src, root / "flax", **IMAGE, **TEXT_OV)
    return root / "flax"
