"""The segmentation methods against re-implementations of their reference code (random weights).

Each reference below follows its repository's own code and conventions: OpenAI CLIP's
``[N, B, D]`` (sequence-first) layout, heads folded into the batch (``[B * heads, N, d]``),
``torch.bmm`` attention, NACLIP's Gaussian built by convolving one-hot maps with a window, PAMR's
shift kernels as 3x3 convolutions. They start from the tower's embedded tokens (the methods change
only the blocks) and use the model's parameters as the reference code does
(``attn.in_proj_weight`` / ``in_proj_bias``, ``attn.out_proj``, ``ln_1``, ``mlp``, ``ln_2``).
"""
import math

import pytest
import torch
import torch.nn.functional as F

import maskclip
from maskclip import dense, refine
from maskclip.errors import InputError

from conftest import tiny_model

RTOL = 1e-5


def assert_close(actual, expected):
    err = (actual - expected).abs().max() / expected.abs().max()
    assert err < RTOL, f"relative error {err:.2e}"


# --- sinahmr/NACLIP clip/model.py (VisionTransformer.gaussian_window, get_attention_addition, custom_attn)


def ref_gaussian_window(dim1, dim2, std=1.0):
    constant = 1 / (std * math.sqrt(2))
    ks = list()
    for dim in [dim1, dim2]:
        start = -(dim - 1) / 2.0
        k = torch.linspace(start=start * constant, end=(start + (dim - 1)) * constant, steps=dim, dtype=torch.float)
        ks.append(k)
    dist_square_to_mu = (torch.stack(torch.meshgrid(*ks, indexing="ij")) ** 2).sum(0)
    return torch.exp(-dist_square_to_mu)


def ref_attention_addition(dim1, dim2, window):
    m = torch.einsum("ij,kl->ijkl", torch.eye(dim1), torch.eye(dim2))
    m = m.permute((0, 3, 1, 2)).contiguous()
    out = F.conv2d(m.view(-1, dim1, dim2).unsqueeze(1), window.unsqueeze(0).unsqueeze(1), padding="same").squeeze(1)
    out = out.view(dim1 * dim2, dim1 * dim2)
    v_adjusted = torch.vstack([torch.zeros((1, dim1 * dim2)), out])
    return torch.hstack([torch.zeros((dim1 * dim2 + 1, 1)), v_adjusted])


def ref_custom_attn(attn_layer, x, n_patches, strategy, std=5.0, with_attn=False):
    """x: [N, B, D]. strategy 'naclip' (kk + Gaussian) or 'vanilla' (qk)."""
    num_heads = attn_layer.heads
    num_tokens, bsz, embed_dim = x.size()
    head_dim = embed_dim // num_heads
    scale = head_dim ** -0.5
    q, k, v = F.linear(x, attn_layer.in_proj_weight, attn_layer.in_proj_bias).chunk(3, dim=-1)
    q = q.contiguous().view(-1, bsz * num_heads, head_dim).transpose(0, 1)
    k = k.contiguous().view(-1, bsz * num_heads, head_dim).transpose(0, 1)
    v = v.contiguous().view(-1, bsz * num_heads, head_dim).transpose(0, 1)
    if strategy == "naclip":
        window = ref_gaussian_window(*[side * 2 - 1 for side in n_patches], std=std)
        addition = ref_attention_addition(*n_patches, window).unsqueeze(0).to(x.dtype)
        attn_weights = torch.bmm(k, k.transpose(1, 2)) * scale
        attn_weights += addition
        attn_weights = F.softmax(attn_weights, dim=-1)
    else:
        attn_weights = F.softmax(torch.bmm(q * scale, k.transpose(1, 2)), dim=-1)
    attn_output = torch.bmm(attn_weights, v)
    attn_output = attn_output.transpose(0, 1).contiguous().view(-1, bsz, embed_dim)
    attn_output = attn_layer.out_proj(attn_output)
    return (attn_output, attn_weights) if with_attn else attn_output


def ref_naclip(visual, img):
    """NACLIP's VisionTransformer.forward (arch 'reduced', attn_strategy 'naclip'), return_all, patches."""
    tokens, n_patches = visual.embed(img)
    x = tokens.permute(1, 0, 2)  # NLD -> LND
    for blk in visual.transformer.resblocks[:-1]:
        x = x + ref_custom_attn(blk.attn, blk.ln_1(x), n_patches, "vanilla")
        x = x + blk.mlp(blk.ln_2(x))
    blk = visual.transformer.resblocks[-1]
    x = ref_custom_attn(blk.attn, blk.ln_1(x), n_patches, "naclip")
    x = x.permute(1, 0, 2)  # LND -> NLD
    return _ref_patch_map(visual, x, n_patches)


def _ref_patch_map(visual, x, n_patches):
    feats = (visual.ln_post(x) @ visual.proj)[:, 1:]
    return feats.permute(0, 2, 1).reshape(x.shape[0], -1, *n_patches)


# --- yvhangyang/ResCLIP clip/model.py (VisionTransformer.forward with use_rcs, custom_attn 'resclip')


def ref_rcs_blocks(visual, img, rcs_indices):
    """Every block but the last, keeping each one's attention: (tokens [N, B, D], grid, RCS's mean attention)."""
    tokens, n_patches = visual.embed(img)
    x = tokens.permute(1, 0, 2)
    attn_map = []
    for blk in visual.transformer.resblocks[:-1]:
        x_i, attn_i = ref_custom_attn(blk.attn, blk.ln_1(x), n_patches, "vanilla", with_attn=True)
        x = x + x_i
        x = x + blk.mlp(blk.ln_2(x))
        attn_map.append(attn_i)
    return x, n_patches, torch.stack([attn_map[i] for i in rcs_indices]).mean(dim=0)


def ref_resclip(visual, img, rcs_indices, attn_rcs_weights=(2.0, 0.3)):
    x, n_patches, attention_rcs = ref_rcs_blocks(visual, img, rcs_indices)
    blk = visual.transformer.resblocks[-1]
    attn_layer, h = blk.attn, blk.ln_1(x)
    num_tokens, bsz, embed_dim = h.size()
    head_dim = embed_dim // attn_layer.heads
    q, k, v = F.linear(h, attn_layer.in_proj_weight, attn_layer.in_proj_bias).chunk(3, dim=-1)
    k = k.contiguous().view(-1, bsz * attn_layer.heads, head_dim).transpose(0, 1)
    v = v.contiguous().view(-1, bsz * attn_layer.heads, head_dim).transpose(0, 1)
    window = ref_gaussian_window(*[side * 2 - 1 for side in n_patches], std=5.0)
    omega = ref_attention_addition(*n_patches, window).unsqueeze(0).to(h.dtype)
    attn_weights = torch.bmm(k, k.transpose(1, 2)) * head_dim ** -0.5
    attn_weights += omega
    attn_weights = F.softmax(attn_weights, dim=-1)
    tau_attn_rcs, lambda_attn_rcs = attn_rcs_weights
    attn_weights = tau_attn_rcs * ((1 - lambda_attn_rcs) * attn_weights + lambda_attn_rcs * attention_rcs)
    out = torch.bmm(attn_weights, v).transpose(0, 1).contiguous().view(-1, bsz, embed_dim)
    x = attn_layer.out_proj(out).permute(1, 0, 2)
    return _ref_patch_map(visual, x, n_patches)


# --- mc-lan/ProxyCLIP proxyclip_segmentor.py (forward_feature, 'dino') and open_clip/transformer.py
# (VisionTransformer.forward with ex_feats, custom_attn)


def ref_proxy_feats(vfm, img, clip_mean, clip_std, vfm_mean, vfm_std):
    """UnNormalize with CLIP's statistics, Normalize with the proxy's, last layer's normalised patch tokens."""
    imgs_norm = []
    for i in range(len(img)):
        t = img[i].clone()
        for c, (m, s) in enumerate(zip(clip_mean, clip_std)):
            t[c] = t[c] * s + m
        imgs_norm.append((t - torch.tensor(vfm_mean).view(3, 1, 1)) / torch.tensor(vfm_std).view(3, 1, 1))
    imgs_norm = torch.stack(imgs_norm, dim=0)
    feat = vfm.get_intermediate_layers(imgs_norm, n=1, norm=True)[0]  # DINO's interface: [B, I * J, C]
    patch_size = vfm.patch_embed.patch_size[0]
    # The reference takes I and J both from shape[-2] (its crops are square); -1 here for non-square tests.
    I, J = imgs_norm.shape[-2] // patch_size, imgs_norm.shape[-1] // patch_size
    return feat.reshape(len(img), I, J, -1).permute(0, 3, 1, 2)


def ref_proxyclip(visual, img, ex_feats, beta=1.2, gamma=3.0):
    tokens, token_size = visual.embed(img)
    x = tokens.permute(1, 0, 2)
    for blk in visual.transformer.resblocks[:-1]:
        x = x + ref_custom_attn(blk.attn, blk.ln_1(x), token_size, "vanilla")
        x = x + blk.mlp(blk.ln_2(x))
    attn_layer = visual.transformer.resblocks[-1].attn
    x = visual.transformer.resblocks[-1].ln_1(x)
    num_heads = attn_layer.heads
    _, bsz, embed_dim = x.size()
    head_dim = embed_dim // num_heads
    q, k, v = F.linear(x, attn_layer.in_proj_weight, attn_layer.in_proj_bias).chunk(3, dim=-1)
    v = v.contiguous().view(-1, bsz * num_heads, head_dim).transpose(0, 1)
    B, C, H, W = ex_feats.shape
    q_k = F.normalize(ex_feats.flatten(2, 3), dim=1)
    similarity = torch.einsum("b c m, b c n -> b m n", q_k, q_k)
    similarity = (similarity - torch.mean(similarity) * beta) * gamma
    similarity[similarity < 0.0] = float("-inf")
    mask = similarity.to(q.dtype).unsqueeze(1).repeat(1, num_heads, 1, 1)
    mask = mask.reshape(bsz * num_heads, mask.shape[2], mask.shape[3])
    attn_weights = F.softmax(mask, dim=-1)
    v = v[:, 1:, :].reshape(bsz * num_heads, token_size[0], token_size[1], head_dim).permute(0, 3, 1, 2)
    v = F.interpolate(v, size=(H, W), mode="bilinear", align_corners=False)
    v = v.permute(0, 2, 3, 1).reshape(bsz * num_heads, H * W, head_dim)
    attn_output = torch.bmm(attn_weights, v)
    attn_output = attn_output.transpose(0, 1).contiguous().view(-1, bsz, embed_dim)
    x = attn_layer.out_proj(attn_output).permute(1, 0, 2)
    feats = visual.ln_post(x) @ visual.proj
    return feats.permute(0, 2, 1).reshape(bsz, -1, H, W)


@pytest.fixture(scope="module")
def dino():
    """A small DINO ViT/8 from timm with random weights (no download)."""
    import timm

    torch.manual_seed(0)
    return timm.create_model("vit_small_patch8_224.dino", pretrained=False, num_classes=0,
                             dynamic_img_size=True).eval()


# --- sinahmr/NACLIP pamr.py (from visinf/1-stage-wseg): LocalAffinity kernels and PAMR.forward


def _ref_shift_kernel(centre, neighbour, with_centre):
    positions = [(i, j) for i in range(3) for j in range(3) if with_centre or (i, j) != (1, 1)]
    weight = torch.zeros(len(positions), 1, 3, 3)
    for n, (i, j) in enumerate(positions):
        weight[n, 0, 1, 1] += centre
        weight[n, 0, i, j] += neighbour
    return weight


def _ref_local(x, kernel, dilations):
    B, K, H, W = x.size()
    x = x.reshape(B * K, 1, H, W)
    x_aff = torch.empty((K * B, len(dilations) * kernel.size(0), H, W))
    for i, d in enumerate(dilations):
        x_pad = F.pad(x, [d] * 4, mode="replicate")
        x_aff[:, kernel.size(0) * i:(i + 1) * kernel.size(0), :, :] = F.conv2d(x_pad, kernel, dilation=d)
    return x_aff.view(B, K, -1, H, W)


def ref_pamr(x, mask, num_iter=10, dilations=(8, 16)):
    aff_abs = _ref_shift_kernel(1.0, -1.0, with_centre=False)  # LocalAffinityAbs
    aff_copy = _ref_shift_kernel(0.0, 1.0, with_centre=False)  # LocalAffinityCopy
    aff_std = torch.zeros(9, 1, 3, 3)  # LocalStDev: the 3x3 neighbourhood with its centre
    for n in range(9):
        aff_std[n, 0, n // 3, n % 3] = 1
    mask = F.interpolate(mask, size=x.size()[-2:], mode="bilinear", align_corners=True)
    x_std = _ref_local(x, aff_std, dilations).std(2, keepdim=True)
    x = -torch.abs(_ref_local(x, aff_abs, dilations)) / (1e-8 + 0.1 * x_std)
    x = x.mean(1, keepdim=True)
    x = F.softmax(x, 2)
    for _ in range(num_iter):
        m = _ref_local(mask, aff_copy, dilations)
        mask = (m * x).sum(2)
    return mask


# --- the tests


@pytest.mark.parametrize("grid", [(4, 4), (3, 5), (6, 2)])
def test_neighbourhood_bias_equals_naclips_convolved_window(grid):
    window = ref_gaussian_window(*[side * 2 - 1 for side in grid], std=5.0)
    assert_close(dense.neighbourhood_bias(grid, 5.0, torch.float32, "cpu"), ref_attention_addition(*grid, window))


@pytest.mark.parametrize("size", [(64, 64), (48, 80), (96, 32)])
def test_naclip_matches_reference(size):
    model = tiny_model(seed=1)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        assert_close(model.dense_features(x, method="naclip"), ref_naclip(model.visual, x))


@pytest.mark.parametrize("layers, size", [(2, (64, 64)), (4, (48, 80)), (6, (64, 96))])
def test_resclip_matches_reference(layers, size):
    model = tiny_model(seed=2, layers=layers)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        expected = ref_resclip(model.visual, x, list(dense.rcs_layers(layers)))
        assert_close(model.dense_features(x, method="resclip"), expected)


def test_rcs_layers_are_resclips_six_to_nine_on_vit_b_and_scale_with_depth():
    assert list(dense.rcs_layers(12)) == [5, 6, 7, 8]  # blocks 6-9, 1-based, as in the reference
    assert list(dense.rcs_layers(24)) == list(range(10, 18))
    for depth in range(2, 40):
        layers = dense.rcs_layers(depth)
        assert len(layers) >= 1 and 0 <= layers[0] and layers[-1] < depth - 1


@pytest.mark.parametrize("method", dense.METHODS)
@pytest.mark.parametrize("size, grid", [((48, 80), (3, 5)), ((96, 32), (6, 2))])
def test_every_method_gives_the_grid_of_non_square_inputs(method, size, grid):
    model = tiny_model()
    with torch.no_grad():
        assert model.dense_features(torch.randn(1, 3, *size), method=method).shape == (1, 32, *grid)


@pytest.mark.parametrize("size", [(64, 64), (48, 80)])
def test_proxyclip_matches_reference(dino, size):
    model = tiny_model(seed=3)
    x = torch.randn(1, 3, *size)
    pp, cfg = model.config.preprocess, dino.pretrained_cfg
    with torch.no_grad():
        ex_feats = ref_proxy_feats(dino, x, pp.mean, pp.std, cfg["mean"], cfg["std"])
        expected = ref_proxyclip(model.visual, x, ex_feats)
        actual = model.dense_features(x, method="proxyclip", proxy=dino)
    assert actual.shape == (1, 32, size[0] // 8, size[1] // 8)  # the proxy's grid, twice CLIP's
    assert_close(actual, expected)


def test_proxyclip_segments_with_a_given_proxy_and_refuses_a_proxy_elsewhere(model, rgb_image, dino):
    proxy = maskclip.proxy.Proxy(dino)
    labels = ["a cat", "a dog"]
    assert model.segment(rgb_image, labels, method="proxyclip", proxy=proxy, refine="pamr").shape == (48, 80)
    with pytest.raises(InputError, match="only with method='proxyclip'"):
        model.segment(rgb_image, labels, method="naclip", proxy=proxy)
    with pytest.raises(maskclip.errors.InputTypeError, match="timm ViT"):
        model.dense_features(torch.randn(1, 3, 64, 64), method="proxyclip", proxy=torch.nn.Linear(2, 2))


def test_proxyclip_is_accepted_but_not_listed_with_the_single_model_methods():
    assert dense.resolve_method("proxyclip") == "proxyclip" and "proxyclip" not in dense.METHODS


@pytest.mark.parametrize("shape", [(1, 3, 40, 56), (2, 3, 33, 20)])
def test_pamr_matches_reference(shape):
    torch.manual_seed(0)
    image = torch.randn(*shape)
    scores = torch.randn(shape[0], 5, shape[2] // 4, shape[3] // 4)
    assert_close(refine.pamr(image, scores), ref_pamr(image, scores))


def test_pamr_chunks_classes_without_changing_the_result():
    torch.manual_seed(0)
    image, scores = torch.randn(1, 3, 24, 30), torch.randn(1, 7, 24, 30)
    assert_close(refine.pamr(image, scores, chunk=2), refine.pamr(image, scores, chunk=7))


def test_segment_with_pamr_refines_the_scores(model, rgb_image):
    labels = ["a cat", "a dog", "a car"]
    plain, s0 = model.segment(rgb_image, labels, method="naclip", return_scores=True)
    refined, s1 = model.segment(rgb_image, labels, method="naclip", refine="pamr", return_scores=True)
    assert s1.shape == s0.shape and refined.shape == plain.shape
    assert not torch.allclose(s0, s1)
    x, out_size = maskclip.transforms.segmentation_input(rgb_image, model.config.preprocess)
    image = F.interpolate(x, size=out_size, mode="bilinear", align_corners=False)
    assert_close(s1, ref_pamr(image, s0[None])[0])


def test_segment_refuses_an_unknown_refinement(model, rgb_image):
    with pytest.raises(InputError, match="refine must be one of"):
        model.segment(rgb_image, ["a", "b"], refine="crf")


def test_segmentation_eval_runs_the_new_methods_and_pamr_as_segment_does(model):
    from maskclip.eval import open_dataset, zero_shot_segmentation

    data = "synthetic:test,n=2"
    r = zero_shot_segmentation(model, data, methods=["naclip", "resclip"], refine="pamr", progress=False)
    assert r["protocol"]["refine"] == "pamr"
    ds = open_dataset(data, default_size=64)
    for method, res in r["methods"].items():
        correct = sum(int((model.segment(ds[i].image, ds.segmentation_classes, templates=ds.templates,
                                          method=method, refine="pamr") == torch.from_numpy(ds[i].mask).long()).sum())
                      for i in range(2))
        assert res["all_classes"]["pixel_accuracy"] == pytest.approx(correct / (2 * 64 * 64))
    with pytest.raises(InputError, match="refine must be one of"):
        zero_shot_segmentation(model, data, methods=["naclip"], refine="dense-crf", progress=False)
