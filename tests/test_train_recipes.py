"""The recipes on the tiny preset, one step at a time: the host-side preparation, what each recipe
feeds its parts, and the points where a recipe follows (or refuses) a reference implementation."""
import copy

import pytest
import torch

from maskclip.errors import ConfigError
from maskclip.train import RECIPES, TrainConfig
from maskclip.train.loop import build_model
from maskclip.train.masking import Mask
from maskclip.train.recipes import TextPlan, build_recipe
from maskclip.tokenizer import get_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

BATCH = 8


def make_recipe(name, **overrides):
    cfg = TrainConfig.from_preset("tiny", name, {"batch_size": BATCH, "steps": 10, "progress": False, **overrides})
    torch.manual_seed(0)
    return build_recipe(build_model(cfg), cfg).train()


def make_batch(recipe, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = recipe.model.config.preprocess.image_size
    words = ["a red circle", "a blue square on grey", "two green triangles", "a yellow star", "red",
             "a small blue circle next to a large red square", "a square", "green and blue shapes"]
    batch = {"image": torch.randn(BATCH, 3, s, s, generator=g),
             "text": get_tokenizer()(words[:BATCH], context_length=recipe.model.config.text.context_length)}
    if recipe.extra_views:
        batch["views"] = torch.randn(recipe.extra_views, BATCH, 3, s, s, generator=g)
    return batch


def step_grads(recipe, batch, seed=0):
    """Loss and gradients of one forward/backward."""
    recipe.zero_grad(set_to_none=True)
    out = recipe(batch, torch.Generator().manual_seed(seed))
    out["loss"].backward()
    return out


# --- every recipe, every mode ----------------------------------------------------------------------

MODES = [(r, {}) for r in RECIPES] + [
    (r, {f"{section}.masking.mode": "token"}) for r, section in (("maskclip", "maskclip"), ("clip_mae", "mae"),
                                                                  ("rils", "rils"))
] + [("maskclip", {"maskclip.contrastive_view": "masked"}), ("maskclip", {"maskclip.loss": "cosine"}),
     ("clip", {"patch_dropout": 0.5})] + [(r, {"loss": "siglip"}) for r in RECIPES]


@pytest.mark.parametrize("name, overrides", MODES, ids=[f"{r}-{'-'.join(map(str, o.values())) or 'default'}"
                                                       for r, o in MODES])
def test_every_trainable_parameter_gets_a_gradient(name, overrides):
    """A parameter without a gradient is what DDP (no unused-parameter detection) rejects on the second
    step; masking.mode=token used to leave the decoder's mask token without one."""
    recipe = make_recipe(name, **overrides)
    step_grads(recipe, make_batch(recipe))
    missing = [n for n, p in recipe.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"{name} {overrides}: no gradient for {missing}"


def test_decoders_have_a_mask_token_only_when_they_fill_in_hidden_patches():
    for section, name in (("maskclip", "maskclip"), ("mae", "clip_mae"), ("rils", "rils")):
        drop, token = make_recipe(name), make_recipe(name, **{f"{section}.masking.mode": "token"})
        assert drop.decoder.mask_token is not None and drop.mask_token is None
        assert token.decoder.mask_token is None and token.mask_token is not None


@pytest.mark.parametrize("name", RECIPES)
def test_prepared_and_unprepared_batches_give_the_same_loss(name):
    """forward prepares a batch the loop has not; the loop's host-side prepare draws the same."""
    recipe = make_recipe(name)
    twin = copy.deepcopy(recipe)  # the soft loss's centre moves in each training forward
    batch = make_batch(recipe)
    direct = recipe(batch, torch.Generator().manual_seed(5))
    prepared = twin.prepare(batch, torch.Generator().manual_seed(5))
    assert isinstance(prepared["text_plan"], TextPlan)
    assert torch.equal(twin(prepared, torch.Generator().manual_seed(99))["loss"], direct["loss"])


def test_text_plan_runs_each_bucket_to_its_own_length_like_the_text_tower():
    recipe = make_recipe("clip")
    captions = ["a red circle"] * 40 + ["a very small blue square next to a big green triangle on grey"] * 40
    text = get_tokenizer()(captions, context_length=77)
    plan = TextPlan.of(text, "cpu")
    assert plan.length == int(text.argmax(-1).max()) + 1 and len(plan.buckets) == 2
    assert sorted(plan.lengths) == sorted({int(text[i].argmax()) + 1 for i in (0, 79)})
    with torch.no_grad():
        torch.testing.assert_close(recipe.encode_text(text, plan), recipe.model.text(text))
        small = text[:8]
        torch.testing.assert_close(recipe.encode_text(small, TextPlan.of(small, "cpu")), recipe.model.text(small))


# --- RILS: patch dropout refused, the released code's image tower and decoder input (issue 11, 4b/4c) ---

def test_rils_refuses_patch_dropout_at_config_validation():
    with pytest.raises(ConfigError, match="patch_dropout does not apply to rils"):
        TrainConfig.from_preset("tiny", "rils", {"patch_dropout": 0.5})
    with pytest.raises(ConfigError, match="contrastive_view='masked'"):
        TrainConfig.from_preset("tiny", "maskclip", {"patch_dropout": 0.5, "maskclip.contrastive_view": "masked"})
    TrainConfig.from_preset("tiny", "maskclip", {"patch_dropout": 0.5})  # the full-image pass takes it


@pytest.mark.parametrize("preset", ["vitb16-yfcc15m", "tiny", "shapes"])
def test_rils_preset_builds_the_image_tower_of_rils_released_code(preset):
    cfg = TrainConfig.from_preset(preset, "rils")
    v = build_model(cfg).config.vision
    assert (v.pool, v.pos_embed, v.patch_bias, v.norm_eps, v.ln_pre, v.act) == ("mean", "sincos", True, 1e-6,
                                                                                   False, "gelu")
    assert build_model(cfg).config.text.act == "quick_gelu"  # RILS's text tower is CLIP's
    assert cfg.rils.decoder.norm_input and cfg.mae.decoder.norm_input and not cfg.maskclip.decoder.norm_input


def test_partial_preset_sections_fill_in_from_the_sections_own_defaults():
    """The tiny preset sets only mae.decoder.layers; the rest is MAEConfig's decoder (sin-cos), not
    DecoderConfig's class defaults (learned)."""
    cfg = TrainConfig.from_preset("tiny", "clip_mae")
    assert cfg.mae.decoder.layers == 1 and cfg.mae.decoder.pos_embed == "sincos"
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("name, normalised", [("rils", True), ("clip_mae", True), ("maskclip", False)])
def test_decoder_reads_the_encoder_output_after_ln_post_where_the_reference_does(name, normalised):
    recipe = make_recipe(name)
    seen = {}
    recipe.decoder.embed.register_forward_hook(lambda m, args, out: seen.setdefault("x", args[0].detach()))
    batch = recipe.prepare(make_batch(recipe), torch.Generator().manual_seed(0))
    recipe(batch, torch.Generator())
    from maskclip.train.masking import encode_masked

    with torch.no_grad():
        tokens, _ = encode_masked(recipe.model.visual, batch["image"], batch["mask"])
        expected = recipe.model.visual.ln_post(tokens) if normalised else tokens
    torch.testing.assert_close(seen["x"], expected)


# --- SLIP: each view through the head apart (issue 11, 4h) --------------------------------------------

def test_slip_head_normalises_each_view_with_its_own_batch_statistics():
    recipe = make_recipe("slip")
    batch = make_batch(recipe)
    batch["views"][1] = 3 * batch["views"][1] + 1  # the views' features differ in scale and offset
    inputs = []
    recipe.image_mlp.bn1.register_forward_hook(lambda m, args, out: inputs.append(args[0].detach()))
    head_before = copy.deepcopy(recipe.image_mlp)
    recipe(batch, torch.Generator().manual_seed(0))
    assert [x.shape[0] for x in inputs] == [BATCH, BATCH]
    visual = recipe.model.visual
    with torch.no_grad():
        pooled = [visual.pooled(visual.forward_tokens(v)[0]) for v in batch["views"]]
        for x, p in zip(inputs, pooled):
            torch.testing.assert_close(x, head_before.layer1(p))
        # normalising over both views at once would mix the two views' statistics
        both = head_before.bn1(torch.cat([head_before.layer1(p) for p in pooled]))[:BATCH]
        alone = copy.deepcopy(head_before).bn1(head_before.layer1(pooled[0]))
        assert (both - alone).abs().max() > 1e-2


# --- the teacher on the inference path (issue 11, 4f) --------------------------------------------------

def test_the_teacher_runs_without_autograd():
    recipe = make_recipe("maskclip")
    grad_modes = []
    for module in recipe.teacher.modules():
        if isinstance(module, torch.nn.Linear) or module.__class__.__name__ == "Attention":
            module.register_forward_pre_hook(lambda m, args: grad_modes.append(torch.is_grad_enabled()))
    out = step_grads(recipe, make_batch(recipe))
    assert grad_modes and not any(grad_modes)
    assert all(not p.requires_grad and p.grad is None for p in recipe.teacher.parameters())
    assert out["loss_distill"].requires_grad


# --- host-side preparation ---------------------------------------------------------------------------

def test_prepare_draws_masks_on_the_host_with_exact_counts():
    recipe = make_recipe("maskclip", **{"maskclip.masking.strategy": "block"})
    batch = recipe.prepare(make_batch(recipe), torch.Generator().manual_seed(0))
    mask = batch["mask"]
    assert isinstance(mask, Mask) and mask.mask.device.type == "cpu"
    assert (mask.mask.sum(1) == mask.mask.shape[1] - mask.num_keep).all()
    assert torch.equal(mask.mask.gather(1, mask.ids_masked), torch.ones_like(mask.ids_masked, dtype=torch.bool))
    hidden = batch["text_hidden"]
    assert hidden.shape == (BATCH, batch["text_plan"].length)
    assert torch.equal(batch["text_rows"], hidden.flatten().nonzero().flatten())
