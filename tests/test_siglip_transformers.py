"""transformers' SiglipModel <-> open_clip's SigLIP layout (maskclip.convert.siglip_transformers),
against the real packages: random weights with noisy norms, biases and logit scalars, fp32.

Parity: the pooled, projected image and text embeddings of both models from the same pixel
tensors and token ids, max |a - b| / max |b| <= 1e-5 (printed with ``pytest -s``). ViT-B-16-SigLIP
and ViT-B-16-SigLIP2 run once each at full size; the rest uses a small odd timm tower registered
here (width 48, 3 heads, MLP 2.5x, patch 8 at 40 px, tanh GELU) with an odd text tower.
"""
import copy
import json
import subprocess
import sys

import pytest
import torch

open_clip = pytest.importorskip("open_clip")
transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")

from maskclip.convert.siglip_transformers import (read_siglip_transformers_folder, siglip_hf_to_open_clip,  # noqa: E402
                                                  siglip_open_clip_to_hf, siglip_preprocess_cfg,
                                                  siglip_preprocessor_config, write_siglip_transformers_folder)
from maskclip.errors import ConfigError, ModelNotFoundError, WeightsError  # noqa: E402

TOL = 1e-5
TINY_TOWER = "vit_tinyodd_patch8_siglip_40"


def _register_tiny_tower(size):
    """A SigLIP-shaped timm ViT small enough for CPU tests, named as timm names SigLIP towers."""
    name = f"vit_tinyodd_patch8_siglip_{size}"
    if timm.list_models(name):
        return
    from timm.models import register_model
    from timm.models.vision_transformer import _create_vision_transformer

    def build(pretrained=False, **kwargs):
        args = dict(img_size=size, patch_size=8, embed_dim=48, depth=2, num_heads=3, mlp_ratio=2.5,
                    class_token=False, global_pool="map", act_layer="gelu_tanh")
        return _create_vision_transformer(name, pretrained=pretrained, **dict(args, **kwargs))

    build.__name__ = name  # timm registers a model under its function's name
    register_model(build)


_register_tiny_tower(40)
_register_tiny_tower(44)  # 44 px: a 5 x 5 grid, the last 4 pixel rows and columns unused by both layouts

TINY_CFG = {
    "embed_dim": 48, "init_logit_bias": -10.0, "custom_text": True,
    "vision_cfg": {"image_size": 40, "timm_model_name": TINY_TOWER, "timm_model_pretrained": False,
                   "timm_pool": "map", "timm_proj": "none"},
    "text_cfg": {"context_length": 12, "vocab_size": 300, "hf_tokenizer_name": "some/tokenizer",
                 "tokenizer_kwargs": {"clean": "canonicalize"}, "width": 40, "heads": 4, "layers": 2,
                 "mlp_ratio": 3.0, "no_causal_mask": True, "proj_bias": True, "pool_type": "last",
                 "norm_kwargs": {"eps": 1e-5}},
}
TINY_HF = {
    "model_type": "siglip",
    "text_config": {"vocab_size": 300, "hidden_size": 40, "intermediate_size": 120, "num_hidden_layers": 2,
                    "num_attention_heads": 4, "max_position_embeddings": 12, "hidden_act": "gelu",
                    "layer_norm_eps": 1e-5, "projection_size": 48},
    "vision_config": {"hidden_size": 48, "intermediate_size": 120, "num_hidden_layers": 2, "num_attention_heads": 3,
                      "image_size": 40, "patch_size": 8, "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6},
}


# --- helpers -------------------------------------------------------------------------------------

def _perturbed(model, seed):
    """Noise on every parameter of at most one dimension: norms, biases, logit scale and bias."""
    g = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() <= 1:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def random_open_clip(model_cfg, seed=0):
    torch.manual_seed(seed)
    kwargs = {k: v for k, v in copy.deepcopy(model_cfg).items() if k != "custom_text"}
    return _perturbed(open_clip.CustomTextCLIP(**kwargs), seed)


def random_siglip(hf_config, seed=0):
    torch.manual_seed(seed)
    return _perturbed(transformers.SiglipModel(transformers.SiglipConfig(**copy.deepcopy(hf_config))), seed)


def siglip_from(hf_config, state_dict):
    model = transformers.SiglipModel(transformers.SiglipConfig(**copy.deepcopy(hf_config))).eval()
    model.load_state_dict(state_dict, strict=True)
    return model


def open_clip_from(model_cfg, state_dict):
    model = random_open_clip(model_cfg)
    model.load_state_dict(state_dict, strict=True)
    return model


def pooled(output):
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def inputs(image_size, vocab, context, seed=0, n=2):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 3, image_size, image_size, generator=g),
            torch.randint(0, vocab, (n, context), generator=g))


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def assert_parity(oc_model, hf_model, image_size, vocab, context, label):
    """Image and text embeddings and the logits equal; prints the relative differences."""
    pixels, ids = inputs(image_size, vocab, context)
    with torch.no_grad():
        oc_img, oc_txt = oc_model.encode_image(pixels), oc_model.encode_text(ids)
        hf_img = pooled(hf_model.get_image_features(pixel_values=pixels))
        hf_txt = pooled(hf_model.get_text_features(input_ids=ids))
        hf_logits = hf_model(input_ids=ids, pixel_values=pixels).logits_per_image
    n_img, n_txt = torch.nn.functional.normalize(oc_img, dim=-1), torch.nn.functional.normalize(oc_txt, dim=-1)
    oc_logits = n_img @ n_txt.T * oc_model.logit_scale.exp() + oc_model.logit_bias
    diffs = {"image": rel(oc_img, hf_img), "text": rel(oc_txt, hf_txt), "logits": rel(oc_logits, hf_logits)}
    print(f"\n{label}: relative differences {diffs}")
    assert max(diffs.values()) <= TOL, diffs


def assert_same_state(a, b):
    assert set(a) == set(b)
    for k in a:
        assert a[k].shape == b[k].shape and a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k


# --- ViT-B, once per family ------------------------------------------------------------------------

@pytest.mark.parametrize("name,tokenizer,text_act", [
    ("ViT-B-16-SigLIP", "timm/ViT-B-16-SigLIP", "gelu"),
    ("ViT-B-16-SigLIP2", "timm/ViT-B-16-SigLIP2", "gelu_pytorch_tanh"),
])
def test_vit_b16_open_clip_to_transformers_matches_and_round_trips(name, tokenizer, text_act):
    model_cfg = open_clip.get_model_config(name)
    torch.manual_seed(0)
    oc_model = _perturbed(open_clip.create_model(name, pretrained=None), 0)
    oc_sd = oc_model.state_dict()
    hf_config, hf_sd = siglip_open_clip_to_hf(model_cfg, oc_sd)
    # timm's vit_base_patch16_siglip_224 computes exact GELU; SigLIP2's text tower the tanh form.
    assert (hf_config["vision_config"]["hidden_act"], hf_config["text_config"]["hidden_act"]) == ("gelu", text_act)
    assert_parity(oc_model, siglip_from(hf_config, hf_sd), 224, model_cfg["text_cfg"]["vocab_size"], 64, name)

    back_cfg, back_sd = siglip_hf_to_open_clip(hf_config, hf_sd)
    assert back_cfg == model_cfg and back_cfg["text_cfg"]["hf_tokenizer_name"] == tokenizer
    assert_same_state(back_sd, oc_sd)


def test_siglip2_b16_differs_from_siglip_in_vocabulary_tokenizer_and_text_activation_only():
    siglip, siglip2 = open_clip.get_model_config("ViT-B-16-SigLIP"), open_clip.get_model_config("ViT-B-16-SigLIP2")
    assert siglip2["vision_cfg"] == siglip["vision_cfg"]
    differing = {k for k in siglip2["text_cfg"].keys() | siglip["text_cfg"].keys()
                 if siglip2["text_cfg"].get(k) != siglip["text_cfg"].get(k)}
    assert differing == {"vocab_size", "hf_tokenizer_name", "act_kwargs"}
    assert {k: v for k, v in siglip2.items() if k != "text_cfg"} == {k: v for k, v in siglip.items() if k != "text_cfg"}


# --- every released open_clip SigLIP config, on the meta device (shapes only) -----------------------

# One per distinct trait: i18n vocabulary, patch 32 with a tanh-GELU tower, L/16 (exact and tanh
# GELU), patch 14 at 384 px (the grid drops the remainder), 16-token context, a text tower without
# projection (refused), a text width other than the embedding's.
SIGLIP_NAMES = ["ViT-B-16-SigLIP-i18n-256", "ViT-B-32-SigLIP2-256", "ViT-L-16-SigLIP-384", "ViT-L-16-SigLIP2-512",
                "ViT-SO400M-14-SigLIP-384", "ViT-SO400M-14-SigLIP", "ViT-SO400M-16-SigLIP-i18n-256",
                "ViT-gopt-16-SigLIP2-256"]


@pytest.mark.parametrize("name", SIGLIP_NAMES)
def test_every_open_clip_siglip_config_converts_to_exactly_siglip_models_keys_and_back(name):
    model_cfg = open_clip.get_model_config(name)
    with torch.device("meta"):
        oc_sd = open_clip.create_model(name, pretrained=None, device="meta").state_dict()
    if model_cfg["text_cfg"].get("proj_type") == "none":  # SO400M-16-SigLIP-i18n-256: no text projection
        with pytest.raises(ConfigError, match=r"proj_type = 'none'"):
            siglip_open_clip_to_hf(model_cfg, oc_sd)
        return
    hf_config, hf_sd = siglip_open_clip_to_hf(model_cfg, oc_sd)
    hf_shapes = {k: v.shape for k, v in _meta_state(hf_config).items()}
    assert {k: v.shape for k, v in hf_sd.items()} == hf_shapes
    tokenizer = model_cfg["text_cfg"]["hf_tokenizer_name"]
    back_cfg, back_sd = siglip_hf_to_open_clip(hf_config, hf_sd, tokenizer_name=tokenizer)
    assert back_cfg == model_cfg
    assert {k: v.shape for k, v in back_sd.items()} == {k: v.shape for k, v in oc_sd.items()}


# --- a small odd model, both directions ----------------------------------------------------------

def test_small_open_clip_to_transformers_matches_and_round_trips_bit_identically():
    oc_model = random_open_clip(TINY_CFG, seed=1)
    oc_sd = oc_model.state_dict()
    hf_config, hf_sd = siglip_open_clip_to_hf(TINY_CFG, oc_sd)
    assert hf_config["text_config"]["projection_size"] == 48 and hf_config["vision_config"]["image_size"] == 40
    assert_parity(oc_model, siglip_from(hf_config, hf_sd), 40, 300, 12, "small open_clip -> transformers")

    back_cfg, back_sd = siglip_hf_to_open_clip(hf_config, hf_sd, tokenizer_name="some/tokenizer")
    assert back_cfg == TINY_CFG
    assert_same_state(back_sd, oc_sd)


def test_image_size_not_a_multiple_of_the_patch_converts_with_the_same_grid():
    cfg = copy.deepcopy(TINY_CFG)
    cfg["vision_cfg"].update(image_size=44, timm_model_name="vit_tinyodd_patch8_siglip_44")
    oc_model = random_open_clip(cfg, seed=6)
    hf_config, hf_sd = siglip_open_clip_to_hf(cfg, oc_model.state_dict())
    assert hf_config["vision_config"]["image_size"] == 44
    assert hf_sd["vision_model.embeddings.position_embedding.weight"].shape == (25, 48)
    assert_parity(oc_model, siglip_from(hf_config, hf_sd), 44, 300, 12, "44 px at patch 8")
    assert siglip_hf_to_open_clip(hf_config, hf_sd, tokenizer_name="some/tokenizer")[0] == cfg


def test_small_transformers_to_open_clip_matches_and_round_trips_bit_identically():
    hf_model = random_siglip(TINY_HF, seed=2)
    hf_sd = hf_model.state_dict()
    model_cfg, oc_sd = siglip_hf_to_open_clip(TINY_HF, hf_sd, tokenizer_name="some/tokenizer")
    assert model_cfg == TINY_CFG
    assert_parity(open_clip_from(model_cfg, oc_sd), hf_model, 40, 300, 12, "small transformers -> open_clip")

    back_config, back_sd = siglip_open_clip_to_hf(model_cfg, oc_sd)
    assert_same_state(back_sd, hf_sd)
    assert transformers.SiglipConfig(**back_config).to_dict()["vision_config"]["hidden_size"] == 48


def test_quick_gelu_text_tower_converts_both_ways():
    cfg = {**copy.deepcopy(TINY_CFG), "quick_gelu": True}
    oc_model = random_open_clip(cfg, seed=3)
    hf_config, hf_sd = siglip_open_clip_to_hf(cfg, oc_model.state_dict())
    assert hf_config["text_config"]["hidden_act"] == "quick_gelu"
    assert_parity(oc_model, siglip_from(hf_config, hf_sd), 40, 300, 12, "quick_gelu text tower")
    assert siglip_hf_to_open_clip(hf_config, hf_sd, tokenizer_name="some/tokenizer")[0] == cfg


def test_transformers_state_dict_with_saved_position_ids_converts():
    hf_sd = random_siglip(TINY_HF).state_dict()
    hf_sd["text_model.embeddings.position_ids"] = torch.arange(12)[None]
    hf_sd["vision_model.embeddings.position_ids"] = torch.arange(25)[None]
    _, oc_sd = siglip_hf_to_open_clip(TINY_HF, hf_sd, tokenizer_name="some/tokenizer")
    assert not any("position_ids" in k for k in oc_sd)


# --- Google's configs: the activation open_clip's layout cannot choose ------------------------------

def _meta_state(hf_config):
    with torch.device("meta"):
        return transformers.SiglipModel(transformers.SiglipConfig(**copy.deepcopy(hf_config))).state_dict()


def test_google_siglip_b16_config_is_refused_for_its_tanh_vision_gelu_unless_allowed():
    google = {"model_type": "siglip", "text_config": {}, "vision_config": {"patch_size": 16}}  # defaults: B/16 224
    sd = _meta_state(google)
    with pytest.raises(ConfigError, match=r"vit_base_patch16_siglip_224: act 'gelu' \(transformers "
                                          r"'gelu_pytorch_tanh'\).*allow_act_change=True"):
        siglip_hf_to_open_clip(google, sd)
    model_cfg, _ = siglip_hf_to_open_clip(google, sd, allow_act_change=True)
    expected = open_clip.get_model_config("ViT-B-16-SigLIP")
    expected["text_cfg"]["act_kwargs"] = {"approximate": "tanh"}  # Google's text tower: tanh GELU too
    assert model_cfg == expected


# --- what does not fit -----------------------------------------------------------------------------

def _tiny_oc_state():
    return random_open_clip(TINY_CFG).state_dict()


def test_missing_and_unexpected_open_clip_keys_are_named():
    sd = _tiny_oc_state()
    del sd["visual.trunk.attn_pool.kv.weight"]
    sd["visual.trunk.cls_token"] = torch.zeros(1, 1, 48)
    with pytest.raises(WeightsError, match=r"missing: \['visual.trunk.attn_pool.kv.weight'\]; "
                                           r"unexpected: \['visual.trunk.cls_token'\]"):
        siglip_open_clip_to_hf(TINY_CFG, sd)


def test_misshapen_keys_are_named_with_the_expected_shape():
    sd = _tiny_oc_state()
    sd["text.text_projection.weight"] = torch.zeros(40, 40)
    with pytest.raises(WeightsError, match=r"text.text_projection.weight is \[40, 40\], expected \[48, 40\]"):
        siglip_open_clip_to_hf(TINY_CFG, sd)
    hf_sd = random_siglip(TINY_HF).state_dict()
    hf_sd["logit_bias"] = torch.zeros(())
    with pytest.raises(WeightsError, match=r"logit_bias is \[\], expected \[1\]"):
        siglip_hf_to_open_clip(TINY_HF, hf_sd, tokenizer_name="x")


@pytest.mark.parametrize("change,message", [
    ({"vision_cfg": {"timm_pool": "avg"}}, r"vision_cfg.timm_pool = 'avg': .* needs 'map'"),
    ({"vision_cfg": {"timm_proj": None}}, r"vision_cfg.timm_proj = 'linear' \(its default\)"),
    ({"text_cfg": {"pool_type": None}}, r"text_cfg.pool_type = 'argmax' \(its default\)"),
    ({"text_cfg": {"no_causal_mask": False}}, r"text_cfg.no_causal_mask = False"),
    ({"text_cfg": {"proj_type": "none"}}, r"text_cfg.proj_type = 'none'"),
    ({"text_cfg": {"act_kwargs": {"approximate": "sigmoid"}}}, r"act_kwargs"),
    ({"text_cfg": {"qk_norm": True}}, r"text_cfg.qk_norm = True"),
    ({"text_cfg": {"block_type": "custom"}}, r"text_cfg.block_type = 'custom': .* needs None or 'default'"),
    ({"text_cfg": {"new_field": 1}}, r"fields \['new_field'\], which the SigLIP conversion does not know"),
    ({"init_logit_bias": None}, r"init_logit_bias is absent"),
    ({"custom_text": None}, r"custom_text = False \(its default\)"),
    ({"embed_dim": 64}, r"embed_dim = 64 with timm_proj 'none' must equal the vision width"),
    ({"vision_cfg": {"image_size": 48}}, r"image_size = 48, but timm's 'vit_tinyodd_patch8_siglip_40' is built for 40"),
    ({"vision_cfg": {"timm_model_name": "no_such_model"}}, r"timm cannot build .*'no_such_model'"),
    ({"vision_cfg": {"timm_model_name": None}}, r"needs a timm SigLIP tower"),
])
def test_open_clip_configs_siglip_model_cannot_express_are_refused(change, message):
    cfg = copy.deepcopy(TINY_CFG)
    for key, value in change.items():
        if isinstance(value, dict):
            for k, v in value.items():
                cfg[key].pop(k) if v is None else cfg[key].__setitem__(k, v)
        elif value is None:
            cfg.pop(key)
        else:
            cfg[key] = value
    with pytest.raises(ConfigError, match=message):
        siglip_open_clip_to_hf(cfg, {})


def test_timm_tower_with_a_class_token_is_refused_naming_the_parameter():
    cfg = copy.deepcopy(open_clip.get_model_config("ViT-B-16-SigLIP"))
    cfg["vision_cfg"]["timm_model_name"] = "vit_base_patch16_224"
    with pytest.raises(ConfigError, match=r"'vit_base_patch16_224' is not SiglipModel's vision tower: parameters "
                                          r"SiglipModel has no place for: \['visual.trunk.cls_token'\]"):
        siglip_open_clip_to_hf(cfg, {})


def test_released_text_tower_without_projection_is_refused():
    with pytest.raises(ConfigError, match=r"proj_type = 'none'"):
        siglip_open_clip_to_hf(open_clip.get_model_config("ViT-SO400M-16-SigLIP-i18n-256"), {})


@pytest.mark.parametrize("change,message", [
    ({"model_type": "siglip2"}, r"got 'siglip2' \(Siglip2Model, the NaFlex variant"),
    ({"model_type": "clip"}, r"expected a transformers SiglipModel config"),
    ({"text_config": {"projection_size": 40}}, r"projection_size = 40 differs from vision_config.hidden_size = 48"),
    ({"vision_config": {"vision_use_head": False}}, r"vision_use_head = false"),
    ({"vision_config": {"hidden_act": "relu"}}, r"hidden_act = 'relu' is not supported"),
    ({"vision_config": {"num_attention_heads": 4}},
     r"no timm SigLIP tower \(vit_\*_patch8_siglip_40\) matches .*vit_tinyodd_patch8_siglip_40: heads 3 "
     r"\(transformers 4\)"),
    ({"vision_config": {"image_size": 48}}, r"no timm SigLIP tower \(vit_\*_patch8_siglip_48\).*none registered"),
    ({"vision_config": {"image_size": [40, 48]}}, r"not square"),
])
def test_transformers_configs_open_clip_cannot_express_are_refused(change, message):
    cfg = copy.deepcopy(TINY_HF)
    for key, value in change.items():
        if isinstance(value, dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    with pytest.raises(ConfigError, match=message):
        siglip_hf_to_open_clip(cfg, {}, tokenizer_name="x")


def test_unknown_vocabulary_needs_a_tokenizer_name():
    with pytest.raises(ConfigError, match=r"vocab_size = 300 is not a released SigLIP tokenizer's.*tokenizer_name="):
        siglip_hf_to_open_clip(TINY_HF, {})


# --- preprocessing -----------------------------------------------------------------------------------

@pytest.mark.parametrize("interpolation,resample", [("bicubic", 3), ("bilinear", 2)])
def test_preprocess_cfg_maps_to_siglip_image_processor_and_back(interpolation, resample):
    pp = {"size": 256, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": interpolation,
          "resize_mode": "squash"}
    config = siglip_preprocessor_config(pp, 256)
    processor = transformers.SiglipImageProcessor(**{k: v for k, v in config.items()
                                                     if k not in ("image_processor_type", "processor_class")})
    assert (processor.size["height"], processor.size["width"], int(processor.resample)) == (256, 256, resample)
    assert list(processor.image_mean) == [0.5] * 3 and list(processor.image_std) == [0.5] * 3
    assert siglip_preprocess_cfg(config, 224) == pp


def test_missing_preprocessing_takes_siglip_defaults_at_the_model_size():
    assert siglip_preprocess_cfg(None, 384) == {"size": 384, "mean": [0.5] * 3, "std": [0.5] * 3,
                                                "interpolation": "bicubic", "resize_mode": "squash"}
    assert siglip_preprocessor_config(None, 384)["size"] == {"height": 384, "width": 384}


@pytest.mark.parametrize("pp,message", [({"resize_mode": "shortest"}, r"only squashes"),
                                        ({"interpolation": "lanczos"}, r"interpolation = 'lanczos'"),
                                        ({"crop": 1}, r"fields \['crop'\]")])
def test_preprocessing_siglip_image_processor_cannot_express_is_refused(pp, message):
    with pytest.raises(ConfigError, match=message):
        siglip_preprocessor_config(pp, 224)


@pytest.mark.parametrize("config,message", [({"size": {"shortest_edge": 224}}, r"expected a square"),
                                            ({"do_resize": False}, r"do_resize = false"),
                                            ({"resample": 5}, r"resample = 5"),
                                            ({"image_processor_type": "CLIPImageProcessor"}, r"CLIPImageProcessor")])
def test_preprocessor_configs_open_clip_cannot_express_are_refused(config, message):
    with pytest.raises(ConfigError, match=message):
        siglip_preprocess_cfg(config, 224)


# --- the folder ------------------------------------------------------------------------------------

def test_folder_written_loads_in_transformers_and_reads_back_bit_identically(tmp_path):
    oc_model = random_open_clip(TINY_CFG, seed=4)
    pp = {"size": 40, "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear", "resize_mode": "squash"}
    folder = write_siglip_transformers_folder(tmp_path / "hf", {"model_cfg": TINY_CFG, "preprocess_cfg": pp},
                                              oc_model.state_dict())
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    hf_model = transformers.SiglipModel.from_pretrained(folder).eval()
    assert_parity(oc_model, hf_model, 40, 300, 12, "folder -> SiglipModel.from_pretrained")
    processor = transformers.SiglipImageProcessor.from_pretrained(folder)
    assert (processor.size["height"], int(processor.resample)) == (40, 2)

    config, sd = read_siglip_transformers_folder(folder, tokenizer_name="some/tokenizer")
    assert config == {"model_cfg": TINY_CFG, "preprocess_cfg": pp}
    assert_same_state(sd, oc_model.state_dict())


def test_folder_from_save_pretrained_reads_with_sharded_weights_and_default_preprocessing(tmp_path):
    hf_model = random_siglip(TINY_HF, seed=5)
    hf_model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file() and not (tmp_path / "model.safetensors").exists()
    config, sd = read_siglip_transformers_folder(tmp_path, tokenizer_name="some/tokenizer")
    assert config["preprocess_cfg"] == siglip_preprocess_cfg(None, 40)
    assert_parity(open_clip_from(config["model_cfg"], sd), hf_model, 40, 300, 12, "sharded folder -> open_clip")


def test_folder_tokenizer_defaults_to_the_folder_for_an_unknown_vocabulary(tmp_path):
    write_siglip_transformers_folder(tmp_path, {"model_cfg": TINY_CFG}, _tiny_oc_state())
    (tmp_path / "tokenizer.json").write_text("{}")
    config, _ = read_siglip_transformers_folder(tmp_path)
    assert config["model_cfg"]["text_cfg"]["hf_tokenizer_name"] == str(tmp_path)


def test_folder_without_weights_or_config_is_refused(tmp_path):
    with pytest.raises(ModelNotFoundError, match="has no config.json"):
        read_siglip_transformers_folder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(TINY_HF))
    with pytest.raises(ModelNotFoundError, match=r"has no model.safetensors .*found: \['config.json'\]"):
        read_siglip_transformers_folder(tmp_path, tokenizer_name="x")


def test_folder_writer_refuses_before_writing_anything(tmp_path):
    with pytest.raises(ConfigError, match=r"expected an open_clip config \{'model_cfg'"):
        write_siglip_transformers_folder(tmp_path / "a", TINY_CFG, _tiny_oc_state())
    bad = {"model_cfg": TINY_CFG, "preprocess_cfg": {"resize_mode": "shortest"}}
    with pytest.raises(ConfigError, match="only squashes"):
        write_siglip_transformers_folder(tmp_path / "b", bad, _tiny_oc_state())
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_module_imports_neither_transformers_nor_open_clip():
    code = ("import sys, maskclip.convert.siglip_transformers; "
            "assert not {'transformers', 'open_clip'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)
