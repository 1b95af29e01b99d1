"""ResCLIP's semantic feedback refinement against a re-implementation of its reference code (random weights).

The reference (yvhangyang/ResCLIP ``clip/model.py``: ``VisionTransformer.forward`` with ``use_rcs`` and
``use_sfr``, ``create_logit_temp``, ``create_patch_matrix``, ``check_path``, ``generate_attention_sfr``,
``custom_attn`` with ``attn_strategy='resclip'``) is followed in its own conventions: sequence-first
tokens, heads folded into the batch, one image at a time. It casts the feedback mask to float16, its
model's dtype on a GPU; in this float32 re-implementation that cast is left out (maskclip keeps the
computation's dtype).
"""
import pytest
import torch
import torch.nn.functional as F

import maskclip
from maskclip import dense, resclip_sfr
from maskclip.errors import InputError, InputTypeError

from conftest import tiny_model
from test_dense_methods import assert_close, ref_attention_addition, ref_gaussian_window, ref_pamr, ref_rcs_blocks


def ref_resclip_attn(attn_layer, x, n_patches, attn_rcs, attn_sfr=None, attn_sfr_weights=(2.1, 0.7),
                     attn_rcs_weights=(2.0, 0.3), gaussian_std=5.0):
    num_tokens, bsz, embed_dim = x.size()
    head_dim = embed_dim // attn_layer.heads
    scale = head_dim ** -0.5
    q, k, v = F.linear(x, attn_layer.in_proj_weight, attn_layer.in_proj_bias).chunk(3, dim=-1)
    k = k.contiguous().view(-1, bsz * attn_layer.heads, head_dim).transpose(0, 1)
    v = v.contiguous().view(-1, bsz * attn_layer.heads, head_dim).transpose(0, 1)
    window = ref_gaussian_window(*[side * 2 - 1 for side in n_patches], std=gaussian_std)
    omega = ref_attention_addition(*n_patches, window).unsqueeze(0).to(x.dtype)
    attn_weights = torch.bmm(k, k.transpose(1, 2)) * scale
    if attn_sfr is not None:
        attn_sfr = attn_sfr / torch.max(attn_sfr)
        tau_attn_sfr, lambda_attn_sfr = attn_sfr_weights
        attn_weights = tau_attn_sfr * ((1 - lambda_attn_sfr) * attn_weights + lambda_attn_sfr * attn_sfr)
    attn_weights += omega
    attn_weights = F.softmax(attn_weights, dim=-1)
    tau_attn_rcs, lambda_attn_rcs = attn_rcs_weights
    attn_weights = tau_attn_rcs * ((1 - lambda_attn_rcs) * attn_weights + lambda_attn_rcs * attn_rcs)
    attn_output = torch.bmm(attn_weights, v).transpose(0, 1).contiguous().view(-1, bsz, embed_dim)
    return attn_layer.out_proj(attn_output)


def ref_create_logit_temp(visual, x, n_patches, attn_rcs, query_features, img, patch_size, logit_scale=40):
    blk = visual.transformer.resblocks[-1]
    x = ref_resclip_attn(blk.attn, blk.ln_1(x), n_patches, attn_rcs).permute(1, 0, 2)
    x = visual.ln_post(x) @ visual.proj
    image_features = x[:, 1:]
    image_features = image_features / image_features.norm(dim=-1, keepdim=True)
    logits = image_features @ query_features.T
    w, h = img[0].shape[-2] // patch_size, img[0].shape[-1] // patch_size
    logits = logits.permute(0, 2, 1).reshape(-1, logits.shape[-1], w, h)
    logits = F.interpolate(logits, size=img.shape[-2:], mode="bilinear", align_corners=False)
    seg_logits_temp = ref_pamr(img, logits, 10, (8, 16))
    return torch.softmax(seg_logits_temp[0] * logit_scale, dim=0).unsqueeze(0)


def ref_create_patch_matrix(seg_logit_temp, n_patches, patch_size, temp_thd):
    seg_logit_temp = seg_logit_temp.squeeze(0)
    seg_pred = seg_logit_temp.argmax(0, keepdim=True)
    seg_pred[seg_logit_temp.max(0, keepdim=True)[0] < temp_thd] = 0
    seg_pred = seg_pred.squeeze(0)
    patches = seg_pred.unfold(0, patch_size, patch_size).unfold(1, patch_size, patch_size)
    patches = patches.reshape(n_patches[0], n_patches[1], -1)
    return torch.mode(patches, dim=-1)[0]


def ref_check_path(start_coords, end_coords, patch_logit_temp):
    steps = torch.max(torch.abs(end_coords - start_coords), dim=1)[0]
    max_steps = steps.max().item()
    t = torch.linspace(0, 1, steps=max_steps + 1).unsqueeze(1).unsqueeze(0)
    current_coords = start_coords.unsqueeze(1) * (1 - t) + end_coords.unsqueeze(1) * t
    current_coords = current_coords.round().long()
    valid_steps = torch.arange(max_steps + 1).unsqueeze(0) <= steps.unsqueeze(1)
    start_values = patch_logit_temp[start_coords[:, 0], start_coords[:, 1]].unsqueeze(1)
    current_values = patch_logit_temp[current_coords[:, :, 0], current_coords[:, :, 1]]
    path_valid = (current_values == start_values) | ~valid_steps
    return path_valid.all(dim=1)


def ref_generate_attention_sfr(patch_logit_temp, n_patches, gaussian_std=5.0):
    h, w = n_patches
    total_patches = h * w
    attention_sfr = torch.zeros((total_patches + 1, total_patches + 1))
    patch_indices = torch.arange(total_patches)
    i, j = torch.meshgrid(patch_indices, patch_indices, indexing="ij")
    i_w, i_h = torch.div(i, w, rounding_mode="floor"), i % w
    j_w, j_h = torch.div(j, w, rounding_mode="floor"), j % w
    mask = patch_logit_temp[i_w, i_h] == patch_logit_temp[j_w, j_h]
    attention_sfr[1:, 1:] = mask.float()
    attention_sfr.diagonal().fill_(1)
    attention_sfr[0, :] = 0
    attention_sfr[:, 0] = 0
    non_cls_attention = attention_sfr[1:, 1:]
    start_coords = torch.stack((i_w, i_h), dim=-1).view(-1, 2)
    end_coords = torch.stack((j_w, j_h), dim=-1).view(-1, 2)
    valid_paths = ref_check_path(start_coords, end_coords, patch_logit_temp).view(total_patches, total_patches)
    steps = torch.max(torch.abs(end_coords - start_coords), dim=1)[0]
    max_steps = steps.max().item()
    steps = steps.view(total_patches, total_patches)
    decay_factor = torch.exp(-steps / max_steps)
    non_cls_attention = torch.where(valid_paths, non_cls_attention, non_cls_attention * decay_factor)
    kernel_size = min(total_patches, int(6 * gaussian_std + 1))
    kernel_size = kernel_size if kernel_size % 2 == 1 else kernel_size + 1
    x = torch.arange(kernel_size) - kernel_size // 2
    gaussian_kernel_1d = torch.exp(-(x ** 2) / (2 * gaussian_std ** 2))
    kernel = gaussian_kernel_1d / gaussian_kernel_1d.sum()
    blurred = F.conv1d(non_cls_attention.unsqueeze(1), kernel.view(1, 1, -1), padding=kernel_size // 2).squeeze(1)
    blurred = F.relu(blurred)
    attention_sfr[1:, 1:] = blurred / (blurred.sum(dim=1, keepdim=True) + 1e-8)
    return attention_sfr.unsqueeze(0)


def ref_resclip_sfr(visual, img, rcs_indices, query_features, temp_thd=0.25):
    """``VisionTransformer.forward(use_rcs=True, use_sfr=True, arch='wo_resi')``, return_all, patches."""
    x, n_patches, attention_rcs = ref_rcs_blocks(visual, img, rcs_indices)
    patch_size = visual.cfg.patch_size
    seg_logit_temp = ref_create_logit_temp(visual, x, n_patches, attention_rcs, query_features, img, patch_size)
    patch_logit_temp = ref_create_patch_matrix(seg_logit_temp, n_patches, patch_size, temp_thd)
    attention_sfr = ref_generate_attention_sfr(patch_logit_temp, n_patches)
    blk = visual.transformer.resblocks[-1]
    x = ref_resclip_attn(blk.attn, blk.ln_1(x), n_patches, attention_rcs, attention_sfr).permute(1, 0, 2)
    feats = (visual.ln_post(x) @ visual.proj)[:, 1:]
    return feats.permute(0, 2, 1).reshape(1, -1, *n_patches), patch_logit_temp


def _classifier(seed, embed_dim=32, n=5):
    torch.manual_seed(seed)
    return F.normalize(torch.randn(embed_dim, n), dim=0)


@pytest.mark.parametrize("layers, size", [(2, (64, 64)), (4, (48, 80)), (3, (96, 48)), (2, (56, 72))])
def test_sfr_matches_reference(layers, size):
    model = tiny_model(seed=4, layers=layers)
    classifier = _classifier(layers)
    torch.manual_seed(5)
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        expected, ref_labels = ref_resclip_sfr(model.visual, x, list(dense.rcs_layers(layers)), classifier.T)
        actual = model._sfr_features(x, classifier)
        plain = model.dense_features(x, method="resclip")
    assert len(ref_labels.unique()) > 1  # the feedback has regions to work with
    assert_close(actual, expected)
    assert not torch.allclose(actual, plain, atol=1e-3)  # and it changes the features


@pytest.mark.parametrize("labels", [
    [[0, 0, 1, 1], [0, 2, 2, 1], [0, 0, 0, 1]],  # a U of 0 around 2: some same-label pairs have no straight path
    [[3, 3, 3], [1, 3, 1], [1, 1, 1], [3, 3, 3], [3, 1, 3]],
    [[2, 2, 2, 2, 2, 2, 2]],
    [[4]],
])
def test_feedback_attention_matches_reference_on_hand_made_label_grids(labels):
    grid = torch.tensor(labels)
    expected = ref_generate_attention_sfr(grid, tuple(grid.shape))
    expected = expected / expected.max()  # custom_attn's normalisation
    actual = resclip_sfr.feedback_attention(grid[None])
    assert actual.shape == (1, grid.numel() + 1, grid.numel() + 1)
    assert_close(actual, expected)


def test_feedback_attention_decays_same_label_pairs_without_a_straight_path():
    grid = torch.tensor([[0, 1, 0]])
    decayed = resclip_sfr.feedback_attention(grid[None], std=1e-3)[0, 1:, 1:]  # (almost) no smoothing
    joined = resclip_sfr.feedback_attention(torch.zeros(1, 1, 3, dtype=torch.long), std=1e-3)[0, 1:, 1:]
    assert decayed[0, 2] < joined[0, 2] and decayed[0, 1] == 0  # the far 0 is cut off by the 1 between


@pytest.mark.parametrize("size", [(32, 48), (40, 56)])
def test_patch_labels_match_reference(size):
    torch.manual_seed(6)
    image, scores = torch.randn(1, 3, *size), 0.1 * torch.randn(1, 6, size[0] // 8, size[1] // 8)
    probs = ref_pamr(image, F.interpolate(scores, size=size, mode="bilinear", align_corners=False))
    probs = torch.softmax(probs[0] * 40, dim=0)[None]
    expected = ref_create_patch_matrix(probs, (size[0] // 8, size[1] // 8), 8, 0.25)
    actual = resclip_sfr.patch_labels(scores, image, 8)
    assert torch.equal(actual[0], expected) and len(expected.unique()) > 1
    assert (resclip_sfr.patch_labels(scores, image, 8, threshold=1.1) == 0).all()  # every pixel under it


def test_sfr_features_of_a_batch_are_those_of_each_image():
    model = tiny_model(seed=7)
    classifier = _classifier(7)
    torch.manual_seed(8)
    x = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        both = model._sfr_features(x, classifier)
        alone = torch.cat([model._sfr_features(x[i:i + 1], classifier) for i in range(2)])
    assert_close(both, alone)


def test_segment_with_sfr_and_its_misuse(model, rgb_image):
    labels = ["a cat", "a dog", "a car"]
    seg, scores = model.segment(rgb_image, labels, method="resclip", sfr=True, window=32, stride=16,
                                refine="pamr", return_scores=True)
    _, plain = model.segment(rgb_image, labels, method="resclip", window=32, stride=16, refine="pamr",
                             return_scores=True)
    assert seg.shape == (48, 80) and scores.shape == plain.shape and not torch.allclose(scores, plain)
    with pytest.raises(InputError, match="needs method='resclip'"):
        model.segment(rgb_image, labels, method="naclip", sfr=True)
    with pytest.raises(InputTypeError, match="sfr must be True or False"):
        model.segment(rgb_image, labels, method="resclip", sfr="yes")


def test_sfr_runs_under_autocast(rgb_image):
    model = tiny_model(seed=9)
    model.autocast = torch.bfloat16
    seg = model.segment(rgb_image, ["a", "b"], method="resclip", sfr=True)
    assert seg.shape == (48, 80) and seg.dtype == torch.long
