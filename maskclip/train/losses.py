"""Training losses, as modules apart from the model (open_clip's habit): contrastive (InfoNCE over the
global batch), SigLIP's sigmoid loss, SimCLR's NT-Xent, MAE's pixel loss, the two masked-distillation
losses, and RILS.

Every loss returns ``(loss, metrics)``: a 0-dim tensor to back-propagate, and detached scalars to log.
Losses over masked patches accept zero patches on a rank (a 0 that still carries the graph, never NaN).
"""
from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError, InputTypeError
from .distributed import all_reduce_sum, gather, neighbour_blocks, rank

LossOutput = Tuple[Tensor, Dict[str, Tensor]]


def _expect_shape(name: str, x: Tensor, shape: str, dims: int) -> None:
    if not isinstance(x, Tensor):
        raise InputTypeError(f"{name} must be a torch.Tensor {shape}; got {type(x).__name__}")
    if x.dim() != dims:
        raise InputError(f"{name} must be {shape}; got shape {tuple(x.shape)}")


def _expect_same(name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    if a.shape != b.shape:
        raise InputError(f"{name_a} and {name_b} must have the same shape; got {tuple(a.shape)} and {tuple(b.shape)}")


def _expect_mask(mask: Tensor, shape: torch.Size) -> None:
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.shape != shape:
        given = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, Tensor) else type(mask).__name__
        raise InputError(f"mask must be a bool tensor of shape {tuple(shape)} (True = masked); got {given}")


def _global_labels(local_batch: int, device: torch.device) -> Tensor:
    """Indices of this rank's rows in the gathered batch: [B]."""
    return torch.arange(local_batch, device=device) + rank() * local_batch


def _accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    return (logits.detach().argmax(dim=-1) == labels).float().mean()


class ContrastiveLoss(nn.Module):
    """Symmetric InfoNCE between image and text features over the global batch.

    ``gather_with_grad=True`` back-propagates through the other ranks' features, so with DDP's gradient
    averaging the gradients equal those of one process on the global batch. ``False`` treats the other
    ranks' features as constants and only the local ones carry gradient (as open_clip does; SLIP cuts
    even the local columns). It skips one all-reduce of the feature gradients, but the gradients are not
    the global batch's: with ``local_loss`` they lose the cross-rank terms, without it the encoders'
    gradients come out WORLD times too small after DDP's averaging (tests/test_train_distributed.py).
    ``local_loss=True`` scores only the local rows against all gathered columns ([B, N] logits, memory
    linear in the global batch N); ``False`` builds the full [N, N] logits on every rank.
    """

    def __init__(self, gather_with_grad: bool = True, local_loss: bool = True):
        super().__init__()
        self.gather_with_grad = gather_with_grad
        self.local_loss = local_loss

    def forward(self, image_features: Tensor, text_features: Tensor, logit_scale: Tensor) -> LossOutput:
        """image_features, text_features: [B, E], L2-normalised; logit_scale: 0-dim multiplier (exp'd)."""
        _expect_shape("image_features", image_features, "[B, E]", 2)
        _expect_same("image_features", image_features, "text_features", text_features)
        if not isinstance(logit_scale, Tensor) or logit_scale.numel() != 1:
            raise InputError(f"logit_scale must be a one-element tensor (already exponentiated); got {logit_scale!r}")
        batch = image_features.shape[0]
        labels = _global_labels(batch, image_features.device)
        all_images = gather(image_features, self.gather_with_grad)
        all_texts = gather(text_features, self.gather_with_grad)
        if self.local_loss:
            per_image = logit_scale * image_features @ all_texts.T  # [B, N]
            per_text = logit_scale * text_features @ all_images.T
            loss = (F.cross_entropy(per_image, labels) + F.cross_entropy(per_text, labels)) / 2
        else:
            per_image = logit_scale * all_images @ all_texts.T  # [N, N]
            per_text = per_image.T
            everyone = torch.arange(per_image.shape[0], device=per_image.device)
            loss = (F.cross_entropy(per_image, everyone) + F.cross_entropy(per_text, everyone)) / 2
            per_image, per_text = per_image[labels], per_text[labels]
        metrics = {"acc_i2t": _accuracy(per_image, labels), "acc_t2i": _accuracy(per_text, labels)}
        return loss, metrics


def _check_scalar(name: str, x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.numel() != 1:
        raise InputError(f"{name} must be a one-element tensor; got {x!r}")


class SigmoidLoss(nn.Module):
    """SigLIP's loss (Zhai et al. 2023): every image-text pair of the global batch is a binary
    classification, positive on the diagonal and negative elsewhere:
    ``-sum_ij log sigmoid(label_ij * (scale * cos_ij + bias)) / B`` for this rank's B images against
    every rank's texts, as open_clip's ``SigLipLoss`` computes it.

    Across ranks the text features travel between neighbours (``distributed.neighbour_blocks``, open_clip's
    ``bidir``) and each rank scores its images against one block at a time, with gradient back to the
    block's owner; nothing is gathered. Each rank divides by its own B, so with DDP's averaging the loss
    and gradients are one process's on the global batch (divided by its size).
    """

    def forward(self, image_features: Tensor, text_features: Tensor, logit_scale: Tensor,
                logit_bias: Tensor) -> LossOutput:
        """image_features, text_features: [B, E], L2-normalised; logit_scale: 0-dim multiplier (exp'd);
        logit_bias: 0-dim."""
        _expect_shape("image_features", image_features, "[B, E]", 2)
        _expect_same("image_features", image_features, "text_features", text_features)
        _check_scalar("logit_scale (already exponentiated)", logit_scale)
        _check_scalar("logit_bias", logit_bias)
        logits = logit_scale * image_features @ text_features.T + logit_bias  # [B, B], positives on the diagonal
        diagonal = torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
        loss = -F.logsigmoid(torch.where(diagonal, logits, -logits)).sum()
        positive = logits.detach().diagonal()
        best_negative = logits.detach().masked_fill(diagonal, float("-inf")).amax(dim=1)
        for texts in neighbour_blocks(text_features):  # another rank's captions: negatives only
            logits = logit_scale * image_features @ texts.T + logit_bias
            loss = loss - F.logsigmoid(-logits).sum()
            best_negative = torch.maximum(best_negative, logits.detach().amax(dim=1))
        loss = loss / image_features.shape[0]
        return loss, {"acc_i2t": (positive > best_negative).float().mean()}


class NTXentLoss(nn.Module):
    """SimCLR's loss as SLIP computes it, over the global batch of two views.

    For a local row of view a, the positive is the same image in view b; the negatives are every other
    gathered row of both views (itself excluded). The a and b sides are averaged.
    """

    def __init__(self, temperature: float = 0.1, gather_with_grad: bool = True):
        super().__init__()
        self.temperature = temperature
        self.gather_with_grad = gather_with_grad

    def forward(self, z1: Tensor, z2: Tensor) -> LossOutput:
        """z1, z2: [B, D] head outputs of the two views (normalised here)."""
        _expect_shape("z1", z1, "[B, D]", 2)
        _expect_same("z1", z1, "z2", z2)
        q_a, q_b = F.normalize(z1, dim=-1), F.normalize(z2, dim=-1)
        k_a, k_b = gather(q_a, self.gather_with_grad), gather(q_b, self.gather_with_grad)
        labels = _global_labels(q_a.shape[0], q_a.device)
        is_self = F.one_hot(labels, k_a.shape[0]).bool()  # [B, N]
        logits_a = torch.cat([q_a @ k_b.T, (q_a @ k_a.T).masked_fill(is_self, float("-inf"))], 1) / self.temperature
        logits_b = torch.cat([q_b @ k_a.T, (q_b @ k_b.T).masked_fill(is_self, float("-inf"))], 1) / self.temperature
        loss = (F.cross_entropy(logits_a, labels) + F.cross_entropy(logits_b, labels)) / 2
        return loss, {"acc": _accuracy(logits_a, labels)}


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """[B, C, H, W] -> [B, N, p*p*C]: patches in row-major order, each flattened as (p, p, C) like MAE."""
    _expect_shape("images", images, "[B, C, H, W]", 4)
    b, c, h, w = images.shape
    if patch_size < 1 or h % patch_size or w % patch_size:
        raise InputError(f"image size {h}x{w} must be a multiple of patch_size; got patch_size {patch_size}")
    p = patch_size
    x = images.reshape(b, c, h // p, p, w // p, p)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(b, (h // p) * (w // p), p * p * c)


class MAEPixelLoss(nn.Module):
    """MAE's reconstruction loss: MSE per patch against the (per-patch normalised) pixels, averaged over
    the masked patches only."""

    def __init__(self, norm_pix: bool = True):
        super().__init__()
        self.norm_pix = norm_pix

    def forward(self, pred: Tensor, images: Tensor, mask: Tensor, patch_size: int) -> LossOutput:
        """pred: [B, N, p*p*3]; images: [B, 3, H, W]; mask: [B, N] bool, True = masked."""
        target = patchify(images, patch_size)
        _expect_same("pred", pred, "patchify(images)", target)
        _expect_mask(mask, target.shape[:2])
        if self.norm_pix:
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        per_patch = ((pred - target) ** 2).mean(dim=-1)  # [B, N]
        count = mask.sum()
        loss = (per_patch * mask).sum() / count.clamp_min(1)
        return loss, {"num_patches": count.detach().float()}


def _entropy(log_probs: Tensor) -> Tensor:
    """Entropy of each row of a distribution given as log-probabilities: [M, K] -> [M]."""
    return -(log_probs.exp() * log_probs).sum(dim=-1)


def _row_mean(per_row: Tensor) -> Tensor:
    """Mean over rows that is 0 (with the graph kept) when there are none."""
    return per_row.sum() / max(per_row.shape[0], 1)


class SoftDistillLoss(nn.Module):
    """iBOT/DINO-style patch distillation: cross-entropy from the centred, sharpened teacher
    distribution over K prototypes to the student's.

    ``teacher_temp`` is a plain attribute so the recipe can warm it up. The ``center`` buffer moves
    towards the mean teacher logits of the global batch after each forward in training mode (in eval
    mode it stays fixed). Every rank must call forward, even with no masked patch: the update is a
    collective.
    """

    def __init__(self, num_prototypes: int = 8192, student_temp: float = 0.1, teacher_temp: float = 0.04,
                 center_momentum: float = 0.9):
        super().__init__()
        self.student_temp = student_temp
        self.teacher_temp = teacher_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, num_prototypes))

    def forward(self, student_logits: Tensor, teacher_logits: Tensor) -> LossOutput:
        """student_logits, teacher_logits: [M, K] for the M masked patches of the local batch."""
        _expect_shape("student_logits", student_logits, "[M, K]", 2)
        _expect_same("student_logits", student_logits, "teacher_logits", teacher_logits)
        if student_logits.shape[1] != self.center.shape[1]:
            raise InputError(f"logits must have {self.center.shape[1]} prototypes; got {student_logits.shape[1]}")
        teacher_logits = teacher_logits.detach()
        teacher_log = F.log_softmax((teacher_logits - self.center) / self.teacher_temp, dim=-1)
        teacher_p = teacher_log.exp()  # once, for the loss and the teacher's entropy
        student_log = F.log_softmax(student_logits / self.student_temp, dim=-1)
        loss = _row_mean(-(teacher_p * student_log).sum(dim=-1))
        metrics = {"teacher_entropy": _row_mean(-(teacher_p * teacher_log).sum(dim=-1)),
                   "student_entropy": _row_mean(_entropy(student_log.detach()))}
        if self.training:
            self._update_center(teacher_logits)
        return loss, metrics

    @torch.no_grad()
    def _update_center(self, teacher_logits: Tensor) -> None:
        """center <- m * center + (1 - m) * mean of all ranks' teacher rows (unchanged if there are none)."""
        rows = teacher_logits.to(self.center.dtype)
        stats = torch.cat([rows.sum(dim=0), rows.new_full((1,), rows.shape[0])])
        stats = all_reduce_sum(stats)
        count = stats[-1]
        batch_center = stats[:-1] / count.clamp_min(1)
        moved = self.center * self.center_momentum + batch_center * (1 - self.center_momentum)
        self.center.copy_(torch.where(count > 0, moved, self.center))


class CosineDistillLoss(nn.Module):
    """1 - cosine similarity between predicted and (stop-gradient) target features, averaged over rows."""

    def forward(self, pred: Tensor, target: Tensor) -> LossOutput:
        """pred, target: [M, E] for the M masked patches of the local batch."""
        _expect_shape("pred", pred, "[M, E]", 2)
        _expect_same("pred", pred, "target", target)
        cosine = (F.normalize(pred, dim=-1) * F.normalize(target.detach(), dim=-1)).sum(dim=-1)
        return _row_mean(1 - cosine), {"cosine": _row_mean(cosine.detach())}


class RILSLoss(nn.Module):
    """RILS's reconstruction loss: masked patch features are scored against the captions of the global
    batch (prototypes, no gradient); the student's distribution (from the masked image) is pulled to the
    teacher's (from the full image) by KL, on masked patches of the images that retrieve their own
    caption. The recipe applies RILS's weight (0.5)."""

    def __init__(self, student_temp: float = 0.1, teacher_temp: float = 0.04):
        super().__init__()
        self.student_temp = student_temp
        self.teacher_temp = teacher_temp

    def forward(self, pred_patches: Tensor, target_patches: Tensor, mask: Tensor,
                image_features: Tensor, text_features: Tensor) -> LossOutput:
        """pred_patches, target_patches: [B, N, E]; mask: [B, N] bool (True = masked);
        image_features, text_features: [B, E] (normalised here)."""
        _expect_shape("pred_patches", pred_patches, "[B, N, E]", 3)
        _expect_same("pred_patches", pred_patches, "target_patches", target_patches)
        _expect_mask(mask, pred_patches.shape[:2])
        _expect_shape("image_features", image_features, "[B, E]", 2)
        _expect_same("image_features", image_features, "text_features", text_features)
        if image_features.shape != (pred_patches.shape[0], pred_patches.shape[2]):
            raise InputError(f"image_features must be [B, E] = {tuple(pred_patches.shape[::2])} like the patches; "
                             f"got {tuple(image_features.shape)}")
        prototypes = F.normalize(gather(text_features.detach(), with_grad=False), dim=-1)  # [N_global, E]
        retrieved = (F.normalize(image_features.detach(), dim=-1) @ prototypes.T).argmax(dim=-1)
        correct = retrieved == _global_labels(image_features.shape[0], image_features.device)  # [B]
        # Every patch is scored and the unused ones weigh 0 (RILS's own formulation): selecting the
        # used rows would give a tensor of data-dependent size, a host sync on a GPU.
        student = F.log_softmax(F.normalize(pred_patches, dim=-1) @ prototypes.T / self.student_temp, -1)
        teacher = F.log_softmax(F.normalize(target_patches.detach(), dim=-1) @ prototypes.T
                                / self.teacher_temp, -1)
        kl = (teacher.exp() * (teacher - student)).sum(dim=-1)  # [B, N]
        used = (mask & correct[:, None]).to(kl.dtype)
        count = used.sum()
        loss = (kl * used).sum() / (count + 1e-6)
        return loss, {"frac_correct": correct.float().mean(), "num_patches": count.detach().float()}
