"""SigLIP2 B/16: maskclip against open_clip and transformers at the same weights (encode_image, encode_text).

    python benchmarks/families.py                      # batch 8 images at 224 px, 64 texts, 3 repeats
    python benchmarks/families.py --image-batch 1 --text-batch 2 --repeats 1   # a sanity run

One random-weight ``ViT-B-16-SigLIP2`` is made by open_clip (``create_model(name, pretrained=None)``,
random norms and biases), written in open_clip's Hub layout and loaded by maskclip as a user would;
transformers gets the same tensors as a ``SiglipModel`` (SigLIP2 at a fixed resolution is that class,
as in ``google/siglip2-base-patch16-224``), renamed here. The features' differences from open_clip
are printed with the timings (transformers' SigLIP uses tanh GELU in the image tower where timm uses
the exact one, so its image features differ slightly). fp32, CPU, contenders alternating per repeat.
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
    return p.parse_args(argv)


def _siglip_config(model_cfg: dict):
    from transformers import SiglipConfig

    t = model_cfg["text_cfg"]
    text = dict(vocab_size=t["vocab_size"], hidden_size=t["width"], intermediate_size=4 * t["width"],
                num_hidden_layers=t["layers"], num_attention_heads=t["heads"], max_position_embeddings=t["context_length"],
                hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, projection_size=model_cfg["embed_dim"])
    vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                  image_size=224, patch_size=16, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
    return SiglipConfig(text_config=text, vision_config=vision)


def _to_siglip(sd: dict, layers: int = 12) -> dict:
    """open_clip SigLIP state dict -> transformers ``SiglipModel`` names (the benchmark's own copy)."""
    out = {"logit_scale": sd["logit_scale"].reshape(1), "logit_bias": sd["logit_bias"].reshape(1)}
    v, tv = "visual.trunk.", "vision_model."
    out[tv + "embeddings.patch_embedding.weight"] = sd[v + "patch_embed.proj.weight"]
    out[tv + "embeddings.patch_embedding.bias"] = sd[v + "patch_embed.proj.bias"]
    out[tv + "embeddings.position_embedding.weight"] = sd[v + "pos_embed"][0]
    for i in range(layers):
        b, h = f"{v}blocks.{i}.", f"{tv}encoder.layers.{i}."
        for part, w in zip("qkv", sd[b + "attn.qkv.weight"].chunk(3)):
            out[h + f"self_attn.{part}_proj.weight"] = w
        for part, w in zip("qkv", sd[b + "attn.qkv.bias"].chunk(3)):
            out[h + f"self_attn.{part}_proj.bias"] = w
        for ours, theirs in (("attn.proj", "self_attn.out_proj"), ("norm1", "layer_norm1"), ("norm2", "layer_norm2"),
                             ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
            for p in ("weight", "bias"):
                out[f"{h}{theirs}.{p}"] = sd[f"{b}{ours}.{p}"]
    pool, head = v + "attn_pool.", tv + "head."
    out[head + "probe"] = sd[pool + "latent"]
    out[head + "attention.in_proj_weight"] = torch.cat([sd[pool + "q.weight"], sd[pool + "kv.weight"]])
    out[head + "attention.in_proj_bias"] = torch.cat([sd[pool + "q.bias"], sd[pool + "kv.bias"]])
    for ours, theirs in (("proj", "attention.out_proj"), ("norm", "layernorm"), ("mlp.fc1", "mlp.fc1"),
                         ("mlp.fc2", "mlp.fc2")):
        for p in ("weight", "bias"):
            out[f"{head}{theirs}.{p}"] = sd[f"{pool}{ours}.{p}"]
    for p in ("weight", "bias"):
        out[f"{tv}post_layernorm.{p}"] = sd[f"{v}norm.{p}"]
    t, tt = "text.", "text_model."
    out[tt + "embeddings.token_embedding.weight"] = sd[t + "token_embedding.weight"]
    out[tt + "embeddings.position_embedding.weight"] = sd[t + "positional_embedding"]
    for i in range(layers):
        b, h = f"{t}transformer.resblocks.{i}.", f"{tt}encoder.layers.{i}."
        for part, w in zip("qkv", sd[b + "attn.in_proj_weight"].chunk(3)):
            out[h + f"self_attn.{part}_proj.weight"] = w
        for part, w in zip("qkv", sd[b + "attn.in_proj_bias"].chunk(3)):
            out[h + f"self_attn.{part}_proj.bias"] = w
        for ours, theirs in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
                             ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
            for p in ("weight", "bias"):
                out[f"{h}{theirs}.{p}"] = sd[f"{b}{ours}.{p}"]
    for p in ("weight", "bias"):
        out[f"{tt}final_layer_norm.{p}"] = sd[f"{t}ln_final.{p}"]
        out[f"{tt}head.{p}"] = sd[f"{t}text_projection.{p}"]
    return out


def build(workdir: Path):
    """The three models with identical weights, in eval mode."""
    import open_clip
    from transformers import SiglipModel

    torch.manual_seed(0)
    oc = factories._perturb(open_clip.create_model(NAME, pretrained=None).eval(), 0)
    model_cfg = open_clip.get_model_config(NAME)
    folder = factories.write_open_clip_folder(workdir / "open_clip", oc, model_cfg)
    ours = maskclip.load(folder)
    hf = SiglipModel(_siglip_config(model_cfg)).eval()
    missing, unexpected = hf.load_state_dict(_to_siglip(oc.state_dict()), strict=False)
    assert not unexpected and all(k.endswith("position_ids") for k in missing), (missing, unexpected)
    return ours, oc, hf, model_cfg


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory(prefix="maskclip-families-") as tmp:
        ours, oc, hf, model_cfg = build(Path(tmp))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.image_batch, 3, 224, 224, generator=g)
    ids = torch.randint(1, model_cfg["text_cfg"]["vocab_size"], (args.text_batch, model_cfg["text_cfg"]["context_length"]),
                        generator=g)
    image_calls = {"open_clip": lambda: oc.encode_image(x), "maskclip": lambda: ours.encode_image(x),
                   "transformers": lambda: hf.get_image_features(pixel_values=x)}
    text_calls = {"open_clip": lambda: oc.encode_text(ids), "maskclip": lambda: ours.encode_text(ids),
                  "transformers": lambda: hf.get_text_features(input_ids=ids)}
    doc = {"model": NAME, "dtype": "float32", "threads": torch.get_num_threads(), "loadavg_before": loadavg(),
           "workloads": []}
    for title, calls, items in (("encode_image, 224 px", image_calls, len(x)), ("encode_text", text_calls, len(ids))):
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
