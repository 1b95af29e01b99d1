"""The pretraining recipes: one backbone (a ``MaskCLIP`` dual encoder), one interface.

A recipe is an ``nn.Module`` holding the student model and whatever the recipe adds (heads,
decoders, an EMA teacher). ``forward(batch, generator)`` returns a dict of scalar tensors:
``loss`` (what is optimised) and each weighted term and metric for the logs. ``after_step``
runs after every optimizer step (EMA teacher update, logit-scale clamp).

- ``clip``: the symmetric contrastive loss alone.
- ``slip``: CLIP + SimCLR on two strongly augmented views (SLIP, Mu et al. 2022).
- ``clip_mae``: CLIP + MAE pixel reconstruction of masked patches (the ablation MaskCLIP argues against).
- ``maskclip``: CLIP + masked self-distillation from an EMA teacher in the joint space, for image
  patches and (optionally) caption tokens (Dong et al., CVPR 2023; details ours: docs/training.md).
- ``rils``: CLIP + reconstruction in the language space with caption prototypes (Yang et al., CVPR 2023).
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import causal_len
from ..model import MaskCLIP
from .config import TrainConfig
from .decoder import PatchDecoder, TokenDecoder
from .ema import EMATeacher, cosine_momentum
from .heads import PrototypeHead, SimCLRHead
from .losses import (ContrastiveLoss, CosineDistillLoss, MAEPixelLoss, NTXentLoss, RILSLoss, SoftDistillLoss)
from .masking import Mask, encode_masked, make_mask, random_mask, text_mask

Batch = Dict[str, torch.Tensor]


class Recipe(nn.Module):
    """CLIP: the base of every recipe (contrastive loss, FLIP patch dropout, logit-scale clamp)."""

    name = "clip"
    extra_views = 0  # strongly augmented views the data pipeline must add (SLIP: 2)

    def __init__(self, model: MaskCLIP, cfg: TrainConfig):
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.contrastive = ContrastiveLoss(cfg.contrastive.gather_with_grad, cfg.contrastive.local_loss)
        self.max_log_scale = math.log(cfg.logit_scale_max)

    # --- pieces shared by the recipes --------------------------------------------------------

    def image_tokens(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The contrastive pass: final tokens ``[B, 1 + N', width]`` (N' < N under patch dropout)."""
        visual = self.model.visual
        p = self.cfg.patch_dropout
        if self.training and p > 0:
            gh, gw = visual.grid(*images.shape[-2:])
            mask = random_mask(images.shape[0], gh * gw, p, generator).to(images.device)
            return encode_masked(visual, images, mask)[0]
        return visual.forward_tokens(images)[0]

    def clip_terms(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> Dict[str, torch.Tensor]:
        loss, metrics = self.contrastive(F.normalize(image_emb, dim=-1), F.normalize(text_emb, dim=-1),
                                         self.model.logit_scale.exp())
        return {"loss_clip": loss, **{f"clip_{k}": v for k, v in metrics.items()},
                "logit_scale": self.model.logit_scale.detach().exp()}

    def masked_student(self, images: torch.Tensor, masking, generator: torch.Generator,
                       mask_token: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Mask, Tuple[int, int]]:
        visual = self.model.visual
        grid = visual.grid(*images.shape[-2:])
        mask = make_mask(masking.strategy, images.shape[0], grid, masking.ratio, generator).to(images.device)
        tokens, grid = encode_masked(visual, images, mask, masking.mode, mask_token)
        return tokens, mask, grid

    # --- the recipe --------------------------------------------------------------------------

    def forward(self, batch: Batch, generator: torch.Generator) -> Dict[str, torch.Tensor]:
        tokens = self.image_tokens(batch["image"], generator)
        out = self.clip_terms(self.model.visual.pool(tokens), self.model.text(batch["text"]))
        out["loss"] = out["loss_clip"]
        return out

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> Dict[str, float]:
        self.model.logit_scale.clamp_(0, self.max_log_scale)
        return {}


class SLIP(Recipe):
    name = "slip"
    extra_views = 2

    def __init__(self, model: MaskCLIP, cfg: TrainConfig):
        super().__init__(model, cfg)
        c = cfg.slip
        self.image_mlp = SimCLRHead(model.config.vision.width, c.hidden_dim, c.out_dim)
        self.simclr = NTXentLoss(c.temperature, cfg.contrastive.gather_with_grad)

    def forward(self, batch: Batch, generator: torch.Generator) -> Dict[str, torch.Tensor]:
        out = super().forward(batch, generator)
        visual = self.model.visual
        views = batch["views"]  # [2, B, 3, H, W]
        both = self.image_mlp(visual.pooled(visual.forward_tokens(views.flatten(0, 1))[0]))
        z1, z2 = both.chunk(2)
        loss, metrics = self.simclr(z1, z2)
        out.update({"loss_ssl": self.cfg.slip.weight * loss, **{f"ssl_{k}": v for k, v in metrics.items()}})
        out["loss"] = out["loss_clip"] + out["loss_ssl"]
        return out


class CLIPMAE(Recipe):
    name = "clip_mae"

    def __init__(self, model: MaskCLIP, cfg: TrainConfig):
        super().__init__(model, cfg)
        v, c = model.config.vision, cfg.mae
        self.mask_token = nn.Parameter(0.02 * torch.randn(v.width)) if c.masking.mode == "token" else None
        self.decoder = PatchDecoder(v.width, v.patch_size ** 2 * 3, (v.grid_size, v.grid_size), c.decoder.layers,
                                    c.decoder.width, c.decoder.heads, c.decoder.pos_embed)
        self.pixel_loss = MAEPixelLoss(c.norm_pix)

    def forward(self, batch: Batch, generator: torch.Generator) -> Dict[str, torch.Tensor]:
        out = super().forward(batch, generator)
        images = batch["image"]
        tokens, mask, grid = self.masked_student(images, self.cfg.mae.masking, generator, self.mask_token)
        pred = self.decoder(tokens, mask, grid)
        loss, _ = self.pixel_loss(pred, images, mask.mask, self.model.config.vision.patch_size)
        out["loss_mae"] = self.cfg.mae.weight * loss
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
        self.mask_token = nn.Parameter(0.02 * torch.randn(v.width)) if c.masking.mode == "token" else None
        self.decoder = PatchDecoder(v.width, e, (v.grid_size, v.grid_size), c.decoder.layers, c.decoder.width,
                                    c.decoder.heads, c.decoder.pos_embed)
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

    def _distill(self, loss_fn, pred: torch.Tensor, target: torch.Tensor) -> Tuple[torch.Tensor, dict]:
        """Loss between predictions and teacher targets ``[M, E]`` (rows of masked positions)."""
        if self.cfg.maskclip.loss == "soft":
            with torch.no_grad():
                teacher_logits = self.teacher["head"](target)
            return loss_fn(self.head(pred), teacher_logits)
        return loss_fn(pred, target)

    def forward(self, batch: Batch, generator: torch.Generator) -> Dict[str, torch.Tensor]:
        c = self.cfg.maskclip
        images, text = batch["image"], batch["text"]
        tokens, mask, grid = self.masked_student(images, c.masking, generator, self.mask_token)
        if c.contrastive_view == "masked":
            out = self.clip_terms(self.model.visual.pool(tokens), self.model.text(text))
            out["loss"] = out["loss_clip"]
        else:
            out = super().forward(batch, generator)
        pred = self.decoder(tokens, mask, grid)[mask.mask]
        with torch.no_grad():
            t_visual = self.teacher["visual"]
            target = t_visual.project_patches(t_visual.forward_tokens(images)[0][:, 1:])[mask.mask]
        loss, metrics = self._distill(self.distill, pred, target)
        out.update({"loss_distill": c.weight * loss, **{f"distill_{k}": v for k, v in metrics.items()}})
        out["loss"] = out["loss"] + out["loss_distill"]
        if c.text:
            loss, metrics = self._text_distill(text, generator)
            out.update({"loss_text_distill": c.text_weight * loss,
                        **{f"text_distill_{k}": v for k, v in metrics.items()}})
            out["loss"] = out["loss"] + out["loss_text_distill"]
        return out

    def _text_distill(self, text: torch.Tensor, generator: torch.Generator):
        c, student = self.cfg.maskclip, self.model.text
        n = causal_len(text)
        hidden = text_mask(text.cpu(), c.text_mask_ratio, generator)[:, :n].to(text.device)
        emb = student.token_embedding(text[:, :n])
        emb = torch.where(hidden.unsqueeze(-1), self.text_mask_embedding.to(emb.dtype), emb)
        pred = self.text_decoder(student.forward_embeddings(emb))[hidden]
        with torch.no_grad():
            t_text = self.teacher["text"]
            target = (t_text.ln_final(t_text.forward_tokens(text)) @ t_text.text_projection)[hidden]
        return self._distill(self.text_distill, pred, target)

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> Dict[str, float]:
        super().after_step(step, total_steps)
        c = self.cfg.maskclip
        m = cosine_momentum(step, total_steps, c.momentum, c.momentum_end)
        self.teacher.update(self.students(), m)
        return {"momentum": m}


class RILS(Recipe):
    """CLIP + masked reconstruction in the language space (hustvl/RILS): the full image's patch
    features, scored against the batch's captions, teach the masked image's decoded patches."""

    name = "rils"

    def __init__(self, model: MaskCLIP, cfg: TrainConfig):
        super().__init__(model, cfg)
        c, v = cfg.rils, model.config.vision
        self.mask_token = nn.Parameter(0.02 * torch.randn(v.width)) if c.masking.mode == "token" else None
        self.decoder = PatchDecoder(v.width, v.width, (v.grid_size, v.grid_size), c.decoder.layers, c.decoder.width,
                                    c.decoder.heads, c.decoder.pos_embed)
        self.recon = RILSLoss(c.student_temp, c.teacher_temp)

    def forward(self, batch: Batch, generator: torch.Generator) -> Dict[str, torch.Tensor]:
        images, visual = batch["image"], self.model.visual
        tokens = visual.forward_tokens(images)[0]  # the full image: contrastive loss and targets
        image_emb, text_emb = visual.pool(tokens), self.model.text(batch["text"])
        out = self.clip_terms(image_emb, text_emb)
        masked, mask, grid = self.masked_student(images, self.cfg.rils.masking, generator, self.mask_token)
        pred = self.decoder(masked, mask, grid) @ visual.proj
        target = visual.project_patches(tokens[:, 1:]).detach()
        loss, metrics = self.recon(pred, target, mask.mask, image_emb, text_emb)
        out.update({"loss_recon": self.cfg.rils.weight * loss, **{f"recon_{k}": v for k, v in metrics.items()}})
        out["loss"] = out["loss_clip"] + out["loss_recon"]
        return out


RECIPE_CLASSES = {cls.name: cls for cls in (Recipe, SLIP, CLIPMAE, MaskCLIPRecipe, RILS)}


def build_recipe(model: MaskCLIP, cfg: TrainConfig) -> Recipe:
    return RECIPE_CLASSES[cfg.recipe](model, cfg)
