"""The same random-weight CLIP in maskclip, open_clip and transformers, and their tokenizers.

The weights are made once, by open_clip (``tests/factories.py``: random weights, norms and biases),
written in open_clip's Hub layout and loaded by maskclip the way a user would; maskclip's export
in transformers' layout is then loaded by ``CLIPModel.from_pretrained``. ``check_agreement``
verifies the three compute the same features before anything is timed.
"""
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

import maskclip

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import factories  # noqa: E402


@dataclass
class Contenders:
    """Models (eval mode) with identical weights, and each library's tokenizer."""

    maskclip: "maskclip.MaskCLIP"
    open_clip: torch.nn.Module
    transformers: torch.nn.Module
    open_clip_folder: Path
    transformers_folder: Path

    def maskclip_variant(self, **load_kwargs) -> "maskclip.MaskCLIP":
        """Another maskclip copy of the same weights, e.g. ``autocast=torch.bfloat16`` or ``compile=True``."""
        return maskclip.load(self.open_clip_folder, **load_kwargs)

    def transformers_tokenizer(self):
        """A fresh transformers CLIP tokenizer (the Rust-backed ``CLIPTokenizerFast``) for these weights."""
        from transformers import CLIPTokenizerFast

        return CLIPTokenizerFast.from_pretrained(self.transformers_folder)


def build(arch: factories.Arch = factories.VIT_B_16, workdir=None) -> Contenders:
    """Random ``arch`` weights in all three libraries (files under ``workdir``, a temp dir by default)."""
    from transformers import CLIPModel

    workdir = Path(workdir or tempfile.mkdtemp(prefix="maskclip-bench-"))
    cfg = factories.open_clip_model_cfg(arch)
    oc = factories.random_open_clip(cfg)
    oc_folder = factories.write_open_clip_folder(workdir / "open_clip", oc, cfg)
    model = maskclip.load(oc_folder)
    hf_folder = workdir / "transformers"
    model.save_pretrained(hf_folder, format="transformers")
    hf = CLIPModel.from_pretrained(hf_folder).eval()
    return Contenders(model, oc, hf, oc_folder, hf_folder)


def hf_features(output) -> torch.Tensor:
    return factories.features(output)


@torch.inference_mode()
def check_agreement(c: Contenders, image_size: int) -> dict:
    """Max |difference| of image and text features, maskclip and transformers vs open_clip."""
    import open_clip

    x = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    ids = open_clip.tokenize(factories.PROMPTS)
    ref_image, ref_text = c.open_clip.encode_image(x), c.open_clip.encode_text(ids)
    hf_text = hf_features(c.transformers.get_text_features(input_ids=ids))
    return {
        "maskclip_image": (c.maskclip.encode_image(x) - ref_image).abs().max().item(),
        "maskclip_text": (c.maskclip.encode_text(factories.PROMPTS) - ref_text).abs().max().item(),
        "transformers_image": (hf_features(c.transformers.get_image_features(pixel_values=x)) - ref_image)
        .abs().max().item(),
        "transformers_text": (hf_text - ref_text).abs().max().item(),
    }
