"""The linear segmentation probe: it learns (beats the majority-class baseline) on easy data, from a spec or a tree."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from maskclip.cli import main
from maskclip.errors import InputError
from maskclip.eval import metrics
from maskclip.eval.segmentation_probe import Split, segmentation_probe, spec_split

COLOURS = {0: (128, 128, 128), 1: (230, 30, 30), 2: (30, 30, 230)}  # background grey, class 1 red, class 2 blue


def colour_pair(rng, size=32):
    """An image of three vertical bands (grey, red, blue in a random order and widths) and its mask."""
    cuts = np.sort(rng.choice(np.arange(6, size - 6), 2, replace=False))
    order = rng.permutation(3)
    mask = np.zeros((size, size), dtype=np.uint8)
    for band, (lo, hi) in enumerate(zip([0, *cuts], [*cuts, size])):
        mask[:, lo:hi] = order[band]
    image = np.stack([np.vectorize(lambda k: COLOURS[k][c])(mask) for c in range(3)], -1).astype(np.uint8)
    return Image.fromarray(image), mask


def colour_voc_tree(root, n_train=12, n_val=4):
    """A VOC2012-layout tree of colour-band images, with train.txt and val.txt."""
    rng = np.random.default_rng(0)
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True)
    for split, n in (("train", n_train), ("val", n_val)):
        ids = [f"{split}_{i:03d}" for i in range(n)]
        for i in ids:
            image, mask = colour_pair(rng)
            image.save(root / "JPEGImages" / f"{i}.jpg", quality=95)
            Image.fromarray(mask, "L").save(root / "SegmentationClass" / f"{i}.png")
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


def majority_miou(split: Split) -> float:
    """mIoU of predicting the most frequent class everywhere (the trivial baseline)."""
    masks = [torch.from_numpy(split.get(i)[1]).long() for i in range(split.n)]
    counts = torch.bincount(torch.cat([m[m != 255] for m in masks]), minlength=len(split.classes))
    confusion = sum(metrics.confusion_matrix(torch.full_like(m, int(counts.argmax())), m, len(split.classes))
                    for m in masks)
    return metrics.mean_iou(confusion)


@pytest.fixture(scope="module")
def model():
    import maskclip

    return maskclip.load("tiny-shapes")


def test_probe_learns_colour_bands_from_a_voc_tree(tmp_path, capsys):
    root = colour_voc_tree(tmp_path / "VOC2012")
    out = tmp_path / "probe.json"
    code = main(["eval", "segmentation-probe", "--benchmark", "voc21", "--root", str(root), "--model", "tiny-shapes",
                 "--size", "64", "--max-iter", "100", "--no-progress", "--out", str(out)])
    assert code == 0 and "mIoU" in capsys.readouterr().out
    r = json.loads(out.read_text())
    assert (r["task"], r["n_train"], r["n_val"], r["model"]) == ("segmentation_probe", 12, 4, "tiny-shapes")
    assert r["protocol"]["features"].startswith("dense_features(method='vanilla')")
    # three easy classes: one class everywhere scores about 0.14 mIoU here; the probe gets most pixels right
    assert r["miou"] > 0.6 and r["pixel_accuracy"] > 0.8
    assert r["per_class_iou"]["background"] > 0.5 and r["per_class_iou"]["aeroplane"] > 0.5
    assert r["per_class_iou"]["person"] is None  # absent from labels and predictions


def test_probe_beats_the_majority_baseline_on_the_synthetic_benchmark(model):
    train, val = spec_split("synthetic:train,n=24,size=64"), spec_split("synthetic:test,n=8,size=64")
    r = segmentation_probe(model, train, val, size=64, weight_decay=1e-3, max_iter=60, patches_per_image=48,
                           progress=False)
    assert r["n_train_patches"] == 24 * 48 and r["protocol"]["patches_per_image"] == 48
    assert r["miou"] > majority_miou(val) + 0.03  # measured 0.178 against 0.101 (64 px, an 8 x 8 grid)


def test_probe_refuses_mismatched_classes_and_bad_arguments(model):
    a = Split("a", 1, lambda i: colour_pair(np.random.default_rng(i)), ["x", "y", "z"])
    b = Split("b", 1, a.get, ["x", "y"])
    with pytest.raises(InputError, match="classes differ"):
        segmentation_probe(model, a, b, progress=False)
    with pytest.raises(InputError, match="weight_decay"):
        segmentation_probe(model, a, a, weight_decay=-1, progress=False)
    with pytest.raises(InputError, match="patches_per_image"):
        segmentation_probe(model, a, a, patches_per_image=0, progress=False)
    bad = Split("bad", 1, lambda i: (colour_pair(np.random.default_rng(0))[0], np.full((32, 32), 7, np.uint8)),
                ["x", "y", "z"])
    with pytest.raises(InputError, match="below 3"):
        segmentation_probe(model, bad, a, progress=False)


def test_probe_cli_needs_its_data(capsys):
    code = main(["eval", "segmentation-probe", "--train", "synthetic:train,n=2", "--model", "tiny-shapes"])
    assert code == 2 and "--train needs --test" in capsys.readouterr().err


def test_probe_cli_has_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", "segmentation-probe", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "usage: maskclip eval segmentation-probe" in out and "--patches-per-image" in out
