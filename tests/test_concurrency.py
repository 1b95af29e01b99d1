"""One loaded model shared by threads gives what sequential calls give.

Every task is first run alone to get its reference; then all tasks run at once from a thread
pool, several rounds, released together by a barrier so they really overlap, and each result
is compared with its reference (bitwise where torch's kernels allow, else within 1e-6).
The tokenizer's shared word cache and the lazily built default tokenizer are hammered the same way.
"""
from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

import maskclip
from fuzzing import count
from maskclip import tokenizer as tokenizer_module
from maskclip.tokenizer import Tokenizer
from tokenizer_corpus import corpus

THREADS = 8
ROUNDS = 3


def _image(seed: int, w: int = 70, h: int = 50) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def _tasks(model, tmp_path):
    """(name, call) pairs covering every public encoder entry point and input form."""
    path = tmp_path / "img.png"
    _image(9).save(path)
    g = torch.Generator().manual_seed(0)
    floats = torch.randn(3, 3, 64, 64, generator=g)
    pixels = torch.randint(0, 256, (2, 3, 48, 80), generator=g, dtype=torch.uint8)
    texts = corpus()[:40]
    labels = ["a red square", "a blue circle", "a photo of a dog", "noise"]
    return [
        ("encode_image(PIL)", lambda: model.encode_image([_image(1), _image(2, 33, 90)])),
        ("encode_image(path)", lambda: model.encode_image(str(path), normalize=True)),
        ("encode_image(float)", lambda: model.encode_image(floats)),
        ("encode_image(uint8)", lambda: model.encode_image(pixels)),
        ("encode_text(list)", lambda: model.encode_text(texts)),
        ("encode_text(str)", lambda: model.encode_text("a diagram of the Eiffel tower", normalize=True)),
        ("encode_text(tokens)", lambda: model.encode_text(model.tokenize(texts[:5]))),
        ("classify", lambda: model.classify([_image(3), _image(4)], labels, templates="imagenet_7")),
        ("dense_features", lambda: model.dense_features(_image(5), method="clearclip")),
        ("segment", lambda: model.segment(_image(6, 90, 40), labels[:3], return_scores=True)[1]),
    ]


def _run_together(calls, threads: int):
    """Run ``calls`` in batches of ``threads``, each batch released at once by a barrier; results in order."""
    results = []
    with ThreadPoolExecutor(threads) as pool:
        for i in range(0, len(calls), threads):
            batch = calls[i:i + threads]
            barrier = threading.Barrier(len(batch))

            def run(call, barrier=barrier):
                barrier.wait(timeout=60)
                with torch.no_grad():  # grad mode is per thread; the reference runs without autograd too
                    return call()

            results += list(pool.map(run, batch))
    return results


def test_encoders_called_from_many_threads_give_the_sequential_results(model, tmp_path):
    tasks = _tasks(model, tmp_path)
    with torch.no_grad():
        reference = {name: call() for name, call in tasks}
    order = [t for _ in range(ROUNDS) for t in tasks]
    random.Random(0).shuffle(order)
    results = _run_together([call for _, call in order], THREADS)
    for (name, _), out in zip(order, results):
        ref = reference[name]
        assert out.shape == ref.shape and out.dtype == ref.dtype, name
        if torch.equal(out, ref):
            count("threaded calls equal to sequential", "bitwise")
        else:
            assert torch.allclose(out, ref, rtol=0, atol=1e-6), f"{name}: {(out - ref).abs().max():.3g}"
            count("threaded calls equal to sequential", "within 1e-6")


def test_tokenizer_cache_emptied_under_contention_keeps_ids_exact():
    texts = corpus()
    expected = Tokenizer()(texts)
    shared = Tokenizer(cache_size=1)  # every new word empties the cache under the other threads
    chunks = [list(range(i, len(texts), THREADS)) for i in range(THREADS)]
    calls = [(lambda idx=idx: (idx, shared([texts[i] for i in idx]))) for idx in chunks * 4]
    for idx, ids in _run_together(calls, THREADS * 2):
        assert torch.equal(ids, expected[idx])
        count("tokenizer calls under contention", "exact")


def test_the_default_tokenizer_is_built_once_when_first_asked_for_by_many_threads(monkeypatch):
    built = []
    real_init = Tokenizer.__init__

    def counting_init(self, *args, **kwargs):
        built.append(self)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(tokenizer_module, "_default_tokenizer", None)
    monkeypatch.setattr(Tokenizer, "__init__", counting_init)
    got = _run_together([tokenizer_module.get_tokenizer] * THREADS, THREADS)
    assert len(built) == 1 and all(t is built[0] for t in got)


@pytest.mark.parametrize("writers", [4])
def test_concurrent_saves_to_one_folder_leave_one_whole_checkpoint(tmp_path, writers):
    from conftest import tiny_model

    models = [tiny_model(seed=s) for s in range(writers)]
    folder = tmp_path / "shared"
    _run_together([lambda m=m: m.save_pretrained(folder) for m in models], writers)
    loaded = maskclip.load(folder).state_dict()
    winners = [m for m in models if all(torch.equal(loaded[k], v) for k, v in m.state_dict().items())]
    assert len(winners) == 1  # one writer's file, whole; never a mix of bytes
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]


def test_loads_of_one_folder_from_many_threads_give_identical_models(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    loaded = _run_together([lambda: maskclip.load(tmp_path / "m")] * 4, 4)
    ref = model.state_dict()
    for m in loaded:
        assert all(torch.equal(m.state_dict()[k], v) for k, v in ref.items())
