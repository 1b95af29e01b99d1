"""ConvNeXt CLIPs (open_clip's ``convnext_*``, timm towers) against the real open_clip, random weights, fp32.

open_clip builds them as ``CLIP`` with a ``TimmModel`` image tower (``timm_pool: ""``, the network's own
average pool; ``timm_proj`` linear or mlp) and its usual text tower at the top level. Each model gets
random norms and biases, is written in the open_clip Hub layout into an offline Hub cache, and
loaded with ``maskclip.load``; image and text embeddings must agree to 1e-5 (relative), also after
``save_pretrained(format="open_clip")``. Then the dense features (the per-location head and its
invariant), the methods a ConvNeXt refuses, open_clip names, ONNX and what transformers cannot hold.
"""
from __future__ import annotations

import json

import pytest
import torch

import maskclip
from maskclip import dense
from maskclip.errors import ConfigError, InputError
from maskclip.timm_conv import TimmConvTower
import factories as F

open_clip = pytest.importorskip("open_clip")
pytest.importorskip("timm")

TOL = 1e-5
# open_clip's convnext_* configs, shrunk onto timm's test ConvNeXts: "" pool + linear projection, and
# the mlp projection with a bias that convnext_large_d uses.
LINEAR = {"embed_dim": 48,
          "vision_cfg": {"timm_model_name": "test_convnext", "timm_model_pretrained": False, "timm_pool": "",
                         "timm_proj": "linear", "timm_drop": 0.0, "timm_drop_path": 0.1, "image_size": 160},
          "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}
MLP = {"embed_dim": 40,
       "vision_cfg": {"timm_model_name": "test_convnext2", "timm_model_pretrained": False, "timm_pool": "",
                      "timm_proj": "mlp", "timm_proj_bias": True, "timm_drop": 0.0, "image_size": 128},
       "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def open_clip_model(model_cfg: dict, seed: int = 0):
    """open_clip's ``CLIP`` for ``model_cfg`` (a timm ConvNeXt image tower), random weights, norms and biases."""
    from open_clip.model import CLIP

    torch.manual_seed(seed)
    return F._perturb(CLIP(**json.loads(json.dumps(model_cfg))).eval(), seed)


def tokens(model_cfg: dict, n: int = 3) -> torch.Tensor:
    t = model_cfg["text_cfg"]
    ids = torch.randint(1, t["vocab_size"] - 1, (n, t["context_length"]), generator=torch.Generator().manual_seed(0))
    ids[:, 5:] = 0
    ids[:, 4] = t["vocab_size"] - 1  # end of text: the max id, where CLIP pools
    return ids


@pytest.fixture
def cache(monkeypatch, tmp_path):
    return F.offline_hub(monkeypatch, tmp_path / "hf_cache")


def from_hub(reference, model_cfg, cache, tmp_path, repo="org/convnext"):
    F.write_hub_cache(cache, repo, F.write_open_clip_folder(tmp_path / "oc", reference, model_cfg))
    return maskclip.load(f"hf-hub:{repo}")


def assert_matches(model, reference, model_cfg, sizes=((160, 160),)):
    for h, w in sizes:
        x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(h + w))
        with torch.no_grad():
            assert rel(model.encode_image(x), reference.encode_image(x)) <= TOL, (h, w)
    ids = tokens(model_cfg)
    with torch.no_grad():
        assert rel(model.encode_text(ids), reference.encode_text(ids)) <= TOL


@pytest.fixture(scope="module")
def small():
    """A ``test_convnext`` CLIP in maskclip (loaded from open_clip's layout) and its open_clip reference."""
    reference = open_clip_model(LINEAR)
    from maskclip.convert import from_open_clip

    config, sd = from_open_clip({"model_cfg": LINEAR}, reference.state_dict())
    model = maskclip.DualEncoder(config).eval()
    model.load_state_dict(sd)
    return model, reference


# --- parity with open_clip ------------------------------------------------------------------------

@pytest.mark.parametrize("model_cfg", [LINEAR, MLP], ids=["test_convnext-linear", "test_convnext2-mlp-bias"])
def test_a_small_convnext_clip_matches_open_clip_loaded_from_the_hub_cache(model_cfg, cache, tmp_path):
    reference = open_clip_model(model_cfg)
    model = from_hub(reference, model_cfg, cache, tmp_path)
    assert isinstance(model.visual, TimmConvTower)
    size = model_cfg["vision_cfg"]["image_size"]
    assert model.config.vision.patch_size == 32 and model.config.preprocess.image_size == size
    assert_matches(model, reference, model_cfg, sizes=((size, size), (96, 224), (200, 136)))


def test_convnext_base_w_matches_open_clip_through_its_open_clip_name(cache, tmp_path):
    """The real architecture (convnext_base_w at 256 px, 180M parameters), loaded by its open_clip name."""
    name = "convnext_base_w/laion2b_s13b_b82k_augreg"
    reference = F._perturb(open_clip.create_model("convnext_base_w", pretrained=None).eval(), 0)
    model_cfg = open_clip.get_model_config("convnext_base_w")
    repo = "laion/CLIP-convnext_base_w-laion2B-s13B-b82K-augreg"
    F.write_hub_cache(cache, repo, F.write_open_clip_folder(tmp_path / "oc", reference, model_cfg))
    model = maskclip.load(name)
    assert model.config.name == name and model.config.vision.image_size == 256
    assert model.config.vision.width == 1024 and model.config.vision.layers == 36
    assert model.config.text.act == "gelu"
    assert_matches(model, reference, model_cfg, sizes=((256, 256),))
    same = maskclip.load("laion2b-convnext-base-w")  # the registry's short name for it
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        assert torch.equal(same.encode_image(x), model.encode_image(x))


def test_preprocessing_of_pil_images_matches_open_clip(small):
    """No preprocess_cfg: open_clip's defaults for these models (OpenAI mean/std, bicubic, shortest side + crop)."""
    from PIL import Image

    model, _ = small
    preprocess = open_clip.image_transform(160, is_train=False)
    rng = torch.Generator().manual_seed(3)
    for w, h in ((300, 200), (161, 415), (160, 160)):
        img = Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=rng, dtype=torch.uint8).numpy())
        assert (model.image_batch(img)[0] - preprocess(img)).abs().max() <= 1e-5, (w, h)


def test_open_clip_export_loads_in_open_clip_strictly_and_back_in_maskclip(small, tmp_path):
    from open_clip.model import CustomTextCLIP
    from safetensors.torch import load_file

    model, reference = small
    out = tmp_path / "export"
    model.save_pretrained(out, format="open_clip")
    oc_cfg = json.loads((out / "open_clip_config.json").read_text())
    assert oc_cfg["model_cfg"]["vision_cfg"]["timm_pool"] == "" and oc_cfg["preprocess_cfg"]["resize_mode"] == "shortest"
    again = CustomTextCLIP(**{k: v for k, v in oc_cfg["model_cfg"].items() if k != "custom_text"}).eval()
    again.load_state_dict(load_file(str(out / "open_clip_model.safetensors")), strict=True)
    reloaded = maskclip.load(out)
    x, ids = torch.randn(2, 3, 160, 160), tokens(LINEAR)
    with torch.no_grad():
        assert torch.equal(again.encode_image(x), reference.encode_image(x))
        assert rel(again.encode_text(ids), reference.encode_text(ids)) <= TOL
        assert torch.equal(reloaded.encode_image(x), model.encode_image(x))
    assert reloaded.config == model.config
    native = tmp_path / "native"
    model.save_pretrained(native)
    with torch.no_grad():
        assert torch.equal(maskclip.load(native).encode_image(x), model.encode_image(x))


def test_transformers_has_no_convnext_clip_so_that_export_is_refused_before_anything_is_written(small, tmp_path):
    model, _ = small
    with pytest.raises(ConfigError, match="ConvNeXt.*format='maskclip' or 'open_clip'"):
        model.save_pretrained(tmp_path / "hf", format="transformers")
    assert not (tmp_path / "hf").exists()


# --- dense features -------------------------------------------------------------------------------

def test_dense_features_are_the_last_stage_map_through_the_head_at_every_location(small):
    model, _ = small
    x = torch.randn(2, 3, 160, 224)
    with torch.no_grad():
        feats = model.dense_features(x)
        assert feats.shape == (2, 48, 5, 7)
        fmap = model.visual.trunk.forward_features(x)  # [2, 64, 5, 7]
        # one location by hand: timm's head norm over its channels, then open_clip's projection
        h = model.visual.trunk.head
        loc = fmap[:, :, 2, 3]
        want = model.visual.head(h.norm(loc[:, :, None, None])[:, :, 0, 0])
        assert torch.allclose(feats[:, :, 2, 3], want, atol=1e-5)
        assert torch.allclose(model.dense_features(x, normalize=True).norm(dim=1), torch.ones(2, 5, 7), atol=1e-5)


def test_when_every_location_is_the_same_each_dense_feature_equals_the_pooled_embedding(small):
    model, _ = small
    with torch.no_grad():
        fmap = model.visual.trunk.forward_features(torch.randn(2, 3, 160, 160))
        same = fmap.mean(dim=(2, 3), keepdim=True).expand_as(fmap).contiguous()
        per_location = model.visual.project_map(same)  # [2, E, 5, 5]
        pooled = model.visual.pool_map(same)  # [2, E]
        assert torch.allclose(per_location, pooled[:, :, None, None].expand_as(per_location), atol=1e-5)
        # and the pooled path is the model's own: encode_image = pool_map(the trunk's map)
        x = torch.randn(1, 3, 160, 160)
        assert torch.allclose(model.visual.pool_map(model.visual.trunk.forward_features(x)), model.encode_image(x))


@pytest.mark.parametrize("method", ["zhou", "sclip", "clearclip", "naclip", "resclip", "proxyclip", "maskclip"])
def test_attention_methods_are_refused_naming_the_tower_and_its_method(small, method):
    model, _ = small
    with pytest.raises(InputError, match=r"test_convnext.*\['vanilla'\]"):
        model.dense_features(torch.randn(1, 3, 160, 160), method=method)
    with pytest.raises(InputError, match="vanilla"):
        model.segment(torch.rand(3, 64, 64), ["a", "b"], method=method)


def test_segment_defaults_to_the_towers_method(small):
    model, _ = small
    assert dense.default_method(model.visual) == "vanilla"
    label_map, scores = model.segment(torch.rand(3, 90, 130), ["a cat", "a dog"], return_scores=True)
    assert label_map.shape == (90, 130) and scores.shape == (2, 90, 130)
    again = model.segment(torch.rand(3, 90, 130), ["a cat", "a dog"], method="vanilla", window=64)
    assert again.shape == (90, 130)


def test_forward_intermediates_gives_the_stages_feature_maps(small):
    model, _ = small
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        emb, maps = model.visual.forward_intermediates(x)
        assert torch.allclose(emb, model.encode_image(x))
        assert [tuple(m.shape[-2:]) for m in maps] == [(40, 40), (20, 20), (10, 10), (5, 5)]
        last = model.visual.forward_intermediates(x, indices=1, intermediates_only=True)
        assert len(last) == 1 and torch.equal(last[0], maps[-1])
    with pytest.raises(InputError, match="NCHW"):
        model.visual.forward_intermediates(x, output_fmt="NLC")


def test_onnx_export_of_a_convnext_clip_matches_pytorch(small, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from maskclip.onnx_export import export_onnx

    model, _ = small
    export_onnx(model, tmp_path / "onnx")
    session = ort.InferenceSession(str(tmp_path / "onnx" / "image_encoder.onnx"))
    x = torch.randn(3, 3, 160, 160)
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        want = model.encode_image(x)
    assert got.shape[0] == 3
    assert rel(torch.from_numpy(got).reshape(want.shape), want) <= 1e-4


# --- configs --------------------------------------------------------------------------------------

@pytest.mark.parametrize("pool", ["map", "token"])
def test_a_convnext_with_a_vit_pooling_is_refused(pool):
    from maskclip.convert import from_open_clip

    cfg = json.loads(json.dumps(LINEAR))
    cfg["vision_cfg"]["timm_pool"] = pool
    with pytest.raises(ConfigError, match="timm_pool"):
        from_open_clip({"model_cfg": cfg}, {})


def test_a_convnext_tower_takes_no_activation_override():
    from maskclip.config import VisionConfig

    with pytest.raises(ConfigError, match="act"):
        VisionConfig(image_size=160, act="quick_gelu", timm_model_name="test_convnext", timm_pool="").validate()
