"""The eight segmentation benchmarks: protocol pinned to the published configs, folder readers, thresholds, CLI."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from maskclip.cli import main
from maskclip.datasets.segmentation_benchmarks import (BENCHMARKS, IGNORE_INDEX, benchmark, class_synonyms,
                                                       find_benchmark_root, open_benchmark, reduce_zero_label)
from maskclip.errors import InputError
from maskclip.eval.segmentation_benchmark import protocol_size
from maskclip.eval.segmentation_protocol import class_probabilities, flatten_synonyms, predict

# SCLIP configs/cfg_*.py (wangf3014/SCLIP): short side, logit scale, prob_thd, area_thd,
# reduce_zero_label, number of classes (lines of cls_*.txt).
PUBLISHED = {
    "voc21": (336, 65, 0.1, 0.1, False, 21),
    "context60": (336, 50, 0.1, None, False, 60),
    "coco_object": (336, 50, 0.1, None, False, 81),
    "voc20": (336, 40, 0.0, None, True, 20),
    "context59": (336, 40, 0.0, None, True, 59),
    "coco_stuff": (448, 40, 0.0, None, False, 171),
    "cityscapes": (560, 40, 0.0, None, False, 19),
    "ade20k": (336, 40, 0.0, None, True, 150),
}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_protocol_is_the_published_config(name):
    s = benchmark(name)
    short, scale, prob, area, reduce, n_cls = PUBLISHED[name]
    assert (s["short_side"], s["logit_scale"], s["prob_threshold"], s["area_threshold"]) == (short, scale, prob, area)
    assert (s["reduce_zero_label"], len(s["classes"])) == (reduce, n_cls)
    assert (s["window"], s["stride"], s["max_long_side"], s["templates"]) == (224, 112, 2048, "openai_imagenet")
    assert s["background"] == (0 if name in ("voc21", "context60", "coco_object") else None)
    assert set(s["sources"]) >= {"short_side", "window", "stride", "logit_scale", "prob_threshold",
                                 "area_threshold", "classes_file", "layout", "reduce_zero_label", "templates"}


def test_the_eight_benchmarks_in_the_fields_order():
    assert BENCHMARKS == ("voc21", "context60", "coco_object", "voc20", "context59", "coco_stuff", "cityscapes",
                          "ade20k")


def test_class_files_carry_synonyms_and_background_words():
    voc21 = benchmark("voc21")["classes"]
    assert len(voc21[0]) == 26 and voc21[0][:3] == ["sky", "wall", "tree"]  # background's stuff words
    assert voc21[15][0] == "person" and len(voc21[15]) == 7
    assert voc21[20] == ["television monitor", "tv monitor", "monitor", "television", "screen"]
    assert benchmark("coco_object")["classes"][0] == voc21[0]
    assert benchmark("context60")["classes"][0] == ["background"]
    assert benchmark("voc20")["classes"][0] == ["aeroplane"]
    assert class_synonyms("a, b\n\nc\n") == [["a", "b"], ["c"]]


def test_naclip_variant_scores_voc_whole_images_at_scale_40():
    s = benchmark("voc21", "naclip")
    assert (s["window"], s["logit_scale"], s["prob_threshold"], s["area_threshold"]) == (None, 40, 0.1, None)
    assert benchmark("coco_stuff", "naclip")["short_side"] == 336 and "variant" in s["sources"]
    with pytest.raises(InputError, match="variants"):
        benchmark("voc21", "nope")
    with pytest.raises(InputError, match="benchmark must be one of"):
        benchmark("voc22")


def test_protocol_size_is_mmsegs_keep_ratio_resize():
    assert protocol_size(375, 500, 336, 2048) == 336
    assert protocol_size(1024, 2048, 560, 2048) == 560
    assert protocol_size(100, 1000, 336, 2048) == 205  # the long side caps at 2048: 100 * 2.048 + 0.5


def test_reduce_zero_label_is_mmsegs():
    m = np.array([[0, 1, 2, 255]], dtype=np.uint8)
    assert reduce_zero_label(m).tolist() == [[255, 0, 1, 255]]


# --- folder layouts --------------------------------------------------------------------------

def _pair(image_path, mask_path, values, size=(24, 16)):
    image_path.parent.mkdir(parents=True, exist_ok=True)
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(image_path)))
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(image_path)
    mask = np.full((size[1], size[0]), values[0], dtype=np.uint8)
    mask[:, size[0] // 2:] = values[1]
    mask[0, 0] = IGNORE_INDEX
    Image.fromarray(mask, "L").save(mask_path)


def make_tree(name, root, ids=("a", "b"), values=(0, 1), split="val"):
    """A tiny folder in benchmark ``name``'s usual layout under ``root``; returns the benchmark's folder."""
    layout = benchmark(name)["layout"]
    part = layout["splits"][split]
    images, masks = root / layout["images"].format(split=part), root / layout["masks"].format(split=part)
    for i in ids:
        _pair(images / (i + layout["image_suffix"]), masks / (i + layout["mask_suffix"]), values)
    if layout["split_file"]:
        listed = root / layout["split_file"].format(split=part)
        listed.parent.mkdir(parents=True, exist_ok=True)
        listed.write_text("\n".join(ids) + "\n")
    return root


TREES = {  # benchmark -> (its folder under a data root, the ids written: Cityscapes has one folder per city)
    "voc21": ("VOCdevkit/VOC2012", ("2007_000033", "2007_000042")),
    "voc20": ("VOCdevkit/VOC2012", ("2007_000033", "2007_000042")),
    "context60": ("VOCdevkit/VOC2010", ("2008_000008",)),
    "context59": ("VOCdevkit/VOC2010", ("2008_000008",)),
    "coco_object": ("coco_object", ("000000000139", "000000000285")),
    "coco_stuff": ("coco_stuff164k", ("000000000139",)),
    "cityscapes": ("cityscapes", ("frankfurt/frankfurt_000000_000294", "lindau/lindau_000000_000019")),
    "ade20k": ("ADEChallengeData2016", ("ADE_val_00000001", "ADE_val_00000002")),
}


@pytest.mark.parametrize("name", BENCHMARKS)
def test_reader_reads_the_usual_layout(name, tmp_path):
    folder, ids = TREES[name]
    root = make_tree(name, tmp_path / folder, ids, values=(0, 3))
    data = open_benchmark(name, root)
    assert len(data) == len(ids)
    sample = data[0]
    assert sample.meta["key"].startswith(ids[0].split("/")[-1]) and Image.open(sample.image).size == (24, 16)
    left, right = sample.mask[5, 0], sample.mask[5, -1]
    if benchmark(name)["reduce_zero_label"]:
        assert (left, right) == (IGNORE_INDEX, 2)  # 0 -> ignored, 3 -> 2
    else:
        assert (left, right) == (0, 3)
    assert sample.mask[0, 0] == IGNORE_INDEX and sample.mask.dtype == np.uint8


def test_ade20k_train_split_reads_training_folders(tmp_path):
    root = make_tree("ade20k", tmp_path, ("ADE_train_00000001",), split="train")
    assert len(open_benchmark("ade20k", root, "train")) == 1
    assert (tmp_path / "images" / "training").is_dir()
    with pytest.raises(InputError, match="splits"):
        open_benchmark("ade20k", root, "test")


@pytest.mark.parametrize("remove, message", [
    ("SegmentationClass", "folder .*SegmentationClass' is missing"),
    ("JPEGImages", "folder .*JPEGImages' is missing"),
    ("ImageSets/Segmentation/val.txt", "split file .*val.txt' is missing"),
    ("SegmentationClass/b.png", "mask file .*b.png' is missing"),
    ("JPEGImages/a.jpg", "image file .*a.jpg' is missing"),
])
def test_a_wrong_layout_names_what_is_missing(tmp_path, remove, message):
    import shutil

    root = make_tree("voc21", tmp_path / "VOC2012")
    target = root / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(InputError, match=message):
        open_benchmark("voc21", root)


def test_a_folder_without_images_says_so(tmp_path):
    (tmp_path / "images" / "validation").mkdir(parents=True)
    (tmp_path / "annotations" / "validation").mkdir(parents=True)
    with pytest.raises(InputError, match=r"no '\*.jpg' images"):
        open_benchmark("ade20k", tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        open_benchmark("ade20k", tmp_path / "nope")


def test_data_root_finds_the_usual_folder_names(tmp_path):
    make_tree("coco_object", tmp_path / "coco_stuff164k")  # SCLIP's converter writes into COCO-Stuff's folder
    assert find_benchmark_root("coco_object", tmp_path) == tmp_path / "coco_stuff164k"
    with pytest.raises(InputError, match=r"none of the usual folders \['cityscapes'\]"):
        find_benchmark_root("cityscapes", tmp_path)


# --- the protocol's prediction ---------------------------------------------------------------

def test_softmax_after_logit_scale_then_max_over_synonyms():
    names, owner = flatten_synonyms([["sky", "wall"], ["cat"]])
    assert names == ["sky", "wall", "cat"] and owner.tolist() == [0, 0, 1]
    scores = torch.tensor([[[0.2]], [[0.3]], [[0.25]]])  # [Q=3, 1, 1]
    probs = class_probabilities(scores, owner, 2, logit_scale=10.0)
    p = torch.softmax(torch.tensor([2.0, 3.0, 2.5]), 0)
    assert torch.allclose(probs[:, 0, 0], torch.stack([p[1], p[2]]))


def _probs(rows):
    return torch.tensor(rows, dtype=torch.float32).permute(2, 0, 1)  # [H, W, C] -> [C, H, W]


def test_low_probability_pixels_become_background():
    probs = _probs([[[0.05, 0.90, 0.05], [0.40, 0.35, 0.25]],
                    [[0.30, 0.34, 0.36], [0.10, 0.10, 0.80]]])
    assert predict(probs).tolist() == [[1, 0], [2, 2]]
    assert predict(probs, background=0, prob_threshold=0.5).tolist() == [[1, 0], [0, 2]]
    with pytest.raises(InputError, match="background"):
        predict(probs, background=None, prob_threshold=0.1)


def test_area_threshold_drops_small_foreground_classes():
    # 10 pixels: class 1 wins 8, class 2 wins 1, background 1; threshold 0.2 of the 9 foreground pixels.
    pixels = [[0.2, 0.7, 0.1]] * 8 + [[0.3, 0.1, 0.6]] + [[0.8, 0.1, 0.1]]
    probs = _probs([pixels])
    assert predict(probs, background=0).tolist() == [[1] * 8 + [2, 0]]
    # class 2 is dropped (1 <= 0.2 * 9): its pixel goes to the next best, background (0.3)
    assert predict(probs, background=0, area_threshold=0.2).tolist() == [[1] * 8 + [0, 0]]
    # and with a probability threshold above what is left there, it stays background
    assert predict(probs, background=0, prob_threshold=0.5, area_threshold=0.2).tolist() == [[1] * 8 + [0, 0]]
    assert predict(probs, background=0, area_threshold=0.05).tolist() == [[1] * 8 + [2, 0]]


def test_benchmark_refines_with_pamr_and_refuses_an_unknown_refinement(tmp_path, model):
    from maskclip.eval.segmentation_benchmark import benchmark_segmentation

    root = make_tree("voc20", tmp_path / "VOC2012", ids=("a", "b"), values=(1, 2))
    small = dict(short_side=64, window=None, progress=False)
    plain = benchmark_segmentation(model, "voc20", root, method="clearclip", **small)
    refined = benchmark_segmentation(model, "voc20", root, method="clearclip", refine="pamr", **small)
    assert (plain["refine"], refined["refine"]) == (None, "pamr") and plain["n"] == refined["n"] == 2
    with pytest.raises(InputError, match="refine must be one of"):
        benchmark_segmentation(model, "voc20", root, refine="crf", **small)


def test_benchmark_runs_resclip_with_sfr_and_refuses_it_for_other_methods(tmp_path, model):
    from maskclip.eval.segmentation_benchmark import benchmark_segmentation

    root = make_tree("voc20", tmp_path / "VOC2012", ids=("a",), values=(1, 2))
    small = dict(short_side=64, window=None, progress=False)
    rcs = benchmark_segmentation(model, "voc20", root, method="resclip", **small)
    sfr = benchmark_segmentation(model, "voc20", root, method="resclip", sfr=True, **small)
    assert (rcs["sfr"], sfr["sfr"]) == (False, True) and sfr["n"] == 1
    with pytest.raises(InputError, match="needs method='resclip'"):
        benchmark_segmentation(model, "voc20", root, method="clearclip", sfr=True, **small)


# --- the command line ------------------------------------------------------------------------

SMALL = ["--size", "32", "--window", "32", "--stride", "16", "--no-progress"]  # the tiny model's scale


def test_cli_voc21_writes_the_results_json(tmp_path, capsys):
    root = make_tree("voc21", tmp_path / "VOC2012", ids=("a", "b", "c"), values=(0, 15))
    out = tmp_path / "r.json"
    code = main(["eval", "segmentation", "--benchmark", "voc21", "--root", str(root), "--model", "tiny-shapes",
                 "--method", "clearclip", "--limit", "2", "--out", str(out)] + SMALL)
    stdout = capsys.readouterr().out
    assert code == 0 and "voc21 clearclip: mIoU" in stdout
    r = json.loads(out.read_text())
    assert (r["benchmark"], r["method"], r["model"], r["n"], r["refine"]) == ("voc21", "clearclip", "tiny-shapes", 2, None)
    assert 0 <= r["miou"] <= 1 and 0 <= r["pixel_accuracy"] <= 1 and r["seconds"] > 0
    assert list(r["per_class_iou"])[:2] == ["background", "aeroplane"] and len(r["per_class_iou"]) == 21
    assert r["per_class_iou"]["person"] is not None  # the labelled classes have an IoU
    p = r["protocol"]
    assert (p["short_side"], p["window"], p["stride"], p["logit_scale"], p["prob_threshold"], p["area_threshold"],
            p["n_templates"]) == (32, 32, 16, 65, 0.1, 0.1, 80)
    assert p["overrides"] == {"short_side": 32, "stride": 16, "window": 32} and "short_side" in p["sources"]


def test_cli_all_runs_every_benchmark_from_a_data_root(tmp_path, capsys, monkeypatch):
    from maskclip.eval import segmentation_benchmark as sb

    names = ("voc20", "cityscapes")  # two layouts stand for the eight (each one's classifier takes seconds)
    monkeypatch.setattr(sb, "BENCHMARKS", names)
    for name in names:
        make_tree(name, tmp_path / TREES[name][0], TREES[name][1][:1], values=(1, 2))
    out = tmp_path / "all.json"
    code = main(["eval", "segmentation", "--benchmark", "all", "--data-root", str(tmp_path), "--model", "tiny-shapes",
                 "--out", str(out)] + SMALL)
    assert code == 0 and "average" in capsys.readouterr().out
    r = json.loads(out.read_text())
    assert list(r["miou"]) == list(names) and r["benchmarks"]["cityscapes"]["n"] == 1
    assert r["average_miou"] == pytest.approx(sum(r["miou"].values()) / 2)


@pytest.mark.parametrize("args, message", [
    (["--benchmark", "voc21"], "needs --root"),
    (["--benchmark", "all"], "needs --data-root"),
    (["--benchmark", "voc21", "--root", "x", "--methods", "zhou"], "--methods cannot be used with --benchmark"),
    (["--data", "synthetic:test,n=1", "--limit", "3"], "--limit cannot be used with --data"),
    (["--data", "synthetic:test,n=1", "--sfr"], "--sfr cannot be used with --data"),
    (["--benchmark", "voc21", "--root", "x", "--method", "sclip", "--sfr"], "needs method='resclip'"),
    (["--benchmark", "voc21", "--root", "no/such/folder"], "does not exist"),
])
def test_cli_benchmark_misuse_is_one_line_error(args, message, capsys):
    code = main(["eval", "segmentation", "--model", "tiny-shapes", "--no-progress"] + args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("maskclip: error:") and message in err[-1]
