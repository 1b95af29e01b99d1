"""The training loop end to end on the tiny preset: every recipe, resume, faults, signals, torchrun, CLI."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import maskclip
from maskclip.errors import ConfigError
from maskclip.train import RECIPES, TrainConfig, TrainingAborted, train
from maskclip.train import checkpoint as ckpt
import train_data as D

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return D.write_shards(tmp_path_factory.mktemp("shards"), D.make_items(96, size=40, seed=0), per_shard=24)


def tiny(recipe, shards, **overrides):
    base = {"data": shards, "samples_per_epoch": 96, "batch_size": 16, "steps": 20, "log_every": 1,
            "ckpt_every": 1000, "progress": False, "workers": 0}
    return TrainConfig.from_preset("tiny", recipe, {**base, **overrides})


def metrics(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def weights(folder):
    return load_file(str(Path(folder) / "model.safetensors"))


# --- every recipe --------------------------------------------------------------------------------

@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_trains_20_steps_with_a_finite_falling_loss(recipe, shards, tmp_path):
    summary = train(tiny(recipe, shards), tmp_path / recipe)
    rows = metrics(tmp_path / recipe)
    losses = [r["loss"] for r in rows]
    assert summary["steps"] == 20 and len(losses) == 20
    assert all(isinstance(v, float) and v == v and abs(v) < 1e6 for v in losses)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5, f"{recipe}: loss did not fall: {losses}"
    terms = {"slip": "loss_ssl", "clip_mae": "loss_mae", "maskclip": "loss_distill", "rils": "loss_recon"}
    if recipe in terms:
        assert all(terms[recipe] in r for r in rows)
    if recipe == "maskclip":
        assert "loss_text_distill" in rows[0] and 0.996 <= rows[-1]["momentum"] <= 1.0
    model = maskclip.load(tmp_path / recipe / "model")
    probs = model.classify(D.make_items(2, size=40, seed=9)[0][0], ["a red circle", "a blue square"])
    assert probs.shape == (1, 2) and torch.isfinite(probs).all()


@pytest.mark.parametrize("overrides", [
    {"maskclip.masking.mode": "token", "maskclip.masking.strategy": "block"},
    {"maskclip.loss": "cosine", "maskclip.text": False},
    {"maskclip.contrastive_view": "masked", "maskclip.decoder.width": 32},
    {"patch_dropout": 0.5, "accum_steps": 2, "grad_clip": 1.0, "grad_checkpointing": True},
    {"precision": "bf16"},
    {"precision": "fp16"},
], ids=["mask-tokens-blocks", "cosine-no-text", "masked-contrastive-narrow-decoder", "flip-accum-clip-ckpt", "bf16", "fp16"])
def test_options_train_to_finite_losses(overrides, shards, tmp_path):
    summary = train(tiny("maskclip", shards, steps=4, **overrides), tmp_path / "run")
    assert summary["steps"] == 4
    assert all(r["loss"] == r["loss"] for r in metrics(tmp_path / "run"))


def test_siglip_trains_its_scale_and_bias_and_the_exported_model_keeps_the_bias(shards, tmp_path):
    summary = train(tiny("clip", shards, steps=6, loss="siglip", accum_steps=2), tmp_path / "run")
    rows = metrics(tmp_path / "run")
    assert summary["steps"] == 6 and all(r["loss"] == r["loss"] for r in rows)
    assert rows[0]["logit_scale"] == pytest.approx(10.0, rel=0.05) and rows[0]["logit_bias"] == pytest.approx(-10, rel=0.05)
    model = maskclip.load(tmp_path / "run" / "model")
    assert model.config.logit_bias_init == -10.0
    assert model.logit_bias is not None and model.logit_bias.item() != -10.0  # learned
    assert model.logit_bias.item() == pytest.approx(rows[-1]["logit_bias"], abs=1e-2)


def test_the_loss_and_the_model_must_agree_about_the_bias(shards, tmp_path):
    train(tiny("clip", shards, steps=1, loss="siglip"), tmp_path / "siglip")
    with pytest.raises(ConfigError, match="has a logit_bias"):
        train(tiny("clip", shards, steps=1, init_from=str(tmp_path / "siglip" / "model"), model=""), tmp_path / "a")
    with pytest.raises(ConfigError, match="loss=siglip needs a model with a logit_bias"):
        train(tiny("clip", shards, steps=1, loss="siglip", model_overrides={"logit_bias_init": None}), tmp_path / "b")


def test_teacher_follows_the_student_by_ema_and_is_not_optimised(shards, tmp_path):
    train(tiny("maskclip", shards, steps=3), tmp_path / "run")
    sd = weights(ckpt.latest(tmp_path / "run" / "checkpoints"))
    student, teacher = sd["model.visual.proj"], sd["teacher.copies.visual.proj"]
    assert not torch.equal(student, teacher)
    state = json.loads((ckpt.latest(tmp_path / "run" / "checkpoints") / "state.json").read_text())
    optimised = {n for g in state["optimizer"]["param_groups"] for n in g["params"]}
    assert not any(n.startswith("teacher.") for n in optimised)
    assert "model.visual.proj" in optimised


# --- resume --------------------------------------------------------------------------------------

@pytest.mark.parametrize("recipe, workers, overrides", [("maskclip", 0, {}), ("slip", 2, {}),
                                                        ("clip_mae", 0, {"accum_steps": 2, "loss": "siglip"})])
def test_resuming_a_mid_run_checkpoint_reproduces_the_uninterrupted_run_exactly(recipe, workers, overrides, shards,
                                                                                tmp_path):
    # 6 steps per epoch: stop mid-epoch 1, cross into 2
    cfg = tiny(recipe, shards, steps=14, workers=workers, **overrides)
    train(cfg, tmp_path / "straight")
    first = train(cfg, tmp_path / "resumed", stop_after=8)
    assert first["stopped"] == "stop_after" and first["steps"] == 8 and first["model"] is None
    second = train(cfg, tmp_path / "resumed", resume=True)
    assert second["steps"] == 14
    a = weights(ckpt.latest(tmp_path / "straight" / "checkpoints"))
    b = weights(ckpt.latest(tmp_path / "resumed" / "checkpoints"))
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"weights differ after resume: {different[:5]}"
    ma, mb = metrics(tmp_path / "straight"), metrics(tmp_path / "resumed")
    assert [r["step"] for r in mb] == list(range(1, 15))
    assert [r["loss"] for r in ma] == [r["loss"] for r in mb]


def test_a_run_folder_with_checkpoints_is_never_overwritten(shards, tmp_path):
    train(tiny("clip", shards, steps=2), tmp_path / "run")
    with pytest.raises(ConfigError, match="--resume"):
        train(tiny("clip", shards, steps=2), tmp_path / "run")
    with pytest.raises(ConfigError, match="no complete checkpoint"):
        train(tiny("clip", shards, steps=2), tmp_path / "empty", resume=True)


def test_resume_skips_a_corrupt_newest_checkpoint(shards, tmp_path):
    cfg = tiny("clip", shards, steps=6, ckpt_every=2, keep_checkpoints=5)
    train(cfg, tmp_path / "run", stop_after=4)
    root = tmp_path / "run" / "checkpoints"
    newest = ckpt.latest(root)
    assert newest.name == "step_00000004"
    with open(newest / "model.safetensors", "r+b") as f:
        f.seek(200)
        f.write(b"\x00\xff" * 8)
    assert not ckpt.is_valid(newest) and ckpt.latest(root).name == "step_00000002"
    summary = train(cfg, tmp_path / "run", resume=True)
    assert summary["steps"] == 6


_KILL_DURING_WRITE = """
import os, signal, sys
import torch
from maskclip.train import checkpoint as ckpt
root = sys.argv[1]
state = {"step": 1}
ckpt.save(root, 1, {"w": torch.ones(3)}, {"state": {}, "param_groups": []}, state)
real_fsync = ckpt._fsync
def dying_fsync(path):
    real_fsync(path)
    if path.name == "model.safetensors":
        os.kill(os.getpid(), signal.SIGKILL)  # kill -9 in the middle of writing checkpoint 2
ckpt._fsync = dying_fsync
ckpt.save(root, 2, {"w": torch.full((3,), 2.0)}, {"state": {}, "param_groups": []}, {"step": 2})
"""


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_checkpoint_loadable(tmp_path):
    proc = subprocess.run([sys.executable, "-c", _KILL_DURING_WRITE, str(tmp_path)], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    assert [p.name for _, p in ckpt.checkpoints(tmp_path)] == ["step_00000001"]
    assert any(p.name.startswith(".step_00000002") for p in tmp_path.iterdir())  # the half-written temp folder
    model_state, _, state = ckpt.load(ckpt.latest(tmp_path))
    assert torch.equal(model_state["w"], torch.ones(3)) and state["step"] == 1
    ckpt.save(tmp_path, 3, {"w": torch.zeros(3)}, {"state": {}, "param_groups": []}, {"step": 3})
    assert not any(p.name.startswith(".step_") for p in tmp_path.iterdir())  # leftovers are cleaned up


# --- non-finite losses -----------------------------------------------------------------------------

def _poison(monkeypatch, bad_calls):
    """Make the recipe's loss NaN on the given forward calls (counted from 0)."""
    from maskclip.train import recipes

    calls = {"n": 0}
    original = recipes.Recipe.forward

    def forward(self, batch, generator):
        out = original(self, batch, generator)
        if calls["n"] in bad_calls:
            out["loss"] = out["loss"] * float("nan")
        calls["n"] += 1
        return out
    monkeypatch.setattr(recipes.Recipe, "forward", forward)


def test_a_non_finite_loss_skips_the_step_and_is_counted(monkeypatch, shards, tmp_path):
    _poison(monkeypatch, {2, 3})
    summary = train(tiny("clip", shards, steps=6, max_nonfinite=3), tmp_path / "run")
    assert summary["steps"] == 6 and summary["nonfinite"] == 2
    assert metrics(tmp_path / "run")[-1]["nonfinite_steps"] == 2
    sd = weights(ckpt.latest(tmp_path / "run" / "checkpoints"))
    assert all(torch.isfinite(v).all() for v in sd.values())


def test_repeated_non_finite_losses_abort_with_the_last_good_state_saved(monkeypatch, shards, tmp_path):
    _poison(monkeypatch, set(range(3, 100)))
    with pytest.raises(TrainingAborted, match="3 non-finite losses in a row"):
        train(tiny("clip", shards, steps=10, max_nonfinite=3), tmp_path / "run")
    folder = ckpt.latest(tmp_path / "run" / "checkpoints")
    assert folder.name == "step_00000003"
    assert all(torch.isfinite(v).all() for v in weights(folder).values())


def test_a_non_finite_step_between_logging_steps_is_found_at_the_next_one(monkeypatch, shards, tmp_path):
    """The host learns of a skipped step when it next syncs (here at step 4, a logging step): the step
    is taken back off the count, so the run still makes 6 applied steps."""
    _poison(monkeypatch, {2})
    summary = train(tiny("clip", shards, steps=6, log_every=4), tmp_path / "run")
    assert summary["steps"] == 6 and summary["nonfinite"] == 1
    rows = metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [4, 6] and rows[-1]["nonfinite_steps"] == 1
    assert all(r["loss"] == r["loss"] for r in rows)
    assert all(torch.isfinite(v).all() for v in weights(ckpt.latest(tmp_path / "run" / "checkpoints")).values())


# --- signals, torchrun, CLI -----------------------------------------------------------------------

def _cli(*args, **kw):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "maskclip.cli", *args], capture_output=True, text=True, env=env, **kw)


@pytest.mark.slow
@pytest.mark.parametrize("workers, sig, to_group", [(0, signal.SIGTERM, False), (1, signal.SIGTERM, True),
                                                    (1, signal.SIGINT, True)],
                         ids=["sigterm-to-the-process", "sigterm-to-the-group-with-a-worker", "ctrl-c-with-a-worker"])
def test_a_stop_signal_saves_a_checkpoint_and_exits_zero(shards, tmp_path, workers, sig, to_group):
    """SIGTERM or Ctrl-C: the current step ends, a checkpoint is written, exit 0. A scheduler's SIGTERM
    (SLURM, Kubernetes) and a terminal's Ctrl-C reach the data workers too, as the whole process group's:
    they must leave stopping to the main process instead of dying under it."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "maskclip.train", "--recipe", "clip", "--preset", "tiny", "--data", *shards,
           "--samples-per-epoch", "16000", "--batch-size", "16", "--steps", "100000", "--out", str(out),
           "--set", "log_every=1", "--set", "progress=false", "--workers", str(workers)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        if (out / "metrics.jsonl").exists() and len((out / "metrics.jsonl").read_text().splitlines()) >= 3:
            break
        time.sleep(0.2)
    if to_group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    folder = ckpt.latest(out / "checkpoints")
    steps = len(metrics(out))
    assert folder is not None and folder.name == f"step_{steps:08d}"
    assert "signal" in stderr


@pytest.mark.slow
def test_torchrun_two_processes_ddp_and_fsdp_train_resume_and_agree_exactly(shards, tmp_path):
    """2 gloo processes on CPU: each mode stops at step 3 and resumes to 6; FSDP's weights equal DDP's."""
    args = ["--recipe", "maskclip", "--preset", "tiny", "--data", *shards, "--samples-per-epoch", "96",
            "--batch-size", "16", "--steps", "6", "--workers", "0", "--set", "log_every=1", "--set", "progress=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for mode in ("ddp", "fsdp"):
        out = tmp_path / mode
        base = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "maskclip.train", "--out", str(out)]
        first = subprocess.run(base + args + ["--distributed", mode, "--stop-after", "3"], capture_output=True,
                               text=True, env=env, timeout=300)
        assert first.returncode == 0, first.stderr[-3000:]
        second = subprocess.run(base + ["--resume"], capture_output=True, text=True, env=env, timeout=300)
        assert second.returncode == 0, second.stderr[-3000:]
        state = json.loads((ckpt.latest(out / "checkpoints") / "state.json").read_text())
        assert state["step"] == 6 and state["world_size"] == 2 and state["train_config"]["distributed"] == mode
        rows = metrics(out)
        assert [r["step"] for r in rows] == list(range(1, 7)) and all(r["loss"] == r["loss"] for r in rows)
        maskclip.load(out / "model")
    ddp, fsdp = weights(ckpt.latest(tmp_path / "ddp" / "checkpoints")), weights(ckpt.latest(tmp_path / "fsdp" / "checkpoints"))
    assert ddp.keys() == fsdp.keys()
    assert max((ddp[k] - fsdp[k]).abs().max().item() for k in ddp) <= 1e-6


def test_cli_trains_exports_and_refuses_to_overwrite(shards, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--recipe", "clip", "--preset", "tiny", "--data", *shards, "--samples-per-epoch", "96",
            "--batch-size", "16", "--steps", "3", "--out", str(out), "--set", "progress=false"]
    done = _cli(*args)
    assert done.returncode == 0, done.stderr
    assert "finished at step 3/3" in done.stdout
    again = _cli(*args)
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "--resume" in again.stderr
    exported = _cli("export", str(out), str(tmp_path / "oc"), "--format", "open_clip")
    assert exported.returncode == 0, exported.stderr
    a, b = maskclip.load(out / "model"), maskclip.load(tmp_path / "oc")
    torch.testing.assert_close(a.encode_text("a red circle"), b.encode_text("a red circle"))
    bad = _cli("train", "--recipe", "clip", "--preset", "tiny", "--out", str(tmp_path / "x"), "--set", "lr=fast")
    assert bad.returncode == 2 and "train.lr must be float" in bad.stderr


def test_the_periodic_zero_shot_evaluation_is_logged(shards, tmp_path):
    from maskclip.train.evaluation import zero_shot_hook

    spec = "synthetic:val,n=16,size=32"
    train(tiny("clip", shards, steps=4, eval_every=2, eval_data=spec), tmp_path / "run", eval_fn=zero_shot_hook(spec))
    evals = [r for r in metrics(tmp_path / "run") if "eval/zeroshot_top1" in r]
    assert [r["step"] for r in evals] == [2, 4]
    assert all(0.0 <= r["eval/zeroshot_top1"] <= 1.0 for r in evals)
    with pytest.raises(maskclip.InputError):
        zero_shot_hook("synthetic:nosuchsplit")
