"""Transformer layers of the CLIP family, with OpenAI CLIP's parameter names.

Parameter names follow OpenAI CLIP / open_clip (``ln_1``, ``attn.in_proj_weight``, ``mlp.c_fc``, ...)
so their state dicts load without renaming. Tensors are batch first: ``[B, N, D]``.
Attention goes through ``F.scaled_dot_product_attention`` (fused kernels on CPU and GPU). Every
linear layer is a ``Linear`` module (an ``nn.Linear``, so hooks, PEFT and quantisation see it) that
picks oneDNN's kernel for fp32 inference on the CPU; the MLP's activation, chosen when the model is
built, fuses into that kernel (exact GELU) or works in place (QuickGELU) when nothing observes it.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.module import _global_forward_hooks, _global_forward_pre_hooks
from torch.utils.checkpoint import checkpoint

from .errors import InputError, InputTypeError


def _onednn_linear_op():
    """oneDNN's fused linear (what torch.compile's CPU backend emits), or None if this torch lacks it."""
    try:
        return torch.ops.mkldnn._linear_pointwise if torch.backends.mkldnn.is_available() else None
    except (AttributeError, RuntimeError):
        return None


_ONEDNN_LINEAR = _onednn_linear_op()
_is_compiling = getattr(torch.compiler, "is_compiling", lambda: False)


def _cpu_autocast() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4 takes no device type
        return torch.is_autocast_cpu_enabled()


def _use_onednn(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> bool:
    """True for fp32 CPU inference outside autocast and torch.compile, with oneDNN enabled.

    On CPU, torch's fp32 ``F.linear`` calls MKL's sgemm; oneDNN's kernel computes the same product
    (fp32 accumulation, same results to ~1e-6 relative) about twice as fast on AVX-512 CPUs
    (docs/performance.md). It has no autograd formula, hence inference only: not when grad mode
    is on and the input, weight or bias requires grad (a bias alone trains in BitFit). Autocast and
    torch.compile have their own linear lowering, so they keep ``F.linear``.
    ``torch.backends.mkldnn.flags(enabled=False)`` turns this path off.
    """
    return (not _is_compiling() and _ONEDNN_LINEAR is not None
            and x.dtype == torch.float32 and weight.dtype == torch.float32
            and x.device.type == "cpu" and weight.device.type == "cpu"
            and not (torch.is_grad_enabled()
                     and (x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)))
            and not _cpu_autocast() and torch._C._get_mkldnn_enabled())


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
           gelu: bool = False) -> torch.Tensor:
    """``F.linear`` (then exact GELU if ``gelu``), on oneDNN's fused kernel when ``_use_onednn``."""
    if _use_onednn(x, weight, bias):
        if gelu:
            return _ONEDNN_LINEAR(x, weight, bias, "gelu", [], "none")
        return _ONEDNN_LINEAR(x, weight, bias, "none", [], "")
    out = F.linear(x, weight, bias)
    return F.gelu(out) if gelu else out


class Linear(nn.Linear):
    """``nn.Linear`` on oneDNN's kernel in fp32 CPU inference (``_use_onednn``), ``F.linear`` otherwise.

    Every linear layer of the towers is one, so forward hooks fire and PEFT wraps them (LoRA, IA3,
    ...). torch.ao's eager quantisation matches exact types, so name this one to quantise it:
    ``torch.ao.quantization.quantize_dynamic(model, {maskclip.layers.Linear}, dtype=torch.qint8)``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


class _ViaNNLinear:
    """torch.ao's dynamic-quantisation target for ``Linear``.

    torch's dynamic quantised linear is built only from an exact ``nn.Linear``: this hands it
    one that holds the same weights.
    """

    @staticmethod
    def from_float(mod: Linear, use_precomputed_fake_quant: bool = False) -> nn.Module:
        from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

        plain = nn.Linear(mod.in_features, mod.out_features, bias=mod.bias is not None, device="meta")
        plain.weight, plain.bias = mod.weight, mod.bias
        plain.qconfig = mod.qconfig
        return DynamicQuantizedLinear.from_float(plain, use_precomputed_fake_quant=use_precomputed_fake_quant)


def _register_dynamic_quantisation() -> None:
    """Map ``Linear`` in torch.ao's default dynamic-quantisation mapping (which ``quantize_dynamic`` reads)."""
    try:
        from torch.ao.quantization import quantization_mappings
    except ImportError:  # torch.ao.quantization is deprecated: a torch without it has no mapping to extend
        return
    quantization_mappings.DEFAULT_DYNAMIC_QUANT_MODULE_MAPPINGS[Linear] = _ViaNNLinear


_register_dynamic_quantisation()


def _runs_as_is(module: nn.Module, cls: type) -> bool:
    """True if calling ``module`` runs exactly ``cls.forward``: that very type and no forward hooks.

    Only then may a fused kernel replace the call (or reuse its output in place) unobserved.
    A PEFT adapter, a quantised copy or a hook (on the module or global) makes this False.
    """
    return (type(module) is cls and not module._forward_hooks and not module._forward_pre_hooks
            and not _global_forward_hooks and not _global_forward_pre_hooks)


class QuickGELU(nn.Module):
    """OpenAI CLIP's GELU approximation ``x * sigmoid(1.702 x)``; its weights need it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)

    def after_linear(self, fc: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``self(fc(x))``; in place on ``fc``'s output when nothing else can hold that tensor."""
        h = fc(x)
        if not h.requires_grad and _runs_as_is(fc, Linear) and _runs_as_is(self, QuickGELU):
            # The same operations, in place where the tensor is this call's own: the hidden
            # activations are the model's biggest tensors, and each fresh one costs page faults.
            return h.mul_((h * 1.702).sigmoid_())
        return self(h)


class GELU(nn.GELU):
    """Exact GELU; after a plain ``Linear`` in fp32 CPU inference, fused into oneDNN's linear kernel."""

    def __init__(self):
        super().__init__(approximate="none")

    def after_linear(self, fc: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``self(fc(x))``, in one oneDNN call when both would run as is."""
        if _runs_as_is(fc, Linear) and _runs_as_is(self, GELU) and _use_onednn(x, fc.weight, fc.bias):
            return _ONEDNN_LINEAR(x, fc.weight, fc.bias, "gelu", [], "none")
        return self(fc(x))


class GELUTanh(nn.GELU):
    """GELU's tanh approximation (SigLIP2's text tower, open_clip ``act_kwargs: {approximate: tanh}``)."""

    def __init__(self):
        super().__init__(approximate="tanh")

    def after_linear(self, fc: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return self(fc(x))


ACTIVATIONS = {"quick_gelu": QuickGELU, "gelu": GELU, "gelu_tanh": GELUTanh}


def make_activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}; got {name!r}")
    return ACTIVATIONS[name]()


# The fused q/k/v projection's parameters as nn.MultiheadAttention names them, and with it OpenAI
# CLIP, open_clip, every converter and every checkpoint: (the attention's name, in_proj's name).
_QKV_NAMES = (("in_proj_weight", "weight"), ("in_proj_bias", "bias"))


def _in_proj_is_tied(attn: "Attention") -> bool:
    """True while ``attn.in_proj`` is a Linear over the attention's own q/k/v parameters."""
    own = attn.in_proj._parameters
    return all(own.get(name) is getattr(attn, saved) for saved, name in _QKV_NAMES)


def _drop_in_proj_keys(attn: "Attention", state_dict, prefix: str, local_metadata) -> None:
    """State-dict post-hook: ``in_proj.weight`` / ``.bias`` repeat ``in_proj_weight`` / ``_bias``; keep those."""
    if _in_proj_is_tied(attn):
        for _, name in _QKV_NAMES:
            state_dict.pop(f"{prefix}in_proj.{name}", None)


def _feed_in_proj_keys(attn: "Attention", state_dict, prefix: str, local_metadata, *args) -> None:
    """Load-state-dict pre-hook: ``in_proj`` loads the tensors given for ``in_proj_weight`` / ``_bias``."""
    if not _in_proj_is_tied(attn):
        return
    for saved, name in _QKV_NAMES:
        value = state_dict.get(prefix + saved)
        if value is None:
            continue
        if local_metadata.get("assign_to_params_buffers") and not isinstance(value, nn.Parameter):
            # assign=True wraps each key's tensor in a Parameter of its own; one Parameter for
            # both keys keeps the two names one parameter.
            value = state_dict[prefix + saved] = nn.Parameter(value, requires_grad=getattr(attn, saved).requires_grad)
        state_dict[f"{prefix}in_proj.{name}"] = value


class Attention(nn.Module):
    """Multi-head self-attention; q, k, v from one projection (output rows q, k, v in that order).

    The projection's parameters are the attention's own ``in_proj_weight`` / ``in_proj_bias``, so
    parameter names, state-dict keys, optimizer and FSDP state keep OpenAI's names. The same
    Parameter objects are the ``weight`` / ``bias`` of ``in_proj``, the ``Linear`` the forward
    calls, so hooks, PEFT adapters (LoRA on q/k/v) and quantisation reach q/k/v as a module.
    ``named_parameters`` and state dicts hold each once, under OpenAI's name.
    """

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        # Built on the meta device (no memory, no random numbers drawn), then given the two above.
        self.in_proj = Linear(width, 3 * width, device="meta")
        self._tie_in_proj()
        self.out_proj = Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)
        self._register_state_dict_hook(_drop_in_proj_keys)
        self.register_load_state_dict_pre_hook(_feed_in_proj_keys)

    def _tie_in_proj(self) -> None:
        self.in_proj.weight, self.in_proj.bias = self.in_proj_weight, self.in_proj_bias

    def _apply(self, fn, *args, **kwargs):
        # A conversion that cannot happen in place (to or from the meta device, say) gives each
        # module a new Parameter; the q/k/v parameters must stay one.
        tied = _in_proj_is_tied(self)
        super()._apply(fn, *args, **kwargs)
        if tied:
            self._tie_in_proj()
        return self

    def qkv(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``[B, N, D]`` -> q, k, v each ``[B, heads, N, D / heads]``."""
        B, N, D = x.shape
        qkv = self.in_proj(x).view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        return qkv.unbind(0)

    def merge_heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, heads, N, d]`` -> ``[B, N, heads * d]`` through the output projection."""
        B, H, N, d = x.shape
        return self.out_proj(x.transpose(1, 2).reshape(B, N, H * d))

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        q, k, v = self.qkv(x)
        return self.merge_heads(F.scaled_dot_product_attention(q, k, v, is_causal=causal))


class MLP(nn.Module):
    """``c_proj(act(c_fc(x)))``; the activation, chosen at build, knows how to fuse with ``c_fc``."""

    def __init__(self, width: int, hidden: int, act: str):
        super().__init__()
        self.c_fc = Linear(width, hidden)
        self.gelu = make_activation(act)
        self.c_proj = Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu.after_linear(self.c_fc, x))


class Block(nn.Module):
    """Pre-norm residual block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, act: str, eps: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.attn = Attention(width, heads)
        self.ln_2 = nn.LayerNorm(width, eps=eps)
        self.mlp = MLP(width, int(width * mlp_ratio), act)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), causal=causal)
        return x + self.mlp(self.ln_2(x))


def take_indices(depth: int, indices: Union[None, int, Sequence[int]]) -> List[int]:
    """timm's choice of blocks out of ``depth``: None -> all, ``n`` -> the last ``n``, a sequence ->
    those (negative ones count from the end). Sorted, each once: blocks run in order."""
    if indices is None:
        return list(range(depth))
    if isinstance(indices, (bool, str)) or not isinstance(indices, (int, Sequence)):
        raise InputTypeError(f"indices must be None, an int or a sequence of ints; got {type(indices).__name__}")
    if isinstance(indices, int):
        if not 0 < indices <= depth:
            raise InputError(f"indices (the last n blocks) must be 1 to {depth}; got {indices}")
        return list(range(depth - indices, depth))
    taken = set()
    for i in indices:
        if isinstance(i, bool) or not isinstance(i, int) or not -depth <= i < depth:
            raise InputError(f"block indices must be ints in [{-depth}, {depth}); got {i!r}")
        taken.add(i % depth)
    if not taken:
        raise InputError("indices must name at least one block; got an empty sequence")
    return sorted(taken)


class Transformer(nn.Module):
    """A stack of ``Block``s. ``grad_checkpointing`` trades compute for activation memory."""

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float, act: str, eps: float):
        super().__init__()
        self.width = width
        self.resblocks = nn.ModuleList(Block(width, heads, mlp_ratio, act, eps) for _ in range(layers))
        self.grad_checkpointing = False
        self._init_weights(layers)

    def _init_weights(self, layers: int) -> None:
        # OpenAI CLIP's initialisation, scaled with depth on the residual projections.
        proj_std = (self.width ** -0.5) * ((2 * layers) ** -0.5)
        attn_std = self.width ** -0.5
        fc_std = (2 * self.width) ** -0.5
        for block in self.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)

    def forward(self, x: torch.Tensor, causal: bool = False, stop: Optional[int] = None) -> torch.Tensor:
        """Run blocks ``[0, stop)`` (all by default) on ``x: [B, N, D]``."""
        return self.forward_intermediates(x, (), causal=causal, stop=stop)[0]

    def forward_intermediates(self, x: torch.Tensor, indices: Sequence[int], causal: bool = False,
                              stop: Optional[int] = None) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Run blocks ``[0, stop)`` on ``x: [B, N, D]``: the last output, and the outputs ``[B, N, D]``
        of the blocks at ``indices`` (absolute, as ``take_indices`` gives them) in block order."""
        wanted, outs = set(indices), []
        for i, block in enumerate(self.resblocks[:stop]):
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, causal, use_reentrant=False)
            else:
                x = block(x, causal=causal)
            if i in wanted:
                outs.append(x)
        return x, outs


def sincos_2d(width: int, grid: Tuple[int, int], prefix_tokens: int = 1) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding of MAE/RILS: ``[prefix + gh * gw, width]``.

    Half the channels encode the column, half the row (the order MAE uses), and the prefix
    (class) tokens get zeros.
    """
    if width % 4:
        raise ValueError(f"sin-cos position embedding needs width divisible by 4; got {width}")
    gh, gw = grid
    rows, cols = torch.meshgrid(
        torch.arange(gh, dtype=torch.float64), torch.arange(gw, dtype=torch.float64), indexing="ij"
    )
    omega = 1.0 / 10000 ** (torch.arange(width // 4, dtype=torch.float64) / (width / 4))

    def embed(pos):
        out = pos.reshape(-1, 1) * omega[None]
        return torch.cat([out.sin(), out.cos()], dim=1)

    emb = torch.cat([embed(cols), embed(rows)], dim=1).float()
    return torch.cat([torch.zeros(prefix_tokens, width), emb], dim=0)


def resample_grid(tokens: torch.Tensor, old: Tuple[int, int], new: Tuple[int, int]) -> torch.Tensor:
    """Bicubic resampling of per-patch embeddings ``[oh * ow, D]`` -> ``[nh * nw, D]`` (in fp32).

    The same operation as timm's ``resample_abs_pos_embed``, done here because importing timm
    imports torchvision, which maskclip does not need at run time.
    """
    D = tokens.shape[-1]
    grid = tokens.float().reshape(1, old[0], old[1], D).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=tuple(new), mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(-1, D).to(tokens.dtype)


def grid_pos_embed(stored: torch.Tensor, stored_grid: Tuple[int, int], grid: Tuple[int, int],
                   kind: str = "learned") -> torch.Tensor:
    """A position embedding ``[1 + gh * gw, D]`` (class row first) for a ``grid`` of patches.

    ``stored`` is the ``[1 + sh * sw, D]`` embedding for ``stored_grid``, returned as is for that
    grid. Otherwise a ``"sincos"`` one is recomputed, and a learned one resampled bicubically
    (class row untouched), so any input resolution works.
    """
    if tuple(grid) == tuple(stored_grid):
        return stored
    if kind == "sincos":
        return sincos_2d(stored.shape[1], grid).to(stored)
    return torch.cat([stored[:1], resample_grid(stored[1:], stored_grid, grid)])


def causal_len(tokens: torch.Tensor) -> int:
    """Length needed to reach the end-of-text token (the max id) of every row of ``[B, L]``."""
    return int(tokens.argmax(dim=-1).max().item()) + 1
