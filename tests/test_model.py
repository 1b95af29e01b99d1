"""The dual encoder at the tensor level: encoders, resolution, dense features, config."""
import json

import pytest
import torch
import torch.nn.functional as F

import maskclip
from maskclip import ConfigError, ModelConfig
from maskclip.dense import METHODS

from conftest import tiny_config, tiny_model


def reference_text_features(model, tokens):
    """encode_text computed the long way: all 77 positions, explicit causal mask, LN on every token."""
    t = model.text
    x = t.token_embedding(tokens) + t.positional_embedding
    L = tokens.shape[1]
    mask = torch.full((L, L), float("-inf")).triu(1)
    for blk in t.transformer.resblocks:
        h = blk.ln_1(x)
        q, k, v = F.linear(h, blk.attn.in_proj_weight, blk.attn.in_proj_bias).chunk(3, dim=-1)
        B, N, D = q.shape
        H = blk.attn.heads
        q, k, v = (z.view(B, N, H, D // H).transpose(1, 2) for z in (q, k, v))
        a = ((q @ k.transpose(-1, -2)) / (D // H) ** 0.5 + mask).softmax(-1) @ v
        x = x + blk.attn.out_proj(a.transpose(1, 2).reshape(B, N, D))
        x = x + blk.mlp(blk.ln_2(x))
    x = t.ln_final(x)
    return x[torch.arange(B), tokens.argmax(-1)] @ t.text_projection


def test_encode_text_running_to_longest_eot_equals_full_context(model):
    texts = ["a", "a photo of a small red circle left of a blue star", "x " * 30, ""]
    tokens = model.tokenize(texts)
    with torch.no_grad():
        fast = model.encode_text(tokens)
        ref = reference_text_features(model, tokens)
    assert (fast - ref).abs().max() < 1e-5


def test_encode_text_truncated_text_equals_full_reference(model):
    tokens = model.tokenize(["word " * 200])
    assert tokens[0, -1] == 49407
    with torch.no_grad():
        assert (model.encode_text(tokens) - reference_text_features(model, tokens)).abs().max() < 1e-5


def test_encode_text_batch_result_does_not_depend_on_other_texts(model):
    with torch.no_grad():
        alone = model.encode_text(["a cat"])
        together = model.encode_text(["a cat", "a much longer sentence about a dog in a field of flowers"])
    assert (alone[0] - together[0]).abs().max() < 1e-5


def test_encode_text_accepts_str_list_and_token_tensors_equally(model):
    with torch.no_grad():
        a = model.encode_text("a dog")
        b = model.encode_text(["a dog"])
        c = model.encode_text(maskclip.tokenize(["a dog"]))
        d = model.encode_text(maskclip.tokenize("a dog")[0])
    assert a.shape == (1, 32)
    for other in (b, c, d):
        assert torch.equal(a, other)


def test_encode_normalize_gives_unit_vectors(model, rgb_image):
    with torch.no_grad():
        t = model.encode_text(["a", "b"], normalize=True)
        i = model.encode_image([rgb_image, rgb_image], normalize=True)
    assert torch.allclose(t.norm(dim=-1), torch.ones(2), atol=1e-6)
    assert torch.allclose(i.norm(dim=-1), torch.ones(2), atol=1e-6)


def test_float_tensor_input_is_used_as_preprocessed(model, rgb_image):
    x = model.preprocess(rgb_image)
    with torch.no_grad():
        assert torch.equal(model.encode_image(x[None]), model.encode_image(rgb_image))
        assert torch.equal(model.encode_image(x), model.encode_image(rgb_image))


def test_any_resolution_resamples_position_embedding(model):
    x = torch.randn(2, 3, 48, 96)
    with torch.no_grad():
        out = model.encode_image(x)
        pe = model.visual.pos_embed((3, 6))
    assert out.shape == (2, 32) and torch.isfinite(out).all()
    assert pe.shape == (1 + 18, 64)
    assert torch.equal(pe[0], model.visual.positional_embedding[0])  # class token untouched


def test_position_embedding_at_native_grid_is_the_parameter_itself(model):
    assert model.visual.pos_embed((4, 4)) is model.visual.positional_embedding


def test_dense_features_shapes_at_224_and_448():
    m = tiny_model(image_size=224)
    x224, x448 = torch.randn(2, 3, 224, 224), torch.randn(1, 3, 448, 448)
    with torch.no_grad():
        for method in METHODS:
            assert m.dense_features(x224, method=method).shape == (2, 32, 14, 14)
            assert m.dense_features(x448, method=method).shape == (1, 32, 28, 28)


def test_dense_features_from_pil_follow_image_size_argument(rgb_image):
    m = tiny_model(image_size=64)
    with torch.no_grad():
        assert m.dense_features(rgb_image).shape == (1, 32, 4, 4)
        assert m.dense_features(rgb_image, image_size=128).shape == (1, 32, 8, 8)


def test_vanilla_dense_equals_pooled_paths_per_token_computation(model):
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens, _ = model.visual.forward_tokens(x)
        expected = (model.visual.ln_post(tokens[:, 1:]) @ model.visual.proj).transpose(1, 2).reshape(2, 32, 4, 4)
        dense = model.dense_features(x, method="vanilla")
        # the class token of the same pass is exactly the pooled embedding
        assert torch.allclose(model.visual.ln_post(tokens[:, 0]) @ model.visual.proj, model.encode_image(x), atol=1e-6)
    assert torch.allclose(dense, expected, atol=1e-6)


def _last_block_inputs(model, x):
    blocks = model.visual.transformer.resblocks
    tokens, _ = model.visual.forward_tokens(x, stop=len(blocks) - 1)
    blk = blocks[-1]
    W, b = blk.attn.in_proj_weight, blk.attn.in_proj_bias
    D = W.shape[1]
    h = blk.ln_1(tokens)
    q, k, v = (h @ W[i * D:(i + 1) * D].T + b[i * D:(i + 1) * D] for i in range(3))
    return tokens, blk, q, k, v


def _heads_softmax_apply(a, b, v, heads):
    """Per head: softmax(a b^T / sqrt(d)) @ v, with plain loops over heads."""
    d = a.shape[-1] // heads
    outs = []
    for h in range(heads):
        s = slice(h * d, (h + 1) * d)
        w = (a[..., s] @ b[..., s].transpose(-1, -2) / d ** 0.5).softmax(-1)
        outs.append(w @ v[..., s])
    return torch.cat(outs, dim=-1)


def _to_map(model, tokens):
    feats = model.visual.ln_post(tokens[:, 1:]) @ model.visual.proj
    return feats.transpose(1, 2).reshape(tokens.shape[0], -1, 4, 4)


def test_maskclip_dense_equals_identity_attention_last_block(model):
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens, blk, q, k, v = _last_block_inputs(model, x)
        y = tokens + blk.attn.out_proj(v)
        y = y + blk.mlp(blk.ln_2(y))
        assert torch.allclose(model.dense_features(x, method="maskclip"), _to_map(model, y), atol=1e-5)


def test_sclip_dense_equals_qq_plus_kk_attention(model):
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens, blk, q, k, v = _last_block_inputs(model, x)
        H = blk.attn.heads
        a = _heads_softmax_apply(q, q, v, H) + _heads_softmax_apply(k, k, v, H)
        y = tokens + blk.attn.out_proj(a)
        y = y + blk.mlp(blk.ln_2(y))
        assert torch.allclose(model.dense_features(x, method="sclip"), _to_map(model, y), atol=1e-5)


def test_clearclip_dense_is_qq_attention_without_residual_or_mlp(model):
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens, blk, q, k, v = _last_block_inputs(model, x)
        y = blk.attn.out_proj(_heads_softmax_apply(q, q, v, blk.attn.heads))
        assert torch.allclose(model.dense_features(x, method="clearclip"), _to_map(model, y), atol=1e-5)


def test_dense_methods_differ_from_each_other(model):
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        outs = {m: model.dense_features(x, method=m) for m in METHODS}
    for a in METHODS:
        for b in METHODS:
            if a < b:
                assert not torch.allclose(outs[a], outs[b], atol=1e-4), (a, b)


def test_maskclip_is_the_old_name_of_zhou_and_gives_identical_features(model):
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.dense_features(x, method="maskclip"), model.dense_features(x, method="zhou"))
    assert "zhou" in METHODS and "maskclip" not in METHODS  # listings show the canonical name
    assert maskclip.dense.resolve_method("maskclip") == "zhou"


def test_dense_normalize_gives_unit_vectors_per_patch(model):
    with torch.no_grad():
        f = model.dense_features(torch.randn(1, 3, 64, 64), normalize=True)
    assert torch.allclose(f.norm(dim=1), torch.ones(1, 4, 4), atol=1e-5)


def test_mean_pooling_equals_mean_of_vanilla_dense_features():
    m = tiny_model(pool="mean")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(m.encode_image(x), m.dense_features(x).mean(dim=(2, 3)), atol=1e-5)


def test_sincos_position_embedding_is_fixed_and_follows_the_grid():
    m = tiny_model(pos_embed="sincos")
    assert not m.visual.positional_embedding.requires_grad
    assert m.visual.pos_embed((3, 5)).shape == (16, 64)
    with torch.no_grad():
        assert torch.isfinite(m.encode_image(torch.randn(1, 3, 48, 80))).all()


def test_quick_gelu_and_gelu_configs_give_different_outputs():
    a, b = tiny_model(act="quick_gelu"), tiny_model(act="gelu")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(a.encode_image(x), b.encode_image(x), atol=1e-4)


def test_grad_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    m = tiny_model().train()
    x, t = torch.randn(2, 3, 64, 64), m.tokenize(["a b", "c"])

    def grads():
        m.zero_grad()
        img, txt, scale = m(x, t)
        (scale * img @ txt.T).logsumexp(-1).sum().backward()
        return m.visual.conv1.weight.grad.clone()

    plain = grads()
    m.set_grad_checkpointing(True)
    assert torch.allclose(grads(), plain, atol=1e-6)


def test_config_json_round_trip(tmp_path):
    cfg = tiny_config(act="gelu", pool="mean")
    cfg.to_json(tmp_path / "c.json")
    back = ModelConfig.from_json(tmp_path / "c.json")
    assert back == cfg
    assert json.loads((tmp_path / "c.json").read_text())["format_version"] == 1


@pytest.mark.parametrize("mutate, words", [
    (lambda d: d.update(format_version=99), "format_version"),
    (lambda d: d.pop("format_version"), "format_version"),
    (lambda d: d["vision"].update(heads=3), "divisible"),
    (lambda d: d["vision"].update(act="relu"), "act"),
    (lambda d: d["vision"].update(colour="red"), "unknown vision config keys"),
    (lambda d: d.update(embed_dim=-1), "positive"),
    (lambda d: d["preprocess"].update(mean=[0.5, 0.5]), "3 values"),
    (lambda d: d.update(vision=[1, 2]), "must be an object"),
])
def test_bad_config_raises_config_error_naming_the_problem(mutate, words):
    d = tiny_config().to_dict()
    mutate(d)
    with pytest.raises(ConfigError, match=words):
        ModelConfig.from_dict(d)


def test_architecture_configs_build_the_documented_shapes():
    cfg = maskclip.architecture_config("vit-b-16", act="gelu")
    assert (cfg.vision.width, cfg.vision.layers, cfg.vision.patch_size, cfg.text.width, cfg.embed_dim) == \
        (768, 12, 16, 512, 512)
    assert cfg.vision.act == cfg.text.act == "gelu"
    with pytest.raises(ConfigError, match="vit-b-16"):
        maskclip.architecture_config("vit-b-61")


def test_saved_files_get_the_usual_permissions_not_the_temp_files_0600(tmp_path):
    import os

    from conftest import tiny_model

    old = os.umask(0o022)
    try:
        tiny_model().save_pretrained(tmp_path / "m")
    finally:
        os.umask(old)
    for name in ("model.safetensors", "config.json"):
        assert (tmp_path / "m" / name).stat().st_mode & 0o777 == 0o644, name
