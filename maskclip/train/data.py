"""Training data: image-caption sources and a deterministic, resumable stream of batches.

Sources (``open_source``) are what ``maskclip.datasets`` reads (``maskclip.datasets.spec``):

- tar shards in the img2dataset/webdataset layout (``{key}.jpg|png|webp`` + ``{key}.txt`` or
  ``.json`` captions), given as paths, globs, brace ranges (``data/{00000..00099}.tar``), a
  manifest or a folder: for web-scale corpora such as YFCC-15M, CC3M, CC12M; read sequentially;
- a CSV or TSV file with an image-path column and a caption column (paths relative to the file);
- ``synthetic:train[,n=N,size=S,seed=K,version=V,...]``, the generated benchmark (each sample from
  its own seed), rendered at the model's image size unless the spec gives ``size=``, and once:
  ``SyntheticPool`` keeps every sample in memory (``uint8 [N, H, W, 3]``, rendered by
  ``workers`` processes; kept on disk with ``cache=DIR`` in the spec), so training reads pixels
  instead of drawing them (a 32 px image takes about 5 ms to draw, as long as a ``shapes``
  training step spends on it).

Every source hands out samples as zero-argument loaders (``() -> maskclip.datasets.Sample``),
so the stream can pass over samples without decoding them. The stream is split into "slots",
one per (rank, data-loader worker). Each slot reads its own part of the data in an order fixed
by (seed, epoch), decodes (``maskclip.datasets.read_image``: the decoder inference uses) and
augments each sample with a generator seeded by its position, and assembles whole per-rank
batches. Every rank yields the same number of batches per epoch (DDP needs it). A batch also
carries how many raw samples its slot has consumed, so a checkpoint can record the exact data
position and a resumed run skips to it without decoding anything. Samples that cannot be
decoded, or have no caption, are skipped and counted in the batch (``skipped``), never silently.
"""
from __future__ import annotations

import functools
import hashlib
import itertools
import json
import multiprocessing
import os
import random
import signal
import tarfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import PIL
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..config import PreprocessConfig
from ..datasets import (ColumnError, Sample, SyntheticShapes, Table, decode_sample, open_synthetic, parse_spec,
                        read_image, tar_members)
from ..datasets.scene import vocabulary
from ..errors import InputError
from ..tokenizer import get_tokenizer
from .augment import ContrastiveView, SimCLRView

SYNTHETIC_SIZE = 48  # px, of synthetic: training data without size= when no model size is given
POOL_BYTES = 2 ** 31  # a synthetic set larger than this is drawn on the fly instead of pooled
POOL_CHUNK = 256  # samples per rendering task
Load = Callable[[], Sample]


# --- sources ---------------------------------------------------------------------------------

def tar_samples(path: str) -> Iterator[Tuple[str, Dict[str, bytes]]]:
    """Samples of one tar shard (``maskclip.datasets.tar_members``); a truncated shard ends early,
    its last sample handed on as read, so that decoding it fails and is counted."""
    try:
        yield from tar_members(path, keep_partial=True)
    except (tarfile.TarError, OSError, EOFError):
        pass


class ShardSource:
    """Tar shards read sequentially; shards are dealt to slots, and shuffled within a buffer."""

    in_memory = False  # every sample is decoded by a data worker (``loop.cpu_threads``)

    def __init__(self, paths: Sequence, shuffle_buffer: int = 1000):
        self.paths = [str(p) for p in paths]
        self.shuffle_buffer = shuffle_buffer
        self.size: Optional[int] = None  # unknown without reading every shard

    def stream(self, slot: int, slots: int, seed: int, epoch: int) -> Iterator[Load]:
        for rnd in itertools.count():
            order = _permutation(len(self.paths), seed, epoch, rnd)
            mine = [self.paths[i] for i in order[slot::slots]] if len(self.paths) >= slots else None
            samples = self._read(mine) if mine is not None else \
                itertools.islice(self._read([self.paths[i] for i in order]), slot, None, slots)
            rng = random.Random(f"shuffle-{seed}-{epoch}-{rnd}-{slot}")
            yield from _buffer_shuffle(samples, self.shuffle_buffer, rng)

    @staticmethod
    def _read(paths: Sequence[str]) -> Iterator[Load]:
        for path in paths:
            for key, members in tar_samples(path):
                yield functools.partial(decode_sample, key, members)


class SyntheticPool:
    """The synthetic benchmark drawn once: ``images`` ``uint8 [N, H, W, 3]`` and each sample's captions.

    ``pool[i]`` is ``Sample(PIL image, captions, None, {"key"})``: the same pixels and captions as
    ``ds[i]`` (masks and metadata are left out; training reads neither). ``workers > 0`` draws
    in that many processes (each sample from its own seed, so the result does not depend on it).
    ``cache``: a folder keeping the pool as ``synthetic-<digest>.pt``, the digest naming the
    dataset (``repr``), the vocabulary file and the NumPy and Pillow versions (the pixels
    depend on them), so a rerun or another run on the same data reads it back.
    """

    def __init__(self, ds: SyntheticShapes, workers: int = 0, cache: Optional[str] = None):
        self.ds = ds
        path = Path(cache) / f"synthetic-{pool_digest(ds)}.pt" if cache else None
        if path is not None and path.is_file():
            saved = torch.load(path, weights_only=True)
            self.images, self.captions = saved["images"], saved["captions"]
            return
        self.images = torch.empty((len(ds), ds.height, ds.width, 3), dtype=torch.uint8)
        self.captions: List[List[str]] = [[] for _ in range(len(ds))]
        self._draw_all(workers)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            torch.save({"images": self.images, "captions": self.captions}, tmp)
            os.replace(tmp, path)  # a reader sees the whole file or none

    def _draw_all(self, workers: int) -> None:
        ds = self.ds
        chunks = [range(i, min(i + POOL_CHUNK, len(ds))) for i in range(0, len(ds), POOL_CHUNK)]
        if workers > 0 and len(chunks) > 1:
            context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
            with ProcessPoolExecutor(min(workers, len(chunks)), mp_context=context) as ex:
                for chunk, (pixels, texts) in zip(chunks, ex.map(_draw, [ds] * len(chunks), chunks)):
                    self._store(chunk, pixels, texts)
        else:
            for chunk in chunks:
                self._store(chunk, *_draw(ds, chunk))

    def _store(self, chunk: range, pixels: np.ndarray, texts: List[List[str]]) -> None:
        self.images[chunk.start:chunk.stop] = torch.from_numpy(pixels)
        self.captions[chunk.start:chunk.stop] = texts

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int) -> Sample:
        return Sample(Image.fromarray(self.images[index].numpy(), "RGB"), self.captions[index], None,
                      {"key": self.ds.key(index)})


def pool_digest(ds: SyntheticShapes) -> str:
    """A name of what ``ds``'s pixels depend on: its settings, the vocabulary, NumPy's and Pillow's versions."""
    text = json.dumps([repr(ds), vocabulary(), np.__version__, PIL.__version__], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _draw(ds: SyntheticShapes, chunk: range) -> Tuple[np.ndarray, List[List[str]]]:
    """Samples ``chunk`` of ``ds`` -> (``uint8 [len(chunk), H, W, 3]``, their captions)."""
    samples = [ds[i] for i in chunk]
    return np.stack([np.asarray(s.image) for s in samples]), [list(s.captions) for s in samples]


class IndexedSource:
    """Random-access samples: a CSV table, the synthetic benchmark, any ``record(i) -> Sample``."""

    def __init__(self, size: int, record: Callable[[int], Sample], in_memory: bool = False):
        # in_memory: the samples are decoded already (the synthetic pool), so a data worker needs only a
        # fraction of a core (crop, resize, tokenize), not one of its own (``loop.cpu_threads``).
        self.size, self.record, self.in_memory = size, record, in_memory

    def stream(self, slot: int, slots: int, seed: int, epoch: int) -> Iterator[Load]:
        if self.size < slots:
            raise InputError(f"the dataset has {self.size} samples, fewer than the {slots} data slots "
                             "(ranks x workers); use fewer workers or more data")
        for rnd in itertools.count():
            for i in _permutation(self.size, seed, epoch, rnd)[slot::slots]:
                yield functools.partial(self.record, i)


def open_source(specs: Sequence[str], csv_image_key: Optional[str] = "image",
                csv_caption_key: Optional[str] = "caption", csv_separator: Optional[str] = None,
                image_size: Optional[int] = None, workers: int = 0):
    """The source a ``TrainConfig.data`` list names: tar shards, one CSV/TSV, or ``synthetic:<split>``.

    A CSV's columns follow the rule of ``maskclip.datasets.table``: a column named here
    (``csv_image_key``, ``csv_caption_key``) must exist; one left ``None`` or ``""`` is the one
    column with a known name (``image``/``filepath``/..., ``caption``/``title``/...). The
    separator is ``csv_separator``, else sniffed. ``TrainConfig`` leaves all three unset.
    ``synthetic:`` data is drawn at ``image_size`` (the model's; ``SYNTHETIC_SIZE`` if not given)
    unless its spec says ``size=``, into a ``SyntheticPool`` (by ``workers`` processes) when it
    fits in ``POOL_BYTES``.
    """
    if not specs:
        raise InputError("no training data given: pass tar shards, a CSV/TSV file, or synthetic:train")
    spec = parse_spec(list(specs))
    if spec.kind == "synthetic":
        ds = open_synthetic(spec, image_size or SYNTHETIC_SIZE)
        if len(ds) * ds.height * ds.width * 3 <= POOL_BYTES:
            return IndexedSource(len(ds), SyntheticPool(ds, workers, spec.options.get("cache")).__getitem__,
                                 in_memory=True)
        return IndexedSource(len(ds), ds.__getitem__)
    if spec.kind == "table":
        try:
            table = Table(spec.paths[0], csv_image_key or None, csv_caption_key or None, csv_separator or None)
        except ColumnError as e:
            raise ColumnError(f"{e} (set csv_image_key / csv_caption_key: --csv-img-key / --csv-caption-key)") from None
        return IndexedSource(len(table), table.__getitem__)
    if spec.kind == "shards":
        return ShardSource(spec.paths)
    raise InputError(f"{spec.name!r} is a folder of class subfolders, which has no captions to train on; "
                     "pass tar shards, a CSV/TSV file with captions, or synthetic:train")


def _permutation(n: int, *seed_parts) -> List[int]:
    g = torch.Generator().manual_seed(derive_seed(*seed_parts))
    return torch.randperm(n, generator=g).tolist()


def derive_seed(*parts) -> int:
    """A 63-bit seed determined by ``parts`` (stable across processes and Python's hash seed)."""
    return int.from_bytes(random.Random("-".join(map(str, parts))).randbytes(8), "little") >> 1


def _buffer_shuffle(items: Iterator, size: int, rng: random.Random) -> Iterator:
    buf = []
    for item in items:
        buf.append(item)
        if len(buf) >= size:
            yield buf.pop(rng.randrange(len(buf)))
    rng.shuffle(buf)
    yield from buf


# --- captions ----------------------------------------------------------------------------------

def pick_caption(caption: Union[str, Sequence[str]], rng: random.Random) -> str:
    """One caption: a random non-empty line (YFCC's title or description at random), stripped."""
    lines = caption.splitlines() if isinstance(caption, str) else list(caption)
    lines = [c.strip() for c in lines if isinstance(c, str) and c.strip()]
    if not lines:
        raise ValueError("empty caption")
    return lines[rng.randrange(len(lines))] if len(lines) > 1 else lines[0]


# --- the stream --------------------------------------------------------------------------------

MAX_FAILED_IN_ROW = 1000  # unreadable samples in a row before the stream gives up with an error


@dataclass
class StreamSpec:
    local_batch: int  # samples per rank per step
    steps_per_epoch: int
    seed: int
    rank: int = 0
    world_size: int = 1
    extra_views: int = 0  # SLIP: 2 strongly augmented views per sample
    context_length: int = 77


class TrainStream(IterableDataset):
    """Per-rank batches ``{"image", "text", ["views"], "skipped", "slot", "consumed"}`` for one epoch."""

    def __init__(self, source, spec: StreamSpec, pp: PreprocessConfig, crop_scale=(0.5, 1.0),
                 strong_scale=(0.08, 1.0), tokenizer=None):
        """``tokenizer``: the model's (``model.tokenizer``: texts, context_length, truncate -> ids);
        OpenAI CLIP's BPE when not given. A SigLIP model's SentencePiece vocabulary needs its own."""
        self.source, self.spec = source, spec
        self.tokenizer = tokenizer
        self.view = ContrastiveView(pp, crop_scale)
        self.strong = SimCLRView(pp, strong_scale)
        self.epoch, self.start_step, self.offsets = 0, 0, None

    def set_position(self, epoch: int, start_step: int = 0, offsets: Optional[List[int]] = None) -> None:
        """Start ``epoch`` at ``start_step``; ``offsets[v]``: raw samples slot v had consumed by then."""
        self.epoch, self.start_step, self.offsets = epoch, start_step, offsets

    def __iter__(self):
        info = get_worker_info()
        w, workers = (info.id, info.num_workers) if info else (0, 1)
        s = self.spec
        # The loader asks workers round-robin from worker 0, so worker w serves the virtual slot
        # whose batches are start_step + w, + workers, ...: batch j always comes from slot j % workers.
        v = (self.start_step + w) % workers
        slot = s.rank * workers + v
        raw = self.source.stream(slot, s.world_size * workers, s.seed, self.epoch)
        consumed = self.offsets[v] if self.offsets else 0
        for _ in range(consumed):  # resume: skip what this slot already read, without decoding it
            next(raw)
        tokenizer = self.tokenizer if self.tokenizer is not None else get_tokenizer()
        failed_in_row = 0
        for _j in range(self.start_step + w, s.steps_per_epoch, workers):
            images, texts, views, skipped = [], [], [], 0
            while len(images) < s.local_batch:
                load = next(raw)
                rng = random.Random(f"sample-{s.seed}-{self.epoch}-{slot}-{consumed}")
                consumed += 1
                try:
                    sample = load()
                    text = pick_caption(sample.captions, rng)
                    img = read_image(sample.image)
                except Exception as e:  # undecodable or uncaptioned: skipped and counted, never silently
                    skipped += 1
                    failed_in_row += 1
                    if failed_in_row >= MAX_FAILED_IN_ROW:  # data with no usable sample would loop forever
                        raise InputError(
                            f"{failed_in_row} training samples in a row could not be read or had no caption "
                            f"(the last: {type(e).__name__}: {e}); check the --data paths, the image files "
                            "and the caption column") from None
                    continue
                failed_in_row = 0
                images.append(self.view(img, rng))
                texts.append(text)
                views.extend(self.strong(img, rng) for _ in range(s.extra_views))
            batch = {"image": torch.stack(images),
                     "text": tokenizer(texts, context_length=s.context_length, truncate=True),
                     "skipped": torch.tensor(skipped), "slot": torch.tensor(v), "consumed": torch.tensor(consumed)}
            if s.extra_views:
                batch["views"] = torch.stack(views).view(s.local_batch, s.extra_views, *images[0].shape).transpose(0, 1)
            yield batch


def make_loader(stream: TrainStream, workers: int, pin_memory: bool = False) -> DataLoader:
    # An own generator keeps the loader from drawing on the global RNG, which a resume restores.
    return DataLoader(stream, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                      generator=torch.Generator().manual_seed(0), worker_init_fn=leave_stopping_to_the_main_process,
                      prefetch_factor=2 if workers else None, persistent_workers=False)


def leave_stopping_to_the_main_process(worker_id: int) -> None:
    """A data worker ignores SIGTERM and SIGINT. A terminal's Ctrl-C and a scheduler's SIGTERM (SLURM,
    Kubernetes) go to the whole process group; a worker they killed would make torch raise "DataLoader
    worker ... is killed by signal" in the main process, in the middle of the clean stop (finish the step,
    checkpoint, exit 0) the same signal asked it for. The loader still shuts its workers down, and a
    worker whose main process died exits by itself (torch's watchdog)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
