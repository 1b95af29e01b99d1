"""Tar shards: round trip, identical bytes, corrupt members and truncated shards skipped and counted."""
import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from maskclip.datasets.manifest import find_manifests, read_manifest
from maskclip.datasets.spec import shard_paths
from maskclip.datasets.tar import TarShards
from maskclip.datasets.writer import write_shards
from maskclip.datasets.synthetic import SyntheticShapes
from maskclip.errors import InputError


@pytest.fixture(scope="module")
def dataset():
    return SyntheticShapes("val", size=(32, 40), n=10)


@pytest.fixture(scope="module")
def written(dataset, tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    return write_shards(dataset, folder, shards=3)


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_shards_round_trip_images_masks_captions_and_meta(dataset, written):
    reader = TarShards(written)
    samples = list(reader)
    assert len(samples) == len(dataset) and reader.skipped == 0 and reader.broken_shards == 0
    for i, s in enumerate(samples):
        expected = dataset[i]
        assert np.array_equal(np.asarray(s.image), np.asarray(expected.image))
        assert np.array_equal(s.mask, expected.mask)
        assert s.captions == expected.captions and s.meta == expected.meta


def test_manifest_lists_shards_and_vocabularies(dataset, written):
    manifest = read_manifest(written)
    assert manifest["count"] == 10 and manifest["shards"] == ["val-00000.tar", "val-00001.tar", "val-00002.tar"]
    assert manifest["classnames"] == dataset.classnames
    assert manifest["segmentation_classes"][0] == "background"
    assert find_manifests(written.parent) == [written]
    assert shard_paths(written.parent) == [written.parent / n for n in manifest["shards"]]


def test_same_samples_give_identical_shard_bytes(dataset, written, tmp_path):
    again = write_shards(dataset, tmp_path, shards=3)
    for name in read_manifest(again)["shards"]:
        assert (tmp_path / name).read_bytes() == (written.parent / name).read_bytes()


def test_undecodable_samples_are_skipped_and_counted(dataset, tmp_path):
    good = dataset[0]
    path = tmp_path / "mixed.tar"
    _tar(path, [("a.png", _png(good.image)), ("a.txt", b"first"),
                ("b.png", b"not a png at all"), ("b.txt", b"broken image"),
                ("c.txt", b"no image"),
                ("d.png", _png(good.image)), ("d.mask.png", b"\x89PNG garbage"),
                ("e.jpg", _png(good.image)), ("e.json", b"{not json"),
                ("f.png", _png(good.image)), ("f.txt", b"last")])
    reader = TarShards(path)
    samples = list(reader)
    assert [s.meta["key"] for s in samples] == ["a", "f"]
    assert [s.captions for s in samples] == [["first"], ["last"]]
    assert samples[0].mask is None
    assert reader.skipped == 4 and reader.broken_shards == 0 and len(reader.errors) == 4


def test_truncated_shard_yields_what_precedes_the_break_and_is_counted(written, tmp_path):
    first = read_manifest(written)["shards"][0]
    data = (written.parent / first).read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[:len(data) // 2 + 100])
    reader = TarShards([cut, written.parent / read_manifest(written)["shards"][1]])
    samples = list(reader)
    indices = [s.meta["index"] for s in samples]
    assert reader.broken_shards == 1
    assert 0 < indices.index(3) < 3  # part of the first shard (samples 0-2), in order, with no partial sample
    assert indices == list(range(indices.index(3))) + [3, 4, 5, 6]  # then the whole second shard


def test_img2dataset_layout_reads_with_the_caption_and_no_mask(tmp_path):
    image = Image.new("RGB", (20, 10), (10, 200, 30))
    buf = io.BytesIO()
    image.save(buf, format="JPEG")
    _tar(tmp_path / "00000.tar", [("000000000.jpg", buf.getvalue()), ("000000000.txt", "a green rectangle".encode())])
    (s,) = list(TarShards(tmp_path))
    assert s.captions == ["a green rectangle"] and s.mask is None and s.image.size == (20, 10)
    assert s.meta == {"key": "000000000"}


def test_dataloader_workers_read_each_shard_once(dataset, written):
    loader = DataLoader(TarShards(written), batch_size=None, num_workers=2, collate_fn=lambda s: s.meta["key"])
    assert sorted(loader) == sorted(dataset[i].meta["key"] for i in range(len(dataset)))


def _epoch(reader, epoch):
    reader.set_epoch(epoch)
    return [s.meta["key"] for s in reader]


def test_shuffled_shard_order_depends_on_the_epoch_and_keeps_every_sample(written):
    reader = TarShards(written, shuffle=True, seed=1)
    epochs = [_epoch(reader, e) for e in range(4)]
    assert all(sorted(e) == sorted(epochs[0]) for e in epochs)
    assert len({tuple(e) for e in epochs}) > 1
    assert _epoch(TarShards(written, shuffle=True, seed=1), 2) == epochs[2]


def test_bad_shard_arguments_raise_input_error(dataset, tmp_path):
    with pytest.raises(InputError, match="shards"):
        write_shards(dataset, tmp_path, shards=0)
    with pytest.raises(InputError, match="image_format"):
        write_shards(dataset, tmp_path, image_format="gif")
    with pytest.raises(InputError, match="no .tar"):
        TarShards(tmp_path)
    (tmp_path / "other.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(InputError, match="not a maskclip shard manifest"):
        read_manifest(tmp_path / "other.json")
