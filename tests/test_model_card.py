"""push_to_hub uploads a model card: front matter the Hub reads, the config, and how to load the repo."""
import json
import re
import shutil

import pytest
import torch
from huggingface_hub import ModelCard

import maskclip
from conftest import tiny_model
from maskclip import serialization
from maskclip.errors import InputError
from maskclip.model_card import model_card, write_model_card


class FakeHub:
    """Stands in for ``huggingface_hub.HfApi``: records calls, keeps each upload in a folder."""

    def __init__(self, root, readme_on_hub=False):
        self.root, self.readme_on_hub, self.calls = root, readme_on_hub, []

    def __call__(self, token=None):
        return self

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id))

    def file_exists(self, repo_id, filename, revision=None):
        self.calls.append(("file_exists", filename))
        return self.readme_on_hub and filename == "README.md"

    def upload_folder(self, repo_id, folder_path, revision=None, commit_message=None):
        self.calls.append(("upload_folder", repo_id))
        shutil.copytree(folder_path, self.root / repo_id.replace("/", "--"))
        return "commit-url"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    import huggingface_hub

    fake = FakeHub(tmp_path / "hub")
    monkeypatch.setattr(huggingface_hub, "HfApi", fake)
    return fake


def uploaded(hub, repo="org/tiny"):
    return hub.root / repo.replace("/", "--")


def config_in(card_text: str) -> dict:
    return json.loads(re.search(r"```json\n(.*?)\n```", card_text, re.S).group(1))


@pytest.mark.parametrize("format", serialization.FORMATS)
def test_push_to_hub_uploads_a_card_the_hub_reads_beside_a_checkpoint_maskclip_loads(hub, format):
    model = tiny_model()  # a plain ViT, which every layout holds (the bundled tiny-shapes has a conv stem)
    model.config.name = "tiny-shapes"  # a registered name: the card takes the registry's licence
    assert model.push_to_hub("org/tiny", format=format) == "commit-url"
    folder = uploaded(hub)
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "maskclip" and card.data.license == "mit"  # the registry's licence
    assert card.data.pipeline_tag == "zero-shot-image-classification"
    assert {"maskclip", "clip"} <= set(card.data.tags)
    assert config_in(card.text) == model.config.to_dict()
    assert 'maskclip.load("hf-hub:org/tiny")' in card.text
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(maskclip.load(folder).encode_image(x), model.encode_image(x), atol=1e-6, rtol=0)


def test_the_card_says_how_each_library_loads_the_repo_directly_or_after_a_convert():
    model = tiny_model()
    native = model_card(model, "org/m", "maskclip")
    assert "maskclip convert hf-hub:org/m open_clip-copy/ --format open_clip" in native
    assert 'open_clip.create_model_and_transforms("local-dir:open_clip-copy")' in native
    assert "maskclip convert hf-hub:org/m transformers-copy/ --format transformers" in native
    as_open_clip = model_card(model, "org/m", "open_clip")
    assert 'open_clip.create_model_and_transforms("hf-hub:org/m")' in as_open_clip
    assert 'open_clip.get_tokenizer("hf-hub:org/m")' in as_open_clip
    assert "--format transformers" in as_open_clip and "--format open_clip" not in as_open_clip
    as_transformers = model_card(model, "org/m", "transformers")
    assert 'CLIPModel.from_pretrained("org/m")' in as_transformers
    assert 'pipeline("zero-shot-image-classification", model="org/m")' in as_transformers
    assert "--format open_clip" in as_transformers and "--format transformers" not in as_transformers


def test_the_transformers_snippet_names_the_class_that_reads_the_family():
    import copy
    from types import SimpleNamespace

    model = tiny_model()
    siglip, eva = copy.deepcopy(model.config), copy.deepcopy(model.config)
    siglip.vision.timm_model_name, siglip.logit_bias_init = "vit_base_patch16_siglip_224", -10.0
    eva.vision.timm_model_name = "eva02_base_patch16_clip_224"
    as_siglip = model_card(SimpleNamespace(config=siglip, visual=model.visual, text=model.text), "org/s", "transformers")
    assert 'SiglipModel.from_pretrained("org/s")' in as_siglip and "SiglipProcessor" in as_siglip
    assert "CLIPModel" not in as_siglip
    as_eva = model_card(SimpleNamespace(config=eva, visual=model.visual, text=model.text), "org/e", "open_clip")
    assert "transformers has no model class for this architecture" in as_eva and "CLIPModel" not in as_eva
    assert 'open_clip.create_model_and_transforms("hf-hub:org/e")' in as_eva


def test_a_model_of_unknown_licence_claims_none_unless_told(tmp_path):
    model = tiny_model()  # "tiny-test": not a registered name
    assert ModelCard(model_card(model, "org/m")).data.license is None
    assert ModelCard(model_card(model, "org/m", license="apache-2.0")).data.license == "apache-2.0"


def test_a_readme_already_on_the_hub_is_left_as_it_is(hub):
    hub.readme_on_hub = True
    tiny_model().push_to_hub("org/tiny")
    assert sorted(p.name for p in uploaded(hub).iterdir()) == ["config.json", "model.safetensors"]


def test_model_card_false_uploads_the_checkpoint_alone_without_asking_the_hub(hub):
    tiny_model().push_to_hub("org/tiny", model_card=False)
    assert sorted(p.name for p in uploaded(hub).iterdir()) == ["config.json", "model.safetensors"]
    assert ("file_exists", "README.md") not in hub.calls


def test_bad_card_arguments_are_refused_before_the_hub_is_touched(hub):
    with pytest.raises(InputError, match="license"):
        tiny_model().push_to_hub("org/tiny", license=" ")
    assert hub.calls == []


def test_write_model_card_puts_a_readme_in_a_saved_folder_for_uploading_by_hand(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path, format="open_clip")
    path = write_model_card(model, tmp_path, repo_id="org/m", format="open_clip")
    assert path == tmp_path / "README.md"
    assert ModelCard.load(path).data.library_name == "maskclip"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "open_clip_config.json",
                                                           "open_clip_model.safetensors"]


def test_the_card_of_a_conv_stem_model_offers_no_conversion_open_clip_and_transformers_cannot_do():
    card = model_card(tiny_model(stem="conv"), "org/c")
    assert 'maskclip.load("hf-hub:org/c")' in card
    assert "Neither can hold this architecture: it has a convolutional patch stem" in card
    assert "--format open_clip" not in card and "CLIPModel" not in card
