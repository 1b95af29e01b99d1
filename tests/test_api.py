"""The public API: classify, zero-shot classifier, segment, save/load, and errors at the boundary."""
import os
import pickle
import shutil

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import maskclip
from maskclip import (ConfigError, ImageNotFoundError, ImageReadError, InputError, InputTypeError,
                      ModelNotFoundError, WeightsError, WeightsUnavailableError)

from conftest import tiny_model


# --- zero-shot ----------------------------------------------------------------------------

def test_classify_returns_probabilities_per_image(model, rgb_image, tmp_path):
    path = tmp_path / "img.png"
    rgb_image.save(path)
    probs = model.classify([rgb_image, str(path)], ["a cat", "a dog", "a bird"])
    assert probs.shape == (2, 3)
    assert torch.allclose(probs.sum(-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(probs[0], probs[1], atol=1e-5)  # same picture, two input forms


def test_classify_equals_manual_softmax_of_scaled_cosines(model, rgb_image):
    labels = ["red", "green"]
    with torch.no_grad():
        img = F.normalize(model.encode_image(rgb_image), dim=-1)
        txt = F.normalize(model.encode_text(labels), dim=-1)
        expected = (model.logit_scale.exp() * img @ txt.T).softmax(-1)
    assert torch.allclose(model.classify(rgb_image, labels), expected, atol=1e-5)


def test_zero_shot_classifier_averages_normalised_template_embeddings(model):
    templates = ["a photo of a {}.", "a drawing of a {}."]
    W = model.zero_shot_classifier(["cat", "dog"], templates)
    assert W.shape == (32, 2)
    with torch.no_grad():
        e = F.normalize(model.encode_text(["a photo of a cat.", "a drawing of a cat."]), dim=-1).mean(0)
    assert torch.allclose(W[:, 0], F.normalize(e, dim=0), atol=1e-5)
    assert torch.allclose(W.norm(dim=0), torch.ones(2), atol=1e-5)


def test_bundled_template_sets_and_imagenet_classnames():
    assert "openai_imagenet" in maskclip.template_sets()
    names = maskclip.imagenet_classnames()
    assert len(names) == 1000 and names[0] == "tench"


def test_zero_shot_classifier_accepts_named_template_set(model):
    assert model.zero_shot_classifier(["cat"], "imagenet_7").shape == (32, 1)


@pytest.mark.parametrize("labels, exc, words", [
    ([], InputError, "empty"),
    ("a cat", InputTypeError, "single string"),
    (["a cat", 3], InputTypeError, r"labels\[1\]"),
    (["a cat", "  "], InputError, "whitespace"),
    (["cat", "cat"], InputError, "duplicates"),
    (None, InputTypeError, "list of strings"),
])
def test_classify_rejects_bad_labels(model, rgb_image, labels, exc, words):
    with pytest.raises(exc, match=words):
        model.classify(rgb_image, labels)


@pytest.mark.parametrize("templates, words", [("no_such_set", "unknown template set"), (["no placeholder"], "{}"),
                                              ([], "non-empty")])
def test_bad_templates_raise(model, templates, words):
    with pytest.raises((InputError, InputTypeError), match=words):
        model.zero_shot_classifier(["cat"], templates)


def test_dual_encoder_is_public_and_keeps_its_former_name(model):
    assert maskclip.MaskCLIP is maskclip.DualEncoder
    assert {"DualEncoder", "MaskCLIP"} <= set(maskclip.__all__)
    assert type(model).__name__ == "DualEncoder"


# --- segmentation -------------------------------------------------------------------------

def test_segment_returns_a_label_per_input_pixel(model):
    img = Image.new("RGB", (90, 50), (200, 30, 30))
    seg = model.segment(img, ["red", "blue", "green"])
    assert seg.shape == (50, 90) and seg.dtype == torch.long
    assert 0 <= int(seg.min()) and int(seg.max()) < 3


def test_segment_scores_argmax_is_the_label_map(model, rgb_image):
    seg, scores = model.segment(rgb_image, ["a", "b"], method="maskclip", return_scores=True)
    assert scores.shape == (2, 48, 80)
    assert torch.equal(scores.argmax(0), seg)


def test_segment_with_the_old_method_name_equals_zhou(model, rgb_image):
    old = model.segment(rgb_image, ["a", "b"], method="maskclip", window=32, return_scores=True)
    new = model.segment(rgb_image, ["a", "b"], method="zhou", window=32, return_scores=True)
    assert torch.equal(old[0], new[0]) and torch.equal(old[1], new[1])


def test_segment_sliding_window_covers_the_image(model, rgb_image):
    seg = model.segment(rgb_image, ["a", "b"], size=96, window=64, stride=32)
    assert seg.shape == (48, 80)


def test_segment_rejects_unknown_method_and_bad_window(model, rgb_image):
    with pytest.raises(InputError, match="dense method"):
        model.segment(rgb_image, ["a"], method="magic")
    with pytest.raises(InputError, match="window"):
        model.segment(rgb_image, ["a"], window=3)


# --- save / load --------------------------------------------------------------------------

def test_save_pretrained_then_load_gives_identical_outputs(model, tmp_path, rgb_image):
    model.save_pretrained(tmp_path / "m")
    assert sorted(os.listdir(tmp_path / "m")) == ["config.json", "model.safetensors"]
    loaded = maskclip.load(tmp_path / "m")
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(rgb_image), model.encode_image(rgb_image))
        assert torch.equal(loaded.encode_text("hi"), model.encode_text("hi"))
    # also from a str path and from the weights file itself (config.json beside it)
    assert isinstance(maskclip.load(str(tmp_path / "m")), maskclip.MaskCLIP)
    assert maskclip.load(tmp_path / "m" / "model.safetensors").config == model.config


def test_save_pretrained_leaves_no_temp_files_and_overwrites_atomically(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    model.save_pretrained(tmp_path / "m")
    assert sorted(os.listdir(tmp_path / "m")) == ["config.json", "model.safetensors"]


def _write_hub_cache(src_folder, cache, repo="org/tiny"):
    """Lay out ``src_folder`` as the Hugging Face cache does: blobs, snapshots/<commit>, refs/main."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = cache / ("models--" + repo.replace("/", "--"))
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True)
    (root / "blobs").mkdir()
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    for f in os.listdir(src_folder):
        blob = root / "blobs" / f"blob-{f}"
        shutil.copy(src_folder / f, blob)
        os.symlink(os.path.relpath(blob, snap), snap / f)
    return repo


def test_load_from_hub_cache_offline(model, tmp_path, rgb_image, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model.save_pretrained(tmp_path / "m")
    repo = _write_hub_cache(tmp_path / "m", tmp_path / "cache")
    loaded = maskclip.load(f"hf-hub:{repo}", cache_dir=tmp_path / "cache")
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(rgb_image), model.encode_image(rgb_image))
    loaded = maskclip.load(f"hf-hub:{repo}@main", cache_dir=tmp_path / "cache")
    assert loaded.config == model.config


def test_load_uncached_hub_repo_offline_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="cache"):
        maskclip.load("hf-hub:nobody/nothing", cache_dir=tmp_path)


def test_load_with_dtype(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    m = maskclip.load(tmp_path / "m", dtype=torch.bfloat16)
    out = m.encode_image(torch.rand(1, 3, 64, 64))
    assert m.dtype == torch.bfloat16 and out.dtype == torch.bfloat16
    with pytest.raises(InputTypeError, match="dtype"):
        maskclip.load(tmp_path / "m", dtype=torch.int8)


def test_registry_lists_the_documented_names():
    names = maskclip.available_models()
    for n in ("openai-vitb16", "openai-vitb32", "openai-vitl14", "laion2b-vitb16", "vitb16-yfcc"):
        assert n in names
    info = maskclip.model_info("laion2b-vitb16")
    assert info["act"] == "gelu" and info["licence"]


def test_unpublished_weights_explain_what_to_do_instead():
    with pytest.raises(WeightsUnavailableError, match="never released") as e:
        maskclip.load("vitb16-yfcc")
    assert "maskclip train" in str(e.value) and "openai-vitb16" in str(e.value)


def test_unknown_name_suggests_close_registered_names():
    with pytest.raises(ModelNotFoundError, match="openai-vitb16"):
        maskclip.load("openai-vitb61")


@pytest.mark.parametrize("name, words", [("./missing/dir", "does not exist"), ("org/repo", "hf-hub:org/repo"),
                                         ("hf-hub:justone", "org/repo"), ("weights.safetensors", "does not exist")])
def test_bad_model_paths_raise_model_not_found(name, words):
    with pytest.raises(ModelNotFoundError, match=words):
        maskclip.load(name)


def test_load_rejects_non_string_names():
    with pytest.raises(InputTypeError):
        maskclip.load(42)


def test_truncated_safetensors_raise_weights_error(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    f = tmp_path / "m" / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        maskclip.load(tmp_path / "m")


def test_garbage_safetensors_raise_weights_error(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(WeightsError):
        maskclip.load(tmp_path / "m")


def test_config_not_matching_weights_names_the_mismatch(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    tiny_model(width=128).config.to_json(tmp_path / "m" / "config.json")
    with pytest.raises(WeightsError, match="shape mismatches"):
        maskclip.load(tmp_path / "m")


def test_unknown_config_version_is_refused(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    p = tmp_path / "m" / "config.json"
    p.write_text(p.read_text().replace('"format_version": 1', '"format_version": 7'))
    with pytest.raises(ConfigError, match="format_version"):
        maskclip.load(tmp_path / "m")


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickle_is_refused_by_default_and_never_executes(model, tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": _Evil()}, f, protocol=2)
    with pytest.raises(WeightsError, match="refusing"):
        maskclip.load(path)
    with pytest.raises(WeightsError, match="weights_only"):
        maskclip.load(path, allow_pickle=True)


def test_pickled_state_dict_loads_when_allowed(model, tmp_path):
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "ckpt.pt")
    model.config.to_json(tmp_path / "config.json")
    loaded = maskclip.load(tmp_path / "ckpt.pt", allow_pickle=True)
    assert torch.equal(loaded.visual.proj, model.visual.proj)


# --- inputs -------------------------------------------------------------------------------

@pytest.mark.parametrize("images, exc", [
    (None, InputTypeError),
    ([], InputError),
    (123, InputTypeError),
    (torch.rand(2, 4, 64, 64), InputError),
    (torch.rand(64, 64), InputError),
    (torch.full((1, 3, 64, 64), float("nan")), InputError),
    (torch.rand(1, 3, 8, 8), InputError),  # smaller than one patch
])
def test_encode_image_rejects_bad_inputs(model, images, exc):
    with pytest.raises(exc):
        model.encode_image(images)


def test_missing_and_unreadable_image_files(model, tmp_path):
    with pytest.raises(ImageNotFoundError, match="nope.jpg"):
        model.encode_image(str(tmp_path / "nope.jpg"))
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    with pytest.raises(ImageReadError, match="bad.jpg"):
        model.classify(str(bad), ["a"])


@pytest.mark.parametrize("texts, exc", [
    (None, InputTypeError), (123, InputTypeError), ([], InputError), (["ok", None], InputTypeError),
    (torch.tensor([[1.5, 2.0]]), InputTypeError), (torch.tensor([[49406, 50000]]), InputError),
    (torch.zeros(1, 100, dtype=torch.long), InputError), (torch.zeros(0, 77, dtype=torch.long), InputError),
])
def test_encode_text_rejects_bad_inputs(model, texts, exc):
    with pytest.raises(exc):
        model.encode_text(texts)


def test_errors_are_catchable_as_builtin_types():
    assert issubclass(InputError, ValueError) and issubclass(InputTypeError, TypeError)
    assert issubclass(ModelNotFoundError, FileNotFoundError) and issubclass(WeightsError, ValueError)
    assert issubclass(WeightsUnavailableError, maskclip.MaskCLIPError)
