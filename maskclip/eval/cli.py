"""``maskclip eval zeroshot | retrieval | linear-probe | segmentation | segmentation-probe``: evaluation tasks."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable, List, Optional

from ..datasets.cli import add_csv_arguments
from ..dense import ALIASES, METHODS, canonical_name, tower_methods
from ..refine import REFINEMENTS
from ..segmentation import BATCH_SIZE as SEGMENTATION_BATCH
from ..resources import read_json

BENCHMARKS = tuple(read_json("segmentation_benchmarks.json")["benchmarks"])

DATA_HELP = ("synthetic:SPLIT[,n=N,size=S,seed=K,label=shape|colour_shape], a folder of class subfolders, "
             "a .csv/.tsv, a folder of .tar shards or a shard manifest .json")


def add_eval_parser(sub, model_args: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register ``eval`` and its tasks on the top-level subparsers ``sub``."""
    p = sub.add_parser("eval", help="evaluate a model: zero-shot, retrieval, linear probe, segmentation (JSON results)")
    tasks = p.add_subparsers(dest="task", metavar="TASK", required=True)

    def common(sp):
        model_args(sp)
        add_csv_arguments(sp)
        sp.add_argument("--out", help="write the results JSON here (default: print it)")
        sp.add_argument("--batch-size", type=int, default=64)
        sp.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")

    sp = tasks.add_parser("zeroshot", help="zero-shot classification: top-1, top-5, mean per-class recall")
    sp.add_argument("--data", required=True, help=DATA_HELP)
    sp.add_argument("--classnames-file", help="class names, one per line in label order (default: the data's)")
    sp.add_argument("--templates", help="template set name or one template with {} (default: the data's, else none)")
    common(sp)
    sp.set_defaults(func=cmd_zeroshot)

    sp = tasks.add_parser("retrieval", help="image-text retrieval: R@1/5/10 both directions")
    sp.add_argument("--data", required=True, help=DATA_HELP + " (with captions)")
    common(sp)
    sp.set_defaults(func=cmd_retrieval)

    sp = tasks.add_parser("linear-probe", help="logistic regression on frozen image features, weight-decay sweep")
    sp.add_argument("--train", required=True, help="training data: " + DATA_HELP)
    sp.add_argument("--test", required=True, help="test data, same classes")
    sp.add_argument("--val", help="validation data for the sweep (default: a seeded 20%% of --train)")
    sp.add_argument("--weight-decays", type=float, nargs="+", metavar="WD",
                    help="the sweep (default every power of 10 from 1e-6 to 10)")
    sp.add_argument("--max-iter", type=int, default=300, help="L-BFGS iterations per fit (default 300)")
    sp.add_argument("--seed", type=int, default=0, help="seed of the held-out validation split")
    common(sp)
    sp.set_defaults(func=cmd_linear_probe)

    sp = tasks.add_parser("segmentation", help="zero-shot segmentation: mIoU and pixel accuracy per dense method, "
                                               "on --data or on a benchmark under its published protocol")
    source = sp.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help=DATA_HELP + " (with masks)")
    source.add_argument("--benchmark", choices=BENCHMARKS + ("all",),
                        help="a benchmark in its usual folder layout (--root), or all eight (--data-root)")
    sp.add_argument("--root", help="with --benchmark NAME: the benchmark's folder (e.g. .../VOCdevkit/VOC2012)")
    sp.add_argument("--data-root", help="with --benchmark all: the folder holding each benchmark under its usual name")
    sp.add_argument("--methods", nargs="+", type=canonical_name, choices=METHODS,
                    help=f"with --data: dense methods (default all the model's tower runs; also accepted: {ALIASES})")
    sp.add_argument("--method", type=canonical_name, choices=METHODS,
                    help="with --benchmark: the dense method (default clearclip; vanilla for ConvNeXt towers)")
    sp.add_argument("--refine", choices=REFINEMENTS, help="with --benchmark: post-processing of the scores (PAMR)")
    sp.add_argument("--sfr", action="store_true", default=None,
                    help="with --benchmark and --method resclip: ResCLIP's semantic feedback refinement")
    sp.add_argument("--variant", help="with --benchmark: another repository's settings (naclip)")
    sp.add_argument("--limit", type=int, help="with --benchmark: the first N images of each benchmark only")
    sp.add_argument("--classnames-file", help="with --data: segmentation class names, one per line, line k = mask value k")
    sp.add_argument("--templates", help="with --data: template set name or one template with {} (default: the data's)")
    sp.add_argument("--size", type=int, help="shorter side in px (default: the model's image size; the protocol's "
                                             "with --benchmark)")
    sp.add_argument("--window", type=int, help="sliding window in px (default: whole image; the protocol's with "
                                               "--benchmark, where 0 means the whole image)")
    sp.add_argument("--stride", type=int, help="window stride (default window/2; the protocol's with --benchmark)")
    common(sp)
    sp.set_defaults(func=cmd_segmentation, batch_size=SEGMENTATION_BATCH)  # windows per forward pass

    sp = tasks.add_parser("segmentation-probe", help="linear segmentation probe: a 1x1 linear head on frozen patch "
                                                     "features, trained on the train split, mIoU on val")
    source = sp.add_mutually_exclusive_group(required=True)
    source.add_argument("--benchmark", choices=BENCHMARKS, help="a benchmark in its usual folder layout (--root): "
                                                                "its train split fits the head, its val split scores it")
    source.add_argument("--train", help="training data with masks: " + DATA_HELP)
    sp.add_argument("--root", help="with --benchmark: the benchmark's folder")
    sp.add_argument("--test", help="with --train: the data scored, same segmentation classes")
    sp.add_argument("--size", type=int, help="shorter side in px (default: the benchmark's short side, else the "
                                             "model's image size)")
    sp.add_argument("--weight-decay", type=float, default=1e-4, help="L2 penalty on the head's weights (default 1e-4)")
    sp.add_argument("--max-iter", type=int, default=300, help="L-BFGS iterations (default 300)")
    sp.add_argument("--patches-per-image", type=int, help="training patches sampled per image (default all)")
    sp.add_argument("--limit", type=int, help="the first N images of each split only")
    sp.add_argument("--seed", type=int, default=0, help="seed of the patch sampling")
    model_args(sp)
    sp.add_argument("--out", help="write the results JSON here (default: print it)")
    sp.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    sp.set_defaults(func=cmd_segmentation_probe)


def _data(args, spec: str, classnames: Optional[List[str]] = None):
    """``spec`` as given, or, for a CSV/TSV, the ``EvalSet`` read with the --csv-* flags."""
    from ..datasets import parse_spec
    from .datasets import open_dataset

    if parse_spec(spec).kind != "table":
        return spec
    return open_dataset(spec, classnames, image_column=args.csv_image_key, caption_column=args.csv_caption_key,
                        separator=args.csv_separator)


def _load(args):
    import maskclip

    return maskclip.load(args.model, device=args.device)


def _classnames(path: Optional[str]) -> Optional[List[str]]:
    if path is None:
        return None
    return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def cmd_zeroshot(args) -> None:
    from . import zero_shot_classification

    model = _load(args)
    classnames = _classnames(args.classnames_file)
    r = zero_shot_classification(model, _data(args, args.data, classnames), classnames, args.templates,
                                 args.batch_size, progress=not args.no_progress)
    _report(args, r, [f"top1 {r['top1']:.4f}", f"top5 {r.get('top5', float('nan')):.4f}",
                      f"mean per-class recall {r['mean_per_class_recall']:.4f}", f"n {r['n']}"])


def cmd_retrieval(args) -> None:
    from . import image_text_retrieval

    r = image_text_retrieval(_load(args), _data(args, args.data), args.batch_size, progress=not args.no_progress)
    lines = [f"{d} R@1/5/10 " + " ".join(f"{r[f'{d}_R@{k}']:.4f}" for k in (1, 5, 10))
             for d in ("image_to_text", "text_to_image")]
    _report(args, r, lines + [f"{r['n_images']} images, {r['n_texts']} texts"])


def cmd_linear_probe(args) -> None:
    from . import linear_probe_classification
    from .linear_probe import WEIGHT_DECAYS

    r = linear_probe_classification(_load(args), _data(args, args.train), _data(args, args.test),
                                    args.val and _data(args, args.val),
                                    args.weight_decays or WEIGHT_DECAYS, args.max_iter, args.seed,
                                    args.batch_size, progress=not args.no_progress)
    _report(args, r, [f"top1 {r['top1']:.4f}", f"mean per-class recall {r['mean_per_class_recall']:.4f}",
                      f"weight decay {r['weight_decay']:g}",
                      f"n train/val/test {r['n_train']}/{r['n_val']}/{r['n_test']}"])


def cmd_segmentation(args) -> None:
    if args.benchmark is not None:
        return cmd_segmentation_benchmark(args)
    from . import zero_shot_segmentation

    _refuse(args, "--data", ("root", "data_root", "method", "refine", "sfr", "variant", "limit"))
    model = _load(args)
    methods = args.methods or list(tower_methods(model.visual) or METHODS)
    r = zero_shot_segmentation(model, _data(args, args.data), methods, _classnames(args.classnames_file),
                               args.templates, args.size, args.window, args.stride, progress=not args.no_progress,
                               batch_size=args.batch_size)
    lines = []
    for method, res in r["methods"].items():
        everything = res["all_classes"]
        line = f"{method:<10} mIoU {everything['miou']:.4f} pixel acc {everything['pixel_accuracy']:.4f}"
        if "foreground" in res:
            line += f" | foreground mIoU {res['foreground']['miou']:.4f}"
        lines.append(line)
    _report(args, r, lines)


def cmd_segmentation_benchmark(args) -> None:
    from ..errors import InputError
    from .segmentation_benchmark import all_benchmarks, benchmark_segmentation

    _refuse(args, "--benchmark", ("classnames_file", "templates"))
    if args.methods is not None:
        raise InputError("--methods cannot be used with --benchmark (it takes one --method)")
    overrides = {k: v for k, v in (("short_side", args.size), ("stride", args.stride)) if v is not None}
    if args.window is not None:
        overrides["window"] = args.window or None
    kwargs = dict(method=args.method, refine=args.refine, sfr=bool(args.sfr), variant=args.variant, limit=args.limit,
                  progress=not args.no_progress, batch_size=args.batch_size, **overrides)
    if args.benchmark == "all":
        _need(args, "data_root", "--benchmark all needs --data-root DIR (the folder holding the eight benchmarks)")
        _refuse(args, "--benchmark all", ("root",))
        r = all_benchmarks(_load(args), args.data_root, **kwargs)
        lines = [f"{name:<12} mIoU {miou:.4f}" for name, miou in r["miou"].items()]
        lines.append(f"{'average':<12} mIoU {r['average_miou']:.4f}")
    else:
        _need(args, "root", f"--benchmark {args.benchmark} needs --root, the benchmark's folder")
        _refuse(args, f"--benchmark {args.benchmark}", ("data_root",))
        r = benchmark_segmentation(_load(args), args.benchmark, args.root, **kwargs)
        lines = [f"{r['benchmark']} {r['method']}: mIoU {r['miou']:.4f} pixel acc {r['pixel_accuracy']:.4f} "
                 f"({r['n']} images, {r['seconds']:.1f} s)"]
    _report(args, r, lines)


def cmd_segmentation_probe(args) -> None:
    from .segmentation_probe import benchmark_splits, segmentation_probe, spec_split

    if args.benchmark is not None:
        _need(args, "root", f"--benchmark {args.benchmark} needs --root, the benchmark's folder")
        _refuse(args, "--benchmark", ("test",))
        train, val = benchmark_splits(args.benchmark, args.root)
        from ..datasets.segmentation_benchmarks import benchmark

        size = args.size if args.size is not None else benchmark(args.benchmark)["short_side"]
    else:
        _need(args, "test", "--train needs --test, the data to score")
        _refuse(args, "--train", ("root",))
        train, val, size = spec_split(args.train), spec_split(args.test), args.size
    r = segmentation_probe(_load(args), train, val, size, args.weight_decay, args.max_iter, args.patches_per_image,
                           args.limit, args.seed, progress=not args.no_progress)
    _report(args, r, [f"mIoU {r['miou']:.4f} pixel acc {r['pixel_accuracy']:.4f}",
                      f"{r['n_train']} train images ({r['n_train_patches']} patches), {r['n_val']} val images"])


def _need(args, dest: str, message: str) -> None:
    from ..errors import InputError

    if getattr(args, dest) is None:
        raise InputError(message)


def _refuse(args, mode: str, dests) -> None:
    """Options that do not apply with ``mode`` are an error, not silently ignored."""
    from ..errors import InputError

    given = ["--" + d.replace("_", "-") for d in dests if getattr(args, d) is not None]
    if given:
        raise InputError(f"{', '.join(given)} cannot be used with {mode}")


def _report(args, results: dict, lines: List[str]) -> None:
    """With ``--out``: write the JSON and print the summary lines; without: print the JSON."""
    from .results import to_json, write_results

    if not args.out:
        print(to_json(results), end="")
        return
    write_results(results, args.out)
    for line in lines:
        print(line)
    print(f"wrote {args.out}")
