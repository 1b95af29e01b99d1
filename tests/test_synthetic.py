"""The synthetic shapes benchmark: determinism, masks that match the picture, captions, conventions."""
import hashlib

import numpy as np
import pytest
from torch.utils.data import DataLoader

from maskclip.datasets.captions import relation
from maskclip.datasets.scene import Obj, Scene, vocabulary
from maskclip.datasets.spec import parse_size
from maskclip.datasets.synthetic import COLOURS, SEGMENTATION_CLASSES, SHAPES, SyntheticShapes, classnames
from maskclip.errors import InputError


def _digest(sample) -> str:
    h = hashlib.sha256(sample.image.tobytes())
    h.update(sample.mask.tobytes())
    h.update("\n".join(sample.captions).encode())
    return h.hexdigest()


def test_same_seed_gives_identical_samples():
    a, b = SyntheticShapes("train", size=48, n=6, seed=3), SyntheticShapes("train", size=48, n=6, seed=3)
    for i in range(6):
        assert _digest(a[i]) == _digest(b[i])
        assert a[i].meta == b[i].meta


def test_a_sample_does_not_depend_on_access_order_or_dataset_length():
    short, long = SyntheticShapes("val", size=32, n=8), SyntheticShapes("val", size=32, n=500)
    backwards = [_digest(short[i]) for i in reversed(range(8))][::-1]
    assert backwards == [_digest(long[i]) for i in range(8)]


def test_samples_are_identical_whatever_the_dataloader_worker_count():
    ds = SyntheticShapes("train", size=32, n=6)
    single = [_digest(s) for batch in DataLoader(ds, batch_size=2, collate_fn=list) for s in batch]
    multi = [_digest(s) for batch in DataLoader(ds, batch_size=2, num_workers=2, collate_fn=list) for s in batch]
    assert single == multi


def test_different_seeds_give_different_images():
    a, b = SyntheticShapes("train", size=32, n=5, seed=0), SyntheticShapes("train", size=32, n=5, seed=1)
    assert all(_digest(a[i]) != _digest(b[i]) for i in range(5))


def test_splits_share_no_image():
    digests = {split: {_digest(s) for s in SyntheticShapes(split, size=32, n=30)} for split in ("train", "val", "test")}
    assert all(len(d) == 30 for d in digests.values())
    assert not digests["train"] & digests["val"] and not digests["train"] & digests["test"]
    assert not digests["val"] & digests["test"]


def test_scene_captions_and_label_are_the_same_at_every_size():
    small, large = SyntheticShapes("test", size=32, n=5), SyntheticShapes("test", size=96, n=5)
    for i in range(5):
        s, t = small[i], large[i]
        assert s.captions == t.captions and s.meta["label"] == t.meta["label"]
        assert [(o["shape"], o["colour"]) for o in s.meta["objects"]] == \
            [(o["shape"], o["colour"]) for o in t.meta["objects"]]
        assert s.image.size == (32, 32) and t.image.size == (96, 96)


def test_non_square_sizes_give_matching_image_and_mask():
    s = SyntheticShapes("train", size=(40, 72), n=1)[0]
    assert s.image.size == (72, 40) and s.mask.shape == (40, 72) and s.mask.dtype == np.uint8
    assert parse_size("40x72") == (40, 72) and parse_size("64") == 64


def test_mask_holds_exactly_the_visible_objects_pixels():
    ds = SyntheticShapes("test", size=64, n=25)
    for i in range(25):
        s = ds[i]
        objects = s.meta["objects"]
        expected = {0} | {1 + SHAPES.index(o["shape"]) for o in objects if o["visible_px"] > 0}
        assert set(np.unique(s.mask).tolist()) <= expected and set(np.unique(s.mask).tolist()) >= expected - {0}
        for cls in range(1, len(SEGMENTATION_CLASSES)):
            visible = sum(o["visible_px"] for o in objects if 1 + SHAPES.index(o["shape"]) == cls)
            assert int((s.mask == cls).sum()) == visible
        assert 1 <= len(objects) <= 3


def test_object_pixels_have_the_objects_colour():
    """The picture is drawn where the mask says: inside an object, the mean colour is its named colour."""
    base = np.array([vocabulary()["colours"][c] for c in COLOURS], dtype=float)
    ds = SyntheticShapes("test", size=64, n=60)
    hits, total = 0, 0
    for i in range(60):
        s = ds[i]
        shapes = [o["shape"] for o in s.meta["objects"]]
        for o in s.meta["objects"]:
            if shapes.count(o["shape"]) > 1 or o["outline"]:
                continue
            region = s.mask == 1 + SHAPES.index(o["shape"])
            inner = region.copy()  # drop the anti-aliased rim: keep pixels whose 4 neighbours are inside too
            inner[1:] &= region[:-1]
            inner[:-1] &= region[1:]
            inner[:, 1:] &= region[:, :-1]
            inner[:, :-1] &= region[:, 1:]
            if inner.sum() < 10:
                continue
            mean = np.asarray(s.image, dtype=float)[inner].mean(0)
            hits += COLOURS[int(np.argmin(((base - mean) ** 2).sum(1)))] == o["colour"]
            total += 1
    assert total >= 40 and hits / total >= 0.95


def test_label_is_the_main_objects_shape_or_colour_and_shape():
    shape_ds = SyntheticShapes("val", size=64, n=20)
    colour_ds = SyntheticShapes("val", size=64, n=20, label="colour_shape")
    assert shape_ds.classnames == list(SHAPES) and len(colour_ds.classnames) == 80
    for i in range(20):
        s, c = shape_ds[i], colour_ds[i]
        assert s.meta["label_name"] == SHAPES[s.meta["label"]]
        biggest = max(o["visible_px"] for o in s.meta["objects"])
        main = [o for o in s.meta["objects"] if o["shape"] == s.meta["label_name"]]
        assert max(o["visible_px"] for o in main) >= 0.8 * biggest
        assert c.meta["label_name"].endswith(" " + s.meta["label_name"])
        assert classnames("colour_shape")[c.meta["label"]] == c.meta["label_name"]
        assert any(f"{o['colour']} {o['shape']}" == c.meta["label_name"] for o in main)


def test_every_caption_names_every_object_by_colour_and_shape():
    v = vocabulary()
    ds = SyntheticShapes("train", size=32, n=30, captions=4)
    for i in range(30):
        s = ds[i]
        assert len(s.captions) == 4
        if len(s.meta["objects"]) > 1:
            assert len(set(s.captions)) == 4
        for caption in s.captions:
            for o in s.meta["objects"]:
                assert any(w in caption for w in v["shape_words"][o["shape"]]), (caption, o)
                assert any(w in caption for w in v["colour_words"][o["colour"]]), (caption, o)


def _obj(x, y):
    return Obj("circle", "red", "small", 0.1, (x, y), 0.0, (1.0, 1.0), (200.0, 0.0, 0.0), (0.0, 0.0), False)


def test_relations_follow_positions_and_occlusion():
    scene = Scene(1.0, "plain", {}, (_obj(0.2, 0.5), _obj(0.8, 0.45), _obj(0.75, 0.9)), (0.1, 0.1, 0.1),
                  {(2, 1): 0.3}, 0.0, 0)
    assert relation(scene, 0, 1) == "left" and relation(scene, 1, 0) == "right"
    assert relation(scene, 2, 1) == "front" and relation(scene, 1, 2) == "behind"
    plain = Scene(1.0, "plain", {}, (_obj(0.5, 0.2), _obj(0.55, 0.8)), (0.1, 0.1), {}, 0.0, 0)
    assert relation(plain, 0, 1) == "above" and relation(plain, 1, 0) == "below"


@pytest.mark.parametrize("kwargs", [{"split": "dev"}, {"size": 8}, {"size": (64, 10)}, {"n": -1},
                                    {"label": "colour"}, {"captions": 0}, {"seed": 1.5}])
def test_bad_arguments_raise_input_error(kwargs):
    with pytest.raises(InputError):
        SyntheticShapes(**kwargs)


def test_index_out_of_range_raises_index_error():
    ds = SyntheticShapes("test", size=32, n=3)
    with pytest.raises(IndexError):
        ds[3]
    assert _digest(ds[-1]) == _digest(ds[2])
