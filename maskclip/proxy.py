"""ProxyCLIP's proxy: a vision foundation model whose patch affinities become CLIP's last attention.

Lan et al., "ProxyCLIP: Proxy Attention Improves CLIP for Open-Vocabulary Segmentation", ECCV 2024
(mc-lan/ProxyCLIP). The proxy is a timm ViT (DINO ViT-B/8 by default); timm is imported only
when a proxy is built, so ``import maskclip`` does not load it. ``dense.dense_features(...,
method="proxyclip", proxy=...)`` uses ``Proxy.features``; the attention itself is in ``maskclip.dense``.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .errors import InputError, InputTypeError

# Short names -> timm model names (weights from the Hugging Face Hub through timm).
PROXIES = {
    "dino_vitb8": "vit_base_patch8_224.dino",  # ProxyCLIP's default (configs/base_config.py: vfm_model='dino')
    "dino_vitb16": "vit_base_patch16_224.dino",
    "dinov2_vitb14": "vit_base_patch14_reg4_dinov2.lvd142m",  # the reference's dinov2_vitb14_reg
}
DEFAULT_PROXY = "dino_vitb8"


class Proxy(nn.Module):
    """A timm ViT and its input normalisation; ``features`` gives its last block's normalised patch tokens.

    Build with ``Proxy.from_timm(name)`` (a key of ``PROXIES`` or any timm ViT name), or wrap a timm
    model you built: ``Proxy(timm_model)``. The model must have timm's ``forward_intermediates`` and
    have been created with ``dynamic_img_size=True`` (``from_timm`` does this) to take any input size.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        if not callable(getattr(model, "forward_intermediates", None)) or not hasattr(model, "patch_embed"):
            raise InputTypeError(f"proxy must be a timm ViT (with forward_intermediates); got {type(model).__name__}")
        self.model = model.eval()
        cfg = getattr(model, "pretrained_cfg", None) or {}
        self.register_buffer("mean", torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1), False)

    @classmethod
    def from_timm(cls, name: str = DEFAULT_PROXY, pretrained: bool = True) -> "Proxy":
        """A proxy by short name (``PROXIES``) or timm name; ``pretrained`` downloads its weights via timm."""
        if not isinstance(name, str):
            raise InputTypeError(f"proxy name must be a string; got {type(name).__name__}")
        import timm  # lazily: only ProxyCLIP needs it

        try:
            model = timm.create_model(PROXIES.get(name, name), pretrained=pretrained, num_classes=0,
                                      dynamic_img_size=True, dynamic_img_pad=True)
        except RuntimeError as e:  # timm's "Unknown model"
            raise InputError(f"proxy must be one of {list(PROXIES)} or a timm ViT name; got {name!r} ({e})") from e
        return cls(model)

    @property
    def patch_size(self) -> int:
        return self.model.patch_embed.patch_size[0]

    def features(self, x: torch.Tensor, clip_mean: Sequence[float], clip_std: Sequence[float]) -> torch.Tensor:
        """CLIP-preprocessed images ``[B, 3, H, W]`` -> the proxy's patch tokens ``[B, C, ceil(H / q), ceil(W / q)]``.

        The images are taken back to pixels with CLIP's ``clip_mean`` / ``clip_std`` and normalised
        for the proxy (ProxyCLIP's UnNormalize then Normalize); ``q`` is the proxy's patch size (inputs
        that are not multiples of it are padded at the bottom and right).
        """
        mean = torch.as_tensor(clip_mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.as_tensor(clip_std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        x = ((x * std + mean) - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return self.model.forward_intermediates(x, indices=1, norm=True, output_fmt="NCHW", intermediates_only=True)[0]
