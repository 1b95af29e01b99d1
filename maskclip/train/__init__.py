"""maskclip.train: pretraining recipes (CLIP, SLIP, CLIP+MAE, MaskCLIP, RILS) on one machine or many.

>>> from maskclip.train import TrainConfig, train
>>> cfg = TrainConfig.from_preset("tiny", "maskclip", {"data": ["synthetic:train"], "steps": 100})
>>> summary = train(cfg, "runs/tiny-maskclip")      # or: maskclip train --recipe maskclip --preset tiny ...

Which settings come from the papers and which are ours: ``docs/training.md``.
"""
from .config import RECIPES, TrainConfig, load_presets

_LOOP_NAMES = ("train", "export_student", "TrainingAborted")


def __getattr__(name):
    # The loop pulls in torch.distributed and the recipes; configs and the CLI's --help do not need them.
    if name in _LOOP_NAMES:
        from . import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'maskclip.train' has no attribute {name!r}")


__all__ = ["RECIPES", "TrainConfig", "load_presets", *_LOOP_NAMES]
