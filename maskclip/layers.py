"""Transformer layers of the CLIP family, with OpenAI CLIP's parameter names.

Parameter names follow OpenAI CLIP / open_clip (``ln_1``, ``attn.in_proj_weight``, ``mlp.c_fc``, ...)
so their state dicts load without renaming. Tensors are batch first: ``[B, N, D]``.
Attention goes through ``F.scaled_dot_product_attention`` (fused kernels on CPU and GPU); linear
layers go through ``linear``, which picks oneDNN's kernel for fp32 inference on the CPU.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


class QuickGELU(nn.Module):
    """OpenAI CLIP's GELU approximation ``x * sigmoid(1.702 x)``; its weights need it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


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


def _use_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """True for fp32 CPU inference outside autocast and torch.compile, with oneDNN enabled.

    On CPU, torch's fp32 ``F.linear`` calls MKL's sgemm; oneDNN's kernel computes the same product
    (fp32 accumulation, same results to ~1e-6 relative) about twice as fast on AVX-512 CPUs
    (docs/performance.md). It has no autograd formula, hence inference only. Autocast and
    torch.compile have their own linear lowering, so they keep ``F.linear``.
    ``torch.backends.mkldnn.flags(enabled=False)`` turns this path off.
    """
    return (not _is_compiling() and _ONEDNN_LINEAR is not None
            and x.dtype == torch.float32 and weight.dtype == torch.float32
            and x.device.type == "cpu" and weight.device.type == "cpu"
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
            and not _cpu_autocast() and torch._C._get_mkldnn_enabled())


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
           gelu: bool = False) -> torch.Tensor:
    """``F.linear`` (then exact GELU if ``gelu``), on oneDNN's fused kernel when ``_use_onednn``."""
    if _use_onednn(x, weight):
        if gelu:
            return _ONEDNN_LINEAR(x, weight, bias, "gelu", [], "none")
        return _ONEDNN_LINEAR(x, weight, bias, "none", [], "")
    out = F.linear(x, weight, bias)
    return F.gelu(out) if gelu else out


def make_activation(name: str) -> nn.Module:
    if name == "quick_gelu":
        return QuickGELU()
    if name == "gelu":
        return nn.GELU()
    raise ValueError(f"activation must be 'quick_gelu' or 'gelu'; got {name!r}")


class Attention(nn.Module):
    """Multi-head self-attention with a fused q/k/v projection (rows q, k, v in that order)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def qkv(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``[B, N, D]`` -> q, k, v each ``[B, heads, N, D / heads]``."""
        B, N, D = x.shape
        qkv = linear(x, self.in_proj_weight, self.in_proj_bias)
        qkv = qkv.view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        return qkv.unbind(0)

    def merge_heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, heads, N, d]`` -> ``[B, N, heads * d]`` through the output projection."""
        B, H, N, d = x.shape
        return linear(x.transpose(1, 2).reshape(B, N, H * d), self.out_proj.weight, self.out_proj.bias)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        q, k, v = self.qkv(x)
        return self.merge_heads(F.scaled_dot_product_attention(q, k, v, is_causal=causal))


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int, act: str):
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.gelu = make_activation(act)
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fc, proj = self.c_fc, self.c_proj
        if isinstance(self.gelu, nn.GELU) and self.gelu.approximate == "none":
            return linear(linear(x, fc.weight, fc.bias, gelu=True), proj.weight, proj.bias)
        h = linear(x, fc.weight, fc.bias)
        if isinstance(self.gelu, QuickGELU) and not h.requires_grad:
            # The same operations, in place where the tensor is this call's own: the hidden
            # activations are the model's biggest tensors, and each fresh one costs page faults.
            return linear(h.mul_((h * 1.702).sigmoid_()), proj.weight, proj.bias)
        return linear(self.gelu(h), proj.weight, proj.bias)


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
        for block in self.resblocks[:stop]:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, causal, use_reentrant=False)
            else:
                x = block(x, causal=causal)
        return x

    def forward_intermediates(self, x: torch.Tensor, indices: List[int], causal: bool = False):
        """Run all blocks; return the final tokens and the outputs of blocks at ``indices``."""
        wanted, outs = set(indices), []
        for i, block in enumerate(self.resblocks):
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


def causal_len(tokens: torch.Tensor) -> int:
    """Length needed to reach the end-of-text token (the max id) of every row of ``[B, L]``."""
    return int(tokens.argmax(dim=-1).max().item()) + 1
