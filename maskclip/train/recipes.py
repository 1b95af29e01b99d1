"""The pretraining recipes: one backbone (a ``MaskCLIP`` dual encoder), one interface.

A recipe is an ``nn.Module`` holding the student model and whatever the recipe adds (heads,
decoders, an EMA teacher). A step has a host side and a device side:

- ``prepare(batch, generator)`` runs on the loader's CPU tensors, before they move to the device:
  it makes every random draw of the step (patch masks, patch dropout, caption masks, from
  ``generator``) and works out the caption lengths the text encoders run to. What it adds to the
  batch moves to the device with it (``move``), so the device side never reads a value back (a
  host sync that stalls a GPU's queue).
- ``forward(batch, generator, cached=None)`` returns a dict of 0-dim tensors: ``loss`` (what is
  optimised) and each weighted term and metric for the logs. Given a batch that was not prepared, it
  prepares it first (drawing from ``generator``). With ``cached`` (accumulation with cached features,
  ``maskclip/train/accumulate.py``) the image-text term is taken against every micro-batch of the
  step; ``features_only=True`` is that cache's pass: it returns only the batch's normalised
  ``image`` and ``text`` features ``[B, E]`` of the image-text term, and nothing else runs.
- ``after_step`` runs after every optimizer step (EMA teacher update, logit-scale clamp).

The image-text term of every recipe is ``TrainConfig.loss``: CLIP's softmax loss (``clip``) or
SigLIP's sigmoid loss (``siglip``, with a learned bias); its output key is ``loss_clip`` either way.

- ``clip``: the image-text loss alone.
- ``slip``: CLIP + SimCLR on two strongly augmented views (SLIP, Mu et al. 2022).
- ``clip_mae``: CLIP + MAE pixel reconstruction of masked patches (the ablation MaskCLIP argues against).
- ``maskclip``: CLIP + masked self-distillation from an EMA teacher in the joint space, for image
  patches and (optionally) caption tokens (Dong et al., CVPR 2023; details ours: docs/training.md).
- ``rils``: CLIP + reconstruction in the language space with caption prototypes (Yang et al., CVPR 2023).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..model import MaskCLIP
from ..towers import BUCKET_SIZES, DEFAULT_BUCKET_SIZES, VisionTower, length_buckets
from .accumulate import CachedFeatures
from .config import DecoderConfig, MaskingConfig, TrainConfig
from .decoder import PatchDecoder, TokenDecoder
from .ema import EMATeacher, cosine_momentum
from .heads import PrototypeHead, SimCLRHead
from .losses import (ContrastiveLoss, CosineDistillLoss, MAEPixelLoss, NTXentLoss, RILSLoss, SigmoidLoss,
                     SoftDistillLoss)
from .masking import Mask, encode_masked, keep, make_mask, random_mask, text_mask

Batch = Dict[str, Any]


@dataclass
class TextPlan:
    """How the text tower runs on a batch of captions ``[B, L]``, worked out on the host.

    ``length``: positions up to the batch's last end-of-text token (causal attention: later ones
    cannot change anything). ``buckets``: index tensors of captions of similar length, each run
    only to its own ``lengths[i]`` (the tower's length bucketing), and ``restore`` puts the rows
    back in batch order; one bucket (``restore=None``) for a small batch.
    """

    length: int
    buckets: List[torch.Tensor]
    lengths: List[int]
    restore: Optional[torch.Tensor]

    @classmethod
    def of(cls, text: torch.Tensor, device_type: str) -> "TextPlan":
        eot = text.argmax(dim=-1)
        length = int(eot.max()) + 1
        min_size, max_size = BUCKET_SIZES.get(device_type, DEFAULT_BUCKET_SIZES)
        if text.shape[0] <= min_size:
            return cls(length, [], [], None)
        buckets = length_buckets(eot, min_size, max_size)
        lengths = [int(eot[idx].max()) + 1 for idx in buckets]
        return cls(length, buckets, lengths, torch.argsort(torch.cat(buckets)))

    def to(self, device, non_blocking: bool = False) -> "TextPlan":
        return TextPlan(self.length, [b.to(device, non_blocking=non_blocking) for b in self.buckets], self.lengths,
                        None if self.restore is None else self.restore.to(device, non_blocking=non_blocking))


def move(batch: Batch, device: torch.device) -> Batch:
    """A prepared batch on ``device`` (tensors, masks and text plans; other values as they are)."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, (torch.Tensor, Mask, TextPlan)) else v
            for k, v in batch.items()}


class Recipe(nn.Module):
    """CLIP: the base of every recipe (image-text loss, FLIP patch dropout, logit-scale clamp)."""

    name = "clip"
    extra_views = 0  # strongly augmented views the data pipeline must add (SLIP: 2)

    def __init__(self, model: MaskCLIP, cfg: TrainConfig):
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.contrastive = (SigmoidLoss() if cfg.loss == "siglip" else
                            ContrastiveLoss(cfg.contrastive.gather_with_grad, cfg.contrastive.local_loss))
        self.max_log_scale = math.log(cfg.logit_scale_max)

    # --- the host side -----------------------------------------------------------------------

    def prepare(self, batch: Batch, generator: torch.Generator) -> Batch:
        """Adds ``text_plan`` and, in training with ``patch_dropout``, the ``dropout`` mask."""
        out = self._with_text_plan(batch)
        self._draw_dropout(out, generator)
        return out

    def _with_text_plan(self, batch: Batch) -> Batch:
        return {**batch, "text_plan": TextPlan.of(batch["text"].cpu(), self.model.logit_scale.device.type)}

    def _grid(self, batch: Batch) -> Tuple[int, int]:
        return self.model.visual.grid(*batch["image"].shape[-2:])

    def _draw_dropout(self, batch: Batch, generator: torch.Generator) -> None:
        if self.training and self.cfg.patch_dropout > 0:
            gh, gw = self._grid(batch)
            batch["dropout"] = random_mask(batch["image"].shape[0], gh * gw, self.cfg.patch_dropout, generator)

    def _draw_mask(self, batch: Batch, masking: MaskingConfig, generator: torch.Generator) -> None:
        batch["mask"] = make_mask(masking.strategy, batch["image"].shape[0], self._grid(batch), masking.ratio,
                                  generator)

    def _ready(self, batch: Batch, generator: torch.Generator) -> Batch:
        if "text_plan" in batch:
            return batch
        return move(self.prepare(batch, generator), batch["image"].device)

    # --- pieces shared by the recipes --------------------------------------------------------

    def image_tokens(self, batch: Batch) -> torch.Tensor:
        """The contrastive pass: final tokens ``[B, 1 + N', width]`` (N' < N under patch dropout)."""
        visual = self.model.visual
        if "dropout" in batch:
            return encode_masked(visual, batch["image"], batch["dropout"])[0]
        return visual.forward_tokens(batch["image"])[0]

    def encode_text(self, text: torch.Tensor, plan: TextPlan) -> torch.Tensor:
        """Captions ``[B, L]`` -> ``[B, E]``, as ``TextTower.forward`` computes them, with the lengths
        from the host's ``plan`` instead of read back from the device."""
        if plan.restore is None:
            return self._text_batch(text, plan.length)
        out = torch.cat([self._text_batch(text[idx], n) for idx, n in zip(plan.buckets, plan.lengths)])
        return out[plan.restore]

    def _text_batch(self, text: torch.Tensor, length: int) -> torch.Tensor:
        tower = self.model.text
        x = tower.forward_embeddings(tower.token_embedding(text[:, :length]))
        eot = x[torch.arange(x.shape[0], device=x.device), text.argmax(dim=-1)]
        return tower.ln_final(eot) @ tower.text_projection

    def clip_terms(self, image_emb: torch.Tensor, text_emb: torch.Tensor,
                   cached: Optional[CachedFeatures] = None) -> Dict[str, torch.Tensor]:
        """The image-text term on the batch's embeddings ``[B, E]``, or with ``cached`` on the whole
        step's (these rows in place of their cached copies)."""
        image, text = F.normalize(image_emb, dim=-1), F.normalize(text_emb, dim=-1)
        if cached is not None:
            image, text = cached.around(image, text)
        model, sigmoid = self.model, self.cfg.loss == "siglip"
        bias = (model.logit_bias,) if sigmoid else ()
        loss, metrics = self.contrastive(image, text, model.logit_scale.exp(), *bias)
        out = {"loss_clip": loss, **{f"clip_{k}": v for k, v in metrics.items()},
               "logit_scale": model.logit_scale.detach().exp()}
        if sigmoid:
            out["logit_bias"] = model.logit_bias.detach()
        return out

    @staticmethod
    def features(image_emb: torch.Tensor, text_emb: torch.Tensor) -> Dict[str, torch.Tensor]:
        """What the caching pass of accumulation keeps: the normalised embeddings ``[B, E]``."""
        return {"image": F.normalize(image_emb, dim=-1), "text": F.normalize(text_emb, dim=-1)}

    def decoder_input(self, tokens: torch.Tensor, decoder: DecoderConfig) -> torch.Tensor:
        """The student's tokens as the decoder reads them: after ``ln_post`` with ``decoder.norm_input``."""
        return self.model.visual.ln_post(tokens) if decoder.norm_input else tokens

    @staticmethod
    def _mask_token(width: int, masking: MaskingConfig) -> Optional[nn.Parameter]:
        """The encoder's mask token, only in ``mode="token"`` (in "drop" mode it would get no gradient)."""
        return nn.Parameter(0.02 * torch.randn(width)) if masking.mode == "token" else None

    @staticmethod
    def _patch_decoder(v, out_dim: int, d: DecoderConfig, masking: MaskingConfig) -> PatchDecoder:
        return PatchDecoder(v.width, out_dim, (v.grid_size, v.grid_size), d.layers, d.width, d.heads, d.pos_embed,
                            fill=masking.mode == "drop")

    # --- the recipe --------------------------------------------------------------------------

    def forward(self, batch: Batch, generator: torch.Generator, cached: Optional[CachedFeatures] = None,
                features_only: bool = False) -> Dict[str, torch.Tensor]:
        batch = self._ready(batch, generator)
        tokens = self.image_tokens(batch)
        image_emb, text_emb = self.model.visual.pool(tokens), self.encode_text(batch["text"], batch["text_plan"])
        if features_only:
            return self.features(image_emb, text_emb)
        out = self.clip_terms(image_emb, text_emb, cached)
        out["loss"] = out["loss_clip"]
        return out

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int, applied: Optional[torch.Tensor] = None) -> Dict[str, float]:
        """After optimizer step ``step``; ``applied``: a 0-dim bool on the device, False when the
        optimizer skipped the step (non-finite gradients), so nothing may move either."""
        self.model.logit_scale.clamp_(0, self.max_log_scale)  # unchanged if the step was skipped
        return {}


class SLIP(Recipe):
    name = "slip"
    extra_views = 2

    def __init__(self, model: MaskCLIP, cfg: TrainConfig):
        super().__init__(model, cfg)
        c = cfg.slip
        self.image_mlp = SimCLRHead(model.config.vision.width, c.hidden_dim, c.out_dim)
        self.simclr = NTXentLoss(c.temperature, cfg.contrastive.gather_with_grad)

    def forward(self, batch: Batch, generator: torch.Generator, cached: Optional[CachedFeatures] = None,
                features_only: bool = False) -> Dict[str, torch.Tensor]:
        batch = self._ready(batch, generator)
        out = super().forward(batch, generator, cached, features_only)
        if features_only:
            return out
        visual = self.model.visual
        views = batch["views"]  # [2, B, 3, H, W]
        # The encoder has no batch statistics, so both views go through it at once; the head's
        # BatchNorm does, and SLIP runs it on each view apart: each view is normalised by its own.
        pooled = visual.pooled(visual.forward_tokens(views.flatten(0, 1))[0])
        z1, z2 = (self.image_mlp(p) for p in pooled.chunk(2))
        loss, metrics = self.simclr(z1, z2)
        out.update({"loss_ssl": self.cfg.slip.weight * loss, **{f"ssl_{k}": v for k, v in metrics.items()}})
        out["loss"] = out["loss_clip"] + out["loss_ssl"]
        return out


class CLIPMAE(Recipe):
    name = "clip_mae"

    def __init__(self, model: MaskCLIP, cfg: TrainConfig):
        super().__init__(model, cfg)
        v, c = model.config.vision, cfg.mae
        self.mask_token = self._mask_token(v.width, c.masking)
        self.decoder = self._patch_decoder(v, v.patch_size ** 2 * 3, c.decoder, c.masking)
        self.pixel_loss = MAEPixelLoss(c.norm_pix)

    def prepare(self, batch: Batch, generator: torch.Generator) -> Batch:
        """Adds the ``dropout`` mask of the contrastive pass (if any), then the MAE ``mask``."""
        out = super().prepare(batch, generator)
        self._draw_mask(out, self.cfg.mae.masking, generator)
        return out

    def forward(self, batch: Batch, generator: torch.Generator, cached: Optional[CachedFeatures] = None,
                features_only: bool = False) -> Dict[str, torch.Tensor]:
        batch = self._ready(batch, generator)
        c = self.cfg.mae
        out = super().forward(batch, generator, cached, features_only)
        if features_only:
            return out
        images, mask = batch["image"], batch["mask"]
        tokens, grid = encode_masked(self.model.visual, images, mask, c.masking.mode, self.mask_token)
        pred = self.decoder(self.decoder_input(tokens, c.decoder), mask, grid)
        loss, _ = self.pixel_loss(pred, images, mask.mask, self.model.config.vision.patch_size)
        out["loss_mae"] = c.weight * loss
        out["loss"] = out["loss_clip"] + out["loss_mae"]
        return out


class MaskCLIPRecipe(Recipe):
    """CLIP + masked self-distillation: an EMA teacher sees the full image (and caption); the student
    sees a masked one, and a small decoder predicts the teacher's joint-space features at the masked
    patches (and caption tokens)."""

    name = "maskclip"

    def __init__(self, model: MaskCLIP, cfg: TrainConfig):
        super().__init__(model, cfg)
        c, v, t, e = cfg.maskclip, model.config.vision, model.config.text, model.config.embed_dim
        self.mask_token = self._mask_token(v.width, c.masking)
        self.decoder = self._patch_decoder(v, e, c.decoder, c.masking)
        students = {"visual": model.visual}
        if c.loss == "soft":
            # One prototype head for image patches and caption tokens: both targets live in the joint space.
            self.head = PrototypeHead(e, c.num_prototypes, c.head_hidden_dim, c.head_bottleneck_dim)
            self.distill = SoftDistillLoss(c.num_prototypes, c.student_temp, c.teacher_temp, c.center_momentum)
            students["head"] = self.head
        else:
            self.distill = CosineDistillLoss()
        if c.text:
            self.text_mask_embedding = nn.Parameter(0.02 * torch.randn(t.width))
            self.text_decoder = TokenDecoder(t.width, e, c.text_decoder_layers)
            self.text_distill = (SoftDistillLoss(c.num_prototypes, c.student_temp, c.teacher_temp, c.center_momentum)
                                 if c.loss == "soft" else CosineDistillLoss())
            students["text"] = model.text
        self.teacher = EMATeacher(students)
        self._students = list(students)

    def students(self) -> Dict[str, nn.Module]:
        """The student modules the teacher averages, by the teacher's names for them."""
        modules = {"visual": self.model.visual, "text": self.model.text, "head": getattr(self, "head", None)}
        return {name: modules[name] for name in self._students}

    def prepare(self, batch: Batch, generator: torch.Generator) -> Batch:
        """Adds the patch ``mask``, then the ``dropout`` mask of a full-image contrastive pass (if any),
        then the caption mask: ``text_hidden [B, length]`` and its flat indices ``text_rows [M]``."""
        c = self.cfg.maskclip
        out = self._with_text_plan(batch)
        self._draw_mask(out, c.masking, generator)
        if c.contrastive_view == "full":
            self._draw_dropout(out, generator)
        if c.text:
            n = out["text_plan"].length
            hidden = text_mask(batch["text"].cpu(), c.text_mask_ratio, generator)[:, :n]
            out["text_hidden"] = hidden
            out["text_rows"] = hidden.flatten().nonzero().flatten()
        return out

    def _distill(self, loss_fn, pred: torch.Tensor, target: torch.Tensor) -> Tuple[torch.Tensor, dict]:
        """Loss between predictions and teacher targets ``[M, E]`` (rows of masked positions)."""
        if self.cfg.maskclip.loss == "soft":
            with torch.no_grad():
                teacher_logits = self.teacher["head"](target)
            return loss_fn(self.head(pred), teacher_logits)
        return loss_fn(pred, target)

    def forward(self, batch: Batch, generator: torch.Generator, cached: Optional[CachedFeatures] = None,
                features_only: bool = False) -> Dict[str, torch.Tensor]:
        batch = self._ready(batch, generator)
        c = self.cfg.maskclip
        if features_only and c.contrastive_view == "full":
            return super().forward(batch, generator, features_only=True)
        images, text, mask = batch["image"], batch["text"], batch["mask"]
        tokens, grid = encode_masked(self.model.visual, images, mask, c.masking.mode, self.mask_token)
        if c.contrastive_view == "masked":
            image_emb, text_emb = self.model.visual.pool(tokens), self.encode_text(text, batch["text_plan"])
            if features_only:
                return self.features(image_emb, text_emb)
            out = self.clip_terms(image_emb, text_emb, cached)
            out["loss"] = out["loss_clip"]
        else:
            out = super().forward(batch, generator, cached)
        at = mask.ids_masked  # [B, M]: rows in the order x[mask.mask] would give them
        pred = self.decoder(self.decoder_input(tokens, c.decoder), mask, grid, at=at).flatten(0, 1)
        with torch.no_grad():
            t_visual = self.teacher["visual"]
            target = t_visual.project_patches(keep(t_visual.forward_tokens(images)[0][:, 1:], at)).flatten(0, 1)
        loss, metrics = self._distill(self.distill, pred, target)
        out.update({"loss_distill": c.weight * loss, **{f"distill_{k}": v for k, v in metrics.items()}})
        out["loss"] = out["loss"] + out["loss_distill"]
        if c.text:
            loss, metrics = self._text_distill(batch)
            out.update({"loss_text_distill": c.text_weight * loss,
                        **{f"text_distill_{k}": v for k, v in metrics.items()}})
            out["loss"] = out["loss"] + out["loss_text_distill"]
        return out

    def _text_distill(self, batch: Batch):
        student, text, rows = self.model.text, batch["text"], batch["text_rows"]
        ids = text[:, :batch["text_plan"].length]
        emb = student.token_embedding(ids)
        emb = torch.where(batch["text_hidden"].unsqueeze(-1), self.text_mask_embedding.to(emb.dtype), emb)
        pred = self.text_decoder(student.forward_embeddings(emb)).flatten(0, 1)[rows]
        with torch.no_grad():
            t_text = self.teacher["text"]
            states = t_text.forward_embeddings(t_text.token_embedding(ids)).flatten(0, 1)[rows]
            target = t_text.ln_final(states) @ t_text.text_projection  # LayerNorm acts per token
        return self._distill(self.text_distill, pred, target)

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int, applied: Optional[torch.Tensor] = None) -> Dict[str, float]:
        super().after_step(step, total_steps, applied)
        c = self.cfg.maskclip
        m = cosine_momentum(step, total_steps, c.momentum, c.momentum_end)
        self.teacher.update(self.students(), m, applied)
        return {"momentum": m}


class RILS(Recipe):
    """CLIP + masked reconstruction in the language space (hustvl/RILS): the full image's patch
    features, scored against the batch's captions, teach the masked image's decoded patches."""

    name = "rils"

    def __init__(self, model: MaskCLIP, cfg: TrainConfig):
        super().__init__(model, cfg)
        c, v = cfg.rils, model.config.vision
        self.mask_token = self._mask_token(v.width, c.masking)
        self.decoder = self._patch_decoder(v, v.width, c.decoder, c.masking)
        self.recon = RILSLoss(c.student_temp, c.teacher_temp)

    def prepare(self, batch: Batch, generator: torch.Generator) -> Batch:
        """Adds the patch ``mask`` (no patch dropout: the config refuses it for RILS)."""
        out = self._with_text_plan(batch)
        self._draw_mask(out, self.cfg.rils.masking, generator)
        return out

    def forward(self, batch: Batch, generator: torch.Generator, cached: Optional[CachedFeatures] = None,
                features_only: bool = False) -> Dict[str, torch.Tensor]:
        batch = self._ready(batch, generator)
        c, images, visual, mask = self.cfg.rils, batch["image"], self.model.visual, batch["mask"]
        tokens = visual.forward_tokens(images)[0]  # the full image: contrastive loss and targets
        image_emb, text_emb = visual.pool(tokens), self.encode_text(batch["text"], batch["text_plan"])
        if features_only:
            return self.features(image_emb, text_emb)
        out = self.clip_terms(image_emb, text_emb, cached)
        masked, grid = encode_masked(visual, images, mask, c.masking.mode, self.mask_token)
        at = mask.ids_masked  # the loss reads masked patches only
        pred = self.decoder(self.decoder_input(masked, c.decoder), mask, grid, at=at) @ visual.proj
        target = visual.project_patches(keep(tokens[:, 1:], at)).detach()
        every = torch.ones(at.shape, dtype=torch.bool, device=at.device)
        loss, metrics = self.recon(pred, target, every, image_emb, text_emb)
        out.update({"loss_recon": c.weight * loss, **{f"recon_{k}": v for k, v in metrics.items()}})
        out["loss"] = out["loss_clip"] + out["loss_recon"]
        return out


RECIPE_CLASSES = {cls.name: cls for cls in (Recipe, SLIP, CLIPMAE, MaskCLIPRecipe, RILS)}


def build_recipe(model: MaskCLIP, cfg: TrainConfig) -> Recipe:
    _check_tower(model, cfg)
    return RECIPE_CLASSES[cfg.recipe](model, cfg)


def _check_tower(model: MaskCLIP, cfg: TrainConfig) -> None:
    """Masking, SLIP's views and RILS's decoder work on maskclip's own ViT (``VisionTower``); an image
    tower built by timm (SigLIP, EVA02) trains with the plain image-text loss only."""
    if isinstance(model.visual, VisionTower):
        return
    needs = [f"recipe {cfg.recipe!r}"] if cfg.recipe != "clip" else []
    if cfg.patch_dropout > 0:
        needs.append(f"patch_dropout={cfg.patch_dropout}")
    if needs:
        raise ConfigError(
            f"{' and '.join(needs)} need maskclip's own ViT image tower; this model's is a timm tower "
            f"({model.config.vision.timm_model_name or type(model.visual).__name__}), which "
            "trains with recipe 'clip' (loss=clip or loss=siglip) and patch_dropout=0")
