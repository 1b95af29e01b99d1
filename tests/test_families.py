"""SigLIP, SigLIP2 and EVA02-CLIP (timm image towers) against the real open_clip, random weights, fp32.

Each family's open_clip model (``open_clip.create_model(name, pretrained=None)``, or a small odd
timm config built as open_clip's ``CustomTextCLIP``) gets random norms and biases, is written in the
open_clip Hub layout into an offline Hub cache, and loaded with ``maskclip.load``: image and text
(token ids) embeddings must agree to a relative difference of 1e-5, also after
``save_pretrained(format="open_clip")``. Then: dense methods on these towers, the MAP per-patch
invariant, sigmoid zero-shot, family preprocessing, open_clip names and what is refused.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import types

import pytest
import torch

import maskclip
from maskclip import convert, dense
from maskclip.config import SUPPORTED_TIMM_MODELS, ModelConfig, TextConfig, VisionConfig
from maskclip.errors import ConfigError, InputError, ModelNotFoundError
from maskclip.model import DualEncoder
from maskclip.timm_vision import TimmVisionTower, describe
import factories as F

open_clip = pytest.importorskip("open_clip")
pytest.importorskip("timm")

TOL = 1e-5
DIFFS = {}

# Small odd configs open_clip builds with timm's test ViTs: MAP pooling over a register token, layer
# scale and an MLP projection; average pooling with a linear projection; SigLIP's text options.
ODD_MAP = {"embed_dim": 48, "init_logit_bias": -10.0, "custom_text": True,
           "vision_cfg": {"image_size": 160, "timm_model_name": "test_vit3", "timm_model_pretrained": False,
                          "timm_pool": "map", "timm_proj": "mlp", "timm_proj_bias": True},
           "text_cfg": {"context_length": 16, "vocab_size": 300, "width": 64, "heads": 2, "layers": 2,
                        "no_causal_mask": True, "proj_bias": True, "pool_type": "last",
                        "norm_kwargs": {"eps": 1e-6}, "act_kwargs": {"approximate": "tanh"}}}
ODD_AVG = {"embed_dim": 40, "custom_text": True,
           "vision_cfg": {"image_size": 160, "timm_model_name": "test_vit2", "timm_model_pretrained": False,
                          "timm_pool": "avg", "timm_proj": "linear"},
           "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 48, "heads": 3, "layers": 2}}
SIGLIP_PREPROCESS = {"mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic", "resize_mode": "squash"}


@pytest.fixture(scope="module", autouse=True)
def report_diffs():
    yield
    if DIFFS:
        width = max(map(len, DIFFS))
        print("\nrelative difference to open_clip per config (image, text):")
        for key, (img, txt) in sorted(DIFFS.items()):
            print(f"  {key:<{width}}  {img:.2e}  {txt:.2e}")


@pytest.fixture
def cache(monkeypatch, tmp_path):
    return F.offline_hub(monkeypatch, tmp_path / "hf_cache")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def check(key, image_pair, text_pair):
    di, dt = rel(*image_pair), rel(*text_pair)
    DIFFS[key] = (di, dt)
    assert di <= TOL, f"{key}: image embeddings differ by {di} (relative)"
    assert dt <= TOL, f"{key}: text embeddings differ by {dt} (relative)"


def custom_text_clip(model_cfg: dict, seed: int = 0):
    """open_clip's ``CustomTextCLIP`` for ``model_cfg``, random weights, norms and biases."""
    from open_clip.model import CustomTextCLIP

    torch.manual_seed(seed)
    kwargs = {k: v for k, v in json.loads(json.dumps(model_cfg)).items() if k != "custom_text"}
    return F._perturb(CustomTextCLIP(**kwargs).eval(), seed)


def named_open_clip(name: str, seed: int = 0):
    """``open_clip.create_model(name, pretrained=None)`` with random norms and biases; its ``model_cfg``."""
    torch.manual_seed(seed)
    model = F._perturb(open_clip.create_model(name, pretrained=None).eval(), seed)
    return model, open_clip.get_model_config(name)


def tokens(model_cfg: dict, n: int = 3, seed: int = 0) -> torch.Tensor:
    """Token ids ``[n, L]``: the end-of-text (max) id last for CLIP-style towers, random ids otherwise."""
    t = model_cfg["text_cfg"]
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, t["vocab_size"] - 1, (n, t["context_length"]), generator=g)
    if t.get("pool_type", "argmax") == "argmax":
        ids[:, 5:] = 0
        ids[:, 4] = t["vocab_size"] - 1
    return ids


def load_from_hub(reference, model_cfg, cache, tmp_path, repo="org/model", preprocess_cfg=None):
    folder = F.write_open_clip_folder(tmp_path / "oc", reference, model_cfg, preprocess_cfg)
    F.write_hub_cache(cache, repo, folder)
    return maskclip.load(f"hf-hub:{repo}")


def assert_matches_open_clip(key, model, reference, model_cfg, size):
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    ids = tokens(model_cfg)
    with torch.no_grad():
        check(key, (model.encode_image(x), reference.encode_image(x)), (model.encode_text(ids), reference.encode_text(ids)))


def assert_open_clip_export_equal(model, reference, tmp_path, size):
    """``save_pretrained(format="open_clip")`` loads in open_clip (strictly) and in maskclip, both equal."""
    from open_clip.model import CustomTextCLIP

    out = tmp_path / "export"
    model.save_pretrained(out, format="open_clip")
    oc_cfg = json.loads((out / "open_clip_config.json").read_text())
    from safetensors.torch import load_file

    kwargs = {k: v for k, v in oc_cfg["model_cfg"].items() if k != "custom_text"}
    again = CustomTextCLIP(**kwargs).eval()
    again.load_state_dict(load_file(str(out / "open_clip_model.safetensors")), strict=True)
    reloaded = maskclip.load(out)
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        want = reference.encode_image(x)
        assert torch.equal(again.encode_image(x), want)
        assert torch.equal(reloaded.encode_image(x), model.encode_image(x))
    assert reloaded.config == model.config


# --- parity with open_clip -----------------------------------------------------------------------

@pytest.mark.parametrize("model_cfg", [ODD_MAP, ODD_AVG], ids=["test_vit3-map-mlp", "test_vit2-avg-linear"])
def test_small_odd_timm_config_matches_open_clip_loaded_from_the_hub_cache(model_cfg, cache, tmp_path):
    reference = custom_text_clip(model_cfg)
    model = load_from_hub(reference, model_cfg, cache, tmp_path)
    assert isinstance(model.visual, TimmVisionTower)
    assert_matches_open_clip(model_cfg["vision_cfg"]["timm_model_name"], model, reference, model_cfg, 160)
    assert_open_clip_export_equal(model, reference, tmp_path, 160)


def test_native_save_and_reload_of_a_timm_model_is_equal(tmp_path):
    cfg, sd = convert.from_open_clip({"model_cfg": ODD_MAP}, custom_text_clip(ODD_MAP).state_dict())
    model = maskclip.build.build_model(cfg, sd).eval()
    model.save_pretrained(tmp_path / "native")
    again = maskclip.load(tmp_path / "native")
    x, ids = torch.randn(1, 3, 160, 160), tokens(ODD_MAP)
    with torch.no_grad():
        assert torch.equal(again.encode_image(x), model.encode_image(x))
        assert torch.equal(again.encode_text(ids), model.encode_text(ids))
    assert float(again.logit_bias.detach()) == -10.0


FAMILIES = ["ViT-B-16-SigLIP2", "ViT-B-16-SigLIP", "EVA02-B-16"]


@pytest.mark.parametrize("name", FAMILIES)
def test_vit_b_family_matches_open_clip_and_runs_every_dense_method(name, cache, tmp_path):
    reference, model_cfg = named_open_clip(name)
    model = load_from_hub(reference, model_cfg, cache, tmp_path, preprocess_cfg=SIGLIP_PREPROCESS)
    assert_matches_open_clip(name, model, reference, model_cfg, 224)
    assert_open_clip_export_equal(model, reference, tmp_path, 224)
    del reference
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        if getattr(model.visual.trunk, "attn_pool", None) is not None:  # SigLIP's MAP head, per patch
            token = torch.randn(1, 1, model.visual.cfg.width).expand(1, 6, -1)
            per_patch, pooled = model.visual.project_patches(token), model.visual.pool(token)
            assert torch.allclose(per_patch, pooled[:, None].expand_as(per_patch), rtol=1e-5, atol=1e-5)
        for method in dense.METHODS:
            feats = model._dense_features(x, method)
            assert feats.shape == (1, model.embed_dim, 4, 5), method
            assert torch.isfinite(feats).all(), method


# --- dense features on timm towers ---------------------------------------------------------------

@pytest.mark.parametrize("model_cfg", [ODD_MAP, ODD_AVG], ids=["map", "avg"])
@pytest.mark.parametrize("method", dense.METHODS + dense.PROXY_METHODS)
def test_every_dense_method_gives_patch_features_on_a_timm_tower(model_cfg, method):
    cfg, sd = convert.from_open_clip({"model_cfg": model_cfg}, custom_text_clip(model_cfg).state_dict())
    model = maskclip.build.build_model(cfg, sd).eval()
    x = torch.randn(2, 3, 48, 64)
    proxy = None
    if method == "proxyclip":  # any callable giving [B, C, h, w] proxy tokens; here a fixed random projection
        g = torch.Generator().manual_seed(0)
        w = torch.randn(8, 3, 8, 8, generator=g)
        proxy = lambda images: torch.nn.functional.conv2d(images, w, stride=8)  # noqa: E731
    with torch.no_grad():
        feats = dense.dense_features(model.visual, x, method, proxy)
    grid = (6, 8) if method == "proxyclip" else (3, 4)
    assert feats.shape == (2, model.embed_dim, *grid)
    assert torch.isfinite(feats).all()


def test_vanilla_dense_block_views_run_timm_blocks_exactly():
    """forward_tokens through the block views + pool == the timm trunk's own forward."""
    cfg, sd = convert.from_open_clip({"model_cfg": ODD_MAP}, custom_text_clip(ODD_MAP).state_dict())
    visual = maskclip.build.build_model(cfg, sd).eval().visual
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        tokens_, _ = visual.forward_tokens(x)
        assert torch.allclose(visual.pool(tokens_), visual(x), rtol=0, atol=1e-6)
        q, k, v = visual.dense_blocks((10, 10))[0].attn.qkv(visual.trunk.blocks[0].norm1(visual.embed(x)[0]))
        assert q.shape == k.shape == v.shape == (2, 3, 1 + 100, 32)


def test_forward_intermediates_of_a_timm_tower_gives_per_block_patch_tokens():
    cfg, sd = convert.from_open_clip({"model_cfg": ODD_MAP}, custom_text_clip(ODD_MAP).state_dict())
    visual = maskclip.build.build_model(cfg, sd).eval().visual
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        emb, blocks = visual.forward_intermediates(x, indices=2)
        only = visual.forward_intermediates(x, indices=[0], output_fmt="NLC", intermediates_only=True)
        assert torch.allclose(emb, visual(x), atol=1e-6)
    assert [b.shape for b in blocks] == [(2, 96, 10, 10)] * 2
    assert [b.shape for b in only] == [(2, 100, 96)]
    with pytest.raises(InputError, match="output_fmt"):
        visual.forward_intermediates(x, output_fmt="NHWC")


def test_map_per_patch_feature_equals_the_pooled_embedding_when_all_tokens_are_equal():
    """SigLIP's MAP head in per-patch form: identical tokens make attention pooling the identity."""
    cfg, sd = convert.from_open_clip({"model_cfg": ODD_MAP}, custom_text_clip(ODD_MAP).state_dict())
    visual = maskclip.build.build_model(cfg, sd).eval().visual
    token = torch.randn(2, 1, visual.cfg.width)
    n = visual.num_prefix_tokens + 9
    with torch.no_grad():
        per_patch = visual.project_patches(token.expand(2, 9, -1))
        pooled = visual.pool(token.expand(2, n, -1))
    assert per_patch.shape == (2, 9, cfg.embed_dim)
    assert torch.allclose(per_patch, pooled[:, None].expand_as(per_patch), rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # and it is not the pooled embedding when the patches differ
        varied = visual.project_patches(torch.randn(2, 9, visual.cfg.width))
    assert not torch.allclose(varied[:, 0], varied[:, 1], atol=1e-3)


def test_eva_rotary_attention_is_applied_in_the_dense_block_views():
    """EVA02's block views reproduce the block (rotary q/k included): vanilla == the trunk's tokens."""
    vision = describe(VisionConfig(image_size=224, act="gelu", timm_model_name="eva02_base_patch16_clip_224",
                                   timm_pool="token", timm_proj=None), 32)
    cfg = ModelConfig(embed_dim=32, vision=vision, text=TextConfig(width=32, heads=2, layers=1, vocab_size=100))
    torch.manual_seed(0)
    visual = DualEncoder(cfg).eval().visual
    visual.trunk.blocks = visual.trunk.blocks[:2]  # two blocks are enough, and fast
    visual.cfg = dataclasses.replace(vision, layers=2)
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        trunk_tokens = visual.trunk.forward_features(x)
        ours, _ = visual.forward_tokens(x)
        view = visual.dense_blocks((3, 4))[-1]
        before, _ = visual.forward_tokens(x, stop=1)
        q, k, v = view.attn.qkv(view.ln_1(before))
        by_hand = before + view.attn.merge_heads(torch.nn.functional.scaled_dot_product_attention(q, k, v))
        by_hand = by_hand + view.mlp(view.ln_2(by_hand))
    assert torch.allclose(visual.trunk.norm(ours), trunk_tokens, atol=1e-5)
    assert torch.allclose(by_hand, ours, atol=1e-5)


# --- zero-shot of sigmoid-trained models ---------------------------------------------------------

class _Ids:
    """A stand-in tokenizer: each text -> ids of its characters (mod 300), padded to the context length."""

    def __call__(self, texts, context_length=None, truncate=True):
        texts = [texts] if isinstance(texts, str) else texts
        out = torch.zeros(len(texts), context_length, dtype=torch.long)
        for i, t in enumerate(texts):
            ids = [ord(c) % 299 + 1 for c in t][:context_length]
            out[i, :len(ids)] = torch.tensor(ids)
        return out


def test_classify_of_a_sigmoid_model_gives_per_label_sigmoid_probabilities():
    cfg, sd = convert.from_open_clip({"model_cfg": ODD_MAP}, custom_text_clip(ODD_MAP).state_dict())
    model = maskclip.build.build_model(cfg, sd).eval()
    model.tokenizer = _Ids()
    x = torch.rand(2, 3, 160, 160)
    labels = ["a cat", "a dog", "a car"]
    probs = model.classify(x, labels)
    with torch.no_grad():
        img = torch.nn.functional.normalize(model.encode_image(x), dim=-1)
        txt = torch.nn.functional.normalize(model.encode_text(model.tokenize(labels)), dim=-1)
        want = torch.sigmoid(model.logit_scale.exp() * img @ txt.T + model.logit_bias)
    assert model.sigmoid_probabilities
    assert torch.allclose(probs, want, atol=1e-6)
    assert not torch.allclose(probs.sum(dim=1), torch.ones(2), atol=1e-3)  # -10 bias: far from summing to 1


def test_classify_cli_says_which_probabilities_it_printed(tmp_path, capsys):
    from PIL import Image

    from maskclip.cli import main

    cfg, sd = convert.from_open_clip({"model_cfg": ODD_AVG}, custom_text_clip(ODD_AVG).state_dict())
    maskclip.build.build_model(cfg, sd).save_pretrained(tmp_path / "m")
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "red.png")
    assert main(["classify", str(tmp_path / "red.png"), "--labels", "red", "blue", "--model", str(tmp_path / "m")]) == 0
    assert "softmax over the labels" in capsys.readouterr().out


# --- tokenizers ----------------------------------------------------------------------------------

def _fake_sentencepiece(monkeypatch, make_tokenizer, seen=None):
    """``maskclip.spm_tokenizer`` replaced by a stand-in whose ``from_folder`` returns ``make_tokenizer()``."""
    class FakeSentencePiece:
        @classmethod
        def from_folder(cls, folder, context_length=None, open_clip_text_cfg=None):
            if seen is not None:
                seen.append((folder, context_length))
            return make_tokenizer()

    monkeypatch.setitem(sys.modules, "maskclip.spm_tokenizer", types.SimpleNamespace(SentencePieceTokenizer=FakeSentencePiece))


def _siglip_folder(tmp_path):
    """An open_clip-layout folder of ``ODD_MAP`` with a SentencePiece tokenizer name and a stand-in tokenizer.json."""
    model_cfg = json.loads(json.dumps(ODD_MAP))
    model_cfg["text_cfg"]["hf_tokenizer_name"] = "timm/ViT-B-16-SigLIP2"
    folder = F.write_open_clip_folder(tmp_path / "oc", custom_text_clip(model_cfg), model_cfg)
    (folder / "tokenizer.json").write_text('{"model": "not read by the fake"}')
    return folder, model_cfg


def test_a_sentencepiece_tokenizer_is_read_from_the_checkpoint_folder_on_first_use(monkeypatch, cache, tmp_path):
    seen = []
    _fake_sentencepiece(monkeypatch, _Ids, seen)
    folder, _ = _siglip_folder(tmp_path)
    F.write_hub_cache(cache, "org/siglip", folder)
    model = maskclip.load("hf-hub:org/siglip")
    assert seen == []  # nothing read at load
    ids = model.tokenize(["a cat"])
    assert ids.shape == (1, 16) and len(seen) == 1
    assert (seen[0][0] / "tokenizer.json").is_file() and seen[0][1] == 16
    assert model.config.text.hf_tokenizer_name == "timm/ViT-B-16-SigLIP2"
    model.save_pretrained(tmp_path / "native")  # the tokenizer's files go along
    again = maskclip.load(tmp_path / "native")
    again.tokenize("a dog")
    assert seen[-1][0] == tmp_path / "native" and (tmp_path / "native" / "tokenizer.json").is_file()


def test_a_missing_sentencepiece_module_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "maskclip.spm_tokenizer", None)  # import fails
    model_cfg = json.loads(json.dumps(ODD_MAP))
    model_cfg["text_cfg"]["hf_tokenizer_name"] = "timm/ViT-B-16-SigLIP"
    folder = F.write_open_clip_folder(tmp_path / "oc", custom_text_clip(model_cfg), model_cfg)
    model = maskclip.load(folder)
    with pytest.raises(ModelNotFoundError, match="SentencePiece"):
        model.tokenize("a cat")
    assert model.encode_text(tokens(model_cfg)).shape == (3, 48)  # token ids still work


def test_a_model_built_without_its_tokenizer_files_says_how_to_get_one():
    model_cfg = json.loads(json.dumps(ODD_MAP))
    model_cfg["text_cfg"]["hf_tokenizer_name"] = "timm/ViT-B-16-SigLIP"
    cfg, _ = convert.from_open_clip({"model_cfg": model_cfg}, {"text.token_embedding.weight": torch.zeros(1)})
    with pytest.raises(InputError, match="tokenizer"):
        DualEncoder(cfg).tokenize("a cat")


# --- preprocessing -------------------------------------------------------------------------------

def _family_preprocess(vision_cfg, text_cfg, preprocess_cfg=None):
    oc = {"model_cfg": {"embed_dim": 768, "vision_cfg": vision_cfg, "text_cfg": text_cfg, "custom_text": True}}
    if preprocess_cfg is not None:
        oc["preprocess_cfg"] = preprocess_cfg
    return convert.from_open_clip(oc, {"text.token_embedding.weight": torch.zeros(1)})[0].preprocess


@pytest.mark.parametrize("name,interpolation", [("ViT-B-16-SigLIP", "bicubic"), ("ViT-B-16-SigLIP2", "bilinear")])
def test_a_siglip_repo_without_preprocess_cfg_gets_siglip_preprocessing(name, interpolation):
    cfg = open_clip.get_model_config(name)
    pp = _family_preprocess(cfg["vision_cfg"], cfg["text_cfg"])
    assert (pp.mean, pp.std, pp.resize_mode, pp.interpolation) == ((0.5,) * 3, (0.5,) * 3, "squash", interpolation)


def test_an_eva_repo_without_preprocess_cfg_gets_openai_preprocessing_and_a_given_one_wins():
    cfg = open_clip.get_model_config("EVA02-B-16")
    assert _family_preprocess(cfg["vision_cfg"], cfg["text_cfg"]).mean == F.OPENAI_MEAN
    siglip = open_clip.get_model_config("ViT-B-16-SigLIP2")
    pp = _family_preprocess(siglip["vision_cfg"], siglip["text_cfg"], {"interpolation": "bicubic"})
    assert (pp.interpolation, pp.resize_mode, pp.mean) == ("bicubic", "squash", (0.5,) * 3)


@pytest.mark.parametrize("name", ["ViT-B-16-SigLIP", "ViT-B-16-SigLIP2"])
def test_family_preprocessing_matches_open_clips_transform_on_photos_of_several_sizes(name):
    from images import photo

    cfg = open_clip.get_model_config(name)
    pp = _family_preprocess(cfg["vision_cfg"], cfg["text_cfg"])
    reference = open_clip.image_transform(224, is_train=False, mean=pp.mean, std=pp.std,
                                          resize_mode=pp.resize_mode, interpolation=pp.interpolation)
    preprocess = maskclip.transforms.Preprocess(pp)
    for size in [(224, 224), (640, 480), (97, 301), (1000, 37)]:
        img = photo(*size)
        ours, theirs = preprocess(img), reference(img)
        assert ours.shape == theirs.shape == (3, 224, 224)
        assert (ours - theirs).abs().max() <= 1e-6, size


# --- open_clip names and what is refused ---------------------------------------------------------

def _tiny_openai_style_folder(tmp_path):
    model_cfg = F.open_clip_model_cfg(F.TINY)
    return F.write_open_clip_folder(tmp_path / "tiny", F.random_open_clip(model_cfg), model_cfg)


def test_open_clip_names_and_short_names_resolve_offline_from_the_hub_cache(cache, tmp_path):
    siglip2_cfg = json.loads(json.dumps(ODD_MAP))
    siglip2_cfg["vision_cfg"]["timm_model_name"] = "test_vit3"
    oc = F.write_open_clip_folder(tmp_path / "s2", custom_text_clip(siglip2_cfg), siglip2_cfg)
    (oc / "open_clip_config.json").write_text(json.dumps({"model_cfg": siglip2_cfg}))  # no preprocess_cfg
    F.write_hub_cache(cache, "timm/ViT-B-16-SigLIP2", oc)
    F.write_hub_cache(cache, "apple/DFN2B-CLIP-ViT-B-16", _tiny_openai_style_folder(tmp_path))
    model = maskclip.load("ViT-B-16-SigLIP2/webli")
    pp = model.config.preprocess
    assert (model.config.name, pp.interpolation, pp.resize_mode, pp.mean) == (
        "ViT-B-16-SigLIP2/webli", "bicubic", "squash", (0.5,) * 3)  # open_clip's for the tag, over the repo's
    assert maskclip.load("siglip2-vitb16").config.name == "siglip2-vitb16"
    dfn = maskclip.load("ViT-B-16/dfn2b")  # the weights are QuickGELU whatever the repo's config says
    assert dfn.config.vision.act == dfn.config.text.act == "quick_gelu"
    assert maskclip.load("dfn2b-vitb16").config.vision.act == "quick_gelu"


def test_every_open_clip_name_gets_the_repo_and_preprocessing_open_clip_gives_it():
    """The table's facts are open_clip's (pretrained.py): Hub repo, mean, std, interpolation, resize mode."""
    from maskclip.convert.open_clip_timm import family_preprocess
    from maskclip.open_clip_models import open_clip_entry, open_clip_names
    from open_clip import pretrained

    for name in open_clip_names():
        theirs = pretrained.get_pretrained_cfg(*name.split("/"))
        entry = open_clip_entry(name)
        pp = family_preprocess(entry["preprocess"], 224)
        assert entry["repo"] == theirs["hf_hub"].rstrip("/"), name
        assert pp.mean == pytest.approx(theirs.get("mean", pretrained.OPENAI_DATASET_MEAN)), name
        assert pp.std == pytest.approx(theirs.get("std", pretrained.OPENAI_DATASET_STD)), name
        assert (pp.interpolation, pp.resize_mode) == (theirs.get("interpolation", "bicubic"),
                                                      theirs.get("resize_mode", "shortest")), name


def test_every_short_name_of_an_open_clip_model_names_a_known_one():
    from maskclip.open_clip_models import open_clip_entry

    short = {n: maskclip.hub.model_info(n)["open_clip"] for n in maskclip.available_models()
             if maskclip.hub.model_info(n).get("open_clip")}
    assert set(short) == {"siglip2-vitb16", "siglip-vitb16", "eva02-vitb16", "dfn2b-vitb16", "metaclip-vitb16",
                          "laion2b-convnext-base-w"}
    for name, oc_name in short.items():
        assert open_clip_entry(oc_name)["repo"] == maskclip.hub.model_info(name)["repo"]


@pytest.mark.parametrize("name", ["ViTamin-B/datacomp1b", "coca_ViT-B-32/laion2b_s13b_b90k",
                                  "MobileCLIP-S1/datacompdr", "RN50/openai", "ViT-B-16-SigLIP2/nope"])
def test_an_open_clip_name_maskclip_cannot_build_is_refused_with_what_it_can_build(name):
    with pytest.raises(ModelNotFoundError, match="ViT-B-16-SigLIP2/webli"):
        maskclip.load(name)


def test_an_open_clip_name_outside_the_table_is_not_called_unbuildable():
    """A plain ViT name maskclip could build but does not list: refused as unknown, pointing at hf-hub:."""
    with pytest.raises(ModelNotFoundError) as err:
        maskclip.load("ViT-L-14/laion2b_s32b_b82k")
    message = str(err.value)
    assert "is not in maskclip's table of open_clip names" in message and "hf-hub:ORG/REPO" in message
    assert "cannot be built" not in message


@pytest.mark.parametrize("timm_name", ["convnextv2_base", "vit_base_patch16_224", "vit_base_patch16_rope_224"])
def test_an_unsupported_timm_tower_is_refused_naming_it_and_listing_the_supported_ones(timm_name):
    model_cfg = json.loads(json.dumps(ODD_MAP))
    model_cfg["vision_cfg"]["timm_model_name"] = timm_name
    with pytest.raises(ConfigError, match=timm_name) as err:
        convert.from_open_clip({"model_cfg": model_cfg}, {})
    assert all(p in str(err.value) for p in SUPPORTED_TIMM_MODELS)


@pytest.mark.parametrize("name", ["coca_ViT-B-32", "RN50", "ViTamin-B", "MobileCLIP-S1", "xlm-roberta-base-ViT-B-32"])
def test_an_open_clip_family_maskclip_cannot_build_is_refused_listing_what_it_builds(name):
    cfg = open_clip.get_model_config(name)
    with pytest.raises(ConfigError) as err:
        convert.from_open_clip({"model_cfg": cfg}, {})
    assert "SigLIP2" in str(err.value) and "vit_*_siglip_*" in str(err.value), str(err.value)


def test_a_timm_vision_config_that_does_not_describe_its_model_is_refused():
    vision = VisionConfig(image_size=160, act="gelu", timm_model_name="test_vit3", timm_pool="map", timm_proj="none")
    cfg = ModelConfig(embed_dim=96, vision=vision, text=TextConfig(width=32, heads=2, layers=1, vocab_size=100))
    with pytest.raises(ConfigError, match="describe"):
        DualEncoder(cfg)
    assert DualEncoder(dataclasses.replace(cfg, vision=describe(vision, 96))).visual.cfg.layers == 9


# --- training -------------------------------------------------------------------------------------

def test_fine_tuning_a_siglip_model_feeds_it_its_own_tokenizers_ids(monkeypatch, tmp_path):
    """``init_from`` a SigLIP-layout folder: the training stream tokenizes with the model's SentencePiece
    tokenizer (here a stand-in with a 300-id vocabulary), not CLIP's BPE, whose ids would not even fit."""
    import train_data as D
    from maskclip.train import TrainConfig, train

    calls = []

    class Recording(_Ids):
        def __call__(self, texts, context_length=None, truncate=True):
            calls.append(len(texts))
            return super().__call__(texts, context_length, truncate)

    _fake_sentencepiece(monkeypatch, Recording)
    folder, _ = _siglip_folder(tmp_path)
    shards = D.write_shards(tmp_path / "shards", D.make_items(16, size=40, seed=0), per_shard=8)
    cfg = TrainConfig.from_preset("tiny", "clip", {
        "data": shards, "samples_per_epoch": 16, "batch_size": 8, "steps": 2, "log_every": 1, "ckpt_every": 1000,
        "progress": False, "workers": 0, "loss": "siglip", "init_from": str(folder), "model": ""})
    summary = train(cfg, tmp_path / "run")
    assert summary["steps"] == 2 and calls == [8, 8]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["loss"] == r["loss"] for r in rows if "loss" in r)


# --- ONNX ----------------------------------------------------------------------------------------

def test_onnx_export_of_a_siglip_model_pools_scores_and_tokenizes_as_siglip(tmp_path):
    """A MAP-pooled timm tower and a last-token-pooled text tower with a projection bias: the graphs
    match PyTorch, the text length is fixed (padding changes a SigLIP text's embedding), the folder
    carries the model's SentencePiece files, and the JSON says to score with the sigmoid and bias."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from maskclip import onnx_export

    folder, model_cfg = _siglip_folder(tmp_path)
    model = maskclip.load(folder)
    out = onnx_export.export_onnx(model, tmp_path / "onnx")
    meta = json.loads((out / "onnx_config.json").read_text())
    assert "tokenizer.json" in meta["files"] and "vocab.json" not in meta["files"]
    assert (out / "tokenizer.json").read_text() == '{"model": "not read by the fake"}'
    assert meta["text_encoder"]["inputs"]["input_ids"]["shape"] == ["batch", 16]
    assert "sigmoid" in meta["scores"] and meta["logit_bias"] == pytest.approx(model.logit_bias.item())

    def run(name, x):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        sess = ort.InferenceSession(str(out / name), options, providers=["CPUExecutionProvider"])
        return torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])

    x = torch.randn(3, 3, 160, 160, generator=torch.Generator().manual_seed(2))
    ids = tokens(model_cfg)
    with torch.no_grad():
        want_image, want_text = model.encode_image(x), model.encode_text(ids)
    assert rel(run("image_encoder.onnx", x), want_image) < 1e-4
    assert rel(run("text_encoder.onnx", ids), want_text) < 1e-4
    with pytest.raises(Exception):  # a shorter, unpadded text is refused by the graph, not read wrong
        run("text_encoder.onnx", ids[:, :8])


@pytest.mark.parametrize("overrides", [{"recipe": "maskclip"}, {"recipe": "clip_mae"}, {"recipe": "slip"},
                                       {"recipe": "clip", "patch_dropout": 0.5}], ids=lambda o: "-".join(map(str, o.values())))
def test_a_timm_tower_is_refused_by_the_recipes_that_need_maskclips_own_vit(overrides, tmp_path):
    import train_data as D
    from maskclip.train import TrainConfig, train

    folder = F.write_open_clip_folder(tmp_path / "oc", custom_text_clip(ODD_AVG), ODD_AVG)
    shards = D.write_shards(tmp_path / "shards", D.make_items(8, size=40, seed=0), per_shard=8)
    recipe = overrides.pop("recipe")
    cfg = TrainConfig.from_preset("tiny", recipe, {
        "data": shards, "samples_per_epoch": 8, "batch_size": 8, "steps": 1, "progress": False, "workers": 0,
        "init_from": str(folder), "model": "", **overrides})
    with pytest.raises(ConfigError, match="need maskclip's own ViT image tower; this model's is a timm tower "
                                          r"\(test_vit2\)"):
        train(cfg, tmp_path / "run")
