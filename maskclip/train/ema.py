"""The mean teacher: an exponential moving average of student modules, and its momentum schedule."""
from __future__ import annotations

import copy
import math
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn


def cosine_momentum(step: int, total_steps: int, start: float = 0.996, end: float = 1.0) -> float:
    """BYOL/DINO's schedule: ``start`` at step 0, rising along a half cosine to ``end`` at ``total_steps``."""
    if total_steps <= 0:
        return end
    t = min(max(step / total_steps, 0.0), 1.0)
    return end - (end - start) * (math.cos(math.pi * t) + 1) / 2


class EMATeacher(nn.Module):
    """Frozen copies of named student modules, updated as ``t <- m t + (1 - m) s``.

    The copies never require gradients and are not given to the optimizer; they are ordinary
    submodules, so they move with ``.to()`` and are saved in the recipe's state dict. They run
    only under ``torch.no_grad()`` (the recipes'), with nothing requiring a gradient, so their
    linear layers take ``maskclip.layers``' inference kernels.
    """

    def __init__(self, students: Dict[str, nn.Module]):
        super().__init__()
        self.copies = nn.ModuleDict({name: copy.deepcopy(m) for name, m in students.items()})
        for p in self.copies.parameters():
            p.requires_grad_(False)
        self.copies.eval()
        self._pairs: Optional[Tuple[List[torch.Tensor], List[torch.Tensor]]] = None

    def __getitem__(self, name: str) -> nn.Module:
        return self.copies[name]

    def train(self, mode: bool = True) -> "EMATeacher":
        return super().train(False)  # the teacher always runs in eval mode

    def _apply(self, fn, recurse=True):
        self._pairs = None  # .to() / FSDP may replace the parameter tensors
        return super()._apply(fn, recurse)

    def pairs(self, students: Dict[str, nn.Module]) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """The (teacher, student) parameters the update averages, matched by name; built at the first
        update (after DDP/FSDP have wrapped the recipe) and again after ``.to()``."""
        if self._pairs is None:
            teacher, student = [], []
            for name, module in students.items():
                t_params = dict(self.copies[name].named_parameters())
                for pname, p in module.named_parameters():
                    if p.requires_grad:  # fixed tensors (sin-cos positions) are equal on both sides
                        teacher.append(t_params[pname])
                        student.append(p)
            self._pairs = (teacher, student)
        return self._pairs

    @torch.no_grad()
    def update(self, students: Dict[str, nn.Module], momentum: float,
               applied: Optional[torch.Tensor] = None) -> None:
        """Move the copies towards ``students`` by ``1 - momentum``; not at all where the 0-dim bool
        ``applied`` is False (an optimizer step that was skipped), decided on the device."""
        teacher, student = self.pairs(students)
        if not teacher:
            return
        weight = 1.0 - momentum
        if applied is not None:
            weight = applied.to(teacher[0].dtype) * weight
        torch._foreach_lerp_(teacher, student, weight)
