"""SigLIP2 B/16 (or ConvNeXt): maskclip against open_clip and transformers at the same weights (encode_image, encode_text).

    python benchmarks/families.py                      # batch 8 images at 224 px, 64 texts, 3 repeats
    python benchmarks/families.py --image-batch 1 --text-batch 2 --repeats 1   # a sanity run
    python benchmarks/families.py --model convnext_base_w --threads 1          # ConvNeXt: open_clip only

``--model convnext_base_w`` (or any open_clip ``convnext_*``) compares with open_clip alone, at the
model's own image size: transformers has no ConvNeXt CLIP.

One random-weight ``ViT-B-16-SigLIP2`` is made by open_clip (``create_model(name, pretrained=None)``,
random norms and biases), written in open_clip's Hub layout and loaded by maskclip as a user would;
transformers gets the same tensors as a ``SiglipModel`` (SigLIP2 at a fixed resolution is that class,
as in ``google/siglip2-base-patch16-224``), converted by ``maskclip.convert.siglip_transformers``
(which declares the image tower's exact GELU, as timm computes it, so the three agree to ~1e-6). The
features' differences from open_clip are printed with the timings. fp32, CPU, contenders alternating
per repeat.
Prints a JSON document with every timing; do not compare numbers taken on a loaded machine.
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import factories  # noqa: E402
from timing import alternate, loadavg  # noqa: E402
from workloads import rows  # noqa: E402

import maskclip  # noqa: E402

NAME = "ViT-B-16-SigLIP2"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image-batch", type=int, default=8)
    p.add_argument("--text-batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--model", default=NAME, help=f"open_clip architecture: {NAME} (default) or a convnext_* one")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    return p.parse_args(argv)


def build(workdir: Path, name: str = NAME):
    """The models with identical weights, in eval mode (transformers: ``None`` for a ConvNeXt)."""
    import open_clip

    torch.manual_seed(0)
    oc = factories._perturb(open_clip.create_model(name, pretrained=None).eval(), 0)
    model_cfg = open_clip.get_model_config(name)
    folder = factories.write_open_clip_folder(workdir / "open_clip", oc, model_cfg)
    ours = maskclip.load(folder)
    if name.startswith("convnext"):
        return ours, oc, None, model_cfg
    from transformers import SiglipConfig, SiglipModel

    from maskclip.convert.siglip_transformers import siglip_open_clip_to_hf

    hf_config, hf_sd = siglip_open_clip_to_hf(model_cfg, oc.state_dict())  # maskclip's own converter
    hf = SiglipModel(SiglipConfig(**hf_config)).eval()
    missing, unexpected = hf.load_state_dict(hf_sd, strict=False)
    assert not unexpected and all(k.endswith("position_ids") for k in missing), (missing, unexpected)
    return ours, oc, hf, model_cfg


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory(prefix="maskclip-families-") as tmp:
        ours, oc, hf, model_cfg = build(Path(tmp), args.model)
    g = torch.Generator().manual_seed(0)
    size = ours.config.vision.image_size
    x = torch.randn(args.image_batch, 3, size, size, generator=g)
    ids = torch.randint(1, model_cfg["text_cfg"]["vocab_size"], (args.text_batch, model_cfg["text_cfg"]["context_length"]),
                        generator=g)
    image_calls = {"open_clip": lambda: oc.encode_image(x), "maskclip": lambda: ours.encode_image(x)}
    text_calls = {"open_clip": lambda: oc.encode_text(ids), "maskclip": lambda: ours.encode_text(ids)}
    if hf is not None:
        image_calls["transformers"] = lambda: hf.get_image_features(pixel_values=x)
        text_calls["transformers"] = lambda: hf.get_text_features(input_ids=ids)
    doc = {"model": args.model, "dtype": "float32", "threads": torch.get_num_threads(), "loadavg_before": loadavg(),
           "workloads": []}
    for title, calls, items in ((f"encode_image, {size} px", image_calls, len(x)), ("encode_text", text_calls, len(ids))):
        table = rows(alternate(calls, args.repeats), items, "open_clip", diff=_diff)
        doc["workloads"].append({"title": f"{title}, batch {items}", "rows": table})
    doc["loadavg_after"] = loadavg()
    print(json.dumps(doc, indent=2))
    return doc


def _diff(a, b) -> float:
    a = getattr(a, "pooler_output", a)
    return ((a - b).norm() / b.norm()).item()


if __name__ == "__main__":
    main()
