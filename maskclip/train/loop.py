"""The training loop: plain PyTorch, one function, one process per device (torchrun).

``train(cfg, out)`` builds the model and recipe, wraps them for DDP (or FSDP), and runs optimizer
steps until the schedule ends, a stop is requested (SIGTERM/SIGINT, or ``stop_after`` steps in this
run), or too many non-finite losses arrive in a row. It checkpoints every ``ckpt_every`` steps and
when it stops, and exports the trained student to ``out/model`` (a folder ``maskclip.load`` reads).

Layout of ``out``: ``config.json`` (the TrainConfig), ``metrics.jsonl``, ``checkpoints/step_*/``,
``model/`` (after the last step).
"""
from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)

from ..config import ModelConfig, architecture_config
from ..errors import ConfigError, MaskCLIPError
from ..model import MaskCLIP
from . import checkpoint as ckpt
from . import distributed as dist
from .allocator import keep_freed_memory
from .config import TrainConfig
from .data import StreamSpec, TrainStream, make_loader, open_source
from .log import MetricsLog
from .optim import build_optimizer
from .recipes import Recipe, build_recipe
from .step import StepRunner

EvalFn = Callable[[MaskCLIP], Dict[str, float]]


class TrainingAborted(MaskCLIPError, RuntimeError):
    """Training stopped on purpose (e.g. repeated non-finite losses); the last good state is checkpointed."""


@dataclass
class Plan:
    """What the config and the data imply: sizes and step counts."""

    local_batch: int  # samples per rank per micro-batch
    steps_per_epoch: int  # optimizer steps
    total_steps: int
    warmup_steps: int

    @classmethod
    def of(cls, cfg: TrainConfig, source, world_size: int) -> "Plan":
        per_step = world_size * cfg.accum_steps
        if cfg.batch_size % per_step:
            raise ConfigError(f"batch_size {cfg.batch_size} must be divisible by world size x accum_steps "
                              f"= {world_size} x {cfg.accum_steps}")
        samples = cfg.samples_per_epoch or source.size
        if not samples:
            raise ConfigError("samples_per_epoch is required for tar shards (their size is not known in advance)")
        steps_per_epoch = samples // cfg.batch_size
        if steps_per_epoch < 1:
            raise ConfigError(f"an epoch of {samples} samples is smaller than one batch of {cfg.batch_size}")
        total = cfg.steps or int(cfg.epochs * steps_per_epoch)
        if total < 1:
            raise ConfigError(f"the schedule has no steps (epochs={cfg.epochs}, steps={cfg.steps})")
        warmup = cfg.warmup_steps or int(cfg.warmup_epochs * steps_per_epoch)
        return cls(cfg.batch_size // per_step, steps_per_epoch, total, min(warmup, total))


@dataclass
class RunState:
    """Where the run is; saved in every checkpoint."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    epoch_batch: int = 0  # micro-batches of this epoch consumed by each rank
    offsets: List[int] = field(default_factory=list)  # raw samples consumed per data slot of this rank
    skipped: int = 0  # undecodable samples skipped (this rank)
    nonfinite: int = 0  # steps skipped for a non-finite loss or gradient
    nonfinite_in_row: int = 0


# --- building ----------------------------------------------------------------------------------

def build_model(cfg: TrainConfig) -> MaskCLIP:
    """The student: a named architecture with overrides (random init), or loaded weights (``init_from``).

    With ``loss="siglip"`` a new model starts from SigLIP's ``exp(logit_scale) = 10`` and
    ``logit_bias = -10`` (its ``logit_bias`` is then a parameter, kept in the exported model).
    """
    if cfg.init_from:
        from ..hub import load

        if cfg.model_overrides:
            raise ConfigError("model_overrides cannot change a model loaded with init_from")
        return _check_loss(load(cfg.init_from).train(), cfg)
    d = architecture_config(cfg.model).to_dict()
    if cfg.loss == "siglip":
        d.update(logit_scale_init=math.log(10.0), logit_bias_init=-10.0)
    for section, values in cfg.model_overrides.items():
        if isinstance(values, dict) and isinstance(d.get(section), dict):
            d[section].update(values)
        else:
            d[section] = values
    if "vision" in cfg.model_overrides and "image_size" in cfg.model_overrides["vision"]:
        d["preprocess"]["image_size"] = cfg.model_overrides["vision"]["image_size"]
    return _check_loss(MaskCLIP(ModelConfig.from_dict(d)), cfg)


def _check_loss(model: MaskCLIP, cfg: TrainConfig) -> MaskCLIP:
    """The sigmoid loss needs the model's ``logit_bias``; the softmax loss would leave one without a gradient."""
    source = f"init_from {cfg.init_from!r}" if cfg.init_from else "model_overrides"
    if cfg.loss == "siglip" and model.logit_bias is None:
        raise ConfigError(f"loss=siglip needs a model with a logit_bias; the model of {source} has none (it was "
                          "made for the softmax loss): set loss=clip, or start from a sigmoid-trained model")
    if cfg.loss == "clip" and model.logit_bias is not None:
        raise ConfigError(f"the model of {source} has a logit_bias (a sigmoid-trained model), which the softmax "
                          "loss does not use: set loss=siglip")
    return model


def _wrap(recipe: Recipe, cfg: TrainConfig, info: dist.DistInfo) -> nn.Module:
    """DDP or FSDP around the recipe (before the optimizer is built: FSDP replaces parameters)."""
    if info.world_size == 1:
        return recipe
    if cfg.distributed == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for tower in (recipe.model.visual, recipe.model.text):
            for block in tower.transformer.resblocks:
                fully_shard(block)
        # FSDP cannot shard 0-dim parameters (the logit scale, a scalar in every CLIP checkpoint):
        # they stay replicated and the step runner averages their gradients across ranks itself.
        fully_shard(recipe, ignored_params={p for p in recipe.parameters() if p.ndim == 0})
        return recipe
    if info.device.type == "cuda":
        # SLIP's head normalises each view over the global batch, as SLIP does; SyncBatchNorm runs on
        # GPUs only (on CPU ranks each normalises over its own batch), and FSDP above keeps BatchNorm.
        recipe = nn.SyncBatchNorm.convert_sync_batchnorm(recipe)
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(recipe, device_ids=[info.local_rank] if info.device.type == "cuda" else None)


# --- stopping ----------------------------------------------------------------------------------

class StopSignal(contextlib.AbstractContextManager):
    """SIGTERM/SIGINT ask for a clean stop (checkpoint, export, exit 0) instead of killing the run."""

    def __init__(self):
        self.requested = False
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        return False


# --- checkpoints -------------------------------------------------------------------------------

_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def _save(root: Path, recipe: Recipe, optimizer, scaler, state: RunState, cfg: TrainConfig,
          info: dist.DistInfo, world_workers: int) -> Path:
    model_state = get_model_state_dict(recipe, options=_FULL)
    optim_state = get_optimizer_state_dict(recipe, optimizer, options=_FULL)
    offsets = dist.all_gather_object(state.offsets)
    skipped = dist.all_gather_object(state.skipped)
    folder = None
    if info.is_main:
        record = {"step": state.step, "epoch": state.epoch, "epoch_batch": state.epoch_batch, "offsets": offsets,
                  "skipped": skipped, "nonfinite": state.nonfinite, "nonfinite_in_row": state.nonfinite_in_row,
                  "world_size": info.world_size, "workers": world_workers,
                  "scaler": scaler.state_dict() if scaler is not None else None,
                  "train_config": cfg.to_dict(), "model_config": recipe.model.config.to_dict()}
        folder = ckpt.save(root, state.step, model_state, optim_state, record, keep=cfg.keep_checkpoints)
    dist.barrier()
    return folder or ckpt.checkpoint_dir(root, state.step)


def _restore(folder: Path, recipe: Recipe, optimizer, scaler, info: dist.DistInfo, workers: int):
    """Load a checkpoint into the recipe and optimizer; returns the run state and a note for the log."""
    model_state, optim_state, saved = ckpt.load(folder, check=False)  # ckpt.latest validated it
    set_model_state_dict(recipe, model_state, options=StateDictOptions(full_state_dict=True))
    set_optimizer_state_dict(recipe, optimizer, optim_state, options=StateDictOptions(full_state_dict=True))
    if scaler is not None and saved.get("scaler"):
        scaler.load_state_dict(saved["scaler"])
    state = RunState(step=saved["step"], epoch=saved["epoch"], epoch_batch=saved["epoch_batch"],
                     skipped=saved["skipped"][info.rank] if info.rank < len(saved["skipped"]) else 0,
                     nonfinite=saved["nonfinite"], nonfinite_in_row=saved["nonfinite_in_row"])
    note = f"maskclip train: resumed from {folder} at step {state.step}"
    if saved["world_size"] == info.world_size and saved["workers"] == workers:
        state.offsets = saved["offsets"][info.rank]
    else:
        note += (f"; the checkpoint was written with {saved['world_size']} ranks x {saved['workers']} workers and "
                 f"this run has {info.world_size} x {workers}, so epoch {state.epoch} restarts its data from the "
                 "beginning (the step count and schedule continue)")
        state.epoch_batch = 0
    return state, note


def export_student(folder: Path, out: Path, format: str = "maskclip") -> Path:
    """The student model of a training checkpoint -> a folder that ``maskclip.load`` reads."""
    model_state, saved = ckpt.load_model_state(folder)
    model = MaskCLIP(ModelConfig.from_dict(saved["model_config"]))
    prefix = "model."
    model.load_state_dict({k[len(prefix):]: v for k, v in model_state.items() if k.startswith(prefix)}, strict=True)
    model.save_pretrained(out, format=format)
    return Path(out)


# --- the loop ----------------------------------------------------------------------------------

def train(cfg: TrainConfig, out, resume: bool = False, eval_fn: Optional[EvalFn] = None,
          stop_after: int = 0) -> Dict[str, Any]:
    """Train ``cfg`` into the folder ``out``; returns a summary (steps, last losses, paths).

    ``resume=True`` continues from the newest valid checkpoint in ``out``; without it, ``out`` must
    not hold checkpoints already (nothing a previous run saved is overwritten). ``stop_after`` ends
    this invocation after that many steps (with a checkpoint), e.g. to fit a job's time limit.
    """
    out = Path(out)
    cfg = cfg.validate()
    info = dist.init_distributed()
    threads = torch.get_num_threads()
    try:
        return _train(cfg, out, resume, eval_fn, stop_after, info)
    finally:
        torch.set_num_threads(threads)
        dist.cleanup()


def _train(cfg: TrainConfig, out: Path, resume: bool, eval_fn: Optional[EvalFn], stop_after: int,
           info: dist.DistInfo) -> Dict[str, Any]:
    root = out / "checkpoints"
    found = ckpt.latest(root) if resume else None
    if resume and found is None:
        raise ConfigError(f"--resume: no complete checkpoint in {root}")
    if not resume and ckpt.checkpoints(root):
        raise ConfigError(f"{out} already holds checkpoints of a run: pass --resume to continue it, or choose a new "
                          "output folder (maskclip never overwrites a previous run)")
    if info.device.type == "cpu":
        keep_freed_memory()
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    recipe = build_recipe(build_model(cfg), cfg).to(info.device)
    recipe.model.set_grad_checkpointing(cfg.grad_checkpointing)
    source = open_source(cfg.data, cfg.csv_image_key, cfg.csv_caption_key, cfg.csv_separator,
                         recipe.model.config.preprocess.image_size, cfg.workers)
    if info.device.type == "cpu":
        torch.set_num_threads(cpu_threads(cfg, torch.get_num_threads(), source))  # train() restores the count
    plan = Plan.of(cfg, source, info.world_size)
    wrapped = _wrap(recipe, cfg, info)
    recipe = wrapped.module if hasattr(wrapped, "module") else wrapped
    optimizer = build_optimizer(recipe, cfg.lr, cfg.weight_decay, cfg.betas, cfg.eps)
    if cfg.compile:
        wrapped = torch.compile(wrapped)
    scaler = torch.amp.GradScaler(info.device.type) if cfg.precision == "fp16" else None
    workers = max(cfg.workers, 1)
    state, note = RunState(), None
    if found is not None:
        state, note = _restore(found, recipe, optimizer, scaler, info, workers)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        cfg.to_json(out / "config.json")
    log = MetricsLog(out / "metrics.jsonl", info.is_main, cfg.tensorboard, cfg.progress, plan.total_steps,
                     start_step=state.step)
    if note:
        log.message(note)
    if not state.offsets:
        state.offsets = [0] * workers
    spec = StreamSpec(plan.local_batch, plan.steps_per_epoch * cfg.accum_steps, cfg.seed, info.rank,
                      info.world_size, recipe.extra_views, recipe.model.config.text.context_length)
    stream = TrainStream(source, spec, recipe.model.config.preprocess, cfg.crop_scale, cfg.slip.crop_scale,
                         tokenizer=recipe.model.tokenizer)
    recipe.train()
    summary = _run(wrapped, recipe, optimizer, scaler, stream, state, cfg, plan, info, log, root, eval_fn,
                   stop_after, workers)
    return {**summary, "out": str(out)}


def cpu_threads(cfg: TrainConfig, threads: int, source) -> int:
    """torch's threads for training on the CPU, out of the ``threads`` the process has: ``cfg.cpu_threads``
    when set; all of them when the samples come from memory (the synthetic pool), whose data worker needs
    a fraction of a core; else one fewer per data worker, which decodes and augments on a core of its own
    (an oversubscribed core stalls every thread of each op). Measured on 2 idle cores, ``shapes`` preset,
    one worker on the pool: 2 threads gave CLIP 126 samples/s and MaskCLIP 60, one thread 90 and 35
    (``benchmarks/train_end_to_end.py``)."""
    if cfg.cpu_threads:
        return cfg.cpu_threads
    if source.in_memory:
        return threads
    return max(1, threads - cfg.workers)


def _run(wrapped, recipe, optimizer, scaler, stream, state: RunState, cfg: TrainConfig, plan: Plan,
         info: dist.DistInfo, log: MetricsLog, root: Path, eval_fn, stop_after: int, workers: int):
    runner = StepRunner(wrapped, recipe, optimizer, scaler, cfg, plan, info)
    started_at, window_t0 = state.step, time.perf_counter()
    last = {"log": state.step, "eval": state.step, "save": state.step}  # steps already logged, evaluated, saved
    reason = "finished"
    batches_per_epoch = plan.steps_per_epoch * cfg.accum_steps
    with StopSignal() as stop:
        while state.step < plan.total_steps and reason == "finished":
            fresh_epoch = state.epoch_batch == 0
            stream.set_position(state.epoch, state.epoch_batch, None if fresh_epoch else state.offsets)
            if fresh_epoch:
                state.offsets = [0] * workers
            batches = iter(make_loader(stream, cfg.workers, pin_memory=info.device.type == "cuda"))
            while state.epoch_batch < batches_per_epoch and state.step < plan.total_steps:
                micro = [next(batches) for _ in range(cfg.accum_steps)]
                for b in micro:  # the loader's bookkeeping, host tensors
                    state.offsets[int(b["slot"])] = int(b["consumed"])
                    state.skipped += int(b["skipped"])
                state.epoch_batch += cfg.accum_steps
                runner.run(micro, state)
                state.step += 1  # optimistic: runner.sync takes non-finite steps back off
                log.advance()
                signal_stop = dist.any_rank(stop.requested)
                if not (signal_stop or _sync_due(state, cfg, plan, started_at, stop_after, eval_fn)):
                    continue
                counted = state.step
                messages, longest = runner.sync(state)
                log.advance(state.step - counted)  # back over the steps that were not applied
                for text in messages:
                    log.message(text)
                if longest >= cfg.max_nonfinite:
                    folder = _save(root, recipe, optimizer, scaler, state, cfg, info, workers)
                    log.close()
                    raise TrainingAborted(
                        f"{longest} non-finite losses in a row by step {state.step}; stopped. The last good "
                        f"state is saved in {folder}: lower the learning rate, use fp32 or bf16, or set "
                        "grad_clip, then resume")
                if state.step > last["log"] and (state.step % cfg.log_every == 0 or state.step == plan.total_steps):
                    _log(log, runner, window_t0, state, cfg, info)
                    window_t0, last["log"] = time.perf_counter(), state.step
                if (eval_fn is not None and cfg.eval_every and state.step % cfg.eval_every == 0
                        and state.step > last["eval"]):
                    _evaluate(eval_fn, recipe, log, state.step, info)
                    last["eval"] = state.step
                if signal_stop:
                    reason = "signal"
                elif stop_after and state.step - started_at >= stop_after:
                    reason = "stop_after"
                if state.step > last["save"] and (reason != "finished" or state.step == plan.total_steps
                                                  or state.step % cfg.ckpt_every == 0):
                    _save(root, recipe, optimizer, scaler, state, cfg, info, workers)
                    last["save"] = state.step
                if reason != "finished":
                    break
            if state.epoch_batch >= batches_per_epoch:
                state.epoch += 1
                state.epoch_batch = 0
            del batches
    folder = ckpt.checkpoint_dir(root, state.step)
    model_dir = None
    if state.step == plan.total_steps:
        model_dir = root.parent / "model"
        if info.is_main:
            export_student(folder, model_dir)
        dist.barrier()
    log.message(f"maskclip train: {reason} at step {state.step}/{plan.total_steps}; checkpoint {folder}"
                + (f"; model {model_dir}" if model_dir else ""))
    log.close()
    return {"steps": state.step, "total_steps": plan.total_steps, "stopped": reason,
            "checkpoint": str(folder), "model": str(model_dir) if model_dir else None,
            "skipped": state.skipped, "nonfinite": state.nonfinite}


def _sync_due(state: RunState, cfg: TrainConfig, plan: Plan, started_at: int, stop_after: int, eval_fn) -> bool:
    """Whether the host must learn the outcome of the steps run so far: to log, evaluate, checkpoint,
    end the schedule or stop this invocation (with the optimistic step count)."""
    s = state.step
    return (s % cfg.log_every == 0 or s >= plan.total_steps or s % cfg.ckpt_every == 0
            or bool(eval_fn is not None and cfg.eval_every and s % cfg.eval_every == 0)
            or bool(stop_after and s - started_at >= stop_after))


def _log(log: MetricsLog, runner: StepRunner, t0: float, state: RunState, cfg: TrainConfig,
         info: dist.DistInfo) -> None:
    skipped = int(dist.host_sum([state.skipped])[0])
    means, steps = runner.record()
    seconds = time.perf_counter() - t0
    record = {"step": state.step, "epoch": state.epoch, **means,
              "samples_per_s": steps * cfg.batch_size / max(seconds, 1e-9), "skipped_samples": skipped,
              "nonfinite_steps": state.nonfinite, "time": time.time()}
    log.log(record)


def _evaluate(eval_fn: EvalFn, recipe: Recipe, log: MetricsLog, step: int, info: dist.DistInfo) -> None:
    if info.is_main:
        model = recipe.model
        model.eval()
        with torch.no_grad():
            results = eval_fn(model)
        model.train()
        log.log({"step": step, **{f"eval/{k}": v for k, v in results.items()}})
    dist.barrier()
