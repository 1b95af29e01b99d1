"""Accumulation with cached features (accum_mode=cached) against one big batch, in fp64: the gradient
of 4 micro-batches of 4 equals that of one batch of 16, for both image-text losses, with the
micro-batches' own patch dropout, and (for the recipes whose other terms are plain means over equal
counts) for the whole loss."""
import pytest
import torch
import torch.nn.functional as F

from maskclip.train import TrainConfig
from maskclip.train import distributed as dist
from maskclip.train.accumulate import CachedFeatures
from maskclip.train.data import derive_seed
from maskclip.train.loop import Plan, build_model
from maskclip.train.masking import Mask
from maskclip.train.optim import build_optimizer
from maskclip.train.recipes import TextPlan, build_recipe
from maskclip.train.step import StepRunner

pytestmark = pytest.mark.usefixtures("one_thread")

MICRO, ACCUM = 4, 4


def make_runner(recipe_name="clip", **overrides):
    cfg = TrainConfig.from_preset("tiny", recipe_name, {"batch_size": MICRO * ACCUM, "accum_steps": ACCUM,
                                                        "steps": 10, "progress": False, **overrides})
    torch.manual_seed(0)
    recipe = build_recipe(build_model(cfg), cfg).double().train()
    optimizer = build_optimizer(recipe, cfg.lr, cfg.weight_decay, cfg.betas, cfg.eps)
    info = dist.DistInfo(0, 1, 0, torch.device("cpu"))
    return StepRunner(recipe, recipe, optimizer, None, cfg, Plan(MICRO, 10, 10, 2), info)


def loader_batches(recipe):
    """ACCUM loader batches of MICRO samples (fp64 images, captions of 4 to 11 tokens)."""
    g = torch.Generator().manual_seed(1)
    s, n = recipe.model.config.preprocess.image_size, MICRO * ACCUM
    text = torch.zeros(n, recipe.model.config.text.context_length, dtype=torch.long)
    for i, length in enumerate(torch.randint(4, 12, (n,), generator=g).tolist()):
        text[i, 0], text[i, length - 1] = 49406, 49407
        text[i, 1:length - 1] = torch.randint(256, 4000, (length - 2,), generator=g)
    images = torch.randn(n, 3, s, s, generator=g, dtype=torch.float64)
    return [{"image": images[i * MICRO:(i + 1) * MICRO], "text": text[i * MICRO:(i + 1) * MICRO]}
            for i in range(ACCUM)]


def grads(recipe):
    return {n: p.grad.clone() for n, p in recipe.named_parameters() if p.grad is not None}


def accumulated(runner, micro):
    runner.recipe.zero_grad(set_to_none=True)
    runner.backward(micro, step=0)
    return grads(runner.recipe)


def one_big_batch(runner, micro):
    """The gradient of one batch of MICRO x ACCUM samples drawing the micro-batches' masks (the step
    runner's generators), concatenated."""
    recipe = runner.recipe
    prepared = [recipe.prepare(b, torch.Generator().manual_seed(derive_seed(runner.cfg.seed, "step", 0, 0, i)))
                for i, b in enumerate(micro)]
    big = {k: torch.cat([p[k] for p in prepared]) for k in ("image", "text")}
    big["text_plan"] = TextPlan.of(big["text"], "cpu")
    for key in ("dropout", "mask"):
        if key in prepared[0]:
            big[key] = Mask(*(torch.cat([getattr(p[key], f) for p in prepared])
                              for f in ("mask", "ids_keep", "ids_restore")))
    recipe.zero_grad(set_to_none=True)
    recipe(big, torch.Generator())["loss"].backward()
    return grads(recipe)


def relative_difference(a, b):
    assert a.keys() == b.keys()
    return max(((a[k] - b[k]).norm() / b[k].norm().clamp_min(1e-30)).item() for k in a)


CASES = [("clip", {}), ("clip", {"loss": "siglip"}), ("clip", {"patch_dropout": 0.5}),
         ("clip", {"patch_dropout": 0.5, "loss": "siglip"}),
         ("clip_mae", {}), ("maskclip", {"maskclip.loss": "cosine", "maskclip.text": False})]


@pytest.mark.parametrize("name, overrides", CASES, ids=[f"{n}-{'-'.join(map(str, o.values())) or 'default'}"
                                                        for n, o in CASES])
def test_cached_accumulation_gives_the_one_big_batch_gradient(name, overrides):
    """CLIP+MAE's pixel loss and MaskCLIP's cosine distillation are means over masked patches, the same
    count in every sample: their mean over micro-batches is the big batch's too."""
    runner = make_runner(name, **overrides)
    micro = loader_batches(runner.recipe)
    got, want = accumulated(runner, micro), one_big_batch(runner, micro)
    assert "model.logit_scale" in want and ("model.logit_bias" in want) == ("loss" in overrides)
    assert relative_difference(got, want) < 1e-9


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_micro_accumulation_takes_negatives_from_each_micro_batch_only(loss):
    """Not the big batch's gradient (with SigLIP's bias at -10 the missing negatives weigh little at first)."""
    runner = make_runner(accum_mode="micro", loss=loss)
    micro = loader_batches(runner.recipe)
    assert relative_difference(accumulated(runner, micro), one_big_batch(runner, micro)) > 1e-5


def test_the_recomputation_draws_the_caching_pass_random_numbers(monkeypatch):
    """A dropout in a tower draws from torch's global generator; the pass with gradient must draw what
    the caching pass drew, or the micro-batch's fresh features would not be its cached ones."""
    runner = make_runner()
    visual = runner.recipe.model.visual
    pool = visual.pool
    monkeypatch.setattr(visual, "pool", lambda tokens: F.dropout(pool(tokens), 0.5, training=True), raising=False)
    seen = []
    place = CachedFeatures._place

    def checked(self, cached, fresh):
        b = fresh.shape[0]
        seen.append(torch.equal(cached[self.index * b:(self.index + 1) * b], fresh.detach()))
        return place(self, cached, fresh)

    monkeypatch.setattr(CachedFeatures, "_place", checked)
    accumulated(runner, loader_batches(runner.recipe))
    assert seen == [True] * (2 * ACCUM)


def test_cached_features_refuse_micro_batches_that_do_not_fit():
    cache = CachedFeatures(torch.zeros(8, 3), torch.zeros(8, 3), index=1, count=4)
    with pytest.raises(ValueError, match="4 micro-batches of"):
        cache.around(torch.zeros(3, 3), torch.zeros(3, 3))
