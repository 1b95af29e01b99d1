"""``maskclip eval zeroshot | retrieval | linear-probe | segmentation``: the evaluation tasks on the command line."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable, List, Optional

from ..datasets.cli import add_csv_arguments
from ..dense import ALIASES, METHODS, canonical_name

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

    sp = tasks.add_parser("segmentation", help="zero-shot segmentation: mIoU and pixel accuracy per dense method")
    sp.add_argument("--data", required=True, help=DATA_HELP + " (with masks)")
    sp.add_argument("--methods", nargs="+", default=list(METHODS), type=canonical_name, choices=METHODS,
                    help=f"dense methods (default all; also accepted: {ALIASES})")
    sp.add_argument("--classnames-file", help="segmentation class names, one per line, line k = mask value k")
    sp.add_argument("--templates", help="template set name or one template with {} (default: the data's, else none)")
    sp.add_argument("--size", type=int, help="shorter side in px (default: the model's image size)")
    sp.add_argument("--window", type=int, help="sliding window in px (default: whole image)")
    sp.add_argument("--stride", type=int, help="window stride (default window/2)")
    common(sp)
    sp.set_defaults(func=cmd_segmentation)


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
    from . import zero_shot_segmentation

    r = zero_shot_segmentation(_load(args), _data(args, args.data), args.methods, _classnames(args.classnames_file),
                               args.templates, args.size, args.window, args.stride, progress=not args.no_progress)
    lines = []
    for method, res in r["methods"].items():
        everything = res["all_classes"]
        line = f"{method:<10} mIoU {everything['miou']:.4f} pixel acc {everything['pixel_accuracy']:.4f}"
        if "foreground" in res:
            line += f" | foreground mIoU {res['foreground']['miou']:.4f}"
        lines.append(line)
    _report(args, r, lines)


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
