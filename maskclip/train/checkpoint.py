"""Training checkpoints: atomic, verifiable, resumable.

A checkpoint is a folder ``checkpoints/step_XXXXXXXX/`` holding

- ``model.safetensors``: the recipe's whole state (student, heads, decoders, EMA teacher, loss buffers);
- ``optimizer.safetensors``: the optimizer's tensors (keyed by parameter name) and the RNG states;
- ``state.json``: step, epoch, data position, optimizer hyper-parameters, grad-scaler state,
  counters, the training config;
- ``manifest.json``, written last: every file's size and sha256.

It is written into a hidden temporary folder, each file fsynced, and renamed into place in one
step, so a crash, a kill or a full disk leaves either the complete new checkpoint or none (the
previous ones stay). ``latest`` returns the newest folder whose manifest checks out.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from safetensors.torch import load_file, save_file

from ..atomic import fsync_dir
from ..errors import WeightsError
from ..serialization import sha256_file

FILES = ("model.safetensors", "optimizer.safetensors", "state.json")
_NAME = re.compile(r"^step_(\d{8})$")


def checkpoint_dir(root: Path, step: int) -> Path:
    return Path(root) / f"step_{step:08d}"


def save(root: Path, step: int, model_state: Dict[str, torch.Tensor], optim_state: Dict[str, Any],
         state: Dict[str, Any], keep: int = 3) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically; keep the newest ``keep`` checkpoints."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = checkpoint_dir(root, step)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=root))
    try:
        tensors, optim_json = _flatten_optimizer(optim_state)
        tensors.update(_rng_tensors())
        save_file(_contiguous(model_state), str(tmp / "model.safetensors"))
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        full_state = {**state, "optimizer": optim_json, "python_rng": _python_rng()}
        (tmp / "state.json").write_text(json.dumps(full_state, indent=1), encoding="utf-8")
        for name in FILES:
            _fsync(tmp / name)
        manifest = {name: {"bytes": (tmp / name).stat().st_size, "sha256": sha256_file(tmp / name)} for name in FILES}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        _fsync(tmp / "manifest.json")
        fsync_dir(tmp)
        if final.exists():  # the same step saved again (e.g. SIGTERM right after a periodic save)
            trash = root / f".{final.name}.old"
            shutil.rmtree(trash, ignore_errors=True)
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _prune(root, keep)
    return final


def is_valid(folder: Path) -> bool:
    """True when the manifest exists and every file has its recorded size and sha256."""
    try:
        manifest = json.loads((Path(folder) / "manifest.json").read_text(encoding="utf-8"))
        return set(manifest) == set(FILES) and all(
            (Path(folder) / name).stat().st_size == info["bytes"] and sha256_file(Path(folder) / name) == info["sha256"]
            for name, info in manifest.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def checkpoints(root: Path) -> List[Tuple[int, Path]]:
    """``(step, folder)`` of every finished checkpoint folder under ``root``, newest first (not validated)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and p.is_dir()]
    return sorted(found, reverse=True)


def latest(root: Path) -> Optional[Path]:
    """The newest valid checkpoint folder, or None. Invalid ones are skipped (and reported by ``invalid``)."""
    return next((p for _, p in checkpoints(root) if is_valid(p)), None)


def load(folder: Path, check: bool = True) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any], Dict[str, Any]]:
    """A checkpoint folder -> (model state, optimizer state, training state); restores the RNG states.

    ``check=False`` skips hashing the files again when the caller has just validated the folder
    (``latest`` does).
    """
    model_state, state = load_model_state(folder, check)
    tensors = load_file(str(Path(folder) / "optimizer.safetensors"))
    optim_state = _unflatten_optimizer(tensors, state.pop("optimizer"))
    _restore_rng(tensors, state.pop("python_rng"))
    return model_state, optim_state, state


def load_model_state(folder: Path, check: bool = True) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """The recipe's state and the training state of a checkpoint, without touching optimizer or RNG."""
    folder = Path(folder)
    if check and not is_valid(folder):
        raise WeightsError(f"{folder} is not a complete training checkpoint (no manifest, or files that do not "
                           "match it)")
    state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    return load_file(str(folder / "model.safetensors")), state


def _prune(root: Path, keep: int) -> None:
    for _, folder in checkpoints(root)[keep:]:
        shutil.rmtree(folder, ignore_errors=True)
    for stale in root.glob(".step_*"):  # temp folders of writes that were interrupted
        shutil.rmtree(stale, ignore_errors=True)


# --- optimizer state <-> safetensors + JSON ------------------------------------------------

def _flatten_optimizer(optim_state: Dict[str, Any]) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """``{"state": {param: {k: v}}, "param_groups": [...]}`` -> tensors by ``state/<param>/<k>``, and the rest."""
    tensors, scalars = {}, {}
    for param, entries in optim_state["state"].items():
        for k, v in entries.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state/{param}/{k}"] = v.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(param), {})[k] = v
    return tensors, {"param_groups": optim_state["param_groups"], "scalars": scalars,
                     "keys": [str(p) for p in optim_state["state"]]}


def _unflatten_optimizer(tensors: Dict[str, torch.Tensor], meta: Dict[str, Any]) -> Dict[str, Any]:
    state: Dict[Any, Dict[str, Any]] = {}
    for name, t in tensors.items():
        if name.startswith("state/"):
            param, _, k = name[len("state/"):].rpartition("/")
            state.setdefault(param, {})[k] = t
    for param, entries in meta["scalars"].items():
        state.setdefault(param, {}).update(entries)
    return {"state": state, "param_groups": meta["param_groups"]}


# --- RNG ---------------------------------------------------------------------------------------

def _rng_tensors() -> Dict[str, torch.Tensor]:
    out = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        out.update({f"rng/cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return out


def _python_rng() -> List[Any]:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _restore_rng(tensors: Dict[str, torch.Tensor], python_state: List[Any]) -> None:
    torch.set_rng_state(tensors["rng/torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng/cuda")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = python_state
    random.setstate((version, tuple(internal), gauss))


# --- files -------------------------------------------------------------------------------------

def _contiguous(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in sd.items()}


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())
