"""Each training loss against a naive re-computation with explicit loops over the batch (fp64, values
and gradients w.r.t. every input), their edge cases, and the heads."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from maskclip.errors import InputError
from maskclip.train.heads import PrototypeHead, SimCLRHead
from maskclip.train.losses import (ContrastiveLoss, CosineDistillLoss, MAEPixelLoss, NTXentLoss, RILSLoss,
                                   SigmoidLoss, SoftDistillLoss, patchify)

TOL = 1e-10


def rand(*shape, seed=0, grad=True):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_(grad)


def unit(x):
    return x / x.pow(2).sum(-1, keepdim=True).sqrt()


def dot(a, b):
    return (a * b).sum()


def grads(loss, inputs):
    return torch.autograd.grad(loss, inputs, allow_unused=True, materialize_grads=True)


def max_diff(fast, naive, inputs):
    """Largest absolute difference between the two losses and between their gradients."""
    diffs = [(fast - naive).abs().item()]
    diffs += [(a - b).abs().max().item() for a, b in zip(grads(fast, inputs), grads(naive, inputs)) if a.numel()]
    return max(diffs)


def cross_entropy_row(logits, label):
    return torch.logsumexp(logits, 0) - logits[label]


def naive_contrastive(img, txt, scale):
    n = img.shape[0]
    i2t = [cross_entropy_row(torch.stack([scale * dot(img[i], txt[j]) for j in range(n)]), i) for i in range(n)]
    t2i = [cross_entropy_row(torch.stack([scale * dot(txt[i], img[j]) for j in range(n)]), i) for i in range(n)]
    return (sum(i2t) / n + sum(t2i) / n) / 2


def naive_ntxent(z1, z2, tau):
    a, b, n = unit(z1), unit(z2), z1.shape[0]

    def side(q, other, same):
        rows = []
        for i in range(n):
            logits = [dot(q[i], other[j]) / tau for j in range(n)]
            logits += [dot(q[i], same[j]) / tau for j in range(n) if j != i]
            rows.append(cross_entropy_row(torch.stack(logits), i))
        return sum(rows) / n

    return (side(a, b, a) + side(b, a, b)) / 2


def naive_patch(image, n, p):
    """Patch n of image [C, H, W], flattened in (row, column, channel) order."""
    grid_w = image.shape[2] // p
    r, c = divmod(n, grid_w)
    return torch.stack([image[ch, r * p + i, c * p + j]
                        for i in range(p) for j in range(p) for ch in range(image.shape[0])])


def naive_mae(pred, images, mask, p, norm_pix):
    total, count = 0.0, 0
    for b in range(pred.shape[0]):
        for n in range(pred.shape[1]):
            if not mask[b, n]:
                continue
            target = naive_patch(images[b], n, p)
            if norm_pix:
                mean = target.sum() / target.numel()
                var = ((target - mean) ** 2).sum() / (target.numel() - 1)
                target = (target - mean) / torch.sqrt(var + 1e-6)
            total = total + ((pred[b, n] - target) ** 2).sum() / target.numel()
            count += 1
    return total / max(count, 1)


def log_softmax_row(x):
    return x - torch.logsumexp(x, 0)


def naive_soft(student, teacher, center, s_temp, t_temp):
    rows = []
    for m in range(student.shape[0]):
        t = log_softmax_row((teacher[m].detach() - center[0]) / t_temp).exp()
        rows.append(-(t * log_softmax_row(student[m] / s_temp)).sum())
    return sum(rows) / max(len(rows), 1) + 0 * student.sum()


def naive_cosine(pred, target):
    rows = [1 - dot(pred[m], target[m].detach()) / (pred[m].norm() * target[m].detach().norm())
            for m in range(pred.shape[0])]
    return sum(rows) / max(len(rows), 1) + 0 * pred.sum()


def naive_rils(pred, target, mask, img, txt, s_temp, t_temp):
    protos = unit(txt.detach())
    batch, total, count = img.shape[0], 0.0, 0
    for b in range(batch):
        scores = [dot(img[b].detach(), protos[j]) for j in range(batch)]
        if max(range(batch), key=lambda j: scores[j].item()) != b:
            continue
        for n in range(pred.shape[1]):
            if mask[b, n]:
                q = log_softmax_row(torch.stack([dot(unit(pred[b, n]), protos[j]) / s_temp for j in range(batch)]))
                p = log_softmax_row(torch.stack([dot(unit(target[b, n].detach()), protos[j]) / t_temp
                                                 for j in range(batch)]))
                total = total + (p.exp() * (p - q)).sum()
                count += 1
    return total / (count + 1e-6) + 0 * pred.sum()


# --- contrastive and NT-Xent -------------------------------------------------------------------

@pytest.mark.parametrize("local_loss", [True, False])
@pytest.mark.parametrize("batch", [1, 6])
def test_contrastive_matches_naive_loops(batch, local_loss):
    img = unit(rand(batch, 5, seed=1, grad=False)).requires_grad_()
    txt = unit(rand(batch, 5, seed=2, grad=False)).requires_grad_()
    scale = torch.tensor(7.0, dtype=torch.float64, requires_grad=True)
    loss, metrics = ContrastiveLoss(local_loss=local_loss)(img, txt, scale)
    assert loss.dim() == 0 and set(metrics) == {"acc_i2t", "acc_t2i"}
    assert max_diff(loss, naive_contrastive(img, txt, scale), [img, txt, scale]) < TOL


def test_contrastive_accuracy_counts_rows_whose_own_pair_scores_highest():
    txt = unit(rand(4, 8, seed=3, grad=False))
    img = txt.clone()
    img[3] = unit(txt[0] + 0.1 * txt[3])  # image 3 now retrieves caption 0; caption 3 still retrieves image 3
    _, metrics = ContrastiveLoss()(img, txt, torch.tensor(10.0, dtype=torch.float64))
    assert metrics["acc_i2t"].item() == pytest.approx(0.75) and metrics["acc_t2i"].item() == pytest.approx(1.0)


def test_contrastive_logit_scale_sharpens_the_loss_on_aligned_pairs():
    txt = unit(rand(5, 8, seed=4, grad=False))
    img = unit(txt + 0.1 * rand(5, 8, seed=5, grad=False))
    low, _ = ContrastiveLoss()(img, txt, torch.tensor(1.0, dtype=torch.float64))
    high, _ = ContrastiveLoss()(img, txt, torch.tensor(100.0, dtype=torch.float64))
    assert high < low


def naive_sigmoid(img, txt, scale, bias):
    total = 0
    for i in range(img.shape[0]):
        for j in range(txt.shape[0]):
            label = 1.0 if i == j else -1.0
            total = total - F.logsigmoid(label * (scale * (img[i] @ txt[j]) + bias))
    return total / img.shape[0]


@pytest.mark.parametrize("batch", [1, 6])
def test_sigmoid_loss_matches_naive_loops_and_open_clip(batch):
    from open_clip.loss import SigLipLoss

    img = unit(rand(batch, 5, seed=1, grad=False)).requires_grad_()
    txt = unit(rand(batch, 5, seed=2, grad=False)).requires_grad_()
    scale = torch.tensor(7.0, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)
    loss, metrics = SigmoidLoss()(img, txt, scale, bias)
    assert loss.dim() == 0 and set(metrics) == {"acc_i2t"}
    assert max_diff(loss, naive_sigmoid(img, txt, scale, bias), [img, txt, scale, bias]) < TOL
    again, _ = SigmoidLoss()(img, txt, scale, bias)
    assert max_diff(again, SigLipLoss()(img, txt, scale, bias), [img, txt, scale, bias]) < TOL


def test_sigmoid_loss_accuracy_counts_images_whose_own_caption_scores_highest():
    txt = unit(rand(4, 8, seed=3, grad=False))
    img = txt.clone()
    img[3] = unit(txt[0] + 0.1 * txt[3])  # image 3 now retrieves caption 0
    _, metrics = SigmoidLoss()(img, txt, torch.tensor(10.0, dtype=torch.float64), torch.tensor(-10.0))
    assert metrics["acc_i2t"].item() == pytest.approx(0.75)


@pytest.mark.parametrize("batch", [1, 5])
def test_ntxent_matches_naive_loops(batch):
    z1, z2 = rand(batch, 4, seed=6), rand(batch, 4, seed=7)
    loss, metrics = NTXentLoss(temperature=0.2)(z1, z2)
    assert set(metrics) == {"acc"}
    assert max_diff(loss, naive_ntxent(z1, z2, 0.2), [z1, z2]) < TOL


def test_ntxent_temperature_is_used():
    z1, z2 = rand(4, 4, seed=8), rand(4, 4, seed=9)
    a, _ = NTXentLoss(temperature=0.1)(z1, z2)
    b, _ = NTXentLoss(temperature=0.5)(z1, z2)
    assert (a - naive_ntxent(z1, z2, 0.1)).abs() < TOL and (b - naive_ntxent(z1, z2, 0.5)).abs() < TOL
    assert (a - b).abs() > 1e-3


# --- MAE pixels --------------------------------------------------------------------------------

def test_patchify_is_mae_row_major_patch_order_with_pixels_then_channels():
    images = rand(2, 3, 8, 12, seed=10, grad=False)
    patches = patchify(images, 4)
    assert patches.shape == (2, 6, 48)
    for b in range(2):
        for n in range(6):
            assert torch.equal(patches[b, n], naive_patch(images[b], n, 4))


@pytest.mark.parametrize("norm_pix", [True, False])
def test_mae_pixel_loss_matches_naive_loops(norm_pix):
    images = rand(2, 3, 8, 8, seed=11)
    pred = rand(2, 4, 48, seed=12)
    mask = torch.tensor([[True, False, True, True], [False, False, True, False]])
    loss, _ = MAEPixelLoss(norm_pix)(pred, images, mask, 4)
    assert max_diff(loss, naive_mae(pred, images, mask, 4, norm_pix), [pred, images]) < TOL


def test_mae_pixel_loss_ignores_visible_patches_and_is_zero_without_masked_ones():
    images, pred = rand(1, 3, 8, 8, seed=13), rand(1, 4, 48, seed=14)
    none = torch.zeros(1, 4, dtype=torch.bool)
    loss, metrics = MAEPixelLoss()(pred, images, none, 4)
    (g,) = grads(loss, [pred])
    assert loss.item() == 0 and metrics["num_patches"].item() == 0 and torch.equal(g, torch.zeros_like(g))


def test_mae_pixel_loss_rejects_images_not_divisible_by_the_patch():
    with pytest.raises(InputError, match="multiple of patch_size"):
        MAEPixelLoss()(rand(1, 4, 48), rand(1, 3, 8, 9), torch.ones(1, 4, dtype=torch.bool), 4)


# --- soft (prototype) distillation -------------------------------------------------------------

@pytest.mark.parametrize("rows", [1, 6])
def test_soft_distill_matches_naive_loops_with_a_nonzero_center(rows):
    loss_fn = SoftDistillLoss(num_prototypes=10).double()
    loss_fn.center.copy_(rand(1, 10, seed=15, grad=False))
    center = loss_fn.center.clone()
    s, t = rand(rows, 10, seed=16), rand(rows, 10, seed=17)
    loss, metrics = loss_fn(s, t)
    assert set(metrics) == {"teacher_entropy", "student_entropy"}
    assert max_diff(loss, naive_soft(s, t, center, 0.1, 0.04), [s, t]) < TOL


def test_soft_distill_center_update_is_momentum_average_of_teacher_rows():
    loss_fn = SoftDistillLoss(num_prototypes=6, center_momentum=0.8).double()
    c0 = rand(1, 6, seed=18, grad=False)
    loss_fn.center.copy_(c0)
    t = rand(5, 6, seed=19, grad=False)
    loss_fn(rand(5, 6, seed=20), t)
    by_hand = [0.8 * c0[0, k].item() + 0.2 * sum(t[m, k].item() for m in range(5)) / 5 for k in range(6)]
    assert torch.allclose(loss_fn.center[0], torch.tensor(by_hand, dtype=torch.float64), atol=TOL, rtol=0)


def test_soft_distill_center_is_frozen_in_eval_mode_and_without_rows():
    loss_fn = SoftDistillLoss(num_prototypes=6).double()
    loss_fn.eval()
    loss_fn(rand(3, 6, seed=21), rand(3, 6, seed=22))
    assert torch.equal(loss_fn.center, torch.zeros(1, 6, dtype=torch.float64))
    loss_fn.train()
    loss_fn(rand(0, 6), rand(0, 6))
    assert torch.equal(loss_fn.center, torch.zeros(1, 6, dtype=torch.float64))


def test_soft_distill_with_no_masked_patch_is_zero_with_graph_and_finite_metrics():
    s = rand(0, 6, seed=23)
    loss, metrics = SoftDistillLoss(num_prototypes=6).double()(s, rand(0, 6, seed=24))
    (g,) = grads(loss, [s])
    assert loss.item() == 0 and loss.requires_grad and g.shape == (0, 6)
    assert all(math.isfinite(v.item()) for v in metrics.values())


def test_soft_distill_teacher_temperature_can_change_per_step_and_sharpens_the_teacher():
    loss_fn = SoftDistillLoss(num_prototypes=8).double().eval()
    s, t = rand(4, 8, seed=25), rand(4, 8, seed=26)
    _, warm = loss_fn(s, t)
    loss_fn.teacher_temp = 0.07
    loss, cold = loss_fn(s, t)
    assert (loss - naive_soft(s, t, loss_fn.center, 0.1, 0.07)).abs() < TOL
    assert warm["teacher_entropy"] < cold["teacher_entropy"]


# --- cosine distillation -----------------------------------------------------------------------

@pytest.mark.parametrize("rows", [0, 1, 7])
def test_cosine_distill_matches_naive_loops_and_stops_the_target_gradient(rows):
    pred, target = rand(rows, 5, seed=27), rand(rows, 5, seed=28)
    loss, _ = CosineDistillLoss()(pred, target)
    assert torch.isfinite(loss)
    assert max_diff(loss, naive_cosine(pred, target), [pred, target]) < TOL
    assert torch.equal(grads(loss, [target])[0], torch.zeros_like(target))


# --- RILS --------------------------------------------------------------------------------------

def rils_inputs(wrong=()):
    """Captions, images near their own caption except ``wrong`` ones (near the next caption)."""
    batch, patches, dim = 5, 6, 8
    txt = rand(batch, dim, seed=29)
    near = torch.tensor([(i + 1) % batch if i in wrong else i for i in range(batch)])
    img = (txt.detach()[near] + 0.05 * rand(batch, dim, seed=30, grad=False)).requires_grad_()
    mask = rand(batch, patches, seed=31, grad=False) > 0
    return rand(batch, patches, dim, seed=32), rand(batch, patches, dim, seed=33), mask, img, txt


@pytest.mark.parametrize("wrong", [(), (1, 3)])
def test_rils_matches_naive_loops(wrong):
    pred, target, mask, img, txt = rils_inputs(wrong)
    loss, metrics = RILSLoss()(pred, target, mask, img, txt)
    naive = naive_rils(pred, target, mask, img, txt, 0.1, 0.04)
    assert max_diff(loss, naive, [pred, target, img, txt]) < TOL
    assert metrics["frac_correct"].item() == pytest.approx(1 - len(wrong) / 5)
    kept = torch.tensor([i not in wrong for i in range(5)])
    assert metrics["num_patches"].item() == (mask & kept[:, None]).sum().item()


def test_rils_with_every_image_wrongly_retrieved_is_zero_finite_and_without_gradient():
    pred, target, mask, img, txt = rils_inputs(wrong=range(5))
    loss, metrics = RILSLoss()(pred, target, mask, img, txt)
    assert loss.item() == 0 and metrics["frac_correct"].item() == 0
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads(loss, [pred, target, img, txt]))


def test_rils_with_no_masked_patch_is_zero():
    pred, target, mask, img, txt = rils_inputs()
    loss, _ = RILSLoss()(pred, target, torch.zeros_like(mask), img, txt)
    assert loss.item() == 0 and torch.isfinite(grads(loss, [pred])[0]).all()


def test_rils_temperatures_are_used():
    pred, target, mask, img, txt = rils_inputs()
    loss, _ = RILSLoss(student_temp=0.2, teacher_temp=0.05)(pred, target, mask, img, txt)
    assert (loss - naive_rils(pred, target, mask, img, txt, 0.2, 0.05)).abs() < TOL
    assert (loss - naive_rils(pred, target, mask, img, txt, 0.1, 0.04)).abs() > 1e-3


# --- input validation --------------------------------------------------------------------------

@pytest.mark.parametrize("call, message", [
    (lambda: ContrastiveLoss()(rand(3, 4), rand(2, 4), torch.tensor(1.0)), "same shape"),
    (lambda: ContrastiveLoss()(rand(3, 4), rand(3, 4), torch.ones(2)), "logit_scale"),
    (lambda: SigmoidLoss()(rand(3, 4), rand(2, 4), torch.tensor(1.0), torch.tensor(0.0)), "same shape"),
    (lambda: SigmoidLoss()(rand(3, 4), rand(3, 4), torch.tensor(1.0), None), "logit_bias"),
    (lambda: NTXentLoss()(rand(3, 4, 1), rand(3, 4, 1)), r"\[B, D\]"),
    (lambda: SoftDistillLoss(num_prototypes=8)(rand(3, 6), rand(3, 6)), "8 prototypes"),
    (lambda: MAEPixelLoss()(rand(1, 4, 48), rand(1, 3, 8, 8), torch.ones(1, 4), 4), "bool"),
    (lambda: RILSLoss()(rand(2, 3, 4), rand(2, 3, 4), torch.ones(2, 3, dtype=torch.bool),
                        rand(2, 5), rand(2, 5)), "image_features"),
])
def test_losses_reject_wrong_shapes_with_a_clear_error(call, message):
    with pytest.raises(InputError, match=message):
        call()


# --- heads -------------------------------------------------------------------------------------

def test_simclr_head_is_slips_image_mlp():
    head = SimCLRHead(16, hidden_dim=32, out_dim=8)
    layout = [(name, type(m).__name__, getattr(m, "in_features", getattr(m, "num_features", None)),
               getattr(m, "out_features", None), getattr(m, "bias", None) is not None)
              for name, m in head.named_children()]
    assert layout == [("layer1", "Linear", 16, 32, True), ("bn1", "BatchNorm1d", 32, None, True),
                      ("relu1", "ReLU", None, None, False), ("layer2", "Linear", 32, 32, True),
                      ("bn2", "BatchNorm1d", 32, None, True), ("relu2", "ReLU", None, None, False),
                      ("layer3", "Linear", 32, 8, True)]
    assert head(torch.randn(4, 16)).shape == (4, 8)
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(head)
    assert isinstance(synced.bn1, nn.SyncBatchNorm) and list(synced.state_dict()) == list(head.state_dict())


@pytest.mark.parametrize("layers", [1, 3])
def test_prototype_head_maps_any_leading_shape_to_prototype_logits(layers):
    head = PrototypeHead(16, num_prototypes=32, hidden_dim=24, bottleneck_dim=8, layers=layers)
    out = head(torch.randn(2, 5, 16))
    assert out.shape == (2, 5, 32) and out.abs().max() <= 1 + 1e-6  # cosine logits
    assert sum(isinstance(m, nn.Linear) for m in head.mlp) == layers


def test_prototype_head_is_weight_norm_with_gain_fixed_at_one_through_optimizer_steps():
    torch.manual_seed(0)
    head = PrototypeHead(12, num_prototypes=20, hidden_dim=16, bottleneck_dim=8)
    ref_last = nn.utils.parametrizations.weight_norm(nn.Linear(8, 20, bias=False))
    with torch.no_grad():
        ref_last.parametrizations.weight.original1.copy_(head.last_layer.weight)
        ref_last.parametrizations.weight.original0.fill_(1)
    ref_last.parametrizations.weight.original0.requires_grad_(False)
    x = torch.randn(6, 12)
    opt = torch.optim.SGD([*head.parameters(), ref_last.parametrizations.weight.original1], lr=0.5)
    for _ in range(2):
        z = F.normalize(head.mlp(x), dim=-1)
        ours, theirs = head(x), ref_last(z)
        assert torch.allclose(ours, theirs, atol=1e-6)
        opt.zero_grad()
        (ours.square().sum() + theirs.square().sum()).backward()
        opt.step()
    effective = F.normalize(head.last_layer.weight, dim=-1)
    assert torch.allclose(effective.norm(dim=-1), torch.ones(20))
    assert torch.allclose(head.last_layer.weight, ref_last.parametrizations.weight.original1, atol=1e-6)
