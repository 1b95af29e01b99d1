"""One optimizer step of the training loop, queued on the device without waiting for its results.

A GPU runs what the host queues; each time the host reads a value back (``.item()``, ``float(t)``,
``if t:``, ``.tolist()``, ``.cpu()``, or indexing with a bool mask, whose result size depends on
the data) it waits until the queue has drained, and the device idles while the host queues the
next work. So ``StepRunner.run`` reads nothing back: masks and caption lengths are made on the host
before the batch moves (``Recipe.prepare``), loss terms and metrics are summed on the device, and
whether a step was finite is decided there too: a non-finite loss or gradient (or, with fp16, a
grad-scaler overflow) turns the fused AdamW step into a no-op (its ``found_inf`` input, the grad
scaler's own mechanism) and the teacher update with it. ``StepRunner.sync`` is the one read: at
logging, checkpoint and evaluation steps, the loop learns which steps since the last sync were
non-finite and takes them back off its step count, as if they had not run.
"""
from __future__ import annotations

import contextlib
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from . import distributed as dist
from .accumulate import CachedFeatures, GlobalRng
from .config import TrainConfig
from .data import derive_seed
from .optim import lr_at, set_lr
from .recipes import Recipe, move

_INPUTS = ("image", "text", "views")  # what the model sees of a loader batch (the rest is bookkeeping)


def autocast(cfg: TrainConfig, device: torch.device):
    if cfg.precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if cfg.precision == "bf16" else torch.float16)


def _full(norm: torch.Tensor) -> torch.Tensor:
    """The gradient norm as a plain tensor (under FSDP it is a DTensor of per-shard parts)."""
    full = getattr(norm, "full_tensor", None)
    return full() if full is not None else norm


class StepRunner:
    """Runs optimizer steps (``run``) and reads their outcome back in one go (``sync``).

    Between syncs the run state's step count is optimistic: every ``run`` counts. ``sync`` returns
    it to the number of steps that were applied, counts the others as non-finite (``nonfinite``,
    ``nonfinite_in_row``) and moves the sums of their loss terms and metrics to the host window
    that ``record`` turns into a log line. With a sync after every step (``log_every=1``) this is
    exactly a loop that checks every step before the next.
    """

    def __init__(self, wrapped: nn.Module, recipe: Recipe, optimizer: torch.optim.Optimizer,
                 scaler: Optional[torch.amp.GradScaler], cfg: TrainConfig, plan, info: dist.DistInfo):
        self.wrapped, self.recipe, self.optimizer, self.scaler = wrapped, recipe, optimizer, scaler
        self.cfg, self.plan, self.info = cfg, plan, info
        self.params = [p for p in recipe.parameters() if p.requires_grad]
        self.scalar_params = [p for p in self.params if p.ndim == 0]  # FSDP leaves these replicated
        self.keys: Optional[List[str]] = None  # the recipe's loss terms and metrics, then "grad_norm"
        self._sums: Optional[torch.Tensor] = None  # on the device: sums over kept steps since the last sync
        self._flags: List[torch.Tensor] = []  # per step since the last sync: 0-dim bool, "non-finite"
        self._host: List[Dict[str, float]] = []  # per step since the last sync: host values (lr, momentum)
        self.window: Dict[str, float] = {}  # sums over kept steps since the last record
        self.window_steps = 0

    @property
    def pending(self) -> int:
        """Steps run since the last sync."""
        return len(self._flags)

    # --- the device side -----------------------------------------------------------------------

    def run(self, micro: List[Dict[str, torch.Tensor]], state) -> None:
        """One optimizer step over ``accum_steps`` micro-batches (loader batches on the host)."""
        cfg, info, optimizer, scaler = self.cfg, self.info, self.optimizer, self.scaler
        lr = lr_at(state.step, self.plan.total_steps, self.plan.warmup_steps, cfg.lr, cfg.warmup_start_lr, cfg.min_lr)
        set_lr(optimizer, lr)
        with dist.assume_equal_shapes():  # every rank's micro-batch has plan.local_batch samples
            terms, finite = self.backward(micro, state.step)
            if cfg.distributed == "fsdp" and info.world_size > 1:
                for p in self.scalar_params:
                    if p.grad is not None:
                        p.grad.copy_(dist.all_reduce_mean(p.grad))
            if scaler is not None:
                scaler.unscale_(optimizer)
            norm = self._grad_norm()
            loss_ok = finite if info.world_size == 1 else dist.all_reduce_sum((~finite).float()) == 0
            applied = loss_ok & torch.isfinite(norm)
            # With the grad scaler an overflow is expected (the scaler backs off): the step is not
            # applied, but it still counts, as before; without it, any non-finite value counts.
            nonfinite = ~loss_ok if scaler is not None else ~applied
            self._optimizer_step(applied)
            if scaler is not None:
                scaler.update()
            optimizer.zero_grad(set_to_none=True)
            extra = self.recipe.after_step(state.step + 1, self.plan.total_steps, applied)
        values = torch.cat([terms, norm.detach().float().reshape(1)])
        kept = torch.where(nonfinite, torch.zeros_like(values), values)
        self._sums = kept if self._sums is None else self._sums + kept
        self._flags.append(nonfinite)
        self._host.append({"lr": lr, **extra})

    def backward(self, micro: List[Dict[str, torch.Tensor]], step: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """The gradients of step ``step`` over its micro-batches, accumulated in the parameters' ``.grad``;
        returns the mean of the recipe's outputs over micro-batches (``[len(keys)]``) and whether
        every loss was finite (0-dim bool), both on the device.

        With ``accum_mode="cached"`` and several micro-batches the image-text term is the whole step's
        (``maskclip/train/accumulate.py``): a no-grad pass caches every micro-batch's features first.
        """
        generators = [torch.Generator().manual_seed(derive_seed(self.cfg.seed, "step", step, self.info.rank, i))
                      for i in range(len(micro))]
        if self.cfg.accum_mode == "micro" or len(micro) == 1:
            return self._accumulate(micro, generators, None, None)
        hosts = [self.recipe.prepare(self._inputs(loaded), g) for loaded, g in zip(micro, generators)]
        rngs, features = [], []
        with torch.no_grad():
            for host, generator in zip(hosts, generators):
                rngs.append(GlobalRng(self.info.device))
                with autocast(self.cfg, self.info.device):
                    features.append(self.wrapped(move(host, self.info.device), generator, features_only=True))
        return self._accumulate(hosts, generators, CachedFeatures.of(features), rngs)

    def _accumulate(self, micro, generators, cache: Optional[CachedFeatures], rngs: Optional[List[GlobalRng]]):
        """Forward and backward of each micro-batch (loader batches, or prepared ones with ``cache``)."""
        cfg, info, scaler = self.cfg, self.info, self.scaler
        terms, finite = None, None
        no_sync = getattr(self.wrapped, "no_sync", None)
        for i, (loaded, generator) in enumerate(zip(micro, generators)):
            if cache is None:
                batch, extra = move(self.recipe.prepare(self._inputs(loaded), generator), info.device), {}
            else:
                rngs[i].restore()  # the caching pass's random draws, again
                batch, extra = move(loaded, info.device), {"cached": cache.at(i)}
            last = i == len(micro) - 1
            with (no_sync() if no_sync is not None and not last else contextlib.nullcontext()):
                with autocast(cfg, info.device):
                    out = self.wrapped(batch, generator, **extra)
                loss = out["loss"].float() / len(micro)
                (scaler.scale(loss) if scaler is not None else loss).backward()
            values = torch.stack([out[k].detach().float() for k in self._keys(out)]) / len(micro)
            terms = values if terms is None else terms + values
            finite = torch.isfinite(loss) if finite is None else finite & torch.isfinite(loss)
        return terms, finite

    @staticmethod
    def _inputs(loaded: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        return {k: loaded[k] for k in _INPUTS if k in loaded}

    def _keys(self, out: Dict[str, torch.Tensor]) -> List[str]:
        if self.keys is None:
            self.keys = list(out)
        elif list(out) != self.keys:
            raise RuntimeError(f"the recipe's outputs changed between steps: {self.keys} then {list(out)}")
        return self.keys

    def _grad_norm(self) -> torch.Tensor:
        if self.cfg.grad_clip > 0:
            return _full(torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip))
        # Not clipping: the norm is only logged, so the gradients are not rescaled by 1.
        return _full(torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None]))

    def _optimizer_step(self, applied: torch.Tensor) -> None:
        """The fused AdamW step, a no-op on the device where ``applied`` is False (parameters, moments
        and step count unchanged): ``found_inf``, as the grad scaler hands it to fused optimizers."""
        optimizer = self.optimizer
        if not getattr(optimizer, "_step_supports_amp_scaling", False):
            raise TypeError("the training loop needs a fused optimizer (build_optimizer makes one), which can skip "
                            "a non-finite step without the host reading the gradients back")
        optimizer.found_inf = (~applied).float()
        optimizer.grad_scale = None  # the gradients are unscaled already
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf, optimizer.grad_scale

    # --- the host side -------------------------------------------------------------------------

    def sync(self, state) -> Tuple[List[str], int]:
        """Read the outcome of the steps since the last sync (one device-to-host copy); correct
        ``state`` and return the messages for the non-finite steps and the longest run of non-finite
        steps in a row seen."""
        if not self._flags:
            return [], state.nonfinite_in_row
        n = len(self._flags)
        read = torch.cat([torch.stack(self._flags).float(), self._sums]).tolist()
        flags, sums = read[:n], read[n:]
        start = state.step - n  # the step count before these steps, as the host counted them
        applied, messages, longest = 0, [], state.nonfinite_in_row
        for flag, host in zip(flags, self._host):
            if flag:
                state.nonfinite += 1
                state.nonfinite_in_row += 1
                longest = max(longest, state.nonfinite_in_row)
                messages.append(f"maskclip train: step {start + applied}: non-finite loss or gradient, step skipped "
                                f"({state.nonfinite_in_row} in a row, {state.nonfinite} in all)")
                continue
            applied += 1
            state.nonfinite_in_row = 0
            for k, v in host.items():
                self.window[k] = self.window.get(k, 0.0) + v
        state.step = start + applied
        for k, v in zip(self.keys + ["grad_norm"], sums):
            self.window[k] = self.window.get(k, 0.0) + v
        self.window_steps += applied
        self._sums, self._flags, self._host = None, [], []
        return messages, longest

    def record(self) -> Tuple[Dict[str, float], int]:
        """The window's means and its number of steps; the window starts again."""
        steps = max(self.window_steps, 1)
        means = {k: v / steps for k, v in self.window.items()}
        counted, self.window, self.window_steps = self.window_steps, {}, 0
        return means, counted
