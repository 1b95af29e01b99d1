"""Images/s of sliding-window segmentation: maskclip's batched windows against the reference repositories' loop.

    python benchmarks/segmentation_speed.py                       # ViT-B/16, NACLIP, 8 images of 336 x 448
    python benchmarks/segmentation_speed.py --threads 1 --images 4 --classes 150

The same random ViT-B/16 (open_clip's, random norms and biases too, ``tests/factories.py``) in
both contenders, the benchmark protocol of SCLIP and NACLIP (shorter side 336, windows of 224 px,
stride 112: 6 windows for a 336 x 448 image), one text classifier built once:

- ``reference``: the loop NACLIP's ``NACLIPSegmentation.forward_slide`` / ``forward_feature`` run
  (sinahmr/NACLIP ``naclip.py``; SCLIP's and ClearCLIP's are the same loop): for each window, one
  forward pass of open_clip's vision tower with NACLIP's last block (``custom_attn``: ``k kᵀ`` plus the
  Gaussian neighbourhood bias, cached per grid as NACLIP caches it; no residual, no MLP), the patch
  tokens normalised, times the text features, upsampled to the window and summed where windows
  overlap; then the mean, upsampled to the image;
- ``maskclip, window by window``: maskclip's model on the same weights, ``batch_size=1``;
- ``maskclip``: the windows of consecutive images in shared forward passes (``batch_size``, default 8),
  as ``maskclip eval segmentation`` runs them;
- with ``--bf16``, also ``maskclip`` under bfloat16 autocast (``load(..., autocast=torch.bfloat16)``):
  not the same outputs (its agreement is reported), but where the CPU has AMX or AVX512-BF16 it is
  the fast setting.

Before timing, the scores of all three are compared (max relative difference, and the fraction of
pixels whose best class differs). Contenders alternate within each repeat (``timing.alternate``);
the median is reported. The goal is >= 3x the reference. On a shared machine the numbers are
rough: the load average is printed with them.
"""
import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import factories  # noqa: E402
from timing import alternate, loadavg  # noqa: E402
from workloads import rows  # noqa: E402

import maskclip  # noqa: E402
from maskclip.segmentation import _windows  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=8, help="images per repeat (default 8)")
    p.add_argument("--height", type=int, default=336, help="image height after the protocol's resize (default 336)")
    p.add_argument("--width", type=int, default=448, help="image width (default 448: a 500 x 375 photo at 336)")
    p.add_argument("--classes", type=int, default=21, help="class names (default 21, VOC21's)")
    p.add_argument("--batch-size", type=int, default=8, help="maskclip's windows per forward pass")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    p.add_argument("--bf16", action="store_true", help="also time maskclip under bfloat16 autocast")
    p.add_argument("--out", default=None, help="also write the JSON here")
    return p.parse_args(argv)


# --- the reference: NACLIP's forward_slide over open_clip's vision tower ------------------------------------


def _gaussian_window(dim1: int, dim2: int, std: float) -> torch.Tensor:
    """NACLIP ``VisionTransformer.gaussian_window``."""
    constant = 1 / (std * math.sqrt(2))
    ks = []
    for dim in (dim1, dim2):
        start = -(dim - 1) / 2.0
        ks.append(torch.linspace(start * constant, (start + (dim - 1)) * constant, steps=dim))
    return torch.exp(-(torch.stack(torch.meshgrid(*ks, indexing="ij")) ** 2).sum(0))


def _attention_addition(dim1: int, dim2: int, std: float = 5.0) -> torch.Tensor:
    """NACLIP ``VisionTransformer.get_attention_addition``: the Gaussian bias ``[N + 1, N + 1]``."""
    window = _gaussian_window(2 * dim1 - 1, 2 * dim2 - 1, std)
    m = torch.einsum("ij,kl->ijkl", torch.eye(dim1), torch.eye(dim2)).permute(0, 3, 1, 2).contiguous()
    out = F.conv2d(m.view(-1, dim1, dim2).unsqueeze(1), window[None, None], padding="same").squeeze(1)
    out = out.view(dim1 * dim2, dim1 * dim2)
    return torch.hstack([torch.zeros(dim1 * dim2 + 1, 1), torch.vstack([torch.zeros(1, dim1 * dim2), out])])


class ReferenceNACLIP:
    """NACLIP's segmentor on open_clip's ``VisionTransformer`` (batch-first blocks), text features fixed."""

    def __init__(self, visual, query_features: torch.Tensor, window: int, stride: int):
        self.visual, self.query, self.window, self.stride = visual, query_features, window, stride
        self.additions = {}  # NACLIP's addition_cache

    def _last_block(self, x: torch.Tensor, grid) -> torch.Tensor:
        """NACLIP ``custom_attn`` (attn_strategy 'naclip') of the last block, arch 'reduced'."""
        blk = self.visual.transformer.resblocks[-1]
        attn = blk.attn
        x = blk.ln_1(x).transpose(0, 1)  # NLD -> LND, as NACLIP's code runs
        n, bsz, d = x.shape
        heads = attn.num_heads
        hd = d // heads
        q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        k = k.contiguous().view(-1, bsz * heads, hd).transpose(0, 1)
        v = v.contiguous().view(-1, bsz * heads, hd).transpose(0, 1)
        if grid not in self.additions:
            self.additions[grid] = _attention_addition(*grid).unsqueeze(0).to(x.dtype)
        w = torch.bmm(k, k.transpose(1, 2)) * hd ** -0.5 + self.additions[grid]
        out = torch.bmm(F.softmax(w, dim=-1), v).transpose(0, 1).contiguous().view(-1, bsz, d)
        return attn.out_proj(out).transpose(0, 1)

    def forward_feature(self, img: torch.Tensor) -> torch.Tensor:
        """One window ``[1, 3, h, w]`` -> logits ``[1, Q, h, w]``."""
        v = self.visual
        grid = (img.shape[-2] // v.patch_size[0], img.shape[-1] // v.patch_size[1])
        x = v._embeds(img)
        for blk in v.transformer.resblocks[:-1]:
            x = blk(x)
        x = self._last_block(x, grid)
        feats = (v.ln_post(x) @ v.proj)[:, 1:]
        feats = feats / feats.norm(dim=-1, keepdim=True)
        logits = (feats @ self.query.T).permute(0, 2, 1).reshape(1, -1, *grid)
        return F.interpolate(logits, size=img.shape[-2:], mode="bilinear")

    def forward_slide(self, img: torch.Tensor, out_size) -> torch.Tensor:
        """NACLIP ``forward_slide``: ``[1, 3, H, W]`` -> logits ``[Q, out_size]``."""
        h, w = img.shape[-2:]
        preds = torch.zeros(1, self.query.shape[0], h, w)
        count = torch.zeros(1, 1, h, w)
        for top in _windows(h, self.window, self.stride):
            for left in _windows(w, self.window, self.stride):
                crop = img[..., top:top + self.window, left:left + self.window]
                preds[..., top:top + crop.shape[-2], left:left + crop.shape[-1]] += self.forward_feature(crop)
                count[..., top:top + crop.shape[-2], left:left + crop.shape[-1]] += 1
        return F.interpolate(preds / count, size=out_size, mode="bilinear")[0]


# --- the run ---------------------------------------------------------------------------------------------


def build(workdir: Path):
    """open_clip's random ViT-B/16, and maskclip's copies of it: fp32, bf16 autocast."""
    cfg = factories.open_clip_model_cfg(factories.VIT_B_16)
    oc = factories.random_open_clip(cfg).eval()
    folder = factories.write_open_clip_folder(workdir / "open_clip", oc, cfg)
    return maskclip.load(folder), maskclip.load(folder, autocast=torch.bfloat16), oc


def compare(scores, reference) -> dict:
    rel = max(((s - r).abs().max() / r.abs().max()).item() for s, r in zip(scores, reference))
    differ = sum((s.argmax(0) != r.argmax(0)).sum().item() for s, r in zip(scores, reference))
    pixels = sum(r[0].numel() for r in reference)
    return {"max_rel_diff": rel, "argmax_differs": differ / pixels}


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory(prefix="maskclip-segspeed-") as tmp:
        model, model_bf16, oc = build(Path(tmp))
    g = torch.Generator().manual_seed(0)
    images = [torch.randn(1, 3, args.height, args.width, generator=g) for _ in range(args.images)]
    out_size = (args.height * 3 // 2, args.width * 3 // 2)  # the original photo's size (the protocol upsamples)
    classifier = F.normalize(torch.randn(model.config.embed_dim, args.classes, generator=g), dim=0)
    window, stride = 224, 112
    ref = ReferenceNACLIP(oc.visual, classifier.T.contiguous(), window, stride)

    def run_reference():
        return [ref.forward_slide(x, out_size) for x in images]

    def run_maskclip(batch_size, m=model):
        inputs = [(x, out_size, i) for i, x in enumerate(images)]
        return [s for _, s in m._segmentation_scores_many(inputs, classifier, "naclip", window, stride,
                                                            batch_size=batch_size)]

    calls = {"reference (NACLIP's loop on open_clip)": run_reference,
             "maskclip, window by window": lambda: run_maskclip(1),
             f"maskclip (batch {args.batch_size})": lambda: run_maskclip(args.batch_size)}
    if args.bf16:
        calls[f"maskclip (batch {args.batch_size}), bf16 autocast"] = lambda: run_maskclip(args.batch_size, model_bf16)
    n_windows = len(_windows(args.height, window, stride)) * len(_windows(args.width, window, stride))
    doc = {"benchmark": "segmentation_speed", "method": "naclip", "model": "ViT-B/16 (random weights)",
           "images": args.images, "image_size": [args.height, args.width], "windows_per_image": n_windows,
           "window": window, "stride": stride, "classes": args.classes, "dtype": "float32",
           "threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "loadavg_before": loadavg()}
    outputs = {name: call() for name, call in calls.items()}  # also the warm-up
    reference = outputs.pop("reference (NACLIP's loop on open_clip)")
    doc["agreement"] = {name: compare(out, reference) for name, out in outputs.items()}
    table = rows(alternate(calls, args.repeats, warmup=0), args.images, "reference (NACLIP's loop on open_clip)",
                 diff=lambda a, b: compare(a, b)["max_rel_diff"])
    base = next(r["median_s"] for r in table if r["contender"].startswith("reference"))
    for r in table:
        r["vs_reference"] = base / r["median_s"]
    doc["rows"] = table
    doc["loadavg_after"] = loadavg()
    text = json.dumps(doc, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return doc


if __name__ == "__main__":
    main()
