"""ResCLIP's semantic feedback refinement (SFR): a first segmentation steers the last block's attention.

Yang et al., "ResCLIP: Residual Attention for Training-free Dense Vision-language Inference", CVPR
2025 (yvhangyang/ResCLIP ``clip/model.py``: ``create_logit_temp``, ``create_patch_matrix``,
``check_path``, ``generate_attention_sfr``, ``custom_attn``). On top of RCS (``dense.rcs_tokens``):

1. a first pass of the last block under RCS gives patch features, scored against the classifier,
   upsampled to the input, refined by PAMR (``refine.pamr``), ``softmax(scale * s)`` over the labels;
   pixels whose best probability is under ``SFR_THRESHOLD`` take label 0; each patch takes its
   pixels' most frequent label (``patch_labels``);
2. ``feedback_attention``: 1 between patches of one label, decayed by ``exp(-d / d_max)`` (``d`` the
   Chebyshev distance in patches) unless the straight path between them stays on that label, smoothed
   along each row by a Gaussian (std ``NACLIP_STD``) over the row-major patch index, rows normalised,
   zero for the class token, scaled to a maximum of 1;
3. a second pass: ``softmax(tau_s ((1 - lam_s) k k^T / sqrt(d) + lam_s F) + G)`` blended with RCS's
   mean attention as ``dense.rcs_blend`` does; no residual, no MLP.

It needs the text classifier inside the image pass, so it runs only in ``segment(..., sfr=True)`` and
the evaluation code that calls ``DualEncoder._segmentation_scores``, once per window.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

from . import dense, refine
from .errors import InputError, InputTypeError
from .towers import VisionTower

# ResCLIP configs/cfg_ade20k.py: attn_sfr_weights=[2.1, 0.7], temp_thd=0.25 (the benchmark whose RCS
# weights dense.RESCLIP_TAU / RESCLIP_LAMBDA also come from; the other configs use 1.8 to 2.2, 0.6 to 0.7
# and thresholds 0.10 to 0.50). Every config sets delete_same_entity=True, and none sets logit_scale, so
# the first pass uses ResCLIPSegmentation's default 40.
SFR_TAU, SFR_LAMBDA = 2.1, 0.7
SFR_THRESHOLD = 0.25
SFR_LOGIT_SCALE = 40.0


def check_sfr(sfr, method: str) -> bool:
    """``sfr`` as given to ``segment`` -> a bool; SFR refines ``resclip`` only."""
    if not isinstance(sfr, bool):
        raise InputTypeError(f"sfr must be True or False; got {type(sfr).__name__}")
    if sfr and method != "resclip":
        raise InputError(f"sfr (ResCLIP's semantic feedback refinement) needs method='resclip'; got method={method!r}")
    return sfr


def patch_labels(scores: torch.Tensor, image: torch.Tensor, patch_size: int,
                 threshold: float = SFR_THRESHOLD) -> torch.Tensor:
    """First-pass cosine scores ``[B, Q, gh, gw]`` and the input ``[B, 3, H, W]`` -> a label per patch ``[B, gh, gw]``.

    Scores are upsampled to the input, refined by PAMR with it, turned into probabilities; a patch
    takes the most frequent pixel label among its ``patch_size ** 2`` pixels (ties: the lowest
    label, as ``torch.mode``). Pixels past the last whole patch are left out, as the tower's
    convolution leaves them out.
    """
    B, Q, gh, gw = scores.shape
    p = patch_size
    scores = F.interpolate(scores.float(), size=image.shape[-2:], mode="bilinear", align_corners=False)
    probs = torch.softmax(refine.pamr(image, scores) * SFR_LOGIT_SCALE, dim=1)
    best, label = probs.max(dim=1)
    label = label.masked_fill(best < threshold, 0)[:, :gh * p, :gw * p]
    pixels = label.reshape(B, gh, p, gw, p).permute(0, 1, 3, 2, 4).reshape(B, gh * gw, p * p)
    counts = torch.zeros(B, gh * gw, Q, dtype=torch.int32, device=label.device)
    counts.scatter_add_(2, pixels, torch.ones_like(pixels, dtype=torch.int32))
    return counts.argmax(dim=2).reshape(B, gh, gw)


def _on_straight_paths(labels: torch.Tensor, gw: int, rows: torch.Tensor, cols: torch.Tensor,
                       steps: torch.Tensor) -> torch.Tensor:
    """Whether each pair of patches is joined by a path on the first one's label: ``[B, N]`` -> ``[B, N, N]``.

    As the reference's ``check_path``: ``d_max + 1`` points ``round(p_i (1 - t) + p_j t)``, ``t``
    evenly spaced in ``[0, 1]`` (``d_max`` the largest Chebyshev distance on the grid), of which the
    first ``d_ij + 1`` are checked; one step at a time, so memory stays ``N^2``.
    """
    longest = int(steps.max())
    t_values = torch.linspace(0, 1, steps=longest + 1, device=labels.device)
    r, c = rows.float(), cols.float()
    ok = torch.ones(labels.shape[0], len(rows), len(rows), dtype=torch.bool, device=labels.device)
    for k, t in enumerate(t_values):
        at_r = (r[:, None] * (1 - t) + r[None] * t).round().long()
        at_c = (c[:, None] * (1 - t) + c[None] * t).round().long()
        on_label = labels[:, at_r * gw + at_c] == labels[:, :, None]
        ok &= on_label | (k > steps)
    return ok


def _smooth_rows(x: torch.Tensor, std: float) -> torch.Tensor:
    """Each row of ``[B, N, N]`` convolved with a normalised Gaussian of ``std`` (zero padding, odd size <= N + 1)."""
    B, n, _ = x.shape
    size = min(n, int(6 * std + 1))
    size += 1 - size % 2
    offsets = torch.arange(size, dtype=x.dtype, device=x.device) - size // 2
    kernel = torch.exp(-offsets ** 2 / (2 * std ** 2))
    kernel = (kernel / kernel.sum()).view(1, 1, size)
    return F.conv1d(x.reshape(B * n, 1, n), kernel, padding=size // 2).reshape(B, n, n)


def feedback_attention(labels: torch.Tensor, std: float = dense.NACLIP_STD, prefix: int = 1) -> torch.Tensor:
    """Patch labels ``[B, gh, gw]`` -> SFR's attention term ``[B, P + N, P + N]`` (zero for the ``prefix`` = P
    tokens), each image's maximum 1."""
    B, gh, gw = labels.shape
    n = gh * gw
    flat = labels.reshape(B, n)
    index = torch.arange(n, device=labels.device)
    rows, cols = index // gw, index % gw
    steps = torch.maximum((rows[:, None] - rows[None]).abs(), (cols[:, None] - cols[None]).abs())
    same = (flat[:, :, None] == flat[:, None, :]).float()
    decay = torch.exp(-steps.float() / max(int(steps.max()), 1))
    same = torch.where(_on_straight_paths(flat, gw, rows, cols, steps), same, same * decay)
    smoothed = _smooth_rows(same, std)  # non-negative: the reference's ReLU changes nothing
    out = torch.zeros(B, prefix + n, prefix + n, device=labels.device)
    out[:, prefix:, prefix:] = smoothed / (smoothed.sum(dim=2, keepdim=True) + 1e-8)
    return out / out.amax(dim=(1, 2), keepdim=True)


def _sfr_last_block(block, x: torch.Tensor, grid: Tuple[int, int], rcs: torch.Tensor,
                    feedback: torch.Tensor, prefix: int) -> torch.Tensor:
    """The last block's second pass: tokens ``[B, 1 + N, width]``, RCS's mean attention and
    ``feedback_attention`` ``[B, 1 + N, 1 + N]`` -> ``[B, 1 + N, width]``."""
    _, k, v = block.attn.qkv(block.ln_1(x))
    logits = k @ k.transpose(-1, -2) * k.shape[-1] ** -0.5
    logits = SFR_TAU * ((1 - SFR_LAMBDA) * logits + SFR_LAMBDA * feedback[:, None].to(logits.dtype))
    logits = logits + dense.neighbourhood_bias(grid, dense.NACLIP_STD, k.dtype, k.device, prefix)
    return block.attn.merge_heads(dense.rcs_blend(torch.softmax(logits, dim=-1), rcs) @ v)


def dense_features(visual: VisionTower, x: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    """ResCLIP with SFR: preprocessed images ``[B, 3, H, W]`` and a classifier ``[E, Q]`` (unit
    columns) -> patch features ``[B, E, H / p, W / p]``.

    Costs, on top of ``resclip``: a second pass of the last block and the projection, the first pass's
    ``Q`` score maps and PAMR at the input size, and ``d_max + 1`` ``N x N`` path checks.
    """
    P = visual.num_prefix_tokens
    tokens, (gh, gw), rcs = dense.rcs_tokens(visual, x)
    last = visual.dense_blocks((gh, gw))[-1]
    first = F.normalize(visual.project_patches(dense.rcs_last_block(last, tokens, (gh, gw), rcs, P)[:, P:]), dim=-1)
    scores = (first @ classifier.to(first.dtype)).transpose(1, 2).reshape(x.shape[0], -1, gh, gw)
    feedback = feedback_attention(patch_labels(scores, x, visual.cfg.patch_size), prefix=P)
    feats = visual.project_patches(_sfr_last_block(last, tokens, (gh, gw), rcs, feedback, P)[:, P:])
    return feats.transpose(1, 2).reshape(x.shape[0], -1, gh, gw)
