"""The layers as real modules: Linear everywhere, hooks, saved names, activations, intermediates, quantisation."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import maskclip
from maskclip import layers
from maskclip.layers import GELU, Linear, QuickGELU, grid_pos_embed, make_activation, sincos_2d, take_indices
from maskclip.train.decoder import PatchDecoder
from maskclip.train.masking import random_mask

from conftest import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

IMAGES = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
PROMPTS = ["a photo of a dog", "a red circle", ""]


def linear_modules(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def test_every_linear_layer_of_the_towers_is_a_layers_linear():
    found = linear_modules(tiny_model())
    assert {type(m) for m in found.values()} == {Linear}
    assert {name.rsplit(".", 1)[-1] for name in found} == {"in_proj", "out_proj", "c_fc", "c_proj"}
    assert len(found) == 4 * (2 + 2)  # four per block, two blocks per tower


# --- hooks -------------------------------------------------------------------------------------

@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
@pytest.mark.parametrize("mode", ["inference", "grad"])
def test_forward_hooks_on_every_linear_fire_during_encode_image(act, mode):
    model = tiny_model(act=act)
    calls = []
    for name, m in linear_modules(model.visual).items():
        m.register_forward_hook(lambda mod, inp, out, name=name: calls.append(name))
    with torch.inference_mode() if mode == "inference" else torch.enable_grad():
        model.encode_image(IMAGES)
    assert sorted(calls) == sorted(linear_modules(model.visual))


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_hooked_layers_see_their_own_outputs_and_change_nothing(act):
    """With hooks on c_fc and the activation, the fused and in-place paths step aside: what a hook
    holds is never overwritten afterwards, and the features are those of the unhooked model."""
    model = tiny_model(act=act)
    with torch.inference_mode():
        plain = model.encode_image(IMAGES)
    held = []
    mlp = model.visual.transformer.resblocks[0].mlp
    for m in (mlp.c_fc, mlp.gelu):
        m.register_forward_hook(lambda mod, inp, out: held.append((out, out.clone())))
    with torch.inference_mode():
        hooked = model.encode_image(IMAGES)
    assert len(held) == 2
    for out, at_hook_time in held:
        assert torch.equal(out, at_hook_time)
    torch.testing.assert_close(hooked, plain, rtol=1e-5, atol=1e-5)


def test_a_global_forward_hook_sees_every_linear():
    model = tiny_model(act="gelu")
    seen = []
    handle = nn.modules.module.register_module_forward_hook(
        lambda mod, inp, out: seen.append(mod) if isinstance(mod, Linear) else None)
    try:
        with torch.inference_mode():
            model.encode_image(IMAGES)
    finally:
        handle.remove()
    assert len(seen) == len(linear_modules(model.visual))


def test_training_only_the_biases_gives_every_bias_a_gradient():
    """BitFit: frozen weights, trainable biases, an input without grad; the first layer too."""
    model = tiny_model()
    for name, p in model.named_parameters():
        p.requires_grad_(name.endswith("bias"))
    model.encode_image(IMAGES).square().sum().backward()
    for name, m in linear_modules(model.visual).items():
        assert m.bias.grad is not None and m.bias.grad.abs().sum() > 0, name


# --- q/k/v as a module under OpenAI's names ------------------------------------------------------

def qkv_tied(model) -> bool:
    """Every attention's in_proj Linear holds the attention's own in_proj_weight / in_proj_bias."""
    blocks = [b for tower in (model.visual, model.text) for b in tower.transformer.resblocks]
    return all(b.attn.in_proj.weight is b.attn.in_proj_weight and b.attn.in_proj.bias is b.attn.in_proj_bias
               for b in blocks)


def test_parameter_names_and_state_dict_keys_stay_openai_and_agree():
    model = tiny_model()
    sd = model.state_dict()
    prefix = "visual.transformer.resblocks.0."
    block_keys = [k[len(prefix):] for k in sd if k.startswith(prefix)]
    assert block_keys == ["ln_1.weight", "ln_1.bias", "attn.in_proj_weight", "attn.in_proj_bias",
                          "attn.out_proj.weight", "attn.out_proj.bias", "ln_2.weight", "ln_2.bias",
                          "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias"]
    assert [n for n, _ in model.named_parameters()] == list(sd)  # each parameter once, under its saved name
    assert qkv_tied(model)


def test_a_state_dict_with_openai_names_loads_strictly_and_round_trips():
    source, target = tiny_model(seed=1), tiny_model(seed=2)
    sd = source.state_dict()
    result = target.load_state_dict(sd, strict=True)
    assert list(result.missing_keys) == [] and list(result.unexpected_keys) == []
    assert not any(".in_proj." in k for k in sd)  # the caller's dict is left as given
    assert qkv_tied(target)
    for k, v in target.state_dict().items():
        assert torch.equal(v, sd[k]), k
    with torch.inference_mode():
        torch.testing.assert_close(target.encode_image(IMAGES), source.encode_image(IMAGES), rtol=0, atol=0)


def test_strict_loading_still_names_a_missing_q_k_v_bias():
    model = tiny_model()
    sd = model.state_dict()
    sd.pop("visual.transformer.resblocks.0.attn.in_proj_bias")
    with pytest.raises(RuntimeError, match=r"Missing key\(s\).*resblocks\.0\.attn\.in_proj_bias"):
        model.load_state_dict(sd, strict=True)


def test_a_meta_model_takes_a_state_dict_by_assignment_and_stays_tied():
    sd = tiny_model().state_dict()
    with torch.device("meta"):
        model = maskclip.MaskCLIP(tiny_model().config)
    assert all(p.is_meta for p in model.parameters())
    model.load_state_dict(sd, strict=True, assign=True)
    assert not any(p.is_meta for p in model.parameters()) and qkv_tied(model)
    with torch.inference_mode():
        torch.testing.assert_close(model.encode_image(IMAGES), tiny_model().encode_image(IMAGES), rtol=0, atol=0)


def test_copies_and_conversions_keep_q_k_v_one_parameter(tmp_path):
    model = tiny_model()
    torch.save(model, tmp_path / "model.pt")
    copies = {"deepcopy": copy.deepcopy(model), "pickle": torch.load(tmp_path / "model.pt", weights_only=False),
              "half": copy.deepcopy(model).half(), "meta": copy.deepcopy(model).to("meta")}
    copies["to_empty"] = copy.deepcopy(copies["meta"]).to_empty(device="cpu")
    for name, m in copies.items():
        assert qkv_tied(m), name
    assert copies["half"].visual.transformer.resblocks[0].attn.in_proj.weight.dtype == torch.float16
    assert copies["meta"].visual.transformer.resblocks[0].attn.in_proj.weight.is_meta


def test_a_model_built_under_the_meta_device_allocates_nothing():
    with torch.device("meta"):
        model = maskclip.MaskCLIP(tiny_model().config)
    assert all(p.is_meta for p in model.parameters()) and qkv_tied(model)


# --- activations -------------------------------------------------------------------------------

def test_the_activation_is_chosen_when_the_model_is_built():
    quick, exact = tiny_model(), tiny_model(act="gelu")
    assert type(quick.visual.transformer.resblocks[0].mlp.gelu) is QuickGELU
    assert type(exact.visual.transformer.resblocks[0].mlp.gelu) is GELU
    assert isinstance(make_activation("gelu"), nn.GELU) and make_activation("gelu").approximate == "none"
    with pytest.raises(ValueError, match="relu"):
        make_activation("relu")


@pytest.mark.parametrize("act, reference", [("quick_gelu", lambda h: h * torch.sigmoid(1.702 * h)),
                                            ("gelu", F.gelu)])
def test_mlp_equals_its_definition_on_every_path(act, reference):
    mlp = layers.MLP(48, 96, act)
    x = torch.randn(3, 7, 48)
    expected = F.linear(reference(F.linear(x, mlp.c_fc.weight, mlp.c_fc.bias)), mlp.c_proj.weight, mlp.c_proj.bias)
    with torch.inference_mode():
        fast = mlp(x)
    torch.testing.assert_close(fast, expected.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mlp(x), expected, rtol=1e-5, atol=1e-5)  # autograd path


# --- forward_intermediates -----------------------------------------------------------------------

def test_take_indices_follows_timm():
    assert take_indices(4, None) == [0, 1, 2, 3]
    assert take_indices(4, 2) == [2, 3]
    assert take_indices(4, [-1, 0, 3]) == [0, 3]
    for bad in (0, 5, [4], [-5], [], [1.0], [True]):
        with pytest.raises(maskclip.InputError):
            take_indices(4, bad)
    for bad in ("1", True, 2.0):
        with pytest.raises(maskclip.InputTypeError):
            take_indices(4, bad)


def test_vision_intermediates_have_the_asked_shapes_and_end_at_the_final_tokens():
    model = tiny_model()
    x = torch.randn(2, 3, 64, 96)  # a 4 x 6 grid of patches
    with torch.inference_mode():
        embedding, nchw = model.visual.forward_intermediates(x)
        nlc = model.visual.forward_intermediates(x, output_fmt="NLC", intermediates_only=True)
        tokens, grid = model.visual.forward_tokens(x)
        first = model.visual.forward_tokens(x, stop=1)[0]
        normed = model.visual.forward_intermediates(x, indices=1, norm=True, output_fmt="NLC", intermediates_only=True)
        expected_normed = model.visual.ln_post(tokens[:, 1:])
        pooled = model.visual(x)
    assert grid == (4, 6)
    assert [y.shape for y in nchw] == [(2, 64, 4, 6)] * 2
    assert [y.shape for y in nlc] == [(2, 24, 64)] * 2
    torch.testing.assert_close(nlc[-1], tokens[:, 1:], rtol=0, atol=0)
    torch.testing.assert_close(nlc[0], first[:, 1:], rtol=0, atol=0)
    torch.testing.assert_close(nchw[-1], tokens[:, 1:].transpose(1, 2).reshape(2, 64, 4, 6), rtol=0, atol=0)
    torch.testing.assert_close(normed[0], expected_normed, rtol=0, atol=0)
    torch.testing.assert_close(embedding, pooled, rtol=0, atol=0)


def test_intermediates_only_stops_after_the_last_block_asked_for():
    model = tiny_model()
    ran = []
    model.visual.transformer.resblocks[1].register_forward_hook(lambda *a: ran.append(1))
    with torch.inference_mode():
        only = model.visual.forward_intermediates(IMAGES, indices=[0], intermediates_only=True)
        assert ran == []
        _, both = model.visual.forward_intermediates(IMAGES, indices=[0])
        assert ran == [1]
    assert len(only) == 1 and torch.equal(only[0], both[0])
    with pytest.raises(maskclip.InputError, match="output_fmt"):
        model.visual.forward_intermediates(IMAGES, output_fmt="NHWC")


def test_text_intermediates_end_at_the_final_hidden_states():
    model = tiny_model()
    tokens = model.tokenize(PROMPTS)
    with torch.inference_mode():
        embedding, outs = model.text.forward_intermediates(tokens)
        last = model.text.forward_tokens(tokens)
        normed = model.text.forward_intermediates(tokens, indices=[-1], norm=True, intermediates_only=True)
        expected_normed = model.text.ln_final(last)
        pooled = model.text.forward_batch(tokens)
    length = layers.causal_len(tokens)
    assert [y.shape for y in outs] == [(3, length, 64)] * 2
    torch.testing.assert_close(outs[-1], last, rtol=0, atol=0)
    torch.testing.assert_close(normed[0], expected_normed, rtol=0, atol=0)
    torch.testing.assert_close(embedding, pooled, rtol=0, atol=0)


def test_intermediates_follow_gradient_checkpointing_and_backpropagate():
    model = tiny_model().train()
    model.set_grad_checkpointing(True)
    _, outs = model.visual.forward_intermediates(IMAGES)
    sum(y.square().sum() for y in outs).backward()
    assert model.visual.conv1.weight.grad.abs().sum() > 0


# --- position embeddings -------------------------------------------------------------------------

def test_grid_pos_embed_keeps_resamples_or_recomputes():
    stored = torch.randn(1 + 16, 8)
    assert grid_pos_embed(stored, (4, 4), (4, 4)) is stored
    resampled = grid_pos_embed(stored, (4, 4), (3, 5))
    assert resampled.shape == (16, 8) and torch.equal(resampled[0], stored[0])
    torch.testing.assert_close(grid_pos_embed(sincos_2d(8, (4, 4)), (4, 4), (3, 5), "sincos"), sincos_2d(8, (3, 5)))


@pytest.mark.parametrize("pos_embed", ["learned", "sincos"])
def test_the_patch_decoder_and_the_vision_tower_place_other_grids_alike(pos_embed):
    torch.manual_seed(0)
    dec = PatchDecoder(64, 32, (4, 4), layers=1, pos_embed=pos_embed).eval()
    seen = []
    dec.blocks.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    m = random_mask(1, 15, 0.0, torch.Generator().manual_seed(0))
    full = torch.randn(1, 16, 64)
    with torch.inference_mode():
        assert dec(full, m, (3, 5)).shape == (1, 15, 32)
        expected = dec.embed(full) + grid_pos_embed(dec.pos, (4, 4), (3, 5), pos_embed)
    torch.testing.assert_close(seen[0], expected)


# --- quantisation --------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated")
@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor")
def test_quantize_dynamic_swaps_every_linear_and_stays_close():
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear
    from torch.ao.quantization import quantize_dynamic

    model = tiny_model()
    quantized = quantize_dynamic(model, {Linear}, dtype=torch.qint8)
    swapped = [m for m in quantized.modules() if isinstance(m, DynamicQuantizedLinear)]
    assert len(swapped) == len(linear_modules(model)) and not linear_modules(quantized)
    tokens = model.tokenize(PROMPTS)
    with torch.inference_mode():
        for encode in ("encode_image", "encode_text"):
            arg = IMAGES if encode == "encode_image" else tokens
            ref, q = getattr(model, encode)(arg), getattr(quantized, encode)(arg)
            diff = (q - ref).abs().max().item()
            assert 0 < diff < 0.1 * ref.abs().max().item(), encode
