"""``maskclip embed --data SPEC --out DIR``: clip-retrieval's layout, 1 and 2 processes (torchrun, gloo),
resume after a kill, corrupt inputs counted; and the tar layout img2dataset writes."""
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import maskclip
from maskclip.cli import main
from maskclip.embed import OutputFolder, embed_collection, open_collection
from maskclip.errors import InputError

FP16 = 1e-3  # fp16 keeps 11 significant bits: |x| <= 1 rounds by at most 2.5e-4


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from conftest import tiny_model

    folder = tmp_path_factory.mktemp("embed") / "tiny"
    tiny_model().save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def model(model_dir):
    return maskclip.load(model_dir)


def _photos(folder: Path, n: int, corrupt=("bad.png",)) -> list:
    """``n`` images (some in a subfolder, some JPEG, one RGBA) and unreadable files; the readable paths, sorted."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        sub = folder / ("deep" if i % 3 == 0 else "")
        sub.mkdir(exist_ok=True)
        mode, suffix = ("RGBA", ".png") if i == 1 else ("RGB", ".jpg" if i % 2 else ".png")
        path = sub / f"p{i:02d}{suffix}"
        Image.new(mode, (36 + 3 * i, 40 - i % 5), (40 * i % 256, 90, 200 - 7 * i)).save(path)
        paths.append(path)
    for name in corrupt:
        (folder / name).write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    return sorted(paths, key=lambda p: p.relative_to(folder).as_posix())


def _rows(out: Path, kind: str = "img_emb"):
    folder = _folder(out)
    n = json.loads((out / "embed.json").read_text())["parts"]
    arrays = [np.load(folder.path(kind, k)) for k in range(n)]
    meta = [r for k in range(n) for r in folder.read_metadata(k)]
    return np.concatenate(arrays), meta


def _folder(out: Path) -> OutputFolder:
    settings = json.loads((out / "embed.json").read_text())
    return OutputFolder(out, settings["parts"], settings["arrays"], settings["metadata"])


def _embed_cli(*args):
    assert main(["embed", *map(str, args), "--no-progress"]) == 0


def test_one_process_writes_clip_retrieval_shards_equal_to_encode_image(tmp_path, model, model_dir, capsys):
    paths = _photos(tmp_path / "photos", 11)
    out = tmp_path / "out"
    _embed_cli("--data", tmp_path / "photos", "--out", out, "--model", model_dir, "--shard-size", "4",
               "--batch-size", "3", "--workers", "2")
    assert "embedded 11 inputs into 3 shards" in capsys.readouterr().out
    names = sorted(p.name for p in (out / "img_emb").iterdir())
    assert names == ["img_emb_0.npy", "img_emb_1.npy", "img_emb_2.npy"]
    assert sorted(p.name for p in (out / "metadata").iterdir())[0] == "metadata_0.parquet"
    emb, meta = _rows(out)
    assert emb.dtype == np.float16 and emb.shape == (11, model.embed_dim)
    assert [r["image_path"] for r in meta] == [str(p) for p in paths]
    assert [r["key"] for r in meta] == [p.relative_to(tmp_path / "photos").as_posix() for p in paths]
    with torch.no_grad():
        expected = model.encode_image([str(p) for p in paths], normalize=True).numpy()
    np.testing.assert_allclose(emb.astype(np.float32), expected, atol=FP16, rtol=0)
    assert np.allclose(np.linalg.norm(emb.astype(np.float32), axis=1), 1, atol=2e-3)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["embedded"] == 11 and stats["skipped"] == 1 and stats["skipped_by_reason"] == {"ImageReadError": 1}
    assert stats["skipped_examples"][0]["input"] == str(tmp_path / "photos" / "bad.png")
    assert "not a recognised image format" in stats["skipped_examples"][0]["reason"]


def test_a_table_gives_text_embeddings_captions_and_dense_features_in_row_order(tmp_path, model):
    paths = _photos(tmp_path, 5, corrupt=())
    rows = [(p.relative_to(tmp_path).as_posix(), f"photo number {i}") for i, p in enumerate(paths)]
    rows.insert(2, ("missing.png", "never there"))
    table = tmp_path / "t.csv"
    table.write_text("filepath\ttitle\n" + "".join(f"{a}\t{b}\n" for a, b in rows), encoding="utf-8")
    out = tmp_path / "out"
    stats = embed_collection(model, table, out, shard_size=2, batch_size=2, workers=0, dense=True,
                             dense_method="vanilla", dtype="float32", metadata_format="jsonl", progress=False)
    assert stats["embedded"] == 5 and stats["skipped_by_reason"] == {"ImageNotFoundError": 1}
    assert (out / "metadata" / "metadata_0.jsonl").is_file()
    img, meta = _rows(out)
    text, _ = _rows(out, "text_emb")
    dense, _ = _rows(out, "dense_emb")
    assert [r["caption"] for r in meta] == [f"photo number {i}" for i in range(5)]
    assert [r["key"] for r in meta] == ["0", "1", "3", "4", "5"]  # the row index; row 2 is skipped
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(img), model.encode_image([str(p) for p in paths], normalize=True))
        torch.testing.assert_close(torch.from_numpy(text),
                                   model.encode_text([f"photo number {i}" for i in range(5)], normalize=True))
        torch.testing.assert_close(torch.from_numpy(dense), model.dense_features([str(p) for p in paths],
                                                                                 normalize=True, method="vanilla"))


def _img2dataset_shard(path: Path, keys, truncate=False):
    """A shard as img2dataset writes it: ``{key}.jpg``, ``{key}.txt``, ``{key}.json`` (with its caption, url)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for k in keys:
            img = io.BytesIO()
            Image.new("RGB", (48, 40), (int(k) * 20 % 256, 50, 90)).save(img, format="JPEG")
            members = {"jpg": img.getvalue(), "txt": f"caption {k}".encode(),
                       "json": json.dumps({"key": k, "url": f"https://x/{k}.jpg", "caption": f"caption {k}",
                                           "status": "success"}).encode()}
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{k}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    data = buf.getvalue()
    path.write_bytes(data[:len(data) // 2] if truncate else data)
    return path


def test_img2dataset_shards_embed_train_and_evaluate(tmp_path, model, model_dir):
    from maskclip.eval import open_dataset
    from maskclip.train.data import open_source

    shards = [_img2dataset_shard(tmp_path / f"{s:05d}.tar", [f"{s}{i:04d}" for i in range(4)]) for s in range(2)]
    broken = _img2dataset_shard(tmp_path / "00002.tar", ["20000", "20001", "20002", "20003"], truncate=True)
    spec = str(tmp_path / "{00000..00002}.tar")
    ds = open_dataset(str(tmp_path / "{00000..00001}.tar"))
    assert len(ds) == 8 and ds[0].captions == ("caption 00000",)
    assert next(open_source([shards[0]]).stream(0, 1, 0, 0))().captions[0].startswith("caption 0")
    out = tmp_path / "out"
    stats = embed_collection(model, spec, out, workers=2, progress=False)
    assert stats["parts"] == 3 and stats["embedded"] >= 8
    _, meta = _rows(out)
    assert [r["key"] for r in meta[:8]] == [f"{s}{i:04d}" for s in range(2) for i in range(4)]
    assert meta[0]["image_path"] == f"{shards[0]}/00000" and meta[0]["caption"] == "caption 00000"
    broken_entries = [e for e in stats["skipped_examples"] if e["input"] == str(broken)]
    assert broken_entries and "the shard ends early" in broken_entries[0]["reason"]
    pytest.importorskip("fsspec")
    url = f"file://{tmp_path}/{{00000..00001}}.tar"
    by_url = embed_collection(model, url, tmp_path / "by_url", workers=0, text=False, progress=False)
    img, meta = _rows(tmp_path / "by_url")
    assert by_url["embedded"] == 8 and [r["key"] for r in meta] == [r["key"] for r in _rows(out)[1][:8]]
    np.testing.assert_array_equal(img, _rows(out)[0][:8])


def _torchrun(*args, timeout=240):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "maskclip.cli", "embed", *map(str, args), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


@pytest.mark.slow
def test_two_processes_under_torchrun_give_the_rows_of_one_process(tmp_path, model_dir):
    _photos(tmp_path / "photos", 13)
    common = ["--data", tmp_path / "photos", "--model", model_dir, "--shard-size", "3", "--batch-size", "2",
              "--workers", "1"]
    _embed_cli(*common, "--out", tmp_path / "one")
    done = _torchrun(*common, "--out", tmp_path / "two")
    assert done.returncode == 0, done.stderr[-3000:]
    one, meta_one = _rows(tmp_path / "one")
    two, meta_two = _rows(tmp_path / "two")
    assert meta_one == meta_two and len(meta_two) == 13
    np.testing.assert_allclose(one.astype(np.float32), two.astype(np.float32), atol=FP16, rtol=0)
    stats = json.loads((tmp_path / "two" / "stats.json").read_text())
    assert stats["world_size"] == 2 and stats["embedded"] == 13 and stats["skipped"] == 1


def _keys(out: Path):
    _, meta = _rows(out)
    stats = json.loads((out / "stats.json").read_text())
    return [r["key"] for r in meta], stats


def test_a_rerun_keeps_finished_shards_and_redoes_half_written_and_missing_ones(tmp_path, model, model_dir):
    paths = _photos(tmp_path / "photos", 10)
    out = tmp_path / "out"
    args = ["--data", tmp_path / "photos", "--out", out, "--model", model_dir, "--shard-size", "3", "--workers", "0"]
    _embed_cli(*args)
    folder = _folder(out)
    kept = {p: p.stat().st_mtime_ns for p in (folder.path("img_emb", 0), folder.path("metadata", 0))}
    folder.path("metadata", 1).unlink()  # cut off before its metadata: half written
    np.save(folder.path("img_emb", 2), np.zeros((1, model.embed_dim), np.float16))  # rows disagree with its stats
    for kind in ("img_emb", "metadata", "stats"):  # shard 3 never written
        folder.path(kind, 3).unlink()
    (folder.path("img_emb", 1).parent / ".img_emb_1.npy.abc.tmp").write_bytes(b"left by a kill")
    _embed_cli(*args)
    keys, stats = _keys(out)
    assert keys == [p.relative_to(tmp_path / "photos").as_posix() for p in paths]
    assert stats["this_run"]["parts_written"] == 3 and stats["this_run"]["parts_already_done"] == 1
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    assert not list(out.rglob("*.tmp"))
    with pytest.raises(InputError, match="other settings"):
        embed_collection(model, tmp_path / "photos", out, shard_size=5, workers=0, progress=False)


def _children(pid: int):
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"maskclip.cli" in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the ranks' processes through /proc")
def test_kill_9_of_one_rank_then_the_same_command_embeds_every_input_exactly_once(tmp_path, model_dir):
    paths = _photos(tmp_path / "photos", 40, corrupt=("bad1.png", "bad2.jpg"))
    out = tmp_path / "out"
    args = ["--data", tmp_path / "photos", "--out", out, "--model", model_dir, "--shard-size", "1",
            "--batch-size", "1", "--workers", "0"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "maskclip.cli", "embed", *map(str, args), "--no-progress"]
    run = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while len(list((out / "metadata").glob("metadata_*"))) < 4:
            assert time.monotonic() < deadline and run.poll() is None, "the run ended before it could be killed"
            time.sleep(0.05)
        ranks = _children(run.pid)
        assert len(ranks) == 2
        os.kill(ranks[0], signal.SIGKILL)
        assert run.wait(timeout=120) != 0
    finally:
        if run.poll() is None:
            run.kill()
    total = 42
    assert len(list((out / "metadata").glob("metadata_*"))) < total  # the kill landed mid-run
    done = _torchrun(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    keys, stats = _keys(out)
    skipped = sorted(e["key"] for e in stats["skipped_examples"])
    assert sorted(keys + skipped) == sorted([p.relative_to(tmp_path / "photos").as_posix() for p in paths]
                                            + ["bad1.png", "bad2.jpg"])
    assert len(set(keys)) == len(keys) == 40 and stats["skipped"] == 2 and stats["parts_missing"] == []


def test_the_plan_is_fixed_by_the_input_and_the_shard_size(tmp_path):
    _photos(tmp_path / "photos", 7, corrupt=())
    a, b = open_collection(str(tmp_path / "photos"), 3), open_collection(str(tmp_path / "photos"), 3)
    assert [(p.start, p.stop) for p in a.parts] == [(p.start, p.stop) for p in b.parts] == [(0, 3), (3, 6), (6, 7)]
    with pytest.raises(InputError, match="shard_size"):
        open_collection(str(tmp_path / "photos"), 0)
    with pytest.raises(InputError, match="no captions"):
        embed_collection(None, tmp_path / "photos", tmp_path / "out", text=True)
    with pytest.raises(InputError, match="synthetic"):
        open_collection("synthetic:val")


def test_cli_refuses_data_with_image_paths(tmp_path, capsys):
    assert main(["embed", "x.png", "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "not both" in capsys.readouterr().err


def test_a_table_and_its_images_by_url(tmp_path, model):
    pytest.importorskip("fsspec")
    paths = _photos(tmp_path, 3, corrupt=())
    cells = [f"file://{paths[0]}", str(paths[1]), f"file://{tmp_path}/gone.png", f"file://{paths[2]}"]
    (tmp_path / "t.csv").write_text("image\n" + "".join(c + "\n" for c in cells), encoding="utf-8")
    stats = embed_collection(model, f"file://{tmp_path}/t.csv", tmp_path / "out", workers=0, progress=False)
    assert stats["embedded"] == 3 and stats["skipped"] == 1
    img, meta = _rows(tmp_path / "out")
    assert [r["image_path"] for r in meta] == [cells[0], cells[1], cells[3]]
    with torch.no_grad():
        expected = model.encode_image([str(p) for p in paths], normalize=True).numpy()
    np.testing.assert_allclose(img.astype(np.float32), expected, atol=FP16, rtol=0)


class _ReversedIds:
    """A tokenizer that is not CLIP's: CLIP's ids of the reversed text (ids a model with its own tokenizer gets)."""

    def __call__(self, texts, context_length=77, truncate=True):
        from maskclip.tokenizer import get_tokenizer

        texts = [texts] if isinstance(texts, str) else texts
        return get_tokenizer()([t[::-1] for t in texts], context_length=context_length, truncate=truncate)


def test_captions_are_tokenized_by_the_models_own_tokenizer(tmp_path, model_dir):
    model = maskclip.load(model_dir)
    model.tokenizer = _ReversedIds()  # as a SigLIP model's SentencePiece tokenizer would be
    paths = _photos(tmp_path, 2, corrupt=())
    table = tmp_path / "t.csv"
    table.write_text("filepath\ttitle\n" + "".join(f"{p.relative_to(tmp_path).as_posix()}\tcaption {i}\n"
                                                   for i, p in enumerate(paths)), encoding="utf-8")
    embed_collection(model, table, tmp_path / "out", shard_size=2, batch_size=2, workers=0, dtype="float32",
                     metadata_format="jsonl", progress=False)
    text, _ = _rows(tmp_path / "out", "text_emb")
    with torch.no_grad():
        want = model.encode_text(["caption 0", "caption 1"], normalize=True)  # through model.tokenizer
        clip_bpe = model.encode_text(maskclip.tokenize(["caption 0", "caption 1"]), normalize=True)
    torch.testing.assert_close(torch.from_numpy(text), want)
    assert not torch.allclose(torch.from_numpy(text), clip_bpe, atol=1e-3)
