"""CLIP_benchmark runs maskclip models: its zero-shot classification gives maskclip.eval's numbers."""
import json
import sys

import pytest
from torch.utils.data import DataLoader

import maskclip
from maskclip.datasets import SyntheticShapes, templates
from maskclip.eval import zero_shot_classification
from maskclip.integrations import clip_benchmark as integration

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """``root/<colour shape>/<key>.png``: 40 synthetic test images (48 px) in class subfolders, ImageNet layout.

    Colour + shape classes: ``tiny-shapes`` learned colours, not shapes alone (docs/results.md).
    """
    root = tmp_path_factory.mktemp("shapes")
    ds = SyntheticShapes("test", size=48, n=40, seed=3, label="colour_shape")
    for i in range(len(ds)):
        sample = ds[i]
        folder = root / sample.meta["label_name"]
        folder.mkdir(exist_ok=True)
        sample.image.save(folder / f"{sample.meta['key']}.png")
    return root


@pytest.fixture
def registered():
    """``register()`` applied to CLIP_benchmark's registry, undone afterwards."""
    from clip_benchmark import models

    funcs, types = dict(models.TYPE2FUNC), list(models.MODEL_TYPES)
    integration.register()
    yield models
    models.TYPE2FUNC.clear()
    models.TYPE2FUNC.update(funcs)
    models.MODEL_TYPES[:] = types  # in place: clip_benchmark.cli holds the same list


@pytest.fixture
def numpy_safe_accuracy(monkeypatch):
    """CLIP_benchmark 1.6.2's ``accuracy`` calls ``float()`` on a 1-element array, a TypeError since
    NumPy 2.4, whatever the model; this is the same computation with ``.item()``."""
    from clip_benchmark.metrics import zeroshot_classification

    def accuracy(output, target, topk=(1,)):
        pred = output.topk(max(topk), 1, True, True)[1].t()
        correct = pred.eq(target.view(1, -1).expand_as(pred))
        return [correct[:k].reshape(-1).float().sum().item() / len(target) for k in topk]

    monkeypatch.setattr(zeroshot_classification, "accuracy", accuracy)


def test_register_adds_the_maskclip_type_that_load_clip_accepts(registered):
    model, transform, tokenizer = registered.load_clip(model_type="maskclip", model_name="tiny-shapes",
                                                       pretrained="bundled", cache_dir=None, device="cpu")
    assert isinstance(model, maskclip.DualEncoder) and model.config.name == "tiny-shapes"
    assert transform is model.preprocess
    assert tokenizer(["a circle", "a star"]).shape == (2, model.config.text.context_length)
    integration.register()  # twice is harmless
    assert registered.MODEL_TYPES.count("maskclip") == 1


def test_pretrained_that_is_a_path_is_what_gets_loaded(tmp_path):
    from conftest import tiny_model

    tiny_model().save_pretrained(tmp_path / "ckpt")
    model, _, _ = integration.load_maskclip("my-run", pretrained=str(tmp_path / "ckpt"))
    assert model.config.name == "tiny-test"
    model, _, _ = integration.load_maskclip("tiny-shapes", pretrained="a-label-only")
    assert model.config.name == "tiny-shapes"


def test_clip_benchmark_zero_shot_on_an_image_folder_gives_maskclip_eval_top1(image_folder, numpy_safe_accuracy):
    from clip_benchmark.metrics import zeroshot_classification
    from torchvision.datasets import ImageFolder

    model, transform, tokenizer = integration.load_maskclip("tiny-shapes", pretrained="bundled")
    dataset = ImageFolder(str(image_folder), transform=transform)
    ours = templates()
    theirs = [t.replace("{}", "{c}") for t in ours]  # CLIP_benchmark fills templates with str.format(c=...)
    metrics = zeroshot_classification.evaluate(model, DataLoader(dataset, batch_size=16), tokenizer, dataset.classes,
                                               theirs, device="cpu", amp=False)
    expected = zero_shot_classification(model, str(image_folder), classnames=dataset.classes, templates=ours,
                                        batch_size=16, progress=False)
    assert expected["n"] == len(dataset) == 40
    assert metrics["acc1"] == expected["top1"]
    assert metrics["mean_per_class_recall"] == pytest.approx(expected["mean_per_class_recall"], abs=1e-9)
    assert expected["top1"] > 3 / len(dataset.classes)  # far above chance: the classes are told apart


@pytest.mark.filterwarnings("ignore:A single label was found")  # sklearn, on the one-image "dummy" set
def test_the_module_runs_clip_benchmark_command_line_with_maskclip_models(registered, numpy_safe_accuracy,
                                                                         tmp_path, monkeypatch):
    out = tmp_path / "result.json"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["clip_benchmark", "eval", "--model_type", "maskclip", "--model", "tiny-shapes",
                                      "--pretrained", "bundled", "--dataset", "dummy", "--num_workers", "0",
                                      "--no_amp", "--quiet", "--output", str(out)])
    integration.main()
    result = json.loads(out.read_text())
    assert (result["model"], result["pretrained"], result["task"]) == ("tiny-shapes", "bundled", "zeroshot_classification")
    assert 0 <= result["metrics"]["acc1"] <= 1
