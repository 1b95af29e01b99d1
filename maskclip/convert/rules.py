"""The rules engine: a table of rules per layout, applied in either direction.

A rule pairs a native key with its key(s) in another layout and the tensor operation between
them; both directions come from the same table, so round trips are exact. Imports are strict:
every key of the source must be consumed by a rule or named by the layout's drop list, and every
rule must find its keys, else ``WeightsError`` lists what is missing and what is left over.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import torch

from ..config import ModelConfig
from ..errors import WeightsError

StateDict = Dict[str, torch.Tensor]

# Buffers and JIT leftovers that no layout's model needs: position ids, causal masks, scalars.
DROP_ALWAYS = ("attn_mask", "*.attn_mask", "*position_ids", "input_resolution", "context_length", "vocab_size")


@dataclass(frozen=True)
class Rule:
    """A native key, its key(s) in another layout, and the tensor operation between them."""

    native: str
    other: Tuple[str, ...]
    op: str = "id"  # id | T (transpose) | cls ([D] <-> [1, 1, D]) | pos ([N, D] <-> [1, N, D]) | qkv | qv


class Arch(NamedTuple):
    """What decides the key set: depth of each tower and the optional vision parameters."""

    vision_layers: int
    text_layers: int
    ln_pre: bool = True
    patch_bias: bool = False

    @classmethod
    def of(cls, config: ModelConfig) -> "Arch":
        v = config.vision
        return cls(v.layers, config.text.layers, v.ln_pre, v.patch_bias)


# --- the tensor operations -----------------------------------------------------------------

def _to_native_op(tensors: Sequence[torch.Tensor], rule: Rule) -> torch.Tensor:
    (a, *_) = tensors
    op = rule.op
    if op == "id":
        return a
    if op == "T":
        return a.t().contiguous()
    if op in ("cls", "pos"):
        if a.dim() != 3 or a.shape[0] != 1 or (op == "cls" and a.shape[1] != 1):
            raise WeightsError(f"{rule.other[0]} has shape {list(a.shape)}; expected "
                               f"{'[1, 1, D]' if op == 'cls' else '[1, N, D]'}")
        return a.reshape(a.shape[-1]) if op == "cls" else a[0]
    if op == "qkv":
        return torch.cat(list(tensors), dim=0)
    if op == "qv":
        q, v = tensors
        return torch.cat([q, torch.zeros_like(q), v], dim=0)
    raise AssertionError(op)


def _from_native_op(t: torch.Tensor, rule: Rule) -> List[torch.Tensor]:
    op = rule.op
    if op == "id":
        return [t]
    if op == "T":
        return [t.t().contiguous()]
    if op == "cls":
        return [t.reshape(1, 1, -1)]
    if op == "pos":
        return [t[None]]
    if op in ("qkv", "qv"):
        if t.shape[0] % 3:
            raise WeightsError(f"{rule.native} has {t.shape[0]} rows; expected 3 x width (q, k, v)")
        q, k, v = (x.clone() for x in t.chunk(3, dim=0))
        if op == "qkv":
            return [q, k, v]
        if torch.count_nonzero(k):
            raise WeightsError(f"{rule.native}: this layout has no key bias (it is fixed at 0), but the "
                               "checkpoint's key bias is non-zero; converting would change the model")
        return [q, v]
    raise AssertionError(op)


# --- applying a table ----------------------------------------------------------------------

def apply_to_native(sd: Mapping[str, torch.Tensor], rules: Iterable[Rule], layout: str,
                    drop: Sequence[str] = ()) -> StateDict:
    """Rename/reshape ``sd`` (in ``layout``) to native keys; every key must be used or dropped.

    ``drop``: ``fnmatch`` patterns of keys the native model has no place for.
    """
    out, used, missing = {}, set(), []
    for rule in rules:
        absent = [k for k in rule.other if k not in sd]
        if absent:
            missing.extend(absent)
            continue
        out[rule.native] = _to_native_op([sd[k] for k in rule.other], rule)
        used.update(rule.other)
    extra = [k for k in sd if k not in used and not any(fnmatch.fnmatchcase(k, p) for p in drop)]
    _raise_key_mismatch(layout, missing, extra)
    return out


def apply_from_native(sd: Mapping[str, torch.Tensor], rules: Iterable[Rule], layout: str) -> StateDict:
    """Native ``sd`` -> ``layout`` keys; every native key must be used."""
    out, used, missing = {}, set(), []
    for rule in rules:
        if rule.native not in sd:
            missing.append(rule.native)
            continue
        out.update(zip(rule.other, _from_native_op(sd[rule.native], rule)))
        used.add(rule.native)
    _raise_key_mismatch(f"native (for {layout})", missing, [k for k in sd if k not in used])
    return out


def _raise_key_mismatch(layout: str, missing: List[str], extra: List[str]) -> None:
    if not missing and not extra:
        return
    parts = []
    for label, items in (("missing keys", missing), ("unexpected keys", extra)):
        if items:
            more = f" (+{len(items) - 6} more)" if len(items) > 6 else ""
            parts.append(f"{label}: {sorted(items)[:6]}{more}")
    raise WeightsError(f"the {layout} state dict does not have the keys this conversion expects: " + "; ".join(parts))


# --- building tables -----------------------------------------------------------------------

BlockTable = List[Tuple[str, Tuple[str, ...], str]]

# The native keys of one transformer block (OpenAI's names).
BLOCK_KEYS = (
    "ln_1.weight", "ln_1.bias", "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
    "attn.out_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
    "mlp.c_proj.weight", "mlp.c_proj.bias",
)


def block_table(renames: Sequence[Tuple[str, str]] = (),
                special: Optional[Mapping[str, Tuple[Tuple[str, ...], str]]] = None) -> BlockTable:
    """Native block key -> (other block keys, op), renaming by prefix unless ``special`` says otherwise."""
    table = []
    for key in BLOCK_KEYS:
        if special and key in special:
            table.append((key, *special[key]))
            continue
        other = next((new + key[len(old):] for old, new in renames if key.startswith(old)), key)
        table.append((key, (other,), "id"))
    return table


def blocks(native: str, other: str, layers: int, table: BlockTable) -> List[Rule]:
    """The rules of ``layers`` blocks numbered under the prefixes ``native`` and ``other``."""
    return [Rule(f"{native}{i}.{key}", tuple(f"{other}{i}.{o}" for o in others), op)
            for i in range(layers) for key, others, op in table]


def pairs(names: Sequence[Tuple[str, str]], native: str = "", other: str = "", op: str = "id") -> List[Rule]:
    """One rule per ``(native name, other name)``, under the prefixes ``native`` and ``other``."""
    return [Rule(native + n, (other + o,), op) for n, o in names]


def ln(native: str, other: str) -> List[Tuple[str, str]]:
    """The weight and bias names of a LayerNorm called ``native`` here and ``other`` there."""
    return [(f"{native}.weight", f"{other}.weight"), (f"{native}.bias", f"{other}.bias")]
