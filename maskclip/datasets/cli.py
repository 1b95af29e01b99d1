"""``maskclip data synth``: write the synthetic shapes benchmark as tar shards."""
from __future__ import annotations

import argparse

from .synthetic import LABELS, SPLITS


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
    sp.add_argument("--format", default="png", choices=["png", "jpg"], help="image encoding")
    sp.set_defaults(func=cmd_synth)


def cmd_synth(args) -> None:
    from .spec import parse_size
    from .synthetic import SyntheticShapes
    from .writer import write_shards

    ds = SyntheticShapes(args.split, size=parse_size(args.size), n=args.n, seed=args.seed, captions=args.captions,
                         label=args.label)
    manifest = write_shards(ds, args.out, shards=args.shards, image_format=args.format, progress=True)
    print(f"wrote {len(ds)} samples of {ds!r} to {manifest.parent} (manifest {manifest.name})")
