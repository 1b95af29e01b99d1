"""Random-weight models and fake checkpoint stores for tests (no downloads, ever).

One architecture spec (``Arch``) describes a CLIP ViT dual encoder; from it the helpers build
the same model in maskclip, open_clip and transformers, written here directly against each
package's own config format (not through ``maskclip.convert``, which is what tests check):

- ``Arch`` and the named specs ``VIT_B_16``, ``ODD_GELU``, ``ODD_QUICKGELU``, ``OPEN_CLIP_OPTIONS``, ``TINY``;
- ``maskclip_config`` / ``random_maskclip``: a ``ModelConfig`` / ``MaskCLIP`` with random weights;
- ``open_clip_model_cfg`` / ``random_open_clip``: open_clip's ``model_cfg`` dict / ``open_clip.model.CLIP``;
- ``transformers_config`` / ``random_transformers``: a ``CLIPConfig`` / ``transformers.CLIPModel``;
- ``timm_clip_vit``, ``timm_plain_vit``: timm image towers (CLIP-style, and SLIP's plain ViT);
- ``write_open_clip_folder``: the open_clip Hub layout (``open_clip_config.json`` +
  ``open_clip_model.safetensors``) in a folder;
- ``write_hub_cache`` + ``offline_hub``: a Hugging Face cache (``models--org--name/blobs``,
  ``snapshots/<commit>`` symlinks, ``refs/main``) that ``huggingface_hub`` reads offline;
- ``images``, ``PROMPTS``, ``features``: inputs and output unwrapping for parity checks.

Every "random" model also gets random LayerNorm weights and biases (frameworks initialise them
to 1 and 0), so a converter that drops or swaps a norm or a bias cannot pass by accident.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Dict, Optional

import torch

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

PROMPTS = ["a photo of a cat", "a diagram of the Eiffel tower at night, drawn in pencil!"]


@dataclass(frozen=True)
class Arch:
    """A CLIP ViT dual encoder, in the vocabulary shared by all three packages."""

    name: str
    image_size: int = 224
    patch_size: int = 16
    vision_width: int = 768
    vision_layers: int = 12
    vision_heads: int = 12
    text_width: int = 512
    text_layers: int = 12
    text_heads: int = 8
    context_length: int = 77
    vocab_size: int = 49408
    embed_dim: int = 512
    mlp_ratio: float = 4.0
    quick_gelu: bool = True
    eps: float = 1e-5
    # open_clip-only vision options (not expressible in transformers): no_ln_pre, pool_type, pos_embed_type
    open_clip_vision: Dict[str, object] = field(default_factory=dict)

    @property
    def act(self) -> str:
        return "quick_gelu" if self.quick_gelu else "gelu"

    def with_(self, **changes) -> "Arch":
        return replace(self, **changes)


VIT_B_16 = Arch("vit-b-16")
# patch 32 at 64 px (2 x 2 grid), 3 vision heads of width 32, 4 text heads of width 16, GELU, context 32
ODD_GELU = Arch("odd-gelu", image_size=64, patch_size=32, vision_width=96, vision_layers=2, vision_heads=3,
                text_width=64, text_layers=3, text_heads=4, context_length=32, embed_dim=48, quick_gelu=False)
# 5 x 5 grid of 8 px patches, 5 heads, MLP ratio 2.5, LayerNorm eps 1e-6, QuickGELU, context 20
ODD_QUICKGELU = Arch("odd-quickgelu", image_size=40, patch_size=8, vision_width=80, vision_layers=3, vision_heads=5,
                     text_width=48, text_layers=2, text_heads=3, context_length=20, embed_dim=24, mlp_ratio=2.5,
                     eps=1e-6, quick_gelu=True)
# open_clip-only structure: no ln_pre, mean pooling ("avg"), fixed sin-cos positions, eps 1e-6, GELU
OPEN_CLIP_OPTIONS = Arch("open-clip-options", image_size=48, patch_size=16, vision_width=64, vision_layers=2,
                         vision_heads=2, text_width=64, text_layers=2, text_heads=2, context_length=24, embed_dim=32,
                         quick_gelu=False, eps=1e-6,
                         open_clip_vision={"no_ln_pre": True, "pool_type": "avg", "pos_embed_type": "sin_cos_2d"})
TINY = Arch("tiny", image_size=32, patch_size=16, vision_width=64, vision_layers=1, vision_heads=2,
            text_width=64, text_layers=1, text_heads=2, context_length=16, embed_dim=32)


# --- maskclip --------------------------------------------------------------------------------

def maskclip_config(arch: Arch, **vision):
    """The ``maskclip.ModelConfig`` of ``arch``; ``vision`` overrides VisionConfig fields."""
    from maskclip import ModelConfig

    oc = arch.open_clip_vision
    v = {"image_size": arch.image_size, "patch_size": arch.patch_size, "width": arch.vision_width,
         "layers": arch.vision_layers, "heads": arch.vision_heads, "mlp_ratio": arch.mlp_ratio,
         "act": arch.act, "norm_eps": arch.eps, "ln_pre": not oc.get("no_ln_pre", False),
         "pool": {"tok": "token", "avg": "mean"}[oc.get("pool_type", "tok")],
         "pos_embed": {"learnable": "learned", "sin_cos_2d": "sincos"}[oc.get("pos_embed_type", "learnable")],
         **vision}
    return ModelConfig.from_dict({
        "format_version": 1, "embed_dim": arch.embed_dim, "name": arch.name, "vision": v,
        "text": {"context_length": arch.context_length, "vocab_size": arch.vocab_size, "width": arch.text_width,
                 "layers": arch.text_layers, "heads": arch.text_heads, "mlp_ratio": arch.mlp_ratio,
                 "act": arch.act, "norm_eps": arch.eps},
        "preprocess": {"image_size": v["image_size"]},
    })


def random_maskclip(config, seed: int = 0):
    """``MaskCLIP(config)`` in eval mode with random weights, norms and biases."""
    from maskclip import MaskCLIP

    torch.manual_seed(seed)
    return _perturb(MaskCLIP(config).eval(), seed)


def _perturb(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Add noise to every 1-D parameter: biases and norms (zero/one at init in every framework)."""
    g = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return module


# --- open_clip -------------------------------------------------------------------------------

def open_clip_model_cfg(arch: Arch) -> dict:
    """open_clip's ``model_cfg`` for ``arch`` (what ``open_clip_config.json`` holds under "model_cfg")."""
    vision = {"image_size": arch.image_size, "layers": arch.vision_layers, "width": arch.vision_width,
              "head_width": arch.vision_width // arch.vision_heads, "patch_size": arch.patch_size,
              "mlp_ratio": arch.mlp_ratio, **arch.open_clip_vision}
    text = {"context_length": arch.context_length, "vocab_size": arch.vocab_size, "width": arch.text_width,
            "heads": arch.text_heads, "layers": arch.text_layers, "mlp_ratio": arch.mlp_ratio}
    if arch.eps != 1e-5:
        vision["norm_kwargs"] = text["norm_kwargs"] = {"eps": arch.eps}
    return {"embed_dim": arch.embed_dim, "quick_gelu": arch.quick_gelu, "vision_cfg": vision, "text_cfg": text}


def open_clip_preprocess_cfg(mean=OPENAI_MEAN, std=OPENAI_STD, interpolation="bicubic", resize_mode="shortest"):
    return {"mean": list(mean), "std": list(std), "interpolation": interpolation, "resize_mode": resize_mode}


def random_open_clip(model_cfg: dict, seed: int = 0):
    """``open_clip.model.CLIP(**model_cfg)`` in eval mode with random weights, norms and biases."""
    from open_clip.model import CLIP

    torch.manual_seed(seed)
    return _perturb(CLIP(**json.loads(json.dumps(model_cfg))).eval(), seed)


def write_open_clip_folder(folder, model, model_cfg: dict, preprocess_cfg: Optional[dict] = None) -> Path:
    """Write ``model`` in the open_clip Hub layout (what ``open_clip.push_to_hf_hub`` uploads)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg or open_clip_preprocess_cfg()}
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    return folder


# --- transformers ----------------------------------------------------------------------------

def transformers_config(arch: Arch):
    """A ``transformers.CLIPConfig`` for ``arch``."""
    from transformers import CLIPConfig

    act = arch.act
    return CLIPConfig(
        projection_dim=arch.embed_dim,
        text_config=dict(hidden_size=arch.text_width, intermediate_size=int(arch.text_width * arch.mlp_ratio),
                         num_hidden_layers=arch.text_layers, num_attention_heads=arch.text_heads,
                         max_position_embeddings=arch.context_length, vocab_size=arch.vocab_size,
                         hidden_act=act, layer_norm_eps=arch.eps, projection_dim=arch.embed_dim),
        vision_config=dict(hidden_size=arch.vision_width, intermediate_size=int(arch.vision_width * arch.mlp_ratio),
                           num_hidden_layers=arch.vision_layers, num_attention_heads=arch.vision_heads,
                           image_size=arch.image_size, patch_size=arch.patch_size, hidden_act=act,
                           layer_norm_eps=arch.eps, projection_dim=arch.embed_dim),
    )


def random_transformers(arch: Arch, seed: int = 0):
    """``transformers.CLIPModel`` for ``arch`` in eval mode with random weights, norms and biases."""
    from transformers import CLIPModel

    torch.manual_seed(seed)
    return _perturb(CLIPModel(transformers_config(arch)).eval(), seed)


def features(output) -> torch.Tensor:
    """``get_*_features`` output -> tensor (transformers 5 returns an output object with ``pooler_output``)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


# --- timm image towers -----------------------------------------------------------------------

def timm_clip_vit(arch: Arch, seed: int = 0):
    """timm's CLIP ViT (as ``vit_base_patch16_clip_224``: pre-norm, class token, ``head`` = projection)."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    model = VisionTransformer(
        img_size=arch.image_size, patch_size=arch.patch_size, embed_dim=arch.vision_width, depth=arch.vision_layers,
        num_heads=arch.vision_heads, mlp_ratio=arch.mlp_ratio, pre_norm=True, global_pool="token",
        norm_layer=partial(torch.nn.LayerNorm, eps=arch.eps), act_layer=arch.act, num_classes=arch.embed_dim)
    model = _perturb(model.eval(), seed)
    with torch.no_grad():
        model.head.bias.zero_()  # CLIP's projection has no bias
    return model


def timm_plain_vit(arch: Arch, seed: int = 0, **kwargs):
    """timm's ``vit_base_patch16_224`` resized to ``arch`` (SLIP's image tower), ``num_classes=0``."""
    import timm

    torch.manual_seed(seed)
    model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0, img_size=arch.image_size,
                              patch_size=arch.patch_size, embed_dim=arch.vision_width, depth=arch.vision_layers,
                              num_heads=arch.vision_heads, mlp_ratio=arch.mlp_ratio, **kwargs)
    return _perturb(model.eval(), seed)


# --- Hugging Face cache ----------------------------------------------------------------------

def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_hub_cache(cache_dir, repo_id: str, folder, commit: str = "0123456789abcdef0123456789abcdef01234567",
                    move: bool = True) -> Path:
    """Store the files of ``folder`` as Hub repo ``repo_id`` in a Hugging Face cache at ``cache_dir``.

    Layout as ``huggingface_hub`` writes it: ``models--org--name/blobs/<hash>`` (sha256 for weights,
    as for LFS files; git blob sha1 for small files), ``snapshots/<commit>/<file>`` relative
    symlinks, ``refs/main`` holding the commit. ``move=True`` moves big files instead of copying.
    Returns the snapshot folder.
    """
    repo = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    blobs, snapshot = repo / "blobs", repo / "snapshots" / commit
    blobs.mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for path in sorted(Path(folder).iterdir()):
        lfs = path.suffix in (".safetensors", ".bin", ".pt", ".pth")
        digest = _sha256(path) if lfs else _git_blob_sha1(path.read_bytes())
        blob = blobs / digest
        if not blob.exists():
            (shutil.move if move and lfs else shutil.copyfile)(str(path), str(blob))
        link = snapshot / path.name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def offline_hub(monkeypatch, cache_dir) -> Path:
    """Point ``huggingface_hub`` at ``cache_dir`` and forbid the network, for this test only.

    ``huggingface_hub`` reads ``HF_HUB_CACHE``/``HF_HUB_OFFLINE`` into ``huggingface_hub.constants``
    at import, so the env vars (for subprocesses and late importers) and the constants (for
    this process) are both patched.
    """
    import huggingface_hub.constants as constants

    cache_dir = Path(cache_dir)
    for var, value in (("HF_HUB_CACHE", str(cache_dir)), ("HF_HOME", str(cache_dir.parent / "hf_home")),
                       ("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1")):
        monkeypatch.setenv(var, value)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache_dir))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache_dir


# --- inputs ----------------------------------------------------------------------------------

def images(arch: Arch, n: int = 2, seed: int = 0) -> torch.Tensor:
    """Preprocessed-looking images ``[n, 3, S, S]`` (standard normal values)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, arch.image_size, arch.image_size, generator=g)
