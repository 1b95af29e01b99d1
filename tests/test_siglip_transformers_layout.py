"""transformers' ``SiglipModel`` folders through ``maskclip.load`` and ``save_pretrained(format="transformers")``.

A small random ``SiglipModel`` (norms, biases, logit scale and bias perturbed) whose vision tower
has the shapes of a SigLIP-named timm ViT registered here (exact GELU, as timm's SigLIP towers),
saved by transformers with a SigLIP-shaped tokenizer (tests/spm_files.py) and a
``preprocessor_config.json``: loaded from the folder and from an offline Hub cache, embeddings equal
transformers' (relative difference <= 1e-5) also when the checkpoint declares tanh GELU for the
vision tower (Google's), which the timm tower then takes as its ``act_layer``; written back, it is
``SiglipModel.from_pretrained``'s model with the same state dict.
"""
import json
from dataclasses import replace

import pytest
import torch

import maskclip
from maskclip.config import ModelConfig, PreprocessConfig, TextConfig, VisionConfig
from maskclip.errors import ConfigError
import factories as F
import spm_files as sf
from tokenizer_corpus import FIXED, corpus

transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")
pytest.importorskip("tokenizers")

TOL = 1e-5
TOWER = "vit_tinygelu_patch8_siglip_32"
TEXTS = ["a photo of a CAT.", "A Diagram of the Eiffel-Tower, at night!", "", "x" * 80]
DIFFS = {}


def _register_tower():
    """A SigLIP-shaped timm ViT (no class token, MAP head, timm's own exact GELU), small enough for CPU tests."""
    if timm.list_models(TOWER):
        return
    from timm.models import register_model
    from timm.models.vision_transformer import _create_vision_transformer

    def build(pretrained=False, **kwargs):
        args = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, class_token=False,
                    global_pool="map")
        return _create_vision_transformer(TOWER, pretrained=pretrained, **dict(args, **kwargs))

    build.__name__ = TOWER  # timm registers a model under its function's name
    register_model(build)


_register_tower()


@pytest.fixture(scope="module", autouse=True)
def report_diffs():
    yield
    if DIFFS:
        print("\nrelative difference to transformers' SiglipModel (image, text):")
        for key, (img, txt) in sorted(DIFFS.items()):
            print(f"  {key:<28}  {img:.2e}  {txt:.2e}")


@pytest.fixture(scope="module")
def tokenizer_json():
    texts = [t.encode("utf-8", "replace").decode() for t in corpus(300, 1)[len(FIXED):]]
    return sf.t5_shaped_json(sf.trained_unigram_pieces(texts, 400), 2)


@pytest.fixture
def cache(monkeypatch, tmp_path):
    return F.offline_hub(monkeypatch, tmp_path / "hf_cache")


def hf_config(vocab_size: int, vision_act: str) -> dict:
    return {"model_type": "siglip",
            "text_config": {"vocab_size": vocab_size, "hidden_size": 32, "intermediate_size": 64,
                            "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 16,
                            "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6, "projection_size": 64},
            "vision_config": {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
                              "num_attention_heads": 4, "image_size": 32, "patch_size": 8,
                              "hidden_act": vision_act, "layer_norm_eps": 1e-6}}


def transformers_folder(folder, tokenizer_json: str, vision_act: str = "gelu_pytorch_tanh", seed: int = 0):
    """(a folder as ``SiglipModel.save_pretrained`` writes it + tokenizer and preprocessor files, the model)."""
    import tokenizers

    vocab = tokenizers.Tokenizer.from_str(tokenizer_json).get_vocab_size()
    torch.manual_seed(seed)
    model = transformers.SiglipModel(transformers.SiglipConfig(**hf_config(vocab, vision_act)))
    model = F._perturb(model, seed).eval()
    model.save_pretrained(folder)
    transformers.SiglipImageProcessor(size={"height": 32, "width": 32}, resample=2).save_pretrained(folder)
    sf.write(folder, {"tokenizer.json": tokenizer_json,
                      "tokenizer_config.json": dict(sf.T5_CONFIG, model_max_length=16),
                      "special_tokens_map.json": sf.T5_SPECIAL_MAP})
    return folder, model


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def pooled(output) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def assert_matches_transformers(key, model, reference, vocab: int):
    g = torch.Generator().manual_seed(1)
    x, ids = torch.randn(2, 3, 32, 32, generator=g), torch.randint(0, vocab, (3, 16), generator=g)
    with torch.no_grad():
        di = rel(model.encode_image(x), pooled(reference.get_image_features(pixel_values=x)))
        dt = rel(model.encode_text(ids), pooled(reference.get_text_features(input_ids=ids)))
    DIFFS[key] = (di, dt)
    assert di <= TOL and dt <= TOL, (key, di, dt)


def assert_same_state(a: dict, b: dict):
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


# --- reading ----------------------------------------------------------------------------------

@pytest.mark.parametrize("vision_act,native_act", [("gelu_pytorch_tanh", "gelu_tanh"), ("gelu", "gelu")])
def test_a_transformers_siglip_folder_loads_with_the_activation_it_declares(vision_act, native_act,
                                                                            tokenizer_json, tmp_path):
    folder, reference = transformers_folder(tmp_path / "hf", tokenizer_json, vision_act)
    model = maskclip.load(folder)
    assert model.config.vision.timm_model_name == TOWER and model.config.vision.act == native_act
    assert_matches_transformers(f"folder, vision {vision_act}", model, reference, reference.config.text_config.vocab_size)
    with torch.no_grad():
        assert torch.allclose(model.logit_bias, reference.logit_bias.reshape(()))
    pp = model.config.preprocess
    assert (pp.mean, pp.std, pp.interpolation, pp.resize_mode) == ((0.5,) * 3, (0.5,) * 3, "bilinear", "squash")


def test_a_transformers_siglip_repo_loads_offline_from_the_hub_cache_with_its_tokenizer(tokenizer_json, cache,
                                                                                       tmp_path):
    from transformers import AutoTokenizer

    folder, reference = transformers_folder(tmp_path / "hf", tokenizer_json)
    want_ids = AutoTokenizer.from_pretrained(str(folder))(TEXTS, padding="max_length", max_length=16,
                                                          truncation=True, return_tensors="pt").input_ids
    F.write_hub_cache(cache, "google/siglip-tiny", folder, move=False)
    model = maskclip.load("hf-hub:google/siglip-tiny")
    assert_matches_transformers("Hub cache", model, reference, reference.config.text_config.vocab_size)
    assert model.config.preprocess.interpolation == "bilinear"  # from the cached preprocessor_config.json
    assert torch.equal(model.tokenize(TEXTS), want_ids)
    with torch.no_grad():
        want = pooled(reference.get_text_features(input_ids=want_ids))
        assert rel(model.encode_text(TEXTS), want) <= TOL


# --- writing ----------------------------------------------------------------------------------

def test_save_as_transformers_gives_siglip_models_state_dict_and_outputs(tokenizer_json, tmp_path):
    folder, reference = transformers_folder(tmp_path / "hf", tokenizer_json)
    model = maskclip.load(folder)
    out = tmp_path / "again"
    model.save_pretrained(out, format="transformers")
    again = transformers.SiglipModel.from_pretrained(str(out)).eval()
    assert again.config.vision_config.hidden_act == "gelu_pytorch_tanh"
    assert_same_state(again.state_dict(), reference.state_dict())
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (out / name).read_bytes() == (folder / name).read_bytes(), name
    processor = json.loads((out / "preprocessor_config.json").read_text())
    assert (processor["resample"], processor["size"]) == (2, {"height": 32, "width": 32})
    reloaded = maskclip.load(out)
    # a vocabulary no released SigLIP has: the tokenizer is named by the folder holding it
    assert (model.config.text.hf_tokenizer_name, reloaded.config.text.hf_tokenizer_name) == (str(folder), str(out))
    assert replace(reloaded.config, text=replace(reloaded.config.text, hf_tokenizer_name=str(folder))) == model.config
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(reloaded.encode_image(x), model.encode_image(x))


def test_a_maskclip_siglip_saved_as_transformers_equals_siglip_model_and_round_trips(tmp_path):
    vision = VisionConfig(image_size=32, act="gelu_tanh", timm_model_name=TOWER, timm_pool="map", timm_proj="none")
    text = TextConfig(context_length=16, vocab_size=32000, width=32, heads=2, layers=2, mlp_ratio=2.0, act="gelu_tanh",
                      norm_eps=1e-6, causal=False, pool="last", proj_bias=True, hf_tokenizer_name="timm/ViT-B-16-SigLIP")
    from maskclip.timm_vision import describe

    preprocess = PreprocessConfig(image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3, resize_mode="squash")
    config = ModelConfig(embed_dim=64, vision=describe(vision, 64), text=text, preprocess=preprocess,
                         logit_bias_init=-10.0)
    torch.manual_seed(0)
    model = F._perturb(maskclip.DualEncoder(config), 0).eval()
    model.save_pretrained(tmp_path / "hf", format="transformers")
    reference = transformers.SiglipModel.from_pretrained(str(tmp_path / "hf")).eval()
    assert_matches_transformers("maskclip -> transformers", model, reference, 32000)
    back = maskclip.load(tmp_path / "hf")  # 32000 ids: SigLIP's vocabulary, which names its tokenizer
    assert back.config == model.config
    assert_same_state(back.state_dict(), model.state_dict())


# --- what open_clip's layout cannot say ---------------------------------------------------------

def test_a_tanh_gelu_timm_tower_is_refused_by_the_open_clip_export_and_kept_by_the_native_one(tokenizer_json,
                                                                                             tmp_path):
    folder, _ = transformers_folder(tmp_path / "hf", tokenizer_json)
    model = maskclip.load(folder)
    with pytest.raises(ConfigError, match="'gelu_tanh'.*format='maskclip' or 'transformers'"):
        model.save_pretrained(tmp_path / "oc", format="open_clip")
    assert not (tmp_path / "oc").exists()  # refused before anything is written
    model.save_pretrained(tmp_path / "native")
    again = maskclip.load(tmp_path / "native")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(again.encode_image(x), model.encode_image(x))
    assert torch.equal(again.tokenize(TEXTS), model.tokenize(TEXTS))


def test_an_activation_override_on_an_eva_tower_is_refused():
    with pytest.raises(ConfigError, match="eva02_base_patch16_clip_224.*'gelu'"):
        VisionConfig(image_size=224, act="gelu_tanh", timm_model_name="eva02_base_patch16_clip_224",
                     timm_pool="token", timm_proj=None).validate()


def test_vit_b_google_shaped_siglip_loads_with_tanh_gelu_and_matches_transformers(tmp_path):
    """Google's SigLIP B/16 config (transformers' defaults: tanh GELU in both towers), random weights."""
    torch.manual_seed(0)
    reference = transformers.SiglipModel(transformers.SiglipConfig(text_config={}, vision_config={}))
    reference = F._perturb(reference, 0).eval()
    reference.save_pretrained(tmp_path / "google")
    del reference.text_model  # the image tower is the part whose activation is at stake; keep memory low
    model = maskclip.load(tmp_path / "google")
    assert (model.config.vision.timm_model_name, model.config.vision.act) == ("vit_base_patch16_siglip_224", "gelu_tanh")
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        d = rel(model.encode_image(x), pooled(reference.get_image_features(pixel_values=x)))
    DIFFS["ViT-B/16 Google config"] = (d, float("nan"))
    assert d <= TOL, d
