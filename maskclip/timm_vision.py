"""Image towers built with timm, as open_clip builds them for ``vision_cfg.timm_model_name``.

``TimmVisionTower`` holds open_clip's ``TimmModel`` parameters under the same names (``trunk.*``:
the timm model; ``head.*``: open_clip's extra projection), so open_clip state dicts load as they
are. Pooling (``timm_pool``): ``map`` (SigLIP's attention pool), ``token`` (class token, EVA02),
``avg``; projection (``timm_proj``): ``linear`` / ``mlp`` (open_clip's head after the trunk),
``none`` (the trunk's own features), ``None`` (the trunk's classifier as the projection).

It offers what the rest of maskclip uses from ``VisionTower``: ``forward`` (``[B, 3, H, W]`` ->
``[B, E]``), ``forward_intermediates``, and for ``maskclip.dense`` ``embed`` / ``dense_blocks`` /
``forward_tokens`` / ``project_patches`` with block views that expose each timm block as a
``maskclip.layers.Block`` (``ln_1``, ``attn.qkv``, ``attn.merge_heads``, ``mlp``, ``ln_2``), with
q/k norms and EVA's rotary embedding applied where timm applies them. For a MAP-pooled tower,
``project_patches`` sends each patch on its own through the attention pool's value and output
projections, its norm and MLP (the attention of one query over one token is the identity),
so when every token is the same the per-patch feature is the pooled embedding.

timm is imported when a tower is built (importing it imports torchvision), never for OpenAI-style
models. The towers' ``nn.Linear`` layers become ``maskclip.layers.Linear`` (the same parameters and
names), so fp32 CPU inference runs on oneDNN's kernel as maskclip's own towers do. The trunk is made with ``dynamic_img_size=True`` (no parameter changes), so any input size
works, its position embedding resampled by timm.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .config import SUPPORTED_TIMM_MODELS, TIMM_ACTS, VisionConfig, check_timm_model_name, is_timm_conv
from .errors import ConfigError, InputError
from .layers import Linear, take_indices

Indices = Union[None, int, Sequence[int]]
_BLOCKS = ("Block", "EvaBlock")  # timm's pre-norm ViT and EVA blocks, the ones BlockView reproduces


def create_trunk(cfg: VisionConfig, embed_dim: int) -> Tuple[nn.Module, nn.Sequential]:
    """open_clip's ``TimmModel``: ``(trunk, head)`` for ``cfg`` (random weights)."""
    import timm
    from timm.layers import Mlp

    check_timm_model_name(cfg.timm_model_name)
    conv = is_timm_conv(cfg.timm_model_name)
    extra_proj = cfg.timm_proj in ("linear", "mlp")
    kwargs = dict(pretrained=False)
    if not conv:  # ViTs take any input size; ConvNeXt does anyway
        kwargs["dynamic_img_size"] = True
    if cfg.act in TIMM_ACTS:  # every block's MLP and the MAP head's
        kwargs["act_layer"] = TIMM_ACTS[cfg.act]
    if extra_proj:
        trunk = timm.create_model(cfg.timm_model_name, **kwargs)
        # open_clip's rule: an empty timm_pool keeps the network's own pooling
        trunk.reset_classifier(0, **({"global_pool": cfg.timm_pool} if cfg.timm_pool else {}))
    else:
        num_classes = 0 if cfg.timm_proj == "none" else embed_dim
        pool = {"global_pool": cfg.timm_pool} if cfg.timm_pool or not conv else {}
        trunk = timm.create_model(cfg.timm_model_name, num_classes=num_classes, **pool, **kwargs)
    layers = OrderedDict()
    if cfg.timm_proj == "linear":
        layers["proj"] = nn.Linear(trunk.num_features, embed_dim, bias=cfg.timm_proj_bias)
    elif cfg.timm_proj == "mlp":
        layers["mlp"] = Mlp(trunk.num_features, 2 * embed_dim, embed_dim, bias=(True, cfg.timm_proj_bias))
    return trunk, nn.Sequential(layers)


def trunk_shape(trunk: nn.Module) -> Tuple[int, int, int, int, float]:
    """``(patch_size, width, layers, heads, mlp_ratio)`` of a timm trunk, as ``VisionConfig`` describes it.

    ViT / EVA: patch size, token width, blocks, heads, the MLP's hidden width over the token width.
    ConvNeXt: its total stride (32), the last stage's channels, all stages' blocks, ``heads`` 1 (it has
    no attention), the last block's MLP ratio.
    """
    if hasattr(trunk, "stages"):  # ConvNeXt
        width = trunk.num_features
        mlp = trunk.stages[-1].blocks[-1].mlp
        hidden = getattr(mlp.fc1, "out_features", None) or mlp.fc1.out_channels  # Linear, or 1x1 conv (conv_mlp)
        return (trunk.feature_info[-1]["reduction"], width, sum(len(s.blocks) for s in trunk.stages), 1,
                hidden / width)
    block, width = trunk.blocks[0], trunk.embed_dim
    # fc2's input is the hidden width in timm's Mlp, GluMlp and SwiGLU (EVA02) alike
    return trunk.patch_embed.patch_size[0], width, len(trunk.blocks), block.attn.num_heads, block.mlp.fc2.in_features / width


def describe(cfg: VisionConfig, embed_dim: int) -> VisionConfig:
    """``cfg`` with ``patch_size``, ``width``, ``layers``, ``heads`` and ``mlp_ratio`` read from its timm
    model (built on the meta device: no memory, no random numbers)."""
    with torch.device("meta"):
        trunk, _ = create_trunk(cfg, embed_dim)
    patch, width, layers, heads, ratio = trunk_shape(trunk)
    return replace(cfg, patch_size=patch, width=width, layers=layers, heads=heads, mlp_ratio=ratio)


class _AttentionView:
    """A timm attention as ``maskclip.layers.Attention``: ``qkv`` and ``merge_heads`` (layer scale included)."""

    def __init__(self, attn: nn.Module, rope: Optional[torch.Tensor], prefix: int, scale):
        self.attn, self.rope, self.prefix, self.scale = attn, rope, prefix, scale

    def qkv(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``[B, N, D]`` -> q, k, v each ``[B, heads, N, d]``, after q/k norms and rotary embedding."""
        a, (B, N, _) = self.attn, x.shape
        if getattr(a, "qkv", None) is not None:
            qkv = a.qkv(x)  # the module, so hooks and adapters (PEFT) on it act here too
            if getattr(a, "q_bias", None) is not None:  # EVA: a bias-free qkv and separate q/k/v biases
                qkv = qkv + torch.cat((a.q_bias, a.k_bias, a.v_bias))
            q, k, v = qkv.view(B, N, 3, a.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            q, k, v = (proj(x).view(B, N, a.num_heads, -1).transpose(1, 2) for proj in (a.q_proj, a.k_proj, a.v_proj))
        q, k = a.q_norm(q), a.k_norm(k)
        if self.rope is not None:
            from timm.layers import apply_rot_embed_cat

            half, p = getattr(a, "rotate_half", False), self.prefix
            q, k = (torch.cat([t[:, :, :p], apply_rot_embed_cat(t[:, :, p:], self.rope, half=half)], dim=2).type_as(v)
                    for t in (q, k))
        return q, k, v

    def merge_heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, heads, N, d]`` -> ``[B, N, D]``: the attention's norm, output projection and layer scale."""
        B, H, N, d = x.shape
        return self.scale(self.attn.proj(self.attn.norm(x.transpose(1, 2).reshape(B, N, H * d))))


class BlockView:
    """A timm ViT or EVA block as ``maskclip.layers.Block`` (``ln_1``, ``attn``, ``ln_2``, ``mlp``, call)."""

    def __init__(self, block: nn.Module, rope: Optional[torch.Tensor], prefix: int):
        self.block, self.rope = block, rope
        self.ln_1, self.ln_2 = block.norm1, block.norm2
        self._ls1, self._ls2 = _layer_scale(block, 1), _layer_scale(block, 2)
        self.attn = _AttentionView(block.attn, rope, prefix, self._ls1)

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self._ls2(self.block.mlp(x))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x) if self.rope is None else self.block(x, rope=self.rope)


def check_described(cfg: VisionConfig, trunk: nn.Module) -> None:
    """``ConfigError`` unless ``cfg``'s shape fields are those of its timm model (the rest of maskclip reads them)."""
    want = trunk_shape(trunk)[:4]
    got = (cfg.patch_size, cfg.width, cfg.layers, cfg.heads)
    if got != want:
        raise ConfigError(f"vision config (patch_size, width, layers, heads) = {got} does not describe the timm model "
                          f"{cfg.timm_model_name!r}, which has {want}; build the config with "
                          "maskclip.timm_vision.describe(vision_config, embed_dim)")


def use_maskclip_linears(module: nn.Module) -> None:
    """Replace every plain ``nn.Linear`` under ``module`` by a ``maskclip.layers.Linear`` holding the same
    parameters: same names and state dict, oneDNN's kernel in fp32 CPU inference (``layers._use_onednn``)."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                fast = Linear(child.in_features, child.out_features, bias=child.bias is not None, device="meta")
                fast.weight, fast.bias = child.weight, child.bias
                setattr(parent, name, fast)


def _layer_scale(block: nn.Module, i: int):
    """The block's layer scale of branch ``i``: timm ViT's ``ls{i}``, EVA's ``gamma_{i}``, or identity."""
    ls = getattr(block, f"ls{i}", None)
    if ls is not None:
        return ls
    gamma = getattr(block, f"gamma_{i}", None)
    return (lambda x: x) if gamma is None else (lambda x: gamma * x)


class TimmTower(nn.Module):
    """What every timm image tower shares: open_clip's ``trunk`` and ``head`` for ``cfg``, described by
    ``cfg``, with maskclip's linear layers; compiling and gradient checkpointing go to the trunk."""

    def __init__(self, cfg: VisionConfig, embed_dim: int):
        super().__init__()
        self.cfg = cfg
        self.trunk, self.head = create_trunk(cfg, embed_dim)
        check_described(cfg, self.trunk)
        use_maskclip_linears(self)

    def compile_blocks(self, **kwargs) -> None:
        """``torch.compile`` the timm trunk in place (``DualEncoder.compile``)."""
        self.trunk.compile(**kwargs)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.trunk.set_grad_checkpointing(enable)


class TimmVisionTower(TimmTower):
    """open_clip's timm ViT image tower: ``[B, 3, H, W]`` (preprocessed) -> ``[B, E]``; see the module docstring."""

    def __init__(self, cfg: VisionConfig, embed_dim: int):
        super().__init__(cfg, embed_dim)
        self.num_prefix_tokens = self.trunk.num_prefix_tokens
        for block in self.trunk.blocks:  # pre-norm blocks only: BlockView runs x + attn(norm1 x), x + mlp(norm2 x)
            if type(block).__name__ not in _BLOCKS or getattr(block.attn, "gate", None) is not None:
                raise ConfigError(f"the timm model {cfg.timm_model_name!r} has blocks maskclip cannot run "
                                  f"({type(block).__name__}); supported: {list(SUPPORTED_TIMM_MODELS)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> ``[B, E]``."""
        return self.head(self.trunk(x))

    def grid(self, height: int, width: int) -> Tuple[int, int]:
        p = self.cfg.patch_size
        return height // p, width // p

    def _rope(self, grid: Tuple[int, int]) -> Optional[torch.Tensor]:
        rope = getattr(self.trunk, "rope", None)
        return None if rope is None else rope.get_embed(shape=list(grid))

    def embed(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """``[B, 3, H, W]`` -> tokens ``[B, P + gh * gw, width]`` (P prefix tokens first), ``(gh, gw)``."""
        t = self.trunk
        x = t.patch_embed(x)  # [B, gh, gw, width]: dynamic_img_size keeps the grid
        grid = (x.shape[1], x.shape[2])
        x = t._pos_embed(x)
        if isinstance(x, tuple):  # EVA also returns its rotary embedding; dense_blocks rebuilds it
            x = x[0]
        return t.norm_pre(x), grid  # patch dropout (training only) left out: maskclip does not train these

    def dense_blocks(self, grid: Tuple[int, int]) -> List[BlockView]:
        """The blocks as ``maskclip.layers.Block``-like views, for tokens on ``grid``."""
        rope = self._rope(grid)
        return [BlockView(b, rope, self.num_prefix_tokens) for b in self.trunk.blocks]

    def forward_tokens(self, x: torch.Tensor, stop: Optional[int] = None):
        """Tokens after blocks ``[0, stop)``, before the final norm: ``[B, P + N, width]``, and the grid."""
        tokens, grid = self.embed(x)
        for block in self.dense_blocks(grid)[:stop]:
            tokens = block(tokens)
        return tokens, grid

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """Final tokens ``[B, P + N, width]`` (before the final norm) -> image embedding ``[B, E]``."""
        return self.head(self.trunk.forward_head(self.trunk.norm(tokens)))

    def project_patches(self, tokens: torch.Tensor) -> torch.Tensor:
        """Patch tokens ``[B, N, width]`` -> joint-space patch features ``[B, N, E]``, each patch alone
        through the final norm, the pooling head (``map``: its per-patch form), the classifier and head."""
        t = self.trunk
        x = t.norm(tokens)
        attn_pool = getattr(t, "attn_pool", None)
        if attn_pool is not None:
            x = _per_patch_attention_pool(attn_pool, x)
        return self.head(t.head(t.fc_norm(x)))

    def forward_intermediates(self, x: torch.Tensor, indices: Indices = None, norm: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False):
        """Per-block patch tokens, as ``VisionTower.forward_intermediates`` (timm's own method underneath).

        ``norm`` applies the trunk's final norm to each. Returns ``(image embedding [B, E],
        intermediates)``, or with ``intermediates_only`` just the list.
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise InputError(f"output_fmt must be 'NCHW' or 'NLC'; got {output_fmt!r}")
        take = take_indices(len(self.trunk.blocks), indices)
        out = self.trunk.forward_intermediates(x, indices=take, norm=norm, output_fmt=output_fmt,
                                               intermediates_only=intermediates_only, stop_early=intermediates_only)
        if intermediates_only:
            return out
        final, inter = out
        return self.head(self.trunk.forward_head(final)), inter


def _per_patch_attention_pool(pool: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm's ``AttentionPoolLatent`` applied to each token of ``x: [B, N, C]`` alone -> ``[B, N, C]``.

    Attention over a single token returns its value, so each token goes through the value half of
    ``kv``, the output projection, then ``x + mlp(norm(x))``.
    """
    if pool.pos_embed is not None:
        raise ConfigError("per-patch features of an attention pool with its own position embedding are not supported")
    C = x.shape[-1]
    y = pool.proj(pool.kv(x)[..., C:])  # the value half; the module, so hooks and adapters on it act here too
    return y if pool.mlp is None else y + pool.mlp(pool.norm(y))
