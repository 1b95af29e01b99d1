"""Training building blocks: config and presets, masking, the EMA teacher, schedules, decoders."""
import math
import os
import sys

import pytest
import torch

from maskclip.errors import ConfigError
from maskclip.train import TrainConfig, load_presets
from maskclip.train.config import parse_override
from maskclip.train.decoder import PatchDecoder, TokenDecoder
from maskclip.train.ema import EMATeacher, cosine_momentum
from maskclip.train.masking import Mask, block_mask, encode_masked, keep, num_masked, random_mask, text_mask
from maskclip.train.optim import lr_at, param_groups


# --- config ------------------------------------------------------------------------------------

def test_presets_are_data_and_fill_the_papers_setting():
    presets = load_presets()
    assert {"vitb16-yfcc15m", "tiny"} <= set(presets)
    cfg = TrainConfig.from_preset("vitb16-yfcc15m", "clip")
    assert (cfg.model, cfg.batch_size, cfg.epochs, cfg.lr, cfg.weight_decay) == ("vit-b-16", 4096, 25, 5e-4, 0.5)
    assert cfg.betas == (0.9, 0.98) and cfg.crop_scale == (0.5, 1.0)
    slip = TrainConfig.from_preset("vitb16-yfcc15m", "slip")
    assert (slip.lr, slip.weight_decay) == (3e-3, 0.1)  # SLIP's own values
    rils = TrainConfig.from_preset("vitb16-yfcc15m", "rils")
    assert rils.model_overrides["vision"]["pool"] == "mean" and rils.rils.weight == 0.5


def test_config_json_round_trip_and_dotted_overrides(tmp_path):
    cfg = TrainConfig.from_preset("tiny", "maskclip", {"maskclip.loss": "cosine", "steps": 7, "data": "x.csv"})
    assert cfg.maskclip.loss == "cosine" and cfg.steps == 7 and cfg.data == ["x.csv"]
    cfg.to_json(tmp_path / "c.json")
    assert TrainConfig.from_json(tmp_path / "c.json") == cfg
    assert cfg.with_overrides({"maskclip.masking.ratio": 0.5}).maskclip.masking.ratio == 0.5
    assert parse_override("grad_clip=1.5") == ("grad_clip", 1.5)
    assert parse_override("maskclip.loss=soft") == ("maskclip.loss", "soft")


@pytest.mark.parametrize("overrides, match", [
    ({"recipe": "moco"}, "recipe must be one of"),
    ({"lr": "fast"}, "train.lr must be float"),
    ({"maskclip.masking.ratio": 1.5}, "masking ratio"),
    ({"nonsense": 1}, "unknown train config keys"),
    ({"maskclip.loss": "l2"}, "maskclip loss"),
    ({"betas": [0.9]}, "must be a list of 2"),
    ({"patch_dropout": 1.0}, "patch_dropout"),
    ({"loss": "sigmoid"}, r"loss must be one of \['clip', 'siglip'\]"),
    ({"accum_mode": "naive"}, r"accum_mode must be one of \['cached', 'micro'\]"),
])
def test_bad_configs_name_the_field(overrides, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig.from_preset("tiny", "clip", overrides)


def test_unknown_preset_and_recipe_are_refused():
    with pytest.raises(ConfigError, match="unknown training preset"):
        TrainConfig.from_preset("huge", "clip")
    with pytest.raises(ConfigError, match="unknown recipe"):
        TrainConfig.from_preset("tiny", "moco")


# --- masking -----------------------------------------------------------------------------------

@pytest.mark.parametrize("n, ratio", [(16, 0.75), (196, 0.75), (49, 0.5), (10, 0.15)])
def test_random_mask_hides_the_exact_count_per_sample_and_restores_order(n, ratio):
    g = torch.Generator().manual_seed(0)
    m = random_mask(6, n, ratio, g)
    assert m.mask.shape == (6, n) and (m.mask.sum(1) == num_masked(n, ratio)).all()
    assert m.ids_keep.shape == (6, n - num_masked(n, ratio))
    assert not m.mask.gather(1, m.ids_keep).any()  # kept patches are the unmasked ones
    x = torch.arange(n).float().expand(6, n).unsqueeze(-1)
    masked_ids = m.mask.nonzero()[:, 1].view(6, -1)  # ascending per row, as the masked part of the shuffle
    shuffled = torch.cat([keep(x, m.ids_keep), keep(x, masked_ids)], dim=1)
    assert torch.equal(keep(shuffled, m.ids_restore), x)  # ids_restore undoes kept-then-masked
    assert not torch.equal(m.mask[0], m.mask[1])  # per-sample masks


def test_masks_are_a_function_of_the_generator_seed():
    a = random_mask(4, 64, 0.75, torch.Generator().manual_seed(3))
    b = random_mask(4, 64, 0.75, torch.Generator().manual_seed(3))
    c = random_mask(4, 64, 0.75, torch.Generator().manual_seed(4))
    assert torch.equal(a.mask, b.mask) and not torch.equal(a.mask, c.mask)


def test_block_mask_is_exact_and_blocky():
    g = torch.Generator().manual_seed(0)
    m = block_mask(8, (14, 14), 0.4, g)
    assert (m.mask.sum(1) == num_masked(196, 0.4)).all()
    # Block-wise masks have masked neighbours far more often than random ones at the same ratio.
    def neighbours(mask):
        grid = mask.view(-1, 14, 14)
        return (grid[:, :, 1:] & grid[:, :, :-1]).float().mean()
    rnd = random_mask(8, 196, 0.4, torch.Generator().manual_seed(0))
    assert neighbours(m.mask) > 1.3 * neighbours(rnd.mask)


def reference_block_mask(batch, grid, ratio, generator, min_block=4, aspect=0.3):
    """``block_mask`` written as a loop over samples and attempts, on the same random numbers."""
    from maskclip.train.masking import BLOCK_ATTEMPTS

    gh, gw = grid
    n, m = gh * gw, num_masked(gh * gw, ratio)
    draws = torch.rand(batch, BLOCK_ATTEMPTS, 4, generator=generator, dtype=torch.float64).tolist()
    noise = torch.rand(batch, n, generator=generator, dtype=torch.float64).tolist()
    rows = []
    for b in range(batch):
        hidden = [[False] * gw for _ in range(gh)]
        for u in draws[b]:
            count = sum(map(sum, hidden))
            if count >= m:
                break
            area = min_block + (max(min_block, m - count) - min_block) * u[0]
            log_r = math.log(aspect) + (-2 * math.log(aspect)) * u[1]
            h = min(max(round(math.sqrt(area * math.exp(log_r))), 1), gh)
            w = min(max(round(math.sqrt(area / math.exp(log_r))), 1), gw)
            top, left = math.floor(u[2] * (gh - h + 1)), math.floor(u[3] * (gw - w + 1))
            for r in range(top, top + h):
                for c in range(left, left + w):
                    hidden[r][c] = True
        flat = [x for row in hidden for x in row]
        have = sum(flat)
        pool = [i for i in range(n) if flat[i] == (have > m)]
        for i in sorted(pool, key=lambda i: (noise[b][i], i))[:abs(have - m)]:
            flat[i] = not flat[i]
        rows.append(flat)
    return torch.tensor(rows)


@pytest.mark.parametrize("batch, grid, ratio, seed", [(16, (14, 14), 0.75, 0), (16, (14, 14), 0.4, 1),
                                                      (8, (4, 6), 0.5, 2), (8, (8, 8), 0.9, 3), (4, (2, 2), 0.25, 4)])
def test_block_mask_equals_a_per_sample_reference_loop_on_the_same_generator(batch, grid, ratio, seed):
    fast = block_mask(batch, grid, ratio, torch.Generator().manual_seed(seed))
    slow = reference_block_mask(batch, grid, ratio, torch.Generator().manual_seed(seed))
    assert torch.equal(fast.mask, slow)
    again = block_mask(batch, grid, ratio, torch.Generator().manual_seed(seed))
    assert torch.equal(again.mask, fast.mask) and torch.equal(again.ids_restore, fast.ids_restore)


def test_block_mask_of_a_large_batch_is_vectorised():
    """Issue 11 measured 892 ms for batch 512 on 14 x 14 with a loop over samples; the attempts now run
    for the whole batch at once (a loose bound: this machine is shared)."""
    import time

    g = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # CPU time of one thread: spinning peers on a busy machine would count too
    try:
        block_mask(8, (14, 14), 0.75, g)
        start = time.process_time()
        m = block_mask(512, (14, 14), 0.75, g)
        seconds = time.process_time() - start
    finally:
        torch.set_num_threads(threads)
    assert seconds < 0.3  # 0.04 s here; the loop over samples took 0.9 s
    assert (m.mask.sum(1) == num_masked(196, 0.75)).all()


def test_mask_from_bool_rejects_unequal_counts():
    with pytest.raises(ValueError, match="same number"):
        Mask.from_bool(torch.tensor([[True, False, False], [True, True, False]]))


def test_text_mask_hides_only_words_and_at_least_one_per_caption():
    tokens = torch.tensor([[49406, 10, 11, 12, 13, 49407, 0, 0], [49406, 20, 49407, 0, 0, 0, 0, 0],
                           [49406, 49407, 0, 0, 0, 0, 0, 0]])
    m = text_mask(tokens, 0.5, torch.Generator().manual_seed(0))
    assert m[0].sum() == 2 and m[0, 1:5].sum() == 2
    assert m[1].tolist() == [False, True] + [False] * 6
    assert not m[2].any()  # nothing to hide in an empty caption


def test_encode_masked_drop_equals_the_full_pass_when_nothing_is_hidden(model):
    visual = model.visual
    x = torch.randn(2, 3, 64, 64)
    none_hidden = Mask(torch.zeros(2, 16, dtype=torch.bool), torch.arange(16).expand(2, 16), torch.arange(16).expand(2, 16))
    with torch.no_grad():
        full, _ = visual.forward_tokens(x)
        dropped, grid = encode_masked(visual, x, none_hidden, "drop")
        tokened, _ = encode_masked(visual, x, none_hidden, "token", torch.zeros(64))
    assert grid == (4, 4)
    torch.testing.assert_close(dropped, full)
    torch.testing.assert_close(tokened, full)


def test_encode_masked_drop_sees_only_visible_patches(model):
    """Changing a hidden patch's pixels cannot change the student's tokens."""
    visual = model.visual
    m = random_mask(1, 16, 0.75, torch.Generator().manual_seed(0))
    x = torch.randn(1, 3, 64, 64)
    hidden = int(m.mask[0].nonzero()[0])
    y = x.clone()
    r, c = divmod(hidden, 4)
    y[..., r * 16:(r + 1) * 16, c * 16:(c + 1) * 16] += 5
    with torch.no_grad():
        a, _ = encode_masked(visual, x, m)
        b, _ = encode_masked(visual, y, m)
    assert a.shape == (1, 1 + 4, 64)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("mode", ["drop", "token"])
def test_with_a_conv_stem_a_hidden_patch_is_hidden_from_its_visible_neighbours_too(mode):
    """A conv stem's receptive field overlaps the neighbouring patches: their pixels are zeroed first."""
    from conftest import tiny_model

    visual = tiny_model(stem="conv").visual
    m = random_mask(1, 16, 0.5, torch.Generator().manual_seed(1))
    x = torch.randn(1, 3, 64, 64)
    y = x.clone()
    for hidden in m.mask[0].nonzero().flatten().tolist():
        r, c = divmod(hidden, 4)
        y[..., r * 16:(r + 1) * 16, c * 16:(c + 1) * 16] += 5
    with torch.no_grad():
        a, _ = encode_masked(visual, x, m, mode, torch.zeros(64))
        b, _ = encode_masked(visual, y, m, mode, torch.zeros(64))
        full_a, _ = visual.forward_tokens(x)
        full_b, _ = visual.forward_tokens(y)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(full_a, full_b)  # unmasked, the stem does see those pixels


def test_hide_patches_zeroes_exactly_the_hidden_patches_pixels():
    from maskclip.train.masking import hide_patches

    x = torch.ones(2, 3, 8, 12)
    hidden = torch.tensor([[True] + [False] * 5, [False] * 5 + [True]])  # 2 x 3 grid of 4 px patches
    out = hide_patches(x, hidden, 4)
    assert out[0, :, :4, :4].eq(0).all() and out[0].sum() == 3 * (96 - 16)
    assert out[1, :, 4:, 8:].eq(0).all() and out[1].sum() == 3 * (96 - 16)
    with pytest.raises(ValueError, match="2 x 3 patches"):
        hide_patches(x, hidden[:, :4], 4)


# --- decoders ----------------------------------------------------------------------------------

def test_patch_decoder_predicts_every_patch_from_either_input_form():
    torch.manual_seed(0)
    dec = PatchDecoder(64, 32, (4, 4), layers=1).eval()
    m = random_mask(2, 16, 0.75, torch.Generator().manual_seed(0))
    visible = torch.randn(2, 1 + m.num_keep, 64)
    out = dec(visible, m, (4, 4))
    assert out.shape == (2, 16, 32)
    full = torch.randn(2, 17, 64)
    assert dec(full, m, (4, 4)).shape == (2, 16, 32)
    assert dec(visible, m, (4, 4)).isfinite().all()


def test_token_decoder_is_bidirectional():
    torch.manual_seed(0)
    dec = TokenDecoder(64, 16, layers=1).eval()
    x = torch.randn(1, 5, 64)
    y = x.clone()
    y[0, 4] += 1  # a later token changes an earlier prediction: no causal mask
    assert not torch.allclose(dec(x)[0, 0], dec(y)[0, 0])


# --- teacher and schedules ---------------------------------------------------------------------

def test_ema_teacher_update_is_the_moving_average_and_never_trains():
    torch.manual_seed(0)
    student = torch.nn.Linear(3, 2)
    teacher = EMATeacher({"s": student})
    assert all(not p.requires_grad for p in teacher.parameters())
    before = teacher["s"].weight.clone()
    with torch.no_grad():
        student.weight.add_(1.0)
    teacher.update({"s": student}, 0.9)
    torch.testing.assert_close(teacher["s"].weight, 0.9 * before + 0.1 * student.weight)
    teacher.train()
    assert not teacher.training


def test_cosine_momentum_schedule_ends():
    assert cosine_momentum(0, 100) == pytest.approx(0.996)
    assert cosine_momentum(100, 100) == pytest.approx(1.0)
    assert cosine_momentum(50, 100) == pytest.approx(0.998)
    values = [cosine_momentum(s, 100) for s in range(101)]
    assert values == sorted(values)


def test_lr_schedule_warms_up_then_follows_the_cosine():
    kw = dict(total=110, warmup=10, lr=1e-3, start_lr=1e-6, min_lr=1e-5)
    assert lr_at(0, **kw) == pytest.approx(1e-6)
    assert lr_at(5, **kw) == pytest.approx(1e-6 + (1e-3 - 1e-6) / 2)
    assert lr_at(10, **kw) == pytest.approx(1e-3)
    assert lr_at(60, **kw) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi / 2)))
    assert lr_at(110, **kw) == pytest.approx(1e-5)


def test_no_weight_decay_on_biases_norms_embeddings_and_logit_scale(model):
    decay, no_decay = param_groups(model, 0.5)
    names = {id(p): n for n, p in model.named_parameters()}
    no = {names[id(p)] for p in no_decay["params"]}
    yes = {names[id(p)] for p in decay["params"]}
    assert {"logit_scale", "visual.class_embedding", "visual.positional_embedding", "text.token_embedding.weight",
            "text.positional_embedding", "visual.ln_pre.weight", "visual.transformer.resblocks.0.attn.in_proj_bias"} <= no
    assert {"visual.proj", "visual.conv1.weight", "visual.transformer.resblocks.0.attn.in_proj_weight",
            "text.text_projection"} <= yes
    assert decay["weight_decay"] == 0.5 and no_decay["weight_decay"] == 0.0


# --- the CPU allocator ---------------------------------------------------------------------------

_FAULTS = """
import resource, sys, torch
from maskclip.train.allocator import keep_freed_memory
kept = keep_freed_memory()
for _ in range(3):  # 40 MB each, freed at once: above glibc's default mmap threshold
    torch.ones(10_000_000).sum()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.ones(10_000_000).sum()
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "LD_PRELOAD"}
    kept, faults = subprocess.run([sys.executable, "-c", _FAULTS], capture_output=True, text=True, env=env,
                                  check=True).stdout.split()
    refused, baseline = subprocess.run([sys.executable, "-c", _FAULTS], capture_output=True, text=True, check=True,
                                       env={**env, "MALLOC_TRIM_THRESHOLD_": "1000000"}).stdout.split()
    assert refused == "False"  # the user's own setting wins
    # Ten fresh 40 MB tensors fault ~100,000 pages (the baseline); kept memory faults none on a quiet
    # machine (0 measured), but full test runs on a loaded machine measured 19,532 and 29,297 (with two
    # training processes beside it), hence a ratio, not a count: memory that is not kept faults ~all of it.
    assert kept == "True" and int(faults) * 2 < int(baseline), (faults, baseline)
