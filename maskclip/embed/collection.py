"""Embedding a whole collection (``maskclip embed --data SPEC --out DIR``), in one process or many.

Under torchrun each process (rank) owns the parts ``N`` with ``N % world_size == rank``
(``maskclip.embed.inputs``: a fixed plan), skips those already finished in ``DIR`` and embeds the
rest: DataLoader worker processes read and preprocess the images (and tokenize the captions) in
batches of input rows, the main process runs the model and writes each part once all its batches
are in (``maskclip.embed.output``). Ranks share nothing but a final barrier (gloo) after which
rank 0 writes ``DIR/stats.json``; no embeddings cross processes, so there is no DataParallel and
no GPU collective. An input that cannot be read is skipped and recorded with the reason in its
part's stats, so every input is in exactly one part: embedded, or skipped and counted.
"""
from __future__ import annotations

import collections
import datetime
import json
import os
import sys
import tarfile
import time
from typing import Dict, Iterator, List, NamedTuple, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..atomic import atomic_write_text
from ..config import PreprocessConfig
from ..datasets.tar import image_member, sample_captions, tar_members
from ..dense import resolve_method
from ..errors import InputError
from ..images import open_image
from ..tokenizer import get_tokenizer
from ..transforms import preprocess
from .inputs import Collection, open_collection, open_shard, read_bytes
from .output import FORMAT, OutputFolder, default_metadata_format

DTYPES = {"float16": np.float16, "float32": np.float32}
MAX_EXAMPLES = 50  # skipped inputs listed by name in stats.json (all are in the parts' stats files)


class Task(NamedTuple):
    """A unit of work for one DataLoader worker: rows ``[start, stop)`` of part ``part``, or its tar ``shard``."""

    part: int
    seq: int  # the task's place within its part: batches are put back in this order
    start: int
    stop: int
    shard: str


def embed_collection(model, data, out, shard_size: int = 10000, batch_size: int = 64, workers: int = 2,
                     text: Optional[bool] = None, dense: bool = False, dense_method: str = "clearclip",
                     dtype: str = "float16", metadata_format: Optional[str] = None,
                     image_column: Optional[str] = None, caption_column: Optional[str] = None,
                     separator: Optional[str] = None, progress: bool = True,
                     model_name: Optional[str] = None) -> dict:
    """Embed every image of ``data`` (a spec of ``maskclip.embed.inputs``) into the folder ``out``; returns the stats.

    ``text``: also embed the captions (default: when the source has them). ``dense``: also write
    ``[rows, E, h, w]`` patch features by ``dense_method``. ``dtype``: ``float16`` or ``float32``.
    ``metadata_format``: ``parquet`` (needs pyarrow) or ``jsonl`` (default: parquet if installed).
    A rerun with the same arguments resumes: finished parts are kept, the rest are embedded.
    Under torchrun call it in every process; each embeds its own parts.
    """
    if dtype not in DTYPES:
        raise InputError(f"dtype must be one of {sorted(DTYPES)}; got {dtype!r}")
    if batch_size < 1 or workers < 0:
        raise InputError(f"batch_size must be >= 1 and workers >= 0; got {batch_size} and {workers}")
    collection = open_collection(str(data), shard_size, image_column, caption_column, separator)
    text = collection.has_captions if text is None else text
    if text and not collection.has_captions:
        raise InputError(f"{collection.name} has no captions to embed (a table needs a caption column)")
    dense_method = resolve_method(dense_method, model.visual) if dense else ""
    arrays = ["img_emb"] + (["text_emb"] if text else []) + (["dense_emb"] if dense else [])
    folder = OutputFolder(out, len(collection.parts), arrays, metadata_format or default_metadata_format())
    settings = {"format": FORMAT, "version": 1, "data": collection.name, "model": model_name or model.config.name,
                "parts": len(collection.parts), "shard_size": shard_size, "arrays": arrays, "dtype": dtype,
                "dense_method": dense_method, "metadata": folder.metadata_format}
    folder.check_settings(settings)
    rank, world, own_group = _join()
    try:
        if rank == 0:
            folder.write_settings(settings)
        mine = [p for p in collection.parts if p.index % world == rank]
        todo = [p for p in mine if not folder.finished(p.index)]
        for part in todo:
            folder.clear(part.index)
        local = _embed_parts(model, collection, todo, folder, batch_size, workers, text, dense_method,
                             DTYPES[dtype], progress and rank == 0, f"embed {rank}/{world}" if world > 1 else "embed")
        local.update(rank=rank, parts_owned=len(mine), parts_already_done=len(mine) - len(todo))
        everyone = [local]
        if world > 1:
            everyone = [None] * world
            dist.all_gather_object(everyone, local)
        stats = _summary(folder, collection, everyone)
        if rank == 0:
            atomic_write_text(folder.root / "stats.json", json.dumps(stats, indent=2) + "\n")
        return stats
    finally:
        if own_group:
            dist.destroy_process_group()


def _join():
    """(rank, world size, whether this call created the process group) from torchrun's environment."""
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return 0, 1, False
    rank = _env_int("RANK", None)
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    # Only a barrier and a small gather run on this group, on the CPU, whatever the device; the
    # long timeout lets a rank with more images left finish while the others wait.
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(days=7))
    return rank, world, True


def _env_int(name: str, default: Optional[int]) -> int:
    value = os.environ.get(name)
    if value is None and default is not None:
        return default
    if value is None or not value.strip().isdigit():
        raise InputError(f"{name} must be an integer set by the launcher (torchrun sets RANK and WORLD_SIZE); "
                         f"got {value!r}")
    return int(value)


def _tasks(collection: Collection, parts, batch_size: int) -> List[Task]:
    tasks = []
    for part in parts:
        if part.shard:
            tasks.append(Task(part.index, 0, 0, 0, part.shard))
        else:
            tasks += [Task(part.index, k, start, min(start + batch_size, part.stop), "")
                      for k, start in enumerate(range(part.start, part.stop, batch_size))]
    return tasks


def _embed_parts(model, collection: Collection, parts, folder: OutputFolder, batch_size: int, workers: int,
                 text: bool, dense_method: str, dtype, show: bool, desc: str) -> dict:
    """Embed ``parts`` and write each as soon as all its batches are in; this process's counts."""
    tasks = _tasks(collection, parts, batch_size)
    expected = collections.Counter(t.part for t in tasks)
    stream = Batches(collection, tasks, model.config.preprocess, model.config.text.context_length, text, batch_size,
                     tokenizer=model.tokenizer if text else None)
    loader = DataLoader(stream, batch_size=None, num_workers=min(workers, len(tasks)),
                        worker_init_fn=_one_thread, pin_memory=model.device.type == "cuda")
    pending: Dict[int, Dict[int, list]] = collections.defaultdict(lambda: collections.defaultdict(list))
    done: collections.Counter = collections.Counter()
    rows = sum(p.rows for p in parts) if all(p.rows is not None for p in parts) else None
    bar = Progress(rows, desc, show)
    start, embedded, skipped = time.monotonic(), 0, 0
    model.eval()
    for batch in loader:
        chunk = _embed(model, batch, text, dense_method, dtype)
        pending[batch["part"]][batch["seq"]].append(chunk)
        embedded, skipped = embedded + len(chunk["meta"]), skipped + len(chunk["skipped"])
        bar.update(len(chunk["meta"]), len(chunk["skipped"]))
        if batch["last"]:
            done[batch["part"]] += 1
            if done[batch["part"]] == expected[batch["part"]]:
                chunks = [c for seq in sorted(pending[batch["part"]]) for c in pending[batch["part"]][seq]]
                del pending[batch["part"]]
                _write_part(folder, batch["part"], chunks, model, dtype)
    bar.close()
    seconds = time.monotonic() - start
    return {"parts_written": len(parts), "embedded": embedded, "skipped": skipped, "seconds": round(seconds, 3)}


@torch.inference_mode()
def _embed(model, batch: dict, text: bool, dense_method: str, dtype) -> dict:
    """One batch of preprocessed inputs -> its arrays (numpy, ``dtype``), metadata rows and skipped inputs."""
    out = {"meta": batch["meta"], "skipped": batch["skipped"]}
    if not batch["meta"]:
        return out
    x = batch["pixels"]
    out["img_emb"] = model.encode_image(x, normalize=True)
    if text:
        out["text_emb"] = model.encode_text(batch["tokens"], normalize=True)
    if dense_method:
        out["dense_emb"] = model.dense_features(x, normalize=True, method=dense_method)
    for kind in ("img_emb", "text_emb", "dense_emb"):
        if kind in out:
            out[kind] = out[kind].float().cpu().numpy().astype(dtype)
    return out


def _write_part(folder: OutputFolder, n: int, chunks: List[dict], model, dtype) -> None:
    rows = [r for c in chunks for r in c["meta"]]
    skipped = [s for c in chunks for s in c["skipped"]]
    grid = model.config.preprocess.image_size // model.config.vision.patch_size
    empty = {"img_emb": (0, model.embed_dim), "text_emb": (0, model.embed_dim),
             "dense_emb": (0, model.embed_dim, grid, grid)}
    arrays = {}
    for kind in folder.arrays:
        found = [c[kind] for c in chunks if kind in c]
        arrays[kind] = np.concatenate(found) if found else np.zeros(empty[kind], dtype)  # a part of unreadable inputs
    folder.write(n, arrays, rows, {"part": n, "rows": len(rows), "skipped": skipped})


def _summary(folder: OutputFolder, collection: Collection, ranks: List[dict]) -> dict:
    """The whole output's counts (from every part's stats file) and this run's speed (from every rank)."""
    embedded, skipped, reasons, examples, missing = 0, 0, collections.Counter(), [], []
    for part in collection.parts:
        stats = folder.read_stats(part.index) if folder.finished(part.index) else None
        if stats is None:
            missing.append(part.index)
            continue
        embedded += stats["rows"]
        skipped += len(stats["skipped"])
        reasons.update(s["error"] for s in stats["skipped"])
        examples += stats["skipped"][:max(0, MAX_EXAMPLES - len(examples))]
    run_images = sum(r["embedded"] + r["skipped"] for r in ranks)
    seconds = max(r["seconds"] for r in ranks)
    return {"data": collection.name, "parts": len(collection.parts), "parts_missing": missing,
            "embedded": embedded, "skipped": skipped, "skipped_by_reason": dict(reasons),
            "skipped_examples": examples, "world_size": len(ranks),
            "this_run": {"parts_written": sum(r["parts_written"] for r in ranks),
                         "parts_already_done": sum(r["parts_already_done"] for r in ranks),
                         "inputs": run_images, "seconds": seconds,
                         "images_per_second": round(run_images / seconds, 2) if seconds > 0 else None}}


def _one_thread(_worker_id: int) -> None:
    torch.set_num_threads(1)  # decoding is per-image work; the model's threads are the main process's


# --- the workers' side -------------------------------------------------------------------------


class Batches(IterableDataset):
    """DataLoader worker w reads tasks w, w + workers, ...: each yields batches
    ``{"part", "seq", "last", "pixels" [b, 3, S, S], "tokens" [b, L] | None, "meta", "skipped"}``
    where ``meta`` has a row per image read (``image_path``, ``key``, and ``caption`` with
    ``text``) and ``skipped`` one per input that could not be (``input``, ``key``, ``error``, ``reason``)."""

    def __init__(self, collection: Collection, tasks: List[Task], cfg: PreprocessConfig, context_length: int,
                 text: bool, batch_size: int, tokenizer=None):
        """``tokenizer``: the model's (``model.tokenizer``); CLIP's BPE when not given."""
        self.collection, self.tasks, self.cfg = collection, tasks, cfg
        self.context_length, self.text, self.batch_size = context_length, text, batch_size
        self.tokenizer = tokenizer

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        w, workers = (info.id, info.num_workers) if info else (0, 1)
        for task in self.tasks[w::workers]:
            yield from self._shard(task) if task.shard else [self._rows(task)]

    def _rows(self, task: Task) -> dict:
        batch = _Batch(self, task)
        for i in range(task.start, task.stop):
            item = self.collection.item(i)
            batch.add(lambda: _file_image(item.image), item.image, item.key, item.caption)
        return batch.done(last=True)

    def _shard(self, task: Task) -> Iterator[dict]:
        batch = _Batch(self, task)
        try:
            for key, members in tar_members(open_shard(task.shard), keep_partial=True):
                batch.add(lambda: _tar_image(key, members), f"{task.shard}/{key}", key,
                          lambda: "\n".join(sample_captions(key, members)[0]))
                if len(batch.meta) >= self.batch_size:
                    yield batch.done(last=False)
                    batch = _Batch(self, task)
        except (tarfile.TarError, OSError, EOFError, ValueError) as e:
            batch.skipped.append(_skip(task.shard, "", e, "the shard ends early: "))
        yield batch.done(last=True)


class _Batch:
    """The rows of one batch as they are read."""

    def __init__(self, stream: Batches, task: Task):
        self.stream, self.task = stream, task
        self.pixels, self.texts, self.meta, self.skipped = [], [], [], []

    def add(self, image, name: str, key: str, caption) -> None:
        """One input: ``image()`` decodes it, ``caption`` is its caption or a function returning it."""
        try:
            pixels = preprocess(image(), self.stream.cfg)
            if self.stream.text and callable(caption):
                caption = caption()
        except Exception as e:  # any unreadable input: skipped and counted with the reason, never silently
            self.skipped.append(_skip(name, key, e))
            return
        row = {"image_path": name, "key": key}
        if self.stream.text:
            row["caption"] = caption or ""
            self.texts.append(caption or "")
        self.pixels.append(pixels)
        self.meta.append(row)

    def done(self, last: bool) -> dict:
        s = self.stream
        size = s.cfg.image_size
        tokenizer = s.tokenizer if s.tokenizer is not None else get_tokenizer()
        tokens = tokenizer(self.texts, context_length=s.context_length, truncate=True) if self.texts else None
        pixels = torch.stack(self.pixels) if self.pixels else torch.zeros(0, 3, size, size)
        return {"part": self.task.part, "seq": self.task.seq, "last": last, "pixels": pixels, "tokens": tokens,
                "meta": self.meta, "skipped": self.skipped}


def _file_image(path: str):
    return open_image(read_bytes(path), path) if "://" in path else open_image(path)


def _tar_image(key: str, members: dict):
    ext = image_member(members)
    return open_image(members[ext], f"{key}.{ext}")


def _skip(name: str, key: str, e: Exception, prefix: str = "") -> dict:
    message = str(e).splitlines()[0] if str(e) else ""
    return {"input": name, "key": key, "error": type(e).__name__, "reason": f"{prefix}{type(e).__name__}: {message}"}


class Progress:
    """Images done and images/s on stderr: tqdm's bar when tqdm is installed, else a line every few seconds."""

    def __init__(self, total: Optional[int], desc: str, enabled: bool, every: float = 5.0):
        self.total, self.desc, self.enabled, self.every = total, desc, enabled, every
        self.done, self.skipped, self.start = 0, 0, time.monotonic()
        self.last, self.bar = self.start, None
        if enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                return
            self.bar = tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True)

    def update(self, embedded: int, skipped: int) -> None:
        self.done, self.skipped = self.done + embedded, self.skipped + skipped
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(embedded + skipped)
            if skipped:
                self.bar.set_postfix(skipped=self.skipped)
        elif time.monotonic() - self.last >= self.every:
            self.last = time.monotonic()
            print(self._line(), file=sys.stderr, flush=True)

    def _line(self) -> str:
        rate = (self.done + self.skipped) / max(time.monotonic() - self.start, 1e-9)
        total = f"/{self.total}" if self.total is not None else ""
        return f"{self.desc}: {self.done + self.skipped}{total} images, {rate:.1f} img/s, {self.skipped} skipped"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            print(self._line(), file=sys.stderr, flush=True)
