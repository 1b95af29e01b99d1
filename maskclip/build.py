"""A model from a native (config, state dict): the two checked against each other first.

Every mismatch (missing or extra keys, shapes, non-float tensors, NaN or Inf) is reported in one
``WeightsError`` before anything is written, and a config that does not fit the weights is
refused before its model is allocated.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Dict, List

import torch

from .config import ModelConfig
from .convert import count_blocks
from .errors import ConfigError, WeightsError
from .model import DualEncoder


def build_model(config: ModelConfig, state_dict: Dict[str, torch.Tensor], source: str = "the checkpoint") -> DualEncoder:
    """A model of ``config`` holding ``state_dict``, checked against each other before anything is allocated.

    A hostile or mistaken config (a million layers, a width of 2**20) would otherwise allocate
    whatever it asks for before the weights are compared. Here the config is first built on the
    meta device (shapes, no memory), at most one block deeper per tower than the weights hold,
    and compared with the weights; only a config that fits them is built for real.
    """
    problems, shallow = [], config
    for tower, part in (("visual", "vision"), ("text", "text")):
        cfg = getattr(shallow, part)
        if part == "vision" and cfg.timm_model_name is not None:
            continue  # a timm tower's depth is its model name's, compared key by key below
        found = count_blocks(state_dict, f"{tower}.transformer.resblocks.")
        if found != cfg.layers:
            problems.append(f"the config has {cfg.layers} {tower} blocks, the weights {found}")
            shallow = replace(shallow, **{part: replace(cfg, layers=min(cfg.layers, found + 1))})
    try:
        with torch.device("meta"):
            skeleton = DualEncoder(shallow)
    except (RuntimeError, TypeError, ValueError, OverflowError) as e:  # sizes torch cannot represent
        raise ConfigError(f"the config of {source} describes a model that cannot be built: "
                          f"{str(e).splitlines()[0]}") from None
    _raise_mismatches(problems + _mismatches(skeleton.state_dict(), state_dict), source, config)
    model = DualEncoder(config)
    load_state_dict(model, state_dict, source)
    return model


def load_state_dict(model: DualEncoder, state_dict: Dict[str, torch.Tensor], source: str = "the checkpoint") -> None:
    """Strict load with one readable error for missing keys, extra keys, shapes, dtypes and NaN.

    Every check runs before the first parameter is written: a refused ``state_dict`` leaves ``model`` as it was.
    """
    _raise_mismatches(_mismatches(model.state_dict(), state_dict), source, model.config)
    bad = [k for k, v in state_dict.items() if not _all_finite(v)]
    if bad:
        raise WeightsError(f"weights from {source} contain NaN or Inf in {bad[:5]}")
    model.load_state_dict(state_dict, strict=True)


def _all_finite(t: torch.Tensor) -> bool:
    # isfinite is not implemented for every float8 format; those widen exactly to float32.
    return bool(torch.isfinite(t if t.element_size() > 1 else t.float()).all())


def _mismatches(expected: Dict[str, torch.Tensor], sd: Dict[str, torch.Tensor]) -> List[str]:
    """Missing keys, extra keys, shape mismatches and non-float tensors, one line each."""
    missing = sorted(set(expected) - set(sd))
    extra = sorted(set(sd) - set(expected))
    shapes = [f"{k}: checkpoint {list(sd[k].shape)} vs model {list(v.shape)}"
              for k, v in expected.items() if k in sd and sd[k].shape != v.shape]
    dtypes = [f"{k}: {sd[k].dtype}" for k in expected if k in sd and not sd[k].is_floating_point()]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", extra),
                         ("shape mismatches", shapes), ("non-float tensors", dtypes)):
        if items:
            more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
            problems.append(f"{label}: {items[:5]}{more}")
    return problems


def _raise_mismatches(problems: List[str], source: str, config: ModelConfig) -> None:
    if problems:
        raise WeightsError(f"weights from {source} do not match the config "
                           f"({config.name or 'unnamed'}): " + "; ".join(problems))
