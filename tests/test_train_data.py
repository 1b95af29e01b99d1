"""The training data stream: sources, determinism, skipping bad samples, exact resume positions."""
import random

import pytest
import torch

from maskclip.config import PreprocessConfig
from maskclip.errors import InputError
from maskclip.train.augment import ContrastiveView, SimCLRView, crop_box
from maskclip.datasets.spec import expand_braces
from maskclip.train.data import StreamSpec, TrainStream, make_loader, open_source, pick_caption, tar_samples
import train_data as D

PP = PreprocessConfig(image_size=32)


@pytest.fixture(scope="module")
def items():
    return D.make_items(48, size=40, seed=1)


@pytest.fixture(scope="module")
def shards(items, tmp_path_factory):
    return D.write_shards(tmp_path_factory.mktemp("shards"), items, per_shard=12, corrupt={5}, empty_caption={9})


def batches(source, steps, batch=4, seed=0, epoch=0, start=0, offsets=None, workers=0, rank=0, world=1, views=0):
    stream = TrainStream(source, StreamSpec(batch, steps, seed, rank, world, views, context_length=16), PP)
    stream.set_position(epoch, start, offsets)
    return list(make_loader(stream, workers))


def same(a, b):
    return all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in x) and len(a) == len(b)


def test_expand_braces_keeps_zero_padding():
    assert expand_braces("d/{00..02}.tar") == ["d/00.tar", "d/01.tar", "d/02.tar"]
    assert expand_braces("a{1..2}b{7..8}") == ["a1b7", "a1b8", "a2b7", "a2b8"]
    assert expand_braces("plain.tar") == ["plain.tar"]


def test_tar_samples_group_members_by_key(shards):
    samples = list(tar_samples(shards[0]))
    assert len(samples) == 12
    key, parts = samples[0]
    assert key == "00000000" and set(parts) == {"png", "txt"}


def test_stream_batches_have_the_model_inputs(shards):
    source = open_source([shards[0].replace("00000", "{00000..00003}")])
    out = batches(source, steps=3, views=2)
    b = out[0]
    assert b["image"].shape == (4, 3, 32, 32) and b["text"].shape == (4, 16) and b["text"].dtype == torch.long
    assert b["views"].shape == (2, 4, 3, 32, 32)
    assert (b["text"][:, 0] == 49406).all()


def test_undecodable_and_uncaptioned_samples_are_skipped_and_counted(shards):
    # 48 good samples: more than the 46 good ones of a pass, so the whole first pass (with its 2 bad ones) is read
    out = batches(open_source(shards), steps=12, batch=4)
    assert sum(int(b["skipped"]) for b in out) >= 2
    assert all(b["image"].shape[0] == 4 for b in out)


def test_data_without_a_usable_sample_is_an_error_not_an_endless_loop(items, tmp_path, monkeypatch):
    from maskclip.train import data

    monkeypatch.setattr(data, "MAX_FAILED_IN_ROW", 30)  # the same rule as 1000, reached sooner
    bad = D.write_shards(tmp_path, items[:12], per_shard=12, corrupt=set(range(12)))
    with pytest.raises(InputError, match="30 training samples in a row could not be read"):
        batches(open_source(bad), steps=2, batch=4)
    # a few bad samples among good ones never reach it: the count restarts at every good sample
    monkeypatch.setattr(data, "MAX_FAILED_IN_ROW", 4)  # 3 bad ones: at most 3 in a row, however shuffled
    mixed = D.write_shards(tmp_path / "mixed", items[:12], per_shard=12, corrupt={1, 5, 9})
    assert all(b["image"].shape[0] == 4 for b in batches(open_source(mixed), steps=3, batch=4))


def test_same_seed_same_batches_other_epoch_other_order(shards):
    source = open_source(shards)
    a, b = batches(source, 4), batches(source, 4)
    assert same(a, b)
    c = batches(source, 4, epoch=1)
    assert not torch.equal(a[0]["text"], c[0]["text"])


@pytest.mark.parametrize("workers", [0, 2])
def test_resuming_at_a_recorded_position_gives_the_remaining_batches(shards, workers):
    source = open_source(shards)
    full = batches(source, 8, workers=workers)
    k, slots = 3, max(workers, 1)
    offsets = [0] * slots
    for b in full[:k]:
        offsets[int(b["slot"])] = int(b["consumed"])
    rest = batches(source, 8, start=k, offsets=offsets, workers=workers)
    assert len(rest) == 8 - k
    assert same(rest, full[k:])


def test_each_rank_gets_the_same_number_of_batches_from_its_own_data(items, tmp_path):
    path = D.write_csv(tmp_path, items[:24])
    source = open_source([path])
    r0 = batches(source, 2, batch=3, rank=0, world=2)
    r1 = batches(source, 2, batch=3, rank=1, world=2)
    assert len(r0) == len(r1) == 2
    assert not torch.equal(r0[0]["image"], r1[0]["image"])


def test_csv_and_tsv_sources(items, tmp_path):
    csv_path = D.write_csv(tmp_path, items[:8])
    tsv_path = D.write_csv(tmp_path, items[:8], name="train.tsv", delimiter="\t")
    for path in (csv_path, tsv_path):
        source = open_source([path])
        assert source.size == 8
        assert batches(source, 2)[0]["image"].shape == (4, 3, 32, 32)


def test_bad_sources_raise_clear_errors(tmp_path, items):
    with pytest.raises(InputError, match="no training data"):
        open_source([])
    with pytest.raises(InputError, match="does not exist"):
        open_source([str(tmp_path / "missing-{000..002}.tar")])
    with pytest.raises(InputError, match="does not exist"):
        open_source([str(tmp_path / "missing.csv")])
    bad = tmp_path / "bad.csv"
    bad.write_text("path,text\na.png,a cat\n")
    with pytest.raises(InputError, match="expected columns 'image' and 'caption'"):
        open_source([str(bad)])
    small = D.write_csv(tmp_path / "small", items[:2])
    with pytest.raises(InputError, match="fewer than"):
        batches(open_source([small]), 1, batch=1, workers=0, rank=0, world=4)


def test_caption_choice_and_empty_captions():
    rng = random.Random(0)
    assert pick_caption("a title\n\nthe description", rng) in ("a title", "the description")
    assert pick_caption(["  only one  "], rng) == "only one"
    with pytest.raises(ValueError):
        pick_caption(" \n ", rng)


def test_crop_box_respects_scale_and_stays_inside():
    rng = random.Random(0)
    for _ in range(200):
        left, top, w, h = crop_box(300, 200, (0.5, 1.0), rng)
        assert 0 <= left and left + w <= 300 and 0 <= top and top + h <= 200
        assert 0.5 * 60000 * 0.9 <= w * h <= 60000


def test_views_are_normalised_tensors_and_depend_on_the_rng(items):
    img = items[0][0]
    a = ContrastiveView(PP)(img, random.Random(1))
    b = ContrastiveView(PP)(img, random.Random(1))
    c = SimCLRView(PP)(img, random.Random(2))
    assert a.shape == c.shape == (3, 32, 32) and torch.equal(a, b)
    assert a.min() < 0 < a.max()


def test_synthetic_training_data_is_pooled_at_the_model_size_with_the_same_pixels():
    import numpy as np
    from maskclip.datasets import SyntheticShapes
    from maskclip.train.data import SyntheticPool

    ds = SyntheticShapes("train", size=24, n=300, version=2)
    serial, parallel = SyntheticPool(ds), SyntheticPool(ds, workers=2)
    assert serial.images.shape == (300, 24, 24, 3) and torch.equal(serial.images, parallel.images)
    for i in (0, 257, 299):
        assert np.array_equal(np.asarray(parallel[i].image), np.asarray(ds[i].image))
        assert parallel[i].captions == ds[i].captions == serial[i].captions
    source = open_source(["synthetic:train,n=8"], image_size=24)
    assert source.record(3).image.size == (24, 24)
    assert open_source(["synthetic:train,n=8,size=16"], image_size=24).record(3).image.size == (16, 16)
    assert open_source(["synthetic:train,n=8"]).record(0).image.size == (48, 48)  # no model size given


def test_a_pool_cache_is_written_once_and_read_back(tmp_path):
    from maskclip.datasets import SyntheticShapes
    from maskclip.train.data import SyntheticPool, pool_digest

    ds = SyntheticShapes("train", size=16, n=12, version=2)
    first = SyntheticPool(ds, cache=str(tmp_path))
    files = list(tmp_path.glob("synthetic-*.pt"))
    assert [f.name for f in files] == [f"synthetic-{pool_digest(ds)}.pt"]
    again = SyntheticPool(ds, cache=str(tmp_path))
    assert torch.equal(first.images, again.images) and first.captions == again.captions
    other = SyntheticShapes("train", size=16, n=12, version=1)
    assert pool_digest(other) != pool_digest(ds)
    source = open_source([f"synthetic:train,n=12,size=16,version=2,cache={tmp_path}"])
    assert source.record(5).captions == ds[5].captions and len(list(tmp_path.glob("*.pt"))) == 1


def test_torch_keeps_every_thread_when_the_data_comes_from_memory(shards):
    """The CPU thread rule: a data worker on the synthetic pool needs a fraction of a core, so torch keeps
    all its threads (on 2 idle cores: MaskCLIP 60 samples/s against 35 with one); a worker decoding shards
    takes a core, so torch gets one fewer per worker; ``cpu_threads`` overrides both."""
    from maskclip.train import TrainConfig
    from maskclip.train.loop import cpu_threads

    cfg = TrainConfig.from_preset("tiny", "clip", {"workers": 1})
    pool, disk = open_source(["synthetic:train,n=16"], image_size=32), open_source(shards)
    assert pool.in_memory and not disk.in_memory
    assert cpu_threads(cfg, 2, pool) == 2 and cpu_threads(cfg, 2, disk) == 1
    assert cpu_threads(TrainConfig.from_preset("tiny", "clip", {"workers": 3}), 2, disk) == 1  # never below one
    assert cpu_threads(TrainConfig.from_preset("tiny", "clip", {"workers": 1, "cpu_threads": 3}), 2, pool) == 3
