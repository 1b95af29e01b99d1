"""maskclip.eval end to end on a tiny random model and a handful of synthetic images."""
import csv

import numpy as np
import pytest
import torch
from PIL import Image

import maskclip
from maskclip.errors import InputError
from maskclip.eval.results import jsonable
from maskclip.eval import (image_text_retrieval, linear_probe_classification, open_dataset, zero_shot_classification,
                           zero_shot_segmentation)

TEST = "synthetic:test,n=8"


def test_zero_shot_matches_the_models_own_classify(model):
    r = zero_shot_classification(model, TEST, progress=False)
    ds = open_dataset(TEST, default_size=64)
    records = [ds[i] for i in range(len(ds))]
    probs = model.classify([x.image for x in records], ds.classnames, templates=ds.templates)
    expected = (probs.argmax(1) == torch.tensor([x.label for x in records])).double().mean()
    assert r["top1"] == pytest.approx(float(expected))
    assert r["n"] == 8 and r["num_classes"] == 8 and r["top1"] <= r["top5"] <= 1
    assert r["templates"] == ds.templates and set(r["per_class_recall"]) == set(ds.classnames)


def test_retrieval_finds_everything_when_k_covers_all_candidates(model):
    r = image_text_retrieval(model, "synthetic:test,n=2", progress=False)  # 2 images, 10 captions
    assert r["n_images"] == 2 and r["n_texts"] == 10 and r["captions_per_image"] == 5
    assert r["image_to_text_R@10"] == 1.0 and r["text_to_image_R@5"] == 1.0
    assert 0 <= r["image_to_text_R@1"] <= r["image_to_text_R@5"] <= 1


def test_linear_probe_reports_the_sweep_and_split_sizes(model):
    r = linear_probe_classification(model, "synthetic:train,n=20", TEST, weight_decays=(1e-3, 1e-1),
                                    max_iter=50, progress=False)
    assert (r["n_train"], r["n_val"], r["n_test"]) == (16, 4, 8)
    assert r["weight_decay"] in (1e-3, 1e-1) and len(r["sweep"]) == 2
    assert r["feature_dim"] == model.embed_dim and 0 <= r["top1"] <= 1


def test_segmentation_scores_every_method_as_model_segment_does(model):
    r = zero_shot_segmentation(model, "synthetic:test,n=2", progress=False)
    assert list(r["methods"]) == ["vanilla", "zhou", "sclip", "clearclip"]  # "maskclip" is the alias of "zhou"
    ds = open_dataset("synthetic:test,n=2", default_size=64)
    for method, res in r["methods"].items():
        correct = sum(int((model.segment(ds[i].image, ds.segmentation_classes, templates=ds.templates,
                                          method=method) == torch.from_numpy(ds[i].mask).long()).sum())
                      for i in range(2))
        assert res["all_classes"]["pixel_accuracy"] == pytest.approx(correct / (2 * 64 * 64))
        assert 0 <= res["foreground"]["miou"] <= 1 and "background" not in res["foreground"]["per_class_iou"]
    assert r["protocol"]["image_size"] == 64 and r["protocol"]["ignore_index"] == 255


def test_segmentation_keys_results_by_the_method_names_given(model):
    r = zero_shot_segmentation(model, "synthetic:test,n=1", methods=["maskclip", "zhou"], progress=False)
    assert list(r["methods"]) == ["maskclip", "zhou"]  # an old script reading r["methods"]["maskclip"] still works
    assert jsonable(r["methods"]["maskclip"]) == jsonable(r["methods"]["zhou"])  # NaN IoUs as None


def test_foreground_protocol_ignores_background_pixels(model):
    ds = open_dataset("synthetic:test,n=1", default_size=64)
    r = zero_shot_segmentation(model, ds, methods=["clearclip"], progress=False)
    _, scores = model.segment(ds[0].image, ds.segmentation_classes, templates=ds.templates, method="clearclip",
                              return_scores=True)
    mask = torch.from_numpy(ds[0].mask).long()
    objects = mask > 0
    fg_pred = scores[1:].argmax(0) + 1
    expected = float((fg_pred[objects] == mask[objects]).double().mean())
    assert r["methods"]["clearclip"]["foreground"]["pixel_accuracy"] == pytest.approx(expected)


def test_evaluation_restores_the_models_training_mode(model):
    model.train()
    try:
        zero_shot_classification(model, "synthetic:test,n=2", progress=False)
        assert model.training
    finally:
        model.eval()


def test_weights_from_another_layout_give_the_same_results(model, tmp_path):
    model.save_pretrained(tmp_path / "oc", format="open_clip")
    other = maskclip.load(str(tmp_path / "oc"))
    a = zero_shot_classification(model, TEST, progress=False)
    b = zero_shot_classification(other, TEST, progress=False)
    assert a["top1"] == b["top1"] and jsonable(a["per_class_recall"]) == jsonable(b["per_class_recall"])


@pytest.fixture
def folder(tmp_path):
    for name, colour in (("red_thing", (220, 20, 20)), ("blue_thing", (20, 20, 220))):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (40, 30), colour).save(tmp_path / "imgs" / name / f"{i}.png")
    return tmp_path / "imgs"


def test_folder_source_labels_by_subfolder(folder, model):
    ds = open_dataset(str(folder))
    assert ds.classnames == ["blue thing", "red thing"]
    assert [ds[i].label for i in range(4)] == [0, 0, 1, 1]
    r = zero_shot_classification(model, str(folder), templates="a photo of a {}.", progress=False)
    assert r["n"] == 4
    with pytest.raises(InputError, match="needs captions"):
        image_text_retrieval(model, str(folder), progress=False)


def test_csv_source_groups_captions_and_reads_masks(folder, tmp_path):
    Image.fromarray(np.full((30, 40), 1, dtype=np.uint8), "L").save(tmp_path / "m.png")
    rows = [("image", "label", "caption", "mask"),
            ("imgs/red_thing/0.png", "red", "a red picture", "m.png"),
            ("imgs/red_thing/0.png", "red", "all red", "m.png"),
            ("imgs/blue_thing/0.png", "blue", "a blue picture", "m.png")]
    with open(tmp_path / "data.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    ds = open_dataset(str(tmp_path / "data.csv"), segmentation_classes=["background", "thing"])
    assert len(ds) == 2 and ds.classnames == ["blue", "red"]
    assert ds[0].captions == ("a red picture", "all red") and ds[0].label == 1
    assert ds[1].mask.shape == (30, 40) and ds.background_index == 0


@pytest.mark.parametrize("spec, message", [
    ("synthetic:dev", "split"),
    ("synthetic:test,n=x", "integer"),
    ("synthetic:test,colour=1", "bad option"),
    ("no/such/folder", "not found"),
])
def test_bad_data_specs_raise_input_error(spec, message):
    with pytest.raises(InputError, match=message):
        open_dataset(spec)


def test_class_names_of_the_wrong_length_are_refused(model):
    with pytest.raises(InputError, match="8 classnames; 2 were given"):
        zero_shot_classification(model, TEST, classnames=["a", "b"], progress=False)
