"""PEFT adapters (LoRA, IA3) on every linear layer, q/k/v included: they change the image, text and
dense features on the fast inference path and under autograd, train alone, and merge into the same model."""
import copy

import pytest
import torch
from peft import IA3Config, LoraConfig, get_peft_model
from torch import nn

from conftest import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

IMAGES = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
PROMPTS = ["a photo of a dog", "a red circle left of a blue star", ""]
LINEAR_NAMES = ["in_proj", "out_proj", "c_fc", "c_proj"]


def features(model, grad: bool = False):
    """Image, text and dense (sclip: the q/k/v path of the last block) features."""
    with torch.enable_grad() if grad else torch.inference_mode():
        return model.encode_image(IMAGES), model.encode_text(PROMPTS), model.dense_features(IMAGES, method="sclip")


def adapted(config, act: str = "quick_gelu"):
    base = tiny_model(act=act)
    assert sorted({n.rsplit(".", 1)[-1] for n, m in base.named_modules() if isinstance(m, nn.Linear)}) \
        == sorted(LINEAR_NAMES)
    torch.manual_seed(1)  # the adapters' random initialisation
    return base, get_peft_model(copy.deepcopy(base), config)


def lora():
    return LoraConfig(target_modules=LINEAR_NAMES, init_lora_weights=False, r=4)


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_a_nonzero_lora_adapter_changes_both_encoders_on_the_fast_path_and_under_autograd(act):
    base, peft_model = adapted(lora(), act)
    wrapped = peft_model.base_model.model.visual.transformer.resblocks[0]
    assert type(wrapped.attn.in_proj).__module__.startswith("peft") and hasattr(wrapped.mlp.c_fc, "base_layer")
    before = features(base)
    for grad in (False, True):
        after = features(peft_model, grad=grad)
        for b, a in zip(before, after):
            assert (a - b).abs().max() > 1e-2
        fast = features(peft_model)
        for f, a in zip(fast, after):  # inference mode and autograd compute the same thing
            torch.testing.assert_close(f, a.detach(), rtol=1e-5, atol=1e-5)
    with peft_model.disable_adapter():
        for b, d in zip(before, features(peft_model)):
            torch.testing.assert_close(d, b, rtol=1e-5, atol=1e-5)


def test_lora_gradients_reach_the_adapters_only():
    _, peft_model = adapted(lora())
    image, text, dense = features(peft_model, grad=True)
    (image.square().sum() + text.square().sum() + dense.square().sum()).backward()
    adapters = {n for n, p in peft_model.named_parameters() if "lora_" in n}
    with_grad = {n for n, p in peft_model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad == adapters
    assert len(adapters) == 2 * len(LINEAR_NAMES) * 4  # A and B, four layers a block, 2 + 2 blocks
    assert not any(p.requires_grad for n, p in peft_model.named_parameters() if "lora_" not in n)


def test_merge_and_unload_gives_the_adapter_model_outputs_and_the_original_state_dict_names():
    base, peft_model = adapted(lora())
    expected = features(peft_model)
    merged = peft_model.merge_and_unload()
    for e, m in zip(expected, features(merged)):
        torch.testing.assert_close(m, e, rtol=1e-4, atol=1e-5)
    assert list(merged.state_dict()) == list(base.state_dict())


def test_ia3_changes_the_features_and_merges():
    config = IA3Config(target_modules=LINEAR_NAMES, feedforward_modules=["c_proj"], init_ia3_weights=False)
    base, peft_model = adapted(config)
    expected = features(peft_model)
    for b, e in zip(features(base), expected):
        assert (e - b).abs().max() > 1e-2
    for e, m in zip(expected, features(peft_model.merge_and_unload())):
        torch.testing.assert_close(m, e, rtol=1e-4, atol=1e-5)


def test_lora_on_a_timm_tower_reaches_its_dense_features_too():
    """SigLIP-style timm tower (MAP pool): the dense path calls qkv and the pool's kv as modules."""
    from maskclip import build, convert

    from test_families import ODD_MAP, custom_text_clip

    cfg, sd = convert.from_open_clip({"model_cfg": ODD_MAP}, custom_text_clip(ODD_MAP).state_dict())
    base = build.build_model(cfg, sd).eval()
    torch.manual_seed(1)
    peft_model = get_peft_model(copy.deepcopy(base),
                                LoraConfig(target_modules=["qkv", "kv"], init_lora_weights=False, r=4))
    x = torch.randn(2, 3, 48, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        for method in ("vanilla", "sclip", "naclip"):
            before = base.dense_features(x, method=method)
            after = peft_model.dense_features(x, method=method)
            assert (after - before).abs().max() > 1e-3, method
            with peft_model.disable_adapter():
                torch.testing.assert_close(peft_model.dense_features(x, method=method), before, rtol=1e-5, atol=1e-6)
