"""Sliding windows batched (all windows of an image, and across images): the same scores as one window at a time."""
import pytest
import torch
import torch.nn.functional as F

from maskclip import segmentation
from maskclip.errors import InputError

from test_segmentation_benchmarks import make_tree

METHODS = ["vanilla", "zhou", "sclip", "clearclip", "naclip", "resclip"]


def one_window_at_a_time(features, x, out_size, classifier, patch_size, window, stride):
    """mmseg's ``slide_inference`` as the reference repositories run it: a forward pass per window."""
    h, w = x.shape[-2:]
    total, count = torch.zeros(1, classifier.shape[1], h, w), torch.zeros(1, 1, h, w)
    tops = segmentation._windows(h, window, stride) if window else [0]
    lefts = segmentation._windows(w, window, stride) if window else [0]
    for top in tops:
        for left in lefts:
            crop = x[..., top:top + window, left:left + window] if window else x
            ch, cw = crop.shape[-2:]
            ph, pw = (-ch) % patch_size, (-cw) % patch_size
            feats = F.normalize(features(F.pad(crop, (0, pw, 0, ph))), dim=1)
            s = torch.einsum("behw,ec->bchw", feats, classifier)
            s = F.interpolate(s, size=(ch + ph, cw + pw), mode="bilinear", align_corners=False)[..., :ch, :cw]
            total[..., top:top + ch, left:left + cw] += s
            count[..., top:top + ch, left:left + cw] += 1
    return F.interpolate(total / count, size=out_size, mode="bilinear", align_corners=False)[0]


@pytest.fixture(scope="module")
def classifier(model):
    return model.zero_shot_classifier(["red", "blue", "green", "a dog"])


def _images(sizes):
    g = torch.Generator().manual_seed(0)
    return [(torch.rand(1, 3, h, w, generator=g), (h + 3, w - 2), k) for k, (h, w) in enumerate(sizes)]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("window, stride", [(32, 16), (24, 8), (None, None)])
def test_batched_windows_across_images_equal_one_window_at_a_time(model, classifier, method, window, stride):
    # mixed sizes: 56 x 72 and 40 x 40 have 24/32-px windows of one shape; 20 x 48 is smaller than a window
    # in height, so its windows have another shape and start a new batch; whole images differ in shape
    inputs = _images([(56, 72), (40, 40), (20, 48), (56, 72), (37, 53)])
    features = lambda x: model._dense_features(x, method)  # noqa: E731
    p = model.config.vision.patch_size
    with torch.no_grad():
        expected = [one_window_at_a_time(features, x, size, classifier, p, window, stride) for x, size, _ in inputs]
        for batch_size in (1, 3, 8, 100):
            got = list(segmentation.scores_many(features, inputs, classifier, p, window, stride, batch_size))
            assert [k for k, _ in got] == [k for _, _, k in inputs]  # every image once, in order
            for (_, s), e in zip(got, expected):
                assert s.shape == e.shape
                assert (s - e).abs().max() <= 1e-5 * e.abs().max()


def test_images_come_out_as_soon_as_their_windows_are_scored(model, classifier):
    """A generator of inputs is read lazily: an image is yielded before the next batch needs more images."""
    read = []

    def inputs():
        for x, size, k in _images([(32, 32)] * 6):
            read.append(k)
            yield x, size, k

    features = lambda x: model._dense_features(x, "clearclip")  # noqa: E731
    stream = segmentation.scores_many(features, inputs(), classifier, model.config.vision.patch_size,
                                      batch_size=2)
    assert next(stream)[0] == 0 and read == [0, 1]  # one batch: two whole images
    assert [k for k, _ in stream] == [1, 2, 3, 4, 5]


def test_segment_and_the_benchmark_give_what_one_window_at_a_time_gives(model, classifier, tmp_path):
    from maskclip.eval.segmentation_benchmark import benchmark_segmentation

    root = make_tree("voc20", tmp_path / "VOC2012", ids=("a", "b", "c"), values=(1, 2))
    small = dict(short_side=40, window=32, stride=16, progress=False)
    one = benchmark_segmentation(model, "voc20", root, method="naclip", batch_size=1, **small)
    many = benchmark_segmentation(model, "voc20", root, method="naclip", batch_size=16, **small)
    assert many["per_class_iou"] == pytest.approx(one["per_class_iou"], abs=1e-12, nan_ok=True)
    assert (one["batch_size"], many["batch_size"]) == (1, 16)
    with pytest.raises(InputError, match="batch_size must be a positive integer; got 0"):
        benchmark_segmentation(model, "voc20", root, batch_size=0, **small)


def test_synthetic_segmentation_eval_does_not_depend_on_the_batch(model):
    from maskclip.eval import zero_shot_segmentation

    spec = "synthetic:test,n=6,size=32"
    one = zero_shot_segmentation(model, spec, methods=["clearclip", "naclip"], progress=False, batch_size=1)
    many = zero_shot_segmentation(model, spec, methods=["clearclip", "naclip"], progress=False, batch_size=4)
    assert set(one["methods"]) == {"clearclip", "naclip"} and one["n"] == many["n"] == 6
    assert many["methods"] == one["methods"]  # every IoU and accuracy, both background protocols
    with pytest.raises(InputError, match="batch_size must be a positive integer"):
        zero_shot_segmentation(model, spec, progress=False, batch_size=-1)
