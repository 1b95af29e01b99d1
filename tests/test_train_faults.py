"""Training faults (issue 6): kill -9 at random points, a full disk, bad samples; nothing a run saved is lost."""
import errno
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from maskclip.train import TrainConfig, train
from maskclip.train import checkpoint as ckpt
import train_data as D


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return D.write_shards(tmp_path_factory.mktemp("shards"), D.make_items(64, size=40, seed=3), per_shard=16)


def weights(run):
    return load_file(str(ckpt.latest(Path(run) / "checkpoints") / "model.safetensors"))


STEPS = 16


def _cmd(shards, out, resume=False):
    cmd = [sys.executable, "-m", "maskclip.train", "--out", str(out)]
    if resume:
        return cmd + ["--resume"]
    return cmd + ["--recipe", "maskclip", "--preset", "tiny", "--data", *shards, "--samples-per-epoch", "64",
                  "--batch-size", "16", "--steps", str(STEPS), "--workers", "0", "--ckpt-every", "2",
                  "--set", "log_every=1", "--set", "progress=false", "--set", "keep_checkpoints=2"]


@pytest.mark.slow
def test_kill_9_at_random_points_then_resume_gives_the_uninterrupted_weights(shards, tmp_path):
    straight = tmp_path / "straight"
    done = subprocess.run(_cmd(shards, straight), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    out, rng, kills = tmp_path / "killed", random.Random(0), 0
    proc = subprocess.Popen(_cmd(shards, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while True:
        # Kill after a random delay once training has started (any point: mid-step, mid-checkpoint).
        started = time.time()
        while not (out / "metrics.jsonl").exists() and time.time() - started < 120 and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))
        if proc.poll() is not None or kills >= 3:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        if ckpt.latest(out / "checkpoints") is None:  # killed before the first checkpoint: start again
            proc = subprocess.Popen(_cmd(shards, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            continue
        proc = subprocess.Popen(_cmd(shards, out, resume=True), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.wait(timeout=600) == 0, proc.stderr.read()[-2000:]
    assert kills >= 1
    state = json.loads((ckpt.latest(out / "checkpoints") / "state.json").read_text())
    assert state["step"] == STEPS
    a, b = weights(straight), weights(out)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))  # no step logged twice or lost


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(monkeypatch, shards, tmp_path):
    cfg = TrainConfig.from_preset("tiny", "clip", {"data": shards, "samples_per_epoch": 64, "batch_size": 16,
                                                   "steps": 6, "ckpt_every": 2, "progress": False, "workers": 0})
    real_save = ckpt.save_file
    calls = {"n": 0}

    def save_file(tensors, path, metadata=None):
        calls["n"] += 1
        if calls["n"] > 2:  # the second checkpoint's first file: half written, then the disk is full
            with open(path, "wb") as f:
                f.write(b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(tensors, path, metadata=metadata)
    monkeypatch.setattr(ckpt, "save_file", save_file)
    with pytest.raises(OSError, match="No space left"):
        train(cfg, tmp_path / "run")
    root = tmp_path / "run" / "checkpoints"
    assert [p.name for _, p in ckpt.checkpoints(root)] == ["step_00000002"]
    assert ckpt.is_valid(root / "step_00000002")
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # the half-written folder is removed
    monkeypatch.setattr(ckpt, "save_file", real_save)
    assert train(cfg, tmp_path / "run", resume=True)["steps"] == 6


def test_a_shard_with_corrupt_images_and_empty_captions_is_trained_through_and_counted(tmp_path):
    bad = D.write_shards(tmp_path / "shards", D.make_items(48, size=40, seed=5), per_shard=12,
                         corrupt={1, 7, 20}, empty_caption={3, 30})
    cfg = TrainConfig.from_preset("tiny", "clip", {"data": bad, "samples_per_epoch": 48, "batch_size": 16,
                                                   "steps": 6, "log_every": 1, "progress": False, "workers": 0})
    summary = train(cfg, tmp_path / "run")
    assert summary["steps"] == 6 and summary["skipped"] >= 5
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["skipped_samples"] == summary["skipped"]
    assert all(r["loss"] == r["loss"] for r in rows)
