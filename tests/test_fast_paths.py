"""The speed paths compute what the plain paths compute: length buckets, oneDNN linear, autocast, compile.

Only results are checked here, never durations (speed is measured by benchmarks/run.py).
"""
import random

import pytest
import torch
import torch.nn.functional as F

import maskclip
from maskclip import layers, zero_shot
from maskclip.towers import BUCKET_SIZES, length_buckets

from conftest import tiny_model

WORDS = "a photo of the small red dog cat bird tree house car on in at with".split()


def varied_prompts(n: int, seed: int = 0) -> list:
    """``n`` prompts of 1 to 30 words, so their lengths spread over many buckets."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 30))) for _ in range(n)]


# --- length buckets ------------------------------------------------------------------------------

def test_length_buckets_hold_every_index_once_shortest_first_within_size_bounds():
    lengths = torch.tensor([random.Random(1).randint(2, 40) for _ in range(500)])
    buckets = length_buckets(lengths, min_size=8, max_size=20)
    order = torch.cat(buckets)
    assert sorted(order.tolist()) == list(range(500))
    assert lengths[order].diff().ge(0).all()
    assert all(len(b) <= 20 for b in buckets)
    # a bucket ends before max_size only where the length changes, and holds at least min_size
    for b, nxt in zip(buckets, buckets[1:]):
        if len(b) < 20:
            assert len(b) >= 8 and lengths[b].max() < lengths[nxt].min()


def test_bucketed_encode_text_equals_one_batch_in_input_order():
    model = tiny_model()
    tokens = model.tokenize(varied_prompts(150))
    min_size, max_size = BUCKET_SIZES["cpu"]
    assert len(length_buckets(tokens.argmax(dim=1), min_size, max_size)) > 2  # buckets really differ
    with torch.no_grad():
        bucketed = model.encode_text(tokens)
        one_batch = model.text.forward_batch(tokens)
        first_alone = model.encode_text(tokens[:1])
    torch.testing.assert_close(bucketed, one_batch, rtol=0, atol=1e-5)
    torch.testing.assert_close(bucketed[:1], first_alone, rtol=0, atol=1e-5)


def test_bucketed_encode_text_backpropagates_like_one_batch():
    model = tiny_model()
    tokens = model.tokenize(varied_prompts(80, seed=2))
    model.text.forward_batch(tokens).square().sum().backward()
    expected = model.text.token_embedding.weight.grad.clone()
    model.zero_grad()
    model.encode_text(tokens).square().sum().backward()
    torch.testing.assert_close(model.text.token_embedding.weight.grad, expected, rtol=1e-4, atol=1e-4)


def test_classifier_built_in_chunks_equals_the_per_class_definition():
    model = tiny_model()
    names = [f"{w} {v}" for w in WORDS[:6] for v in WORDS[6:11]]  # 30 classes
    templates = ["a photo of a {}.", "{}", "a blurry photo of the small {} in the house."]
    with torch.no_grad():
        encode = lambda prompts: model.encode_text(prompts, normalize=True)  # noqa: E731
        built = zero_shot.build_classifier(encode, names, templates, batch_size=20)  # 6 classes per chunk
        expected = torch.stack([
            F.normalize(model.encode_text([t.replace("{}", n) for t in templates], normalize=True).mean(0), dim=0)
            for n in names], dim=1)
    torch.testing.assert_close(built, expected, rtol=0, atol=1e-6)


# --- oneDNN linear -------------------------------------------------------------------------------

@pytest.mark.parametrize("gelu", [False, True])
def test_linear_in_inference_equals_f_linear(gelu):
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(3, 50, 96, generator=g), torch.randn(160, 96, generator=g), torch.randn(160, generator=g)
    expected = F.linear(x, w, b)
    expected = F.gelu(expected) if gelu else expected
    with torch.no_grad():
        torch.testing.assert_close(layers.linear(x, w, b, gelu=gelu), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")
def test_linear_takes_the_onednn_path_only_for_fp32_cpu_inference():
    if layers._ONEDNN_LINEAR is None:
        pytest.skip("this torch has no oneDNN linear")
    x, w = torch.randn(4, 8), torch.nn.Parameter(torch.randn(6, 8))
    with torch.no_grad():
        assert layers._use_onednn(x, w)
        assert not layers._use_onednn(x.double(), w.double())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not layers._use_onednn(x, w)
        with torch.backends.mkldnn.flags(enabled=False):
            assert not layers._use_onednn(x, w)
    assert not layers._use_onednn(x, w)  # grad mode and a weight that requires grad: autograd path


def test_gelu_model_features_equal_with_and_without_the_fused_path():
    model = tiny_model(act="gelu")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    plain = model.encode_image(x).detach()  # grad enabled: F.linear, then GELU
    with torch.no_grad():
        fused = model.encode_image(x)
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)


# --- autocast and compile ------------------------------------------------------------------------

AMP_TOL = 0.05  # bf16 keeps 8 bits of mantissa: features of this tiny model move by ~1e-2


def test_bf16_autocast_runs_on_cpu_returns_fp32_close_to_fp32():
    model = tiny_model()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    prompts = varied_prompts(40)
    with torch.no_grad():
        ref = model.encode_image(x), model.encode_text(prompts), model.dense_features(x, method="maskclip")
        model.autocast = torch.bfloat16
        amp = model.encode_image(x), model.encode_text(prompts), model.dense_features(x, method="maskclip")
    for a, r in zip(amp, ref):
        assert a.dtype == torch.float32
        diff = (a - r).abs().max().item()
        assert 0 < diff < AMP_TOL * r.abs().max().item()  # nonzero: bf16 really ran


def test_autocast_rejects_other_dtypes():
    model = tiny_model()
    with pytest.raises(maskclip.InputError, match="autocast"):
        model.autocast = torch.float64
    with pytest.raises(maskclip.InputError, match="autocast"):
        model.autocast = "bf16"


def test_load_sets_autocast(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    assert maskclip.load(tmp_path, autocast=torch.bfloat16).autocast == torch.bfloat16
    assert maskclip.load(tmp_path).autocast is None


@pytest.mark.slow
def test_compiled_model_runs_on_cpu_and_agrees_with_eager():
    model = tiny_model()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    prompts = varied_prompts(40)
    with torch.no_grad():
        ref = model.encode_image(x), model.encode_text(prompts)
        assert model.compile() is model
        out = model.encode_image(x), model.encode_text(prompts)
    for o, r in zip(out, ref):
        torch.testing.assert_close(o, r, rtol=1e-4, atol=1e-4)
