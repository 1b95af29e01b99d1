"""AdamW with CLIP's parameter groups, and the warm-up + cosine learning-rate schedule."""
from __future__ import annotations

import math
from typing import Dict, List

import torch
from torch import nn

# Parameters named like these get no weight decay (CLIP, SLIP): embeddings, tokens and the temperature.
_NO_DECAY_NAMES = ("positional_embedding", "class_embedding", "token_embedding", "mask_token",
                   "mask_embedding", "logit_scale", ".pos")


def param_groups(module: nn.Module, weight_decay: float) -> List[Dict]:
    """Two AdamW groups: decayed weight matrices, and undecayed biases, norms, embeddings, logit scale."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or any(k in name for k in _NO_DECAY_NAMES):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
            {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]


def build_optimizer(module: nn.Module, lr: float, weight_decay: float, betas, eps: float) -> torch.optim.AdamW:
    """AdamW's fused kernel: one pass over each parameter (3x faster than the foreach one on this CPU),
    and it can skip a step on the device (``found_inf``), which the training loop relies on."""
    return torch.optim.AdamW(param_groups(module, weight_decay), lr=lr, betas=tuple(betas), eps=eps, fused=True)


def lr_at(step: int, total: int, warmup: int, lr: float, start_lr: float, min_lr: float) -> float:
    """Linear warm-up from ``start_lr`` to ``lr`` over ``warmup`` steps, then cosine to ``min_lr`` at ``total``."""
    if step < warmup:
        return start_lr + (lr - start_lr) * step / warmup
    t = (step - warmup) / max(total - warmup, 1)
    return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
