"""A SigLIP/SigLIP2 checkpoint with its real tokenizer files, end to end: ``load`` -> ``tokenize`` /
``encode_text(strings)`` equal open_clip's tokenizer and model for the same folder, offline, from a
local folder and from a Hub cache; and after ``save_pretrained`` (native and open_clip layouts).

The open_clip folders hold a small timm test tower with SigLIP's text options (random weights) and
the tokenizer files tests/spm_files.py builds (a Unigram vocabulary as SigLIP ships, a Gemma BPE as
SigLIP2 does).
"""
import json
import shutil

import pytest
import torch

import maskclip
import factories as F
import spm_files as sf
from tokenizer_corpus import FIXED, corpus

open_clip = pytest.importorskip("open_clip")
pytest.importorskip("tokenizers")

TOL = 1e-5
TRAINING_TEXTS = [t.encode("utf-8", "replace").decode() for t in corpus(300, 1)[len(FIXED):]]
TEXTS = ["a photo of a CAT.", "A Diagram of the Eiffel-Tower, at night!", "  two   spaces  ", "",
         "café au lait, s'il vous plaît", "x" * 80] + corpus(40, 7)
TOKENIZER_FILES = {  # family -> (tokenizer_config.json, special_tokens_map.json, hf_tokenizer_name)
    "siglip": (sf.T5_CONFIG, sf.T5_SPECIAL_MAP, "timm/ViT-B-16-SigLIP"),
    "siglip2": (sf.GEMMA_CONFIG, sf.GEMMA_SPECIAL_MAP, "timm/ViT-B-16-SigLIP2"),
}


@pytest.fixture(scope="module")
def vocabularies():
    """family -> tokenizer.json text."""
    return {"siglip": sf.t5_shaped_json(sf.trained_unigram_pieces(TRAINING_TEXTS, 500), 2),
            "siglip2": sf.gemma_shaped_json(TRAINING_TEXTS, 700)}


@pytest.fixture
def cache(monkeypatch, tmp_path):
    return F.offline_hub(monkeypatch, tmp_path / "hf_cache")


def model_cfg(vocab_size: int, hf_tokenizer_name: str, clean: str) -> dict:
    """A small open_clip SigLIP config: timm's test ViT with a MAP head, SigLIP's text options."""
    return {"embed_dim": 48, "init_logit_bias": -10.0, "custom_text": True,
            "vision_cfg": {"image_size": 160, "timm_model_name": "test_vit3", "timm_model_pretrained": False,
                           "timm_pool": "map", "timm_proj": "mlp", "timm_proj_bias": True},
            "text_cfg": {"context_length": 16, "vocab_size": vocab_size, "hf_tokenizer_name": hf_tokenizer_name,
                         "tokenizer_kwargs": {"clean": clean}, "width": 64, "heads": 2, "layers": 2,
                         "no_causal_mask": True, "proj_bias": True, "pool_type": "last",
                         "norm_kwargs": {"eps": 1e-6}, "act_kwargs": {"approximate": "tanh"}}}


def siglip_folder(root, vocabularies, family: str, clean: str = "canonicalize"):
    """(open_clip folder with the family's tokenizer files, its open_clip reference model)."""
    from open_clip.model import CustomTextCLIP

    tokenizer_json = vocabularies[family]
    tokenizer_config, special_map, hf_name = TOKENIZER_FILES[family]
    import tokenizers

    cfg = model_cfg(tokenizers.Tokenizer.from_str(tokenizer_json).get_vocab_size(), hf_name, clean)
    torch.manual_seed(0)
    kwargs = {k: v for k, v in cfg.items() if k != "custom_text"}
    reference = F._perturb(CustomTextCLIP(**kwargs).eval(), 0)
    folder = F.write_open_clip_folder(root / f"{family}-{clean}", reference, cfg,
                                      {"mean": [0.5] * 3, "std": [0.5] * 3, "resize_mode": "squash"})
    sf.write(folder, {"tokenizer.json": tokenizer_json, "tokenizer_config.json": tokenizer_config,
                      "special_tokens_map.json": special_map})
    return folder, reference


def open_clip_ids(folder, texts=TEXTS) -> torch.Tensor:
    return open_clip.get_tokenizer(f"local-dir:{folder}")(texts)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("where", ["local", "hub"])
@pytest.mark.parametrize("family", ["siglip", "siglip2"])
def test_tokenize_and_encode_text_of_strings_equal_open_clip_offline(family, where, vocabularies, cache, tmp_path):
    folder, reference = siglip_folder(tmp_path, vocabularies, family)
    want_ids = open_clip_ids(folder)
    if where == "hub":
        F.write_hub_cache(cache, f"org/{family}", folder, move=False)
        shutil.rmtree(folder)  # only the cache holds the files now
        model = maskclip.load(f"hf-hub:org/{family}")
    else:
        model = maskclip.load(folder)
    ids = model.tokenize(TEXTS)
    assert ids.shape == (len(TEXTS), 16)
    assert torch.equal(ids, want_ids)
    with torch.no_grad():
        ours, theirs = model.encode_text(TEXTS), reference.encode_text(want_ids)
    assert rel(ours, theirs) <= TOL, rel(ours, theirs)


@pytest.mark.parametrize("clean", ["canonicalize", "lower", "whitespace"])
def test_a_native_save_keeps_the_tokenizer_and_its_clean_up_mode(clean, vocabularies, tmp_path):
    folder, _ = siglip_folder(tmp_path, vocabularies, "siglip2", clean)
    model = maskclip.load(folder)
    model.save_pretrained(tmp_path / "native")
    assert not (tmp_path / "native" / "open_clip_config.json").exists()
    again = maskclip.load(tmp_path / "native")
    assert again.tokenizer.clean == clean
    assert torch.equal(again.tokenize(TEXTS), open_clip_ids(folder))


def test_an_open_clip_export_writes_the_tokenizer_files_and_open_clip_reads_the_same_ids(vocabularies, tmp_path):
    from open_clip.model import CustomTextCLIP
    from safetensors.torch import load_file

    folder, reference = siglip_folder(tmp_path, vocabularies, "siglip")
    model = maskclip.load(folder)
    out = tmp_path / "export"
    model.save_pretrained(out, format="open_clip")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (out / name).read_bytes() == (folder / name).read_bytes(), name
    ids = open_clip_ids(out)
    assert torch.equal(ids, open_clip_ids(folder))
    assert torch.equal(ids, maskclip.load(out).tokenize(TEXTS))
    cfg = json.loads((out / "open_clip_config.json").read_text())["model_cfg"]
    again = CustomTextCLIP(**{k: v for k, v in cfg.items() if k != "custom_text"}).eval()
    again.load_state_dict(load_file(str(out / "open_clip_model.safetensors")), strict=True)
    with torch.no_grad():
        assert rel(model.encode_text(TEXTS), again.encode_text(ids)) <= TOL
