"""Each public call checks each input once, at the public method; the code below it takes checked tensors."""
import collections
import sys

import pytest
import torch
from PIL import Image

from maskclip import dense, segmentation, transforms, zero_shot
from maskclip.eval import zero_shot_segmentation

CHECKS = [(zero_shot, "check_labels"), (zero_shot, "resolve_templates"), (dense, "resolve_method"),
          (segmentation, "check_window"), (transforms, "_check_pil"), (transforms, "_check_tensor")]


@pytest.fixture
def calls(monkeypatch):
    """Counts of each check function's calls while the test runs, wherever in maskclip it is imported."""
    counts = collections.Counter()
    for module, name in CHECKS:
        check = getattr(module, name)

        def counting(*args, _check=check, _name=name, **kwargs):
            counts[_name] += 1
            return _check(*args, **kwargs)
        for mod in [m for n, m in sys.modules.items() if n.startswith("maskclip")]:
            for attr, value in list(vars(mod).items()):
                if value is check:
                    monkeypatch.setattr(mod, attr, counting)
    return counts


PIL_IMAGE = Image.new("RGB", (80, 48), (200, 30, 30))
PIL_IMAGE16 = Image.new("I;16", (80, 48), 30000)
FLOAT_IMAGE = torch.randn(1, 3, 48, 80)

CASES = {
    "classify": (lambda m: m.classify(PIL_IMAGE, ["a", "b"], templates="imagenet_7"),
                 {"check_labels": 1, "resolve_templates": 1, "_check_pil": 1}),
    "classify of two images": (lambda m: m.classify([PIL_IMAGE, torch.randn(3, 64, 64)], ["a", "b"]),
                               {"check_labels": 1, "resolve_templates": 1, "_check_pil": 1, "_check_tensor": 1}),
    "zero_shot_classifier": (lambda m: m.zero_shot_classifier(["a", "b", "a"], ["a {}", "the {}"]),
                             {"check_labels": 1, "resolve_templates": 1}),
    "segment in windows": (lambda m: m.segment(PIL_IMAGE, ["a", "b"], method="maskclip", window=32, stride=16),
                           {"check_labels": 1, "resolve_templates": 1, "resolve_method": 1, "check_window": 1,
                            "_check_pil": 1}),
    "segment a tensor": (lambda m: m.segment(FLOAT_IMAGE, ["a", "b"]),
                         {"check_labels": 1, "resolve_templates": 1, "resolve_method": 1, "check_window": 1,
                          "_check_tensor": 1}),
    "dense_features": (lambda m: m.dense_features(PIL_IMAGE, method="zhou"), {"resolve_method": 1, "_check_pil": 1}),
    "dense_features of a tensor": (lambda m: m.dense_features(FLOAT_IMAGE), {"resolve_method": 1, "_check_tensor": 1}),
    "encode_image": (lambda m: m.encode_image(PIL_IMAGE), {"_check_pil": 1}),
    "encode_image of 16-bit and RGBA images": (lambda m: m.encode_image([PIL_IMAGE16, PIL_IMAGE.convert("RGBA")]),
                                               {"_check_pil": 2}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_public_call_checks_each_input_once(model, calls, case):
    call, expected = CASES[case]
    call(model)
    assert dict(calls) == expected


def test_segmentation_eval_checks_each_method_once_not_per_image(model, calls):
    zero_shot_segmentation(model, "synthetic:test,n=3", methods=["zhou", "clearclip"], window=32, progress=False)
    assert calls["resolve_method"] == 2 and calls["check_window"] == 1
    assert calls["_check_pil"] == 3 and calls["_check_tensor"] == 0  # each image once, not once per method or window
