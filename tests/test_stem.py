"""The convolutional patch stem (``VisionConfig.stem="conv"``): shapes, the model API on it, its checkpoint
round trip, the layouts that cannot hold it, and training every recipe with it."""
import pytest
import torch

import maskclip
from maskclip.config import ModelConfig, TextConfig, VisionConfig, conv_stem_channels
from maskclip.errors import ConfigError
from maskclip.stem import ConvStem

pytestmark = pytest.mark.usefixtures("one_thread")


def config(**vision):
    v = dict(image_size=32, patch_size=8, width=32, layers=2, heads=2, stem="conv")
    v.update(vision)
    return ModelConfig(embed_dim=16, vision=VisionConfig(**v),
                       text=TextConfig(context_length=16, width=32, layers=1, heads=2))


def model(**vision):
    torch.manual_seed(0)
    return maskclip.DualEncoder(config(**vision)).eval()


def test_channels_double_up_to_the_width_one_stride_2_convolution_per_factor_of_2():
    assert conv_stem_channels(8, 128) == [32, 64, 128]
    assert conv_stem_channels(16, 768) == [96, 192, 384, 768]
    assert conv_stem_channels(2, 10) == [10]
    stem = ConvStem(8, 128)
    convs = [m for m in stem if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (3, 32, (3, 3), (2, 2)), (32, 64, (3, 3), (2, 2)), (64, 128, (3, 3), (2, 2))]
    assert stem(torch.randn(2, 3, 64, 48)).shape == (2, 128, 8, 6)


@pytest.mark.parametrize("vision, message", [
    (dict(patch_size=6, image_size=36), "power of two"),
    (dict(width=30, heads=2), "divisible by patch_size / 2 = 4"),
    (dict(stem="hmlp"), "vision stem must be one of"),
])
def test_configs_the_stem_cannot_build_are_refused(vision, message):
    with pytest.raises(ConfigError, match=message):
        config(**vision).validate()


def test_tokens_grid_and_the_api_are_those_of_the_patch_projection():
    m = model()
    assert not hasattr(m.visual, "conv1") and any(k.startswith("visual.stem.") for k in m.state_dict())
    x = torch.randn(2, 3, 32, 48)
    with torch.inference_mode():
        tokens, grid = m.visual.embed(x)
        assert grid == (4, 6) and tokens.shape == (2, 1 + 24, 32)
        assert m.encode_image(x[..., :32]).shape == (2, 16)
        for method in ("vanilla", "zhou", "clearclip", "naclip"):
            assert m.dense_features(x, method=method).shape == (2, 16, 4, 6)


def test_a_token_depends_on_its_neighbours_pixels_but_not_beyond():
    """The stem's receptive field: a token sees its own patch and a margin of the neighbouring ones."""
    m = model()
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    patches, _ = m.visual.patchify(x)
    patches[0, 1 * 4 + 1].sum().backward()  # the token of patch (1, 1): pixels 8..15
    touched = x.grad.abs().sum((0, 1)) > 0
    rows = touched.any(1).nonzero().flatten()
    assert rows.min() < 8 and rows.max() >= 15 and rows.max() < 24  # overlaps its neighbours, not further


def test_native_checkpoint_round_trip_gives_the_same_outputs(tmp_path):
    m = model()
    m.save_pretrained(tmp_path / "m")
    back = maskclip.load(tmp_path / "m")
    assert back.config.vision.stem == "conv"
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(m.encode_image(x), back.encode_image(x))


@pytest.mark.parametrize("fmt", ["open_clip", "transformers"])
def test_layouts_with_one_patch_projection_refuse_the_stem(tmp_path, fmt):
    with pytest.raises(ConfigError, match="stem is 'conv'"):
        model().save_pretrained(tmp_path / fmt, format=fmt)
    assert not (tmp_path / fmt).exists() or not any((tmp_path / fmt).iterdir())


@pytest.mark.parametrize("recipe, extra", [("clip", {}), ("maskclip", {"maskclip.masking.mode": "token"}),
                                           ("clip_mae", {}), ("slip", {})])
def test_every_recipe_trains_with_the_stem(recipe, extra):
    from maskclip.train import TrainConfig
    from maskclip.train.loop import build_model
    from maskclip.train.recipes import build_recipe
    from maskclip.tokenizer import get_tokenizer

    cfg = TrainConfig.from_preset("tiny", recipe, {"batch_size": 4, "steps": 2, "progress": False,
                                                    "model_overrides": {"vision": {"stem": "conv"}}, **extra})
    torch.manual_seed(0)
    r = build_recipe(build_model(cfg), cfg).train()
    s = r.model.config.preprocess.image_size
    batch = {"image": torch.randn(4, 3, s, s), "text": get_tokenizer()(["a", "b c", "d", "e f g"],
                                                                         context_length=r.model.config.text.context_length)}
    if r.extra_views:
        batch["views"] = torch.randn(r.extra_views, 4, 3, s, s)
    out = r(batch, torch.Generator().manual_seed(0))
    out["loss"].backward()
    stem_grads = [p.grad for n, p in r.model.named_parameters() if n.startswith("visual.stem.")]
    assert stem_grads and all(g is not None and torch.isfinite(g).all() for g in stem_grads)
