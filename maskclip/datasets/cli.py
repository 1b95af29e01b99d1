"""``maskclip data synth`` (write the synthetic shapes benchmark as tar shards), and the flags every
command reading a CSV/TSV shares."""
from __future__ import annotations

import argparse

from .synthetic import LABELS, SPLITS
from .table import parse_separator
from .writer import IMAGE_FORMATS


def add_data_parser(sub) -> None:
    """Register ``data`` and its commands on the top-level subparsers ``sub``."""
    p = sub.add_parser("data", help="datasets: write the synthetic benchmark as webdataset-style tar shards")
    commands = p.add_subparsers(dest="data_command", metavar="COMMAND", required=True)
    sp = commands.add_parser("synth", help="generate synthetic shapes images, captions and masks into tar shards",
                             formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sp.add_argument("--out", required=True, help="output folder (shards SPLIT-00000.tar ... and SPLIT.json)")
    sp.add_argument("--split", default="train", choices=SPLITS)
    sp.add_argument("--n", type=int, default=None, help="number of samples (default 10000 train, 1000 val/test)")
    sp.add_argument("--size", default="64", help="image size in px: S or HxW")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--shards", type=int, default=1, help="number of tar files")
    sp.add_argument("--captions", type=int, default=5, help="captions per image")
    sp.add_argument("--label", default="shape", choices=LABELS, help="classification label")
    sp.add_argument("--format", default="png", choices=IMAGE_FORMATS, help="image encoding")
    sp.set_defaults(func=cmd_synth)


def cmd_synth(args) -> None:
    from .spec import parse_size
    from .synthetic import SyntheticShapes
    from .writer import write_shards

    ds = SyntheticShapes(args.split, size=parse_size(args.size), n=args.n, seed=args.seed, captions=args.captions,
                         label=args.label)
    manifest = write_shards(ds, args.out, shards=args.shards, image_format=args.format, progress=True)
    print(f"wrote {len(ds)} samples of {ds!r} to {manifest.parent} (manifest {manifest.name})")


def add_csv_arguments(p: argparse.ArgumentParser) -> None:
    """open_clip's flags for a CSV/TSV's columns and separator (unset: found by name, sniffed)."""
    p.add_argument("--csv-img-key", dest="csv_image_key", metavar="COLUMN",
                   help="a CSV's image-path column (default: the one named image, filepath, path or file)")
    p.add_argument("--csv-caption-key", dest="csv_caption_key", metavar="COLUMN",
                   help="a CSV's caption column (default: the one named caption, title or text)")
    p.add_argument("--csv-separator", dest="csv_separator", type=parse_separator, metavar="SEP",
                   help="a CSV's separator, e.g. ',' or '\\t' (default: sniffed from the header)")
