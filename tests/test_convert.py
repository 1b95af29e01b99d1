"""Unit tests of maskclip.convert: key mapping, layout detection, config translation, errors.

Numerical agreement with the real open_clip / transformers / timm code is in test_parity.py.
"""
import copy
import json

import pytest
import torch

import maskclip
from maskclip import convert
from maskclip.errors import ConfigError, WeightsError
import factories as F

# Widths are multiples of 64 so that heads (width // 64, OpenAI's rule) are inferable from shapes.
UNIT = F.Arch("unit", image_size=32, patch_size=16, vision_width=128, vision_layers=2, vision_heads=2,
              text_width=64, text_layers=2, text_heads=1, context_length=16, embed_dim=32)
SLIP_LIKE = dict(act="gelu", norm_eps=1e-6, ln_pre=False, patch_bias=True)
RILS_LIKE = dict(SLIP_LIKE, pool="mean", pos_embed="sincos")


def native(seed=0, **vision):
    return F.random_maskclip(F.maskclip_config(UNIT, **vision), seed)


def slip_native(seed=0):
    model = native(seed, **SLIP_LIKE)
    model.config.text.act = "quick_gelu"  # SLIP's text tower is OpenAI's (QuickGELU, eps 1e-5)
    return model


def rils_native(seed=0):
    model = slip_native(seed)
    model = F.random_maskclip(_with_vision(model.config, pool="mean", pos_embed="sincos"), seed)
    with torch.no_grad():  # RILS has no key bias
        for block in model.visual.transformer.resblocks:
            w = block.attn.in_proj_bias.shape[0] // 3
            block.attn.in_proj_bias[w:2 * w] = 0
    return model


def _with_vision(config, **vision):
    c = copy.deepcopy(config)
    for k, v in vision.items():
        setattr(c.vision, k, v)
    return c


def assert_same_state(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), k


def config_dict(config):
    d = config.to_dict()
    d.pop("name")
    return d


def sd_of(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


# --- unwrap_checkpoint ---------------------------------------------------------------------

def test_unwrap_slip_style_checkpoint_strips_module_prefix_and_drops_non_tensors():
    sd = {"visual.cls_token": torch.zeros(1, 1, 4), "logit_scale": torch.tensor(1.0)}
    ckpt = {"epoch": 25, "args": {"model": "SLIP_VITB16"}, "best_acc1": 42.8,
            "optimizer": {"state": {}, "param_groups": []},
            "state_dict": {"module." + k: v for k, v in sd.items()}}
    assert_same_state(convert.unwrap_checkpoint(ckpt, "slip.pt"), sd)


@pytest.mark.parametrize("wrapper", ["model", "module", "state_dict"])
def test_unwrap_descends_into_each_wrapper_key(wrapper):
    sd = {"a": torch.ones(2), "b": torch.zeros(3)}
    assert_same_state(convert.unwrap_checkpoint({wrapper: sd, "step": 3}, "x"), sd)


def test_unwrap_keeps_a_flat_state_dict_and_drops_non_tensor_entries():
    out = convert.unwrap_checkpoint({"w": torch.ones(2), "note": "hello", "n": 3}, "x")
    assert list(out) == ["w"]


def test_unwrap_without_tensors_raises_weights_error_naming_source_and_keys():
    with pytest.raises(WeightsError, match=r"no tensors found in ckpt\.pt.*'epoch'"):
        convert.unwrap_checkpoint({"epoch": 1, "args": {"lr": 0.1}}, "ckpt.pt")


def test_unwrap_of_a_non_dict_raises_weights_error():
    with pytest.raises(WeightsError, match="list"):
        convert.unwrap_checkpoint([torch.ones(1)], "x")


# --- layouts: detection and exact round trips ----------------------------------------------

def _exports():
    """layout -> (native model, function native model -> that layout's state dict)."""
    return {
        "maskclip": (native, lambda m: sd_of(m)),
        "openai": (native, lambda m: convert.native_to_openai(sd_of(m))),
        "transformers": (native, lambda m: convert.native_to_transformers(sd_of(m))),
        "timm": (native, lambda m: convert.native_to_timm(m.config, sd_of(m))),
        "slip": (slip_native, lambda m: convert.native_to_slip(m.config, sd_of(m))),
        "rils": (rils_native, lambda m: convert.native_to_rils(m.config, sd_of(m))),
    }


@pytest.mark.parametrize("layout", convert.LAYOUTS)
def test_detect_layout_recognises_each_layout(layout):
    build, export = _exports()[layout]
    assert convert.detect_layout(export(build())) == layout


def test_detect_layout_of_unknown_keys_names_keys_seen_and_known_layouts():
    with pytest.raises(WeightsError) as e:
        convert.detect_layout({"encoder.weight": torch.ones(1), "decoder.bias": torch.ones(1)})
    msg = str(e.value)
    assert "encoder.weight" in msg and "decoder.bias" in msg
    for layout in convert.LAYOUTS:
        assert layout in msg


@pytest.mark.parametrize("layout", [x for x in convert.LAYOUTS if x != "timm"])
def test_to_native_round_trip_is_exact_for_weights_and_inferred_config(layout):
    build, export = _exports()[layout]
    model = build()
    act = None if layout in ("slip", "rils") else model.config.vision.act
    config, sd = convert.to_native(export(model), act=act)
    assert_same_state(sd, model.state_dict())
    assert config_dict(config) == config_dict(model.config)


def test_timm_round_trip_with_text_from_an_openai_state_dict_is_exact():
    model = native()
    vision = convert.native_to_timm(model.config, sd_of(model))
    text = convert.native_to_openai(sd_of(model))
    config, sd = convert.to_native(vision, text_sd=text, act="quick_gelu")
    assert_same_state(sd, model.state_dict())
    assert config_dict(config) == config_dict(model.config)


def test_open_clip_round_trip_is_exact_for_weights_and_config():
    model = native(ln_pre=False, pool="mean", pos_embed="sincos", norm_eps=1e-6)
    model.config.logit_scale_init = 1.5
    model.config.preprocess.mean, model.config.preprocess.interpolation = (0.5, 0.5, 0.5), "bilinear"
    oc_config, oc_sd = convert.to_open_clip(model.config, sd_of(model))
    config, sd = convert.from_open_clip(json.loads(json.dumps(oc_config)), oc_sd)
    assert_same_state(sd, model.state_dict())
    assert config_dict(config) == config_dict(model.config)


def test_transformers_round_trip_is_exact_for_weights_and_config():
    model = F.random_maskclip(F.maskclip_config(F.ODD_QUICKGELU))
    hf_config, hf_sd = convert.to_transformers(model.config, sd_of(model))
    config, sd = convert.from_transformers(json.loads(json.dumps(hf_config)), hf_sd)
    assert_same_state(sd, model.state_dict())
    assert config_dict(config) == config_dict(model.config)


# --- key mapping facts ---------------------------------------------------------------------

def test_openai_layout_moves_only_the_text_tower_out_of_text_prefix():
    sd = sd_of(native())
    oa = convert.native_to_openai(sd)
    assert {k for k in oa if k.startswith("visual.")} == {k for k in sd if k.startswith("visual.")}
    assert torch.equal(oa["token_embedding.weight"], sd["text.token_embedding.weight"])
    assert torch.equal(oa["transformer.resblocks.1.mlp.c_proj.bias"], sd["text.transformer.resblocks.1.mlp.c_proj.bias"])
    assert not any(k.startswith("text.") for k in oa)


def test_transformers_layout_splits_in_proj_rows_as_q_k_v_and_transposes_projections():
    sd = sd_of(native())
    hf = convert.native_to_transformers(sd)
    w, b = sd["visual.transformer.resblocks.1.attn.in_proj_weight"], sd["visual.transformer.resblocks.1.attn.in_proj_bias"]
    d = w.shape[1]
    for i, name in enumerate("qkv"):
        assert torch.equal(hf[f"vision_model.encoder.layers.1.self_attn.{name}_proj.weight"], w[i * d:(i + 1) * d])
        assert torch.equal(hf[f"vision_model.encoder.layers.1.self_attn.{name}_proj.bias"], b[i * d:(i + 1) * d])
    assert torch.equal(hf["visual_projection.weight"], sd["visual.proj"].T)
    assert torch.equal(hf["text_projection.weight"], sd["text.text_projection"].T)
    assert torch.equal(hf["vision_model.pre_layrnorm.weight"], sd["visual.ln_pre.weight"])


def test_transformers_import_drops_position_ids_buffers():
    hf = convert.native_to_transformers(sd_of(native()))
    hf["text_model.embeddings.position_ids"] = torch.arange(16)[None]
    hf["vision_model.embeddings.position_ids"] = torch.arange(5)[None]
    assert "position_ids" not in " ".join(convert.transformers_to_native(hf))


def test_timm_layout_matches_timms_own_openai_clip_conversion():
    from timm.models.vision_transformer import _convert_openai_clip

    model = native()
    ours = convert.native_to_timm(model.config, sd_of(model))
    timms = _convert_openai_clip(convert.native_to_openai(sd_of(model)), None)
    assert_same_state(ours, timms)


def test_rils_layout_stores_q_and_v_biases_and_refuses_a_non_zero_key_bias():
    model = rils_native()
    sd = sd_of(model)
    rils = convert.native_to_rils(model.config, sd)
    bias = sd["visual.transformer.resblocks.0.attn.in_proj_bias"]
    w = bias.shape[0] // 3
    assert torch.equal(rils["visual.blocks.0.attn.q_bias"], bias[:w])
    assert torch.equal(rils["visual.blocks.0.attn.v_bias"], bias[2 * w:])
    assert "visual.blocks.0.attn.qkv.bias" not in rils
    sd["visual.transformer.resblocks.0.attn.in_proj_bias"][w] = 1.0
    with pytest.raises(WeightsError, match="key bias"):
        convert.native_to_rils(model.config, sd)


def test_rils_import_drops_the_mae_decoder_and_keeps_sincos_positions():
    model = rils_native()
    rils = convert.native_to_rils(model.config, sd_of(model))
    rils.update({"visual.mask_token": torch.zeros(1, 1, 128), "visual.decoder_embed.weight": torch.zeros(128, 128),
                 "visual.decoder_blocks.0.norm1.weight": torch.ones(128),
                 "visual.decoder_pos_embed": torch.zeros(1, 5, 128), "visual.decoder_pred.bias": torch.zeros(768)})
    config, sd = convert.from_rils(rils)
    assert_same_state(sd, model.state_dict())
    assert (config.vision.pool, config.vision.pos_embed, config.vision.norm_eps) == ("mean", "sincos", 1e-6)
    assert (config.vision.act, config.text.act) == ("gelu", "quick_gelu")


def test_rils_position_embedding_that_is_not_sincos_is_kept_as_learned():
    model = rils_native()
    rils = convert.native_to_rils(model.config, sd_of(model))
    rils["visual.pos_embed"] = rils["visual.pos_embed"] + 0.01
    config, _ = convert.from_rils(rils)
    assert config.vision.pos_embed == "learned"


def test_maskclip_sincos_table_equals_open_clips_mae_table():
    from open_clip.pos_embed import get_2d_sincos_pos_embed

    theirs = torch.from_numpy(get_2d_sincos_pos_embed(128, 7, cls_token=True)).float()
    assert torch.allclose(maskclip.layers.sincos_2d(128, (7, 7)), theirs, atol=1e-6)


def test_slip_import_drops_simclr_head_and_defaults_vit_s_heads_to_12():
    arch = UNIT.with_(vision_width=384, vision_heads=12)
    model = F.random_maskclip(F.maskclip_config(arch, **SLIP_LIKE))
    model.config.text.act = "quick_gelu"
    slip = convert.native_to_slip(model.config, sd_of(model))
    slip.update({"image_mlp.layer1.weight": torch.zeros(4, 384), "image_mlp.bn1.running_mean": torch.zeros(4)})
    config, sd = convert.from_slip(slip)
    assert_same_state(sd, model.state_dict())
    assert config.vision.heads == 12
    assert (config.vision.ln_pre, config.vision.patch_bias, config.vision.norm_eps) == (False, True, 1e-6)


def test_export_to_slip_or_timm_of_a_mean_pooled_model_raises_config_error():
    model = rils_native()
    with pytest.raises(ConfigError, match="pool"):
        convert.native_to_slip(model.config, sd_of(model))
    with pytest.raises(ConfigError, match="pool"):
        convert.native_to_timm(model.config, sd_of(model))


# --- to_native: inference and its errors ---------------------------------------------------

def test_to_native_of_timm_weights_without_text_raises_weights_error_explaining_text_sd():
    model = native()
    with pytest.raises(WeightsError, match="text_sd"):
        convert.to_native(convert.native_to_timm(model.config, sd_of(model)))


def test_to_native_rejects_text_sd_for_layouts_with_their_own_text_tower():
    model = native()
    with pytest.raises(WeightsError, match="text_sd"):
        convert.to_native(sd_of(model), text_sd=sd_of(model))


def test_from_timm_defaults_to_gelu_and_eps_by_norm_pre_and_honours_act_override():
    model = native()
    vision, text = convert.native_to_timm(model.config, sd_of(model)), convert.native_to_openai(sd_of(model))
    config, _ = convert.from_timm(vision, text)
    assert (config.vision.act, config.text.act, config.vision.norm_eps) == ("gelu", "quick_gelu", 1e-5)
    config, _ = convert.from_timm(vision, text, act=("quick_gelu", "gelu"))
    assert (config.vision.act, config.text.act) == ("quick_gelu", "gelu")
    plain = {k: v for k, v in vision.items() if not k.startswith("norm_pre.")}
    assert convert.from_timm(plain, text)[0].vision.norm_eps == 1e-6


def test_from_timm_refuses_a_head_with_bias_or_no_head():
    model = native()
    vision, text = convert.native_to_timm(model.config, sd_of(model)), convert.native_to_openai(sd_of(model))
    with pytest.raises(WeightsError, match="non-zero bias"):
        convert.from_timm({**vision, "head.bias": torch.ones_like(vision["head.bias"])}, text)
    with pytest.raises(WeightsError, match="head.weight"):
        convert.from_timm({k: v for k, v in vision.items() if not k.startswith("head.")}, text)


def test_from_timm_without_logit_scale_uses_the_clip_initial_value():
    model = native()
    vision = convert.native_to_timm(model.config, sd_of(model))
    text = {k: v for k, v in convert.native_to_openai(sd_of(model)).items() if k != "logit_scale"}
    _, sd = convert.from_timm(vision, text)
    assert sd["logit_scale"].item() == pytest.approx(2.6592600)


def test_to_native_cannot_guess_heads_of_a_width_not_multiple_of_64_and_says_what_to_pass():
    model = F.random_maskclip(F.maskclip_config(F.ODD_GELU))
    sd = convert.native_to_openai(sd_of(model))
    with pytest.raises(WeightsError, match="vision_heads"):
        convert.to_native(sd)
    config, _ = convert.to_native(sd, vision_heads=3, text_heads=4, act="gelu")
    assert config_dict(config) == config_dict(model.config)


def test_to_native_act_override_accepts_a_name_or_a_pair_and_refuses_anything_else():
    sd = convert.native_to_openai(sd_of(native()))
    assert convert.to_native(sd)[0].vision.act == "quick_gelu"
    assert convert.to_native(sd, act="gelu")[0].text.act == "gelu"
    assert convert.to_native(sd, act=("gelu", "quick_gelu"))[0].text.act == "quick_gelu"
    with pytest.raises(ConfigError, match="act"):
        convert.to_native(sd, act=3)


def test_openai_import_drops_jit_scalars_and_reports_unexpected_and_missing_keys():
    sd = convert.native_to_openai(sd_of(native()))
    sd.update(input_resolution=torch.tensor(224), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
    convert.openai_to_native(sd)
    with pytest.raises(WeightsError, match=r"unexpected keys: \['visual.extra.weight'\]"):
        convert.openai_to_native({**sd, "visual.extra.weight": torch.ones(1)})
    del sd["ln_final.bias"]
    with pytest.raises(WeightsError, match=r"missing keys: \['ln_final.bias'\]"):
        convert.openai_to_native(sd)


def test_resnet_openai_checkpoint_raises_weights_error_naming_resnet():
    sd = {"visual.layer1.0.conv1.weight": torch.ones(1), "token_embedding.weight": torch.ones(2, 2)}
    with pytest.raises(WeightsError, match="ResNet"):
        convert.to_native(sd)


def test_mismatched_projection_sizes_raise_weights_error():
    sd = convert.native_to_openai(sd_of(native()))
    sd["text_projection"] = torch.zeros(64, 16)
    with pytest.raises(WeightsError, match="32 dims but the text projection to 16"):
        convert.to_native(sd)


# --- open_clip configs ---------------------------------------------------------------------

def oc_config(arch=UNIT, **preprocess):
    return {"model_cfg": F.open_clip_model_cfg(arch), "preprocess_cfg": F.open_clip_preprocess_cfg(**preprocess)}


def oc_weights(arch=UNIT):
    return convert.native_to_openai(sd_of(F.random_maskclip(F.maskclip_config(arch))))


REFUSED = [
    ("vision_cfg", "timm_model_name", "vit_base_patch16_224"),
    ("vision_cfg", "layers", [3, 4, 6, 3]),
    ("vision_cfg", "attentional_pool", True),
    ("vision_cfg", "ls_init_value", 1e-4),
    ("vision_cfg", "final_ln_after_pool", True),
    ("vision_cfg", "pool_type", "none"),
    ("vision_cfg", "pos_embed_type", "rope"),
    ("vision_cfg", "block_type", "custom"),
    ("vision_cfg", "qk_norm", True),
    ("vision_cfg", "act_kwargs", {"approximate": "tanh"}),
    ("vision_cfg", "norm_kwargs", {"eps": 1e-6, "elementwise_affine": False}),
    ("vision_cfg", "image_size", [224, 192]),
    ("vision_cfg", "some_new_field", 1),
    ("text_cfg", "hf_model_name", "xlm-roberta-base"),
    ("text_cfg", "final_ln_after_pool", True),
    ("text_cfg", "proj_type", "none"),
    ("text_cfg", "ls_init_value", 1e-4),
    ("text_cfg", "embed_cls", True),
    ("text_cfg", "scaled_cosine_attn", True),
    ("text_cfg", "pool_type", "first"),
    ("text_cfg", "act_kwargs", {"approximate": "none", "inplace": True}),
    (None, "multimodal_cfg", {"width": 512}),
    (None, "some_new_field", True),
]


@pytest.mark.parametrize("section,name,value", REFUSED, ids=lambda x: str(x))
def test_from_open_clip_refuses_unsupported_fields_naming_them(section, name, value):
    cfg = oc_config()
    (cfg["model_cfg"][section] if section else cfg["model_cfg"])[name] = value
    with pytest.raises(ConfigError, match=name):
        convert.from_open_clip(cfg, oc_weights())


@pytest.mark.parametrize("name,value", [("resize_mode", "crop"), ("fill_color", 255), ("interpolation", "random"),
                                        ("mode", "L")])
def test_from_open_clip_refuses_unsupported_preprocessing(name, value):
    cfg = oc_config()
    cfg["preprocess_cfg"][name] = value
    if name == "fill_color":  # used only to pad, i.e. with resize_mode "longest"
        cfg["preprocess_cfg"]["resize_mode"] = "longest"
    with pytest.raises(ConfigError, match=name):
        convert.from_open_clip(cfg, oc_weights())


def test_from_open_clip_accepts_training_only_and_default_valued_fields():
    cfg = oc_config()
    cfg["model_cfg"]["vision_cfg"].update(patch_dropout=0.5, ls_init_value=None, attentional_pool=False,
                                          timm_pool="avg", output_tokens=False, block_type="default")
    cfg["model_cfg"]["text_cfg"].update(pool_type="argmax", proj_type="linear", pad_id=0, eos_id=2)
    cfg["model_cfg"].update(custom_text=False, init_logit_bias=None, output_dict=True)
    cfg["preprocess_cfg"].update(size=224, mode="RGB", fill_color=0)
    config, _ = convert.from_open_clip(cfg, oc_weights())
    assert config.vision.heads == 2 and config.preprocess.image_size == UNIT.image_size


def test_from_open_clip_reads_siglip_text_options_and_the_logit_bias():
    """Issue 12: these were refused; SigLIP's text tower and sigmoid bias are now built (tests/test_families.py)."""
    cfg = oc_config(UNIT.with_(quick_gelu=False))
    cfg["model_cfg"]["text_cfg"].update(no_causal_mask=True, pool_type="last", proj_bias=True,
                                        hf_tokenizer_name="timm/ViT-B-16-SigLIP", tokenizer_kwargs={"clean": "canonicalize"},
                                        act_kwargs={"approximate": "tanh"})
    cfg["model_cfg"]["init_logit_bias"] = -10.0
    config, _ = convert.from_open_clip(cfg, {"text.token_embedding.weight": torch.zeros(1)})
    t = config.text
    assert (t.causal, t.pool, t.proj_bias, t.act, config.logit_bias_init) == (False, "last", True, "gelu_tanh", -10.0)
    assert (t.hf_tokenizer_name, t.tokenizer_kwargs) == ("timm/ViT-B-16-SigLIP", {"clean": "canonicalize"})


def test_from_open_clip_honours_activation_heads_eps_structure_and_preprocessing():
    arch = UNIT.with_(quick_gelu=False, eps=1e-6, vision_heads=4,
                      open_clip_vision={"no_ln_pre": True, "pool_type": "avg", "pos_embed_type": "sin_cos_2d"})
    cfg = oc_config(arch, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), interpolation="bilinear",
                    resize_mode="squash")
    cfg["model_cfg"]["init_logit_scale"] = 1.25
    weights = oc_weights(arch.with_(quick_gelu=True))
    config, _ = convert.from_open_clip(cfg, {k: v for k, v in weights.items() if not k.startswith("visual.ln_pre")})
    v, t, pp = config.vision, config.text, config.preprocess
    assert (v.act, t.act, v.norm_eps, t.norm_eps, v.heads) == ("gelu", "gelu", 1e-6, 1e-6, 4)
    assert (v.ln_pre, v.pool, v.pos_embed) == (False, "mean", "sincos")
    assert (pp.mean, pp.std, pp.interpolation, pp.resize_mode) == ((0.5,) * 3, (0.25,) * 3, "bilinear", "squash")
    assert config.logit_scale_init == 1.25


def test_from_open_clip_accepts_custom_text_layout_and_nonscalar_logit_scale():
    model = native()
    sd = sd_of(model)
    sd["logit_scale"] = sd["logit_scale"].reshape(1)
    cfg = oc_config()
    cfg["model_cfg"].update(custom_text=True, nonscalar_logit_scale=True)
    _, out = convert.from_open_clip(cfg, sd)
    assert_same_state(out, model.state_dict())


def test_to_open_clip_refuses_what_open_clip_cannot_express():
    model = native()
    config = copy.deepcopy(model.config)
    config.text.act = "gelu"
    with pytest.raises(ConfigError, match="one activation"):
        convert.to_open_clip(config, sd_of(model))
    biased = native(patch_bias=True)
    with pytest.raises(ConfigError, match="patch_bias"):
        convert.to_open_clip(biased.config, sd_of(biased))
    config = copy.deepcopy(model.config)
    config.preprocess.image_size = 48
    with pytest.raises(ConfigError, match="preprocess image_size is 48"):
        convert.to_open_clip(config, sd_of(model))


def test_to_open_clip_writes_a_config_open_clip_itself_accepts():
    from open_clip.model import CLIP

    model = native(ln_pre=False, pool="mean", norm_eps=1e-6)
    oc_cfg, oc_sd = convert.to_open_clip(model.config, sd_of(model))
    oc = CLIP(**oc_cfg["model_cfg"])
    oc.load_state_dict(oc_sd, strict=True)
    assert oc.visual.pool_type == "avg" and isinstance(oc.visual.ln_pre, torch.nn.Identity)


# --- transformers configs ------------------------------------------------------------------

def test_to_transformers_refuses_what_clipmodel_cannot_express():
    for vision, match in ((dict(ln_pre=False), "pre_layrnorm"), (dict(patch_bias=True), "patch"),
                          (dict(pool="mean"), "pools"), (dict(pos_embed="sincos"), "position")):
        model = native(**vision)
        with pytest.raises(ConfigError, match=match):
            convert.to_transformers(model.config, sd_of(model))


def _hf(model=None):
    model = model or native()
    cfg, sd = convert.to_transformers(model.config, sd_of(model))
    return json.loads(json.dumps(cfg)), sd


@pytest.mark.parametrize("change,match", [
    (lambda c: c.update(model_type="siglip"), "model_type"),
    (lambda c: c["text_config"].update(hidden_act="gelu_new"), "hidden_act"),
    (lambda c: c["vision_config"].update(hidden_act="relu"), "hidden_act"),
    (lambda c: c["text_config"].update(eos_token_id=49406), "eos_token_id"),
    (lambda c: c["vision_config"].update(num_channels=1), "num_channels"),
    # float ratios cannot store every integer MLP width: int(11 * (15 / 11)) == 14
    (lambda c: c["vision_config"].update(hidden_size=11, num_attention_heads=1, intermediate_size=15), "MLP width"),
])
def test_from_transformers_refuses_configs_maskclip_would_compute_differently(change, match):
    cfg, sd = _hf()
    change(cfg)
    with pytest.raises(ConfigError, match=match):
        convert.from_transformers(cfg, sd)


@pytest.mark.parametrize("field,value,match", [
    ("image_size", [224, 192], r"transformers vision_config\.image_size = \[224, 192\] is not square"),
    ("patch_size", "16", r"transformers vision_config\.patch_size must be an integer"),
])
def test_from_transformers_size_errors_name_the_transformers_field(field, value, match):
    cfg, sd = _hf()
    cfg["vision_config"][field] = value
    with pytest.raises(ConfigError, match=match):
        convert.from_transformers(cfg, sd)


def test_from_transformers_accepts_legacy_eos_id_and_uses_transformers_defaults_for_missing_fields():
    cfg, sd = _hf(F.random_maskclip(F.maskclip_config(F.VIT_B_16.with_(vision_layers=1, text_layers=1))))
    cfg["text_config"] = {"eos_token_id": 2, "num_hidden_layers": 1}
    cfg["vision_config"] = {"patch_size": 16, "num_hidden_layers": 1}
    del cfg["projection_dim"]
    config, _ = convert.from_transformers(cfg, sd)
    assert (config.vision.width, config.vision.heads, config.text.width, config.text.heads) == (768, 12, 512, 8)
    assert (config.embed_dim, config.vision.act, config.text.context_length) == (512, "quick_gelu", 77)


def test_transformers_preprocessor_config_matches_clip_image_processor_conventions():
    config = F.maskclip_config(UNIT)
    pp = convert.transformers_preprocessor_config(config)
    assert pp["size"] == {"shortest_edge": 32} and pp["crop_size"] == {"height": 32, "width": 32}
    assert (pp["resample"], pp["do_center_crop"], pp["image_processor_type"]) == (3, True, "CLIPImageProcessor")
    assert pp["image_mean"] == list(F.OPENAI_MEAN) and pp["image_std"] == list(F.OPENAI_STD)
    config.preprocess.resize_mode, config.preprocess.interpolation = "squash", "bilinear"
    pp = convert.transformers_preprocessor_config(config)
    assert pp["size"] == {"height": 32, "width": 32} and not pp["do_center_crop"] and pp["resample"] == 2


# --- through maskclip.load -----------------------------------------------------------------

def test_load_of_a_folder_whose_config_does_not_match_the_weights_lists_keys_and_shapes(tmp_path):
    model = native()
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["vision"]["layers"] = 3
    cfg["text"]["width"] = 128
    cfg["text"]["heads"] = 2
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightsError) as e:
        maskclip.load(tmp_path)
    msg = str(e.value)
    assert "missing keys" in msg and "visual.transformer.resblocks.2." in msg
    assert "shape mismatches" in msg and "checkpoint [64] vs model [128]" in msg


def test_load_of_a_single_openai_layout_safetensors_file_infers_the_config(tmp_path):
    from safetensors.torch import save_file

    model = native()
    save_file(convert.native_to_openai(sd_of(model)), str(tmp_path / "clip.safetensors"))
    loaded = maskclip.load(tmp_path / "clip.safetensors")
    assert config_dict(loaded.config) == config_dict(model.config)
    x = F.images(UNIT)
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(x), model.encode_image(x))
