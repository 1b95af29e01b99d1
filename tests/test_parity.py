"""Parity with the real packages: open_clip, transformers and timm compute what maskclip computes.

Every model has random weights (random norms and biases too); nothing is downloaded. Hub repos
are written into a Hugging Face cache under tmp_path and read offline. Features must agree to
1e-5 (max abs difference) in fp32; the differences seen are printed (``pytest -s``).
"""
from functools import partial

import pytest
import torch

import maskclip
from maskclip import build, convert, hub
from maskclip.errors import WeightsError
import factories as F

TOL = 1e-5
# A ViT-B/16-sized model and small odd ones (non-power-of-two heads, GELU vs QuickGELU, short contexts,
# MLP ratio 2.5, eps 1e-6); all three are expressible in open_clip and transformers alike.
ARCHS = [F.VIT_B_16, F.ODD_GELU, F.ODD_QUICKGELU]
OPEN_CLIP_ARCHS = ARCHS + [F.OPEN_CLIP_OPTIONS]
ids = lambda a: a.name  # noqa: E731

DIFFS = {}


@pytest.fixture(scope="module", autouse=True)
def report_diffs():
    yield
    if DIFFS:
        width = max(map(len, DIFFS))
        print("\nmax |difference| per config and direction (image, text):")
        for key, (img, txt) in sorted(DIFFS.items()):
            print(f"  {key:<{width}}  {img:.2e}  {txt:.2e}")


def check(key, image_pair, text_pair):
    """Record and assert max |a - b| of (image features) and (text features)."""
    di = (image_pair[0] - image_pair[1]).abs().max().item()
    dt = (text_pair[0] - text_pair[1]).abs().max().item()
    DIFFS[key] = (di, dt)
    assert image_pair[0].shape == image_pair[1].shape and text_pair[0].shape == text_pair[1].shape
    assert di <= TOL, f"{key}: image features differ by {di}"
    assert dt <= TOL, f"{key}: text features differ by {dt}"


@pytest.fixture
def cache(monkeypatch, tmp_path):
    return F.offline_hub(monkeypatch, tmp_path / "hf_cache")


@pytest.fixture(autouse=True)
def no_grad():
    with torch.no_grad():
        yield


def open_clip_tokens(arch):
    import open_clip

    return open_clip.tokenize(F.PROMPTS, context_length=arch.context_length)


# --- open_clip -> maskclip ------------------------------------------------------------------

@pytest.mark.parametrize("arch", OPEN_CLIP_ARCHS, ids=ids)
def test_open_clip_hub_repo_loads_with_identical_features(arch, cache, tmp_path):
    cfg = F.open_clip_model_cfg(arch)
    oc = F.random_open_clip(cfg)
    F.write_hub_cache(cache, "org/name", F.write_open_clip_folder(tmp_path / "repo", oc, cfg))
    model = maskclip.load("hf-hub:org/name", cache_dir=cache)
    assert (model.config.vision.act, model.config.text.act) == (arch.act, arch.act)
    x, tokens = F.images(arch), open_clip_tokens(arch)
    check(f"{arch.name}: open_clip hub -> maskclip", (model.encode_image(x), oc.encode_image(x)),
          (model.encode_text(F.PROMPTS), oc.encode_text(tokens)))


# --- transformers -> maskclip ---------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS, ids=ids)
def test_transformers_folder_loads_with_identical_features(arch, tmp_path):
    hf = F.random_transformers(arch)
    hf.save_pretrained(tmp_path)
    model = maskclip.load(tmp_path)
    x = F.images(arch)
    tokens = model.tokenize(F.PROMPTS)
    check(f"{arch.name}: transformers -> maskclip",
          (model.encode_image(x), F.features(hf.get_image_features(pixel_values=x))),
          (model.encode_text(tokens), F.features(hf.get_text_features(input_ids=tokens))))


# --- maskclip -> open_clip ------------------------------------------------------------------

@pytest.mark.parametrize("arch", OPEN_CLIP_ARCHS, ids=ids)
def test_open_clip_export_loads_in_open_clip_local_dir_with_identical_features(arch, tmp_path):
    import open_clip

    model = F.random_maskclip(F.maskclip_config(arch))
    model.save_pretrained(tmp_path, format="open_clip")
    oc, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + str(tmp_path))
    oc.eval()
    x = F.images(arch)
    check(f"{arch.name}: maskclip -> open_clip (local-dir)", (oc.encode_image(x), model.encode_image(x)),
          (oc.encode_text(open_clip_tokens(arch)), model.encode_text(F.PROMPTS)))
    normalize = preprocess.transforms[-1]
    assert tuple(normalize.mean) == model.config.preprocess.mean and tuple(normalize.std) == model.config.preprocess.std


def test_open_clip_export_loads_in_open_clip_from_a_hub_cache(cache, tmp_path):
    import open_clip

    arch = F.ODD_GELU
    model = F.random_maskclip(F.maskclip_config(arch))
    model.save_pretrained(tmp_path / "export", format="open_clip")
    F.write_hub_cache(cache, "org/exported", tmp_path / "export")
    oc, _ = open_clip.create_model_from_pretrained("hf-hub:org/exported", cache_dir=str(cache))
    oc.eval()
    x = F.images(arch)
    check(f"{arch.name}: maskclip -> open_clip (hf-hub)", (oc.encode_image(x), model.encode_image(x)),
          (oc.encode_text(open_clip_tokens(arch)), model.encode_text(F.PROMPTS)))


# --- maskclip -> transformers ---------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS, ids=ids)
def test_transformers_export_loads_in_transformers_with_identical_features(arch, tmp_path):
    from transformers import CLIPModel

    model = F.random_maskclip(F.maskclip_config(arch))
    model.save_pretrained(tmp_path, format="transformers")
    hf = CLIPModel.from_pretrained(tmp_path).eval()
    x = F.images(arch)
    tokens = model.tokenize(F.PROMPTS)
    check(f"{arch.name}: maskclip -> transformers",
          (F.features(hf.get_image_features(pixel_values=x)), model.encode_image(x)),
          (F.features(hf.get_text_features(input_ids=tokens)), model.encode_text(tokens)))


def test_transformers_export_tokenizer_and_processor_load_and_match(tmp_path):
    from transformers import CLIPModel, CLIPProcessor, CLIPTokenizer

    arch = F.ODD_QUICKGELU
    model = F.random_maskclip(F.maskclip_config(arch))
    model.save_pretrained(tmp_path, format="transformers")
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path)
    hf_ids = tokenizer(F.PROMPTS, padding="max_length", max_length=arch.context_length, return_tensors="pt").input_ids
    ours = model.tokenize(F.PROMPTS)
    for row_hf, row in zip(hf_ids, ours):  # transformers pads with <|endoftext|>, OpenAI CLIP with 0
        end = int(row.argmax()) + 1
        assert row_hf[:end].tolist() == row[:end].tolist()
    hf = CLIPModel.from_pretrained(tmp_path).eval()
    check(f"{arch.name}: maskclip -> transformers (its tokenizer)", (torch.zeros(1), torch.zeros(1)),
          (F.features(hf.get_text_features(input_ids=hf_ids)), model.encode_text(F.PROMPTS)))
    processor = CLIPProcessor.from_pretrained(tmp_path)
    assert processor.image_processor.crop_size == {"height": arch.image_size, "width": arch.image_size}
    assert list(processor.image_processor.image_mean) == list(model.config.preprocess.mean)


# --- registry names -------------------------------------------------------------------------

def _registry_repo(cache, tmp_path):
    """A tiny random open_clip model stored as the repo of 'openai-vitb16', its config without quick_gelu."""
    arch = F.TINY.with_(quick_gelu=False)
    cfg = F.open_clip_model_cfg(arch)
    oc = F.random_open_clip(cfg)
    snapshot = F.write_hub_cache(cache, hub.model_info("openai-vitb16")["repo"],
                                 F.write_open_clip_folder(tmp_path / "repo", oc, cfg))
    return arch, oc, snapshot


def test_registry_name_loads_offline_from_the_cache_with_quick_gelu_forced(cache, tmp_path, monkeypatch):
    from open_clip.model import CLIP

    arch, oc, snapshot = _registry_repo(cache, tmp_path)
    sha = F._sha256((snapshot / "open_clip_model.safetensors").resolve())
    monkeypatch.setitem(hub.registry()["openai-vitb16"], "sha256", sha)
    model = maskclip.load("openai-vitb16", cache_dir=cache)
    assert (model.config.vision.act, model.config.text.act, model.config.name) == ("quick_gelu", "quick_gelu",
                                                                                  "openai-vitb16")
    reference = CLIP(**{**F.open_clip_model_cfg(arch), "quick_gelu": True}).eval()
    reference.load_state_dict(oc.state_dict())
    x = F.images(arch)
    check("tiny: registry openai-vitb16 (QuickGELU forced)", (model.encode_image(x), reference.encode_image(x)),
          (model.encode_text(F.PROMPTS), reference.encode_text(open_clip_tokens(arch))))
    assert (model.encode_image(x) - oc.encode_image(x)).abs().max() > 1e-4  # GELU would differ visibly


def test_registry_sha256_mismatch_raises_weights_error(cache, tmp_path, monkeypatch):
    _registry_repo(cache, tmp_path)
    monkeypatch.setitem(hub.registry()["openai-vitb16"], "sha256", "0" * 64)
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        maskclip.load("openai-vitb16", cache_dir=cache)


# --- timm, SLIP and RILS image towers -------------------------------------------------------

def _loaded(config, sd):
    model = maskclip.MaskCLIP(config).eval()
    build.load_state_dict(model, sd)
    return model


@pytest.mark.parametrize("quick_gelu", [True, False], ids=["quick_gelu", "gelu"])
def test_timm_clip_vit_converts_to_identical_image_features(quick_gelu):
    arch = F.ODD_QUICKGELU.with_(eps=1e-5, quick_gelu=quick_gelu)  # eps 1e-5: timm's CLIP ViTs
    vit = F.timm_clip_vit(arch)
    cfg = F.open_clip_model_cfg(arch)
    oc = F.random_open_clip(cfg, seed=1)
    config, sd = convert.to_native(vit.state_dict(), text_sd=oc.state_dict(), act=arch.act,
                                   vision_heads=arch.vision_heads, text_heads=arch.text_heads)
    model = _loaded(config, sd)
    x = F.images(arch)
    check(f"timm CLIP ViT ({arch.act}) -> maskclip", (model.encode_image(x), vit(x)),
          (model.encode_text(F.PROMPTS), oc.encode_text(open_clip_tokens(arch))))


SLIP_ARCH = F.Arch("slip-like", image_size=32, patch_size=16, vision_width=128, vision_layers=2, vision_heads=2,
                   text_width=128, text_layers=2, text_heads=2, context_length=77, embed_dim=32)


def _openai_text(arch, seed=1):
    """A random OpenAI-named text tower (open_clip CLIP with QuickGELU, as SLIP's and RILS's) and its model."""
    oc = F.random_open_clip(F.open_clip_model_cfg(arch), seed=seed)
    return oc, {k: v for k, v in oc.state_dict().items() if not k.startswith("visual.")}


def test_slip_checkpoint_loads_with_identical_features_to_timm_vit_and_image_projection(tmp_path):
    arch = SLIP_ARCH
    vit = F.timm_plain_vit(arch)  # timm's vit_base_patch16_224 code, resized
    oc, text = _openai_text(arch)
    projection = torch.randn(arch.vision_width, arch.embed_dim) * arch.vision_width ** -0.5
    sd = {**{f"visual.{k}": v for k, v in vit.state_dict().items()}, **text, "image_projection": projection,
          "image_mlp.layer1.weight": torch.zeros(8, arch.vision_width), "image_mlp.bn1.running_var": torch.ones(8)}
    checkpoint = {"epoch": 24, "args": {"model": "SLIP_VITB16"}, "optimizer": {"state": {}},
                  "state_dict": {f"module.{k}": v for k, v in sd.items()}}
    torch.save(checkpoint, tmp_path / "slip.pt")
    model = maskclip.load(tmp_path / "slip.pt", allow_pickle=True)
    assert (model.config.vision.act, model.config.vision.norm_eps, model.config.vision.ln_pre) == ("gelu", 1e-6, False)
    x = F.images(arch)
    check("SLIP (timm vit_base_patch16_224) -> maskclip", (model.encode_image(x), vit(x) @ projection),
          (model.encode_text(F.PROMPTS), oc.encode_text(open_clip_tokens(arch))))


def _rils_reference_vit(arch, seed=0):
    """timm's ViT set up as RILS's MAE encoder: q/v biases only (k bias 0), sin-cos positions,
    LayerNorm eps 1e-6, GELU, no pre-norm, final norm on every token then the mean of patch tokens."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    vit = VisionTransformer(img_size=arch.image_size, patch_size=arch.patch_size, embed_dim=arch.vision_width,
                            depth=arch.vision_layers, num_heads=arch.vision_heads, num_classes=0, global_pool="avg",
                            fc_norm=False, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6))
    vit = F._perturb(vit.eval(), seed)
    grid = arch.image_size // arch.patch_size
    with torch.no_grad():
        vit.pos_embed.copy_(maskclip.layers.sincos_2d(arch.vision_width, (grid, grid))[None])
        for block in vit.blocks:
            block.attn.qkv.bias[arch.vision_width:2 * arch.vision_width] = 0
    return vit


def _rils_keys(vit_sd, width):
    """timm names -> RILS's (hustvl/RILS models_rils.py): qkv without bias + q_bias, v_bias; decoder added."""
    out = {}
    for k, v in vit_sd.items():
        if k.endswith("attn.qkv.bias"):
            out[k.replace("qkv.bias", "q_bias")], out[k.replace("qkv.bias", "v_bias")] = v[:width], v[2 * width:]
        else:
            out[k] = v
    out.update({"mask_token": torch.zeros(1, 1, width), "decoder_embed.weight": torch.randn(width, width),
                "decoder_pos_embed": torch.zeros(1, 5, width), "decoder_blocks.0.attn.q_bias": torch.zeros(width),
                "decoder_norm.weight": torch.ones(width), "decoder_pred.weight": torch.randn(width, width)})
    return {f"visual.{k}": v for k, v in out.items()}


def test_rils_checkpoint_loads_with_identical_features_to_its_mae_encoder(tmp_path):
    from safetensors.torch import save_file

    arch = SLIP_ARCH
    vit = _rils_reference_vit(arch)
    oc, text = _openai_text(arch)
    projection = torch.randn(arch.vision_width, arch.embed_dim) * arch.vision_width ** -0.5
    save_file({**_rils_keys(vit.state_dict(), arch.vision_width), **text, "image_projection": projection},
              str(tmp_path / "rils.safetensors"))
    model = maskclip.load(tmp_path / "rils.safetensors")
    v = model.config.vision
    assert (v.pool, v.pos_embed, v.patch_bias, v.ln_pre, v.norm_eps) == ("mean", "sincos", True, False, 1e-6)
    x = F.images(arch)
    check("RILS (MAE ViT, mean pool) -> maskclip", (model.encode_image(x), vit(x) @ projection),
          (model.encode_text(F.PROMPTS), oc.encode_text(open_clip_tokens(arch))))
