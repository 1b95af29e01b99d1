"""The ``maskclip`` command line: models, classify, embed, segment, convert, eval, data, train, export, export-onnx.

Every subcommand wraps the same public functions a Python user calls. Bad input ends the
program with a one-line ``maskclip: error: ...`` on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import List, Optional, Tuple

DEFAULT_MODEL = os.environ.get("MASKCLIP_MODEL", "tiny-shapes")


class CLIError(Exception):
    """A user error found by the CLI itself (not by the library)."""


def _labels(args) -> List[str]:
    labels = list(args.labels or [])
    if args.labels_file:
        text = Path(args.labels_file).read_text(encoding="utf-8")
        labels += [line.strip() for line in text.splitlines() if line.strip()]
    if not labels:
        raise CLIError("give the candidate labels with --labels A B C or --labels-file FILE")
    return labels


def _load(args):
    import maskclip

    return maskclip.load(args.model, device=args.device, allow_pickle=getattr(args, "allow_pickle", False))


# --- subcommands ---------------------------------------------------------------------------

def cmd_models(args) -> None:
    import maskclip

    rows = []
    for name in maskclip.available_models():
        info = maskclip.model_info(name)
        rows.append({"name": name, "weights": "yes" if info.get("weights_available", True) else "not public",
                     "act": info.get("act", ""), "description": info.get("description", "")})
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    width = max(len(r["name"]) for r in rows)
    print(f"{'name':<{width}}  {'weights':<10}  {'act':<10}  description")
    for r in rows:
        print(f"{r['name']:<{width}}  {r['weights']:<10}  {r['act']:<10}  {r['description']}")


def cmd_classify(args) -> None:
    labels = _labels(args)
    model = _load(args)
    probs = model.classify(args.images, labels, templates=args.templates)
    results = []
    for path, p in zip(args.images, probs):
        top = p.topk(min(args.top, len(labels)))
        results.append({"image": path, "labels": [{"label": labels[i], "prob": round(float(v), 6)}
                                                  for v, i in zip(top.values, top.indices)]})
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print("probabilities: sigmoid per label (SigLIP-style; rows need not sum to 1)" if model.sigmoid_probabilities
          else "probabilities: softmax over the labels (each image's sum to 1)")
    for r in results:
        print(r["image"])
        for item in r["labels"]:
            print(f"  {item['prob']:7.2%}  {item['label']}")


def cmd_embed(args) -> None:
    import torch

    if args.data:
        if args.images or args.text:
            raise CLIError("give either --data SPEC (a whole collection) or image paths / --text, not both")
        cmd_embed_collection(args)
        return
    if bool(args.images) == bool(args.text):
        raise CLIError("give either image paths or --text TEXT ... (not both, not neither), "
                       "or --data SPEC for a whole collection")
    out = Path(args.out)
    if out.suffix not in (".safetensors", ".npy"):
        raise CLIError(f"--out must end in .safetensors or .npy; got {out.name!r}")
    model = _load(args)
    items = args.images or args.text
    with torch.no_grad():
        chunks = []
        for i in range(0, len(items), args.batch_size):
            batch = items[i:i + args.batch_size]
            enc = model.encode_image if args.images else model.encode_text
            chunks.append(enc(batch, normalize=args.normalize).float().cpu())
    emb = torch.cat(chunks)
    _write_embeddings(out, emb, items, "image" if args.images else "text", model.config.name)
    print(f"wrote {emb.shape[0]} x {emb.shape[1]} embeddings to {out}")


def cmd_embed_collection(args) -> None:
    from .embed import embed_collection

    device = args.device
    if device == "cuda" and "LOCAL_RANK" in os.environ:  # torchrun: one GPU per process
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    import maskclip

    model = maskclip.load(args.model, device=device)
    stats = embed_collection(model, args.data, args.out, shard_size=args.shard_size, batch_size=args.batch_size,
                             workers=args.workers, text=False if args.no_text else None, dense=args.dense,
                             dense_method=args.dense_method, dtype=args.dtype, metadata_format=args.metadata_format,
                             image_column=args.csv_image_key, caption_column=args.csv_caption_key,
                             separator=args.csv_separator, progress=not args.no_progress, model_name=args.model)
    if int(os.environ.get("RANK", "0")) == 0:
        run = stats["this_run"]
        reasons = f", by reason {json.dumps(stats['skipped_by_reason'])}" if stats["skipped"] else ""
        print(f"embedded {stats['embedded']} inputs into {stats['parts']} shards in {args.out} "
              f"({stats['skipped']} skipped{reasons}); this run: {run['parts_written']} shards written, "
              f"{run['parts_already_done']} already done, {run['images_per_second']} images/s")


def _write_embeddings(out: Path, emb, items: List[str], kind: str, model_name: Optional[str]) -> None:
    from .atomic import atomic_write

    if out.suffix == ".npy":
        import numpy as np

        def write(tmp):
            with open(tmp, "wb") as f:
                np.save(f, emb.numpy())
        atomic_write(out, write)
        return
    from .serialization import write_safetensors

    write_safetensors({"embeddings": emb}, out,
                      metadata={"kind": kind, "items": json.dumps(items), "model": model_name or ""})


def cmd_segment(args) -> None:
    from .transforms import load_image

    labels = _labels(args)
    out = Path(args.out)
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
        raise CLIError(f"--out must be a .png/.jpg/.webp image path; got {out.name!r}")
    runs = _segment_runs(args)
    model = _load(args)
    image = load_image(args.image)
    maps = [(title, model.segment(image, labels, templates=args.templates, method=method, size=args.size,
                                  window=args.window, stride=args.stride, refine=args.refine,
                                  proxy=args.proxy if method == "proxyclip" else None, sfr=sfr))
            for title, method, sfr in runs]
    if args.compare:
        from .visualize import compare

        picture = compare(image, maps, labels, alpha=args.alpha)
    else:
        from .visualize import overlay

        picture = overlay(image, maps[0][1], labels, alpha=args.alpha)
    from .atomic import atomic_write

    atomic_write(out, lambda tmp: picture.save(tmp, format=_pil_format(out)))
    shares = [(seg.flatten().bincount(minlength=len(labels)) / seg.numel()).tolist() for _, seg in maps]
    print(f"wrote {out}")
    if not args.compare:
        for label, share in sorted(zip(labels, shares[0]), key=lambda ls: -ls[1]):
            print(f"  {share:7.2%}  {label}")
        return
    width = max(len(label) for label in labels)
    print("  " + " " * width + "".join(f"  {title:>{max(len(title), 7)}}" for title, _ in maps))
    for k, label in enumerate(labels):
        print(f"  {label:<{width}}" + "".join(f"  {s[k]:>{max(len(title), 7)}.2%}" for (title, _), s in zip(maps, shares)))


def _segment_runs(args) -> List[Tuple[str, Optional[str], bool]]:
    """``segment``'s ``(panel title, method, sfr)`` runs from ``--method`` / ``--compare`` / ``--proxy`` /
    ``--sfr``, checked before a model is loaded (method ``None``: the model's default, ``dense.default_method``)."""
    if not args.compare:
        return [("", _segment_method(args), args.sfr)]
    if args.method is not None:
        raise CLIError(f"--compare draws the methods it names; give --method or --compare, not both "
                       f"(got --method {args.method})")
    methods = list(args.compare)
    if args.proxy is not None and "proxyclip" not in methods:
        methods.append("proxyclip")  # --proxy: ProxyCLIP with that proxy is one of the panels
    if args.sfr and "resclip" not in methods:
        raise CLIError(f"--sfr (ResCLIP's semantic feedback refinement) refines the resclip panel; "
                       f"--compare {','.join(methods)} has none")
    suffix = f" + {args.refine}" if args.refine else ""
    return [(m + (" + sfr" if args.sfr and m == "resclip" else "") + suffix, m, args.sfr and m == "resclip")
            for m in methods]


def _segment_method(args) -> Optional[str]:
    """``segment``'s method from ``--method`` / ``--proxy`` / ``--sfr``, checked before a model is loaded
    (``None``: the model's default, ``dense.default_method``)."""
    if args.proxy is not None:
        if args.method is not None:
            raise CLIError(f"--proxy runs ProxyCLIP (the proxy's attention over CLIP's values) instead of a "
                           f"--method; give one of them, not both (got --method {args.method})")
        method = "proxyclip"
    else:
        method = args.method
    if args.sfr and method != "resclip":
        raise CLIError(f"--sfr (ResCLIP's semantic feedback refinement) needs --method resclip; "
                       f"got {method or 'clearclip (the default)'}")
    return method


def _method_list(text: str) -> List[str]:
    """``--compare``'s ``a,b,c`` -> dense method names (aliases resolved); argparse reports a bad one."""
    from . import dense

    names = [dense.canonical_name(part.strip()) for part in text.split(",") if part.strip()]
    allowed = dense.METHODS + dense.PROXY_METHODS
    unknown = [n for n in names if n not in allowed]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"expected dense methods separated by commas, among {list(allowed)} "
                                         f"(aliases {dense.ALIASES}); got {text!r}")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"each method once; got {text!r}")
    return names


def _pil_format(path: Path) -> str:
    return {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}[path.suffix.lower()]


def cmd_convert(args) -> None:
    import maskclip

    model = maskclip.load(args.source, allow_pickle=args.allow_pickle)
    model.save_pretrained(args.out, format=args.format)
    print(f"wrote {args.format} checkpoint to {args.out}")


def cmd_train(args) -> None:
    from .train.cli import run

    summary = run(args)
    print(f"{summary['stopped']} at step {summary['steps']}/{summary['total_steps']}; "
          f"checkpoint {summary['checkpoint']}" + (f"; model {summary['model']}" if summary["model"] else ""))


def cmd_export(args) -> None:
    from .train import checkpoint
    from .train.loop import export_student

    source = Path(args.run)
    folder = source if (source / "manifest.json").is_file() else checkpoint.latest(source / "checkpoints")
    if folder is None:
        raise CLIError(f"{source} is neither a training checkpoint folder nor a run folder with complete checkpoints")
    export_student(folder, args.out, format=args.format)
    print(f"wrote the student of {folder} to {args.out} ({args.format} format)")


def cmd_export_onnx(args) -> None:
    import maskclip
    from .onnx_export import export_onnx

    model = maskclip.load(args.model, allow_pickle=args.allow_pickle)
    try:
        out = export_onnx(model, args.out, opset=args.opset)
    except ImportError as e:
        raise CLIError(str(e)) from None
    print(f"wrote the image and text encoders of {args.model} as ONNX to {out} (inputs in {out / 'onnx_config.json'})")


# --- parser --------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    from . import dense, proxy, refine, serialization
    from .embed.collection import DTYPES
    from .embed.output import METADATA_FORMATS

    p = argparse.ArgumentParser(prog="maskclip", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def model_args(sp):
        sp.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"registered name, folder, weights file or hf-hub:org/repo (default {DEFAULT_MODEL})")
        sp.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps (default cpu)")

    def label_args(sp):
        sp.add_argument("--labels", nargs="+", metavar="LABEL", help="candidate labels")
        sp.add_argument("--labels-file", help="a text file with one label per line")
        sp.add_argument("--templates", default=None,
                        help="template set name (e.g. openai_imagenet) or one template with {} (default: labels as written)")

    sp = sub.add_parser("models", help="list registered model names")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_models)

    sp = sub.add_parser("classify", help="zero-shot classify images against labels")
    sp.add_argument("images", nargs="+", metavar="IMAGE")
    label_args(sp)
    model_args(sp)
    sp.add_argument("--top", type=int, default=5, help="labels to show per image (default 5)")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_classify)

    sp = sub.add_parser("embed", help="write image or text embeddings to .safetensors or .npy, or a whole "
                                      "collection (--data) to numbered shards",
                        description="maskclip embed IMAGE ... --out FILE, or, for a whole collection (many "
                                    "processes under torchrun --no-python maskclip embed ...; a rerun resumes), "
                                    "maskclip embed --data SPEC --out DIR")
    sp.add_argument("images", nargs="*", metavar="IMAGE")
    sp.add_argument("--text", nargs="+", metavar="TEXT", help="embed these texts instead of images")
    sp.add_argument("--out", required=True, help="output file, .safetensors or .npy (with --data: a folder)")
    sp.add_argument("--normalize", action="store_true", help="L2-normalise the embeddings (always, with --data)")
    sp.add_argument("--batch-size", type=int, default=32)
    model_args(sp)
    group = sp.add_argument_group("whole collections (--data)")
    group.add_argument("--data", metavar="SPEC",
                       help="a folder of images, a .csv/.tsv, tar shards (paths, globs, {a..b}) or their URLs "
                            "(with fsspec): writes DIR/img_emb/img_emb_N.npy, text_emb/, metadata/, stats.json")
    group.add_argument("--shard-size", type=int, default=10000, help="rows per output shard (default 10000; "
                                                                      "tar input: one output shard per tar)")
    group.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                       help="decoding processes per rank (default min(4, CPUs))")
    group.add_argument("--no-text", action="store_true", help="do not embed the captions")
    group.add_argument("--dense", action="store_true", help="also write patch features, DIR/dense_emb/")
    group.add_argument("--dense-method", default="clearclip", type=dense.canonical_name, choices=dense.METHODS)
    group.add_argument("--dtype", default="float16", choices=tuple(DTYPES))
    group.add_argument("--metadata-format", choices=METADATA_FORMATS,
                       help="default parquet when pyarrow is installed, else jsonl")
    group.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    from .datasets.cli import add_csv_arguments

    add_csv_arguments(group)
    sp.set_defaults(func=cmd_embed)

    sp = sub.add_parser("segment", help="zero-shot segmentation; writes a coloured overlay with a legend "
                                        "(--compare: several methods side by side)")
    sp.add_argument("image", metavar="IMAGE")
    label_args(sp)
    model_args(sp)
    sp.add_argument("--out", required=True, help="overlay image path (.png, .jpg, .webp)")
    sp.add_argument("--method", type=dense.canonical_name, choices=dense.METHODS,
                    help=f"dense method (default clearclip, vanilla for ConvNeXt towers; also accepted: {dense.ALIASES})")
    sp.add_argument("--compare", type=_method_list, metavar="M1,M2,...",
                    help="draw these dense methods side by side with one legend, e.g. naclip,sclip,clearclip "
                         "(instead of --method; --refine applies to each, --sfr to resclip)")
    sp.add_argument("--refine", choices=refine.REFINEMENTS, help="post-process the scores with the image "
                                                                 "(pamr: 10 iterations, dilations 8 and 16)")
    sp.add_argument("--proxy", metavar="NAME",
                    help=f"segment with ProxyCLIP, this model's attention over CLIP's values: one of "
                         f"{list(proxy.PROXIES)} or a timm ViT name (weights from the Hugging Face Hub via timm; "
                         f"replaces --method)")
    sp.add_argument("--sfr", action="store_true",
                    help="with --method resclip: ResCLIP's semantic feedback refinement (a first segmentation "
                         "steers the last attention; costs a PAMR of every label per window)")
    sp.add_argument("--size", type=int, default=None, help="shorter side in px (default: the model's image size)")
    sp.add_argument("--window", type=int, default=None, help="sliding window in px (default: whole image)")
    sp.add_argument("--stride", type=int, default=None)
    sp.add_argument("--alpha", type=float, default=0.5, help="overlay opacity (default 0.5)")
    sp.set_defaults(func=cmd_segment)

    sp = sub.add_parser("convert", help="convert a checkpoint between layouts")
    sp.add_argument("source", help="registered name, folder, weights file or hf-hub:org/repo")
    sp.add_argument("out", help="output folder")
    sp.add_argument("--format", default="maskclip", choices=serialization.FORMATS)
    sp.add_argument("--allow-pickle", action="store_true",
                    help="read pickled .bin/.pt checkpoints (with torch.load(weights_only=True))")
    sp.set_defaults(func=cmd_convert)

    from .train.cli import add_arguments

    sp = sub.add_parser("train", help="pretrain with a recipe (clip, slip, clip_mae, maskclip, rils)",
                        description="Pretrain a language-image model; torchrun -m maskclip.train takes the same "
                                    "arguments for many processes.")
    add_arguments(sp)
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("export", help="export the model of a training run or checkpoint for maskclip.load")
    sp.add_argument("run", help="a run folder (its newest complete checkpoint) or one checkpoint folder")
    sp.add_argument("out", help="output folder")
    sp.add_argument("--format", default="maskclip", choices=serialization.FORMATS)
    sp.set_defaults(func=cmd_export)

    sp = sub.add_parser("export-onnx", help="export the image and text encoders as ONNX graphs (dynamic batch and length)")
    sp.add_argument("model", help="registered name, folder, weights file or hf-hub:org/repo")
    sp.add_argument("out", help="output folder")
    sp.add_argument("--opset", type=int, default=None, help="ONNX opset, 18 or more (default: the exporter's)")
    sp.add_argument("--allow-pickle", action="store_true",
                    help="read pickled .bin/.pt checkpoints (with torch.load(weights_only=True))")
    sp.set_defaults(func=cmd_export_onnx)

    from .datasets.cli import add_data_parser
    from .eval.cli import add_eval_parser

    add_eval_parser(sub, model_args)
    add_data_parser(sub)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    from .errors import MaskCLIPError

    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (MaskCLIPError, CLIError, OSError) as e:
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"maskclip: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
