"""``maskclip train`` / ``python -m maskclip.train`` / ``torchrun -m maskclip.train``: the same arguments.

    maskclip train --recipe maskclip --preset tiny --data synthetic:train --out runs/x
    torchrun --nproc_per_node 8 -m maskclip.train --recipe maskclip --preset vitb16-yfcc15m \\
        --data '/data/yfcc15m/{00000..01535}.tar' --out runs/maskclip-yfcc
    maskclip train --resume --out runs/x          # continue from the newest complete checkpoint
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from ..datasets.cli import add_csv_arguments
from ..errors import ConfigError
from .config import DISTRIBUTED, PRECISIONS, RECIPES, TrainConfig, load_presets, parse_override

# Flags that set the config field of the same name.
_SHORTCUTS = ("data", "steps", "epochs", "batch_size", "lr", "workers", "precision", "seed", "samples_per_epoch",
              "distributed", "eval_every", "eval_data", "ckpt_every", "accum_steps", "csv_image_key", "csv_caption_key",
              "csv_separator")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", choices=RECIPES, help="clip | slip | clip_mae | maskclip | rils")
    p.add_argument("--preset", help=f"settings to start from: {', '.join(sorted(load_presets()))} "
                                    "(default vitb16-yfcc15m, the papers' setting)")
    p.add_argument("--config", help="a TrainConfig JSON file (e.g. a run's config.json) instead of a preset")
    p.add_argument("--out", required=True, help="run folder: config, metrics.jsonl, checkpoints/, model/")
    p.add_argument("--data", nargs="+", metavar="DATA",
                   help="tar shards (paths, globs, {000..099} ranges), a CSV/TSV, or synthetic:train")
    add_csv_arguments(p)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest complete checkpoint")
    p.add_argument("--stop-after", type=int, default=0, metavar="N",
                   help="stop this invocation after N steps, with a checkpoint (for time-limited jobs)")
    p.add_argument("--steps", type=int, help="total optimizer steps (default: from epochs)")
    p.add_argument("--epochs", type=float)
    p.add_argument("--samples-per-epoch", type=int, dest="samples_per_epoch")
    p.add_argument("--batch-size", type=int, dest="batch_size", help="global batch size")
    p.add_argument("--accum-steps", type=int, dest="accum_steps")
    p.add_argument("--lr", type=float)
    p.add_argument("--workers", type=int, help="data-loading processes per rank")
    p.add_argument("--precision", choices=PRECISIONS)
    p.add_argument("--distributed", choices=DISTRIBUTED)
    p.add_argument("--seed", type=int)
    p.add_argument("--ckpt-every", type=int, dest="ckpt_every")
    p.add_argument("--eval-every", type=int, dest="eval_every", help="zero-shot evaluation every N steps")
    p.add_argument("--eval-data", dest="eval_data", help="what the evaluation classifies, e.g. synthetic:val")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any config field, dotted for sections: --set maskclip.loss=cosine --set grad_clip=1.0")


def config_from_args(args) -> TrainConfig:
    overrides = dict(parse_override(s) for s in args.set)
    overrides.update({name: getattr(args, name) for name in _SHORTCUTS if getattr(args, name, None) is not None})
    saved = Path(args.out) / "config.json"
    if args.config:
        cfg = TrainConfig.from_json(args.config)
        if args.recipe:
            overrides["recipe"] = args.recipe
        return cfg.with_overrides(overrides)
    if args.resume and saved.is_file() and not args.preset:
        return TrainConfig.from_json(saved).with_overrides(overrides)
    if not args.recipe:
        raise ConfigError("give --recipe (clip, slip, clip_mae, maskclip or rils), or --config FILE")
    return TrainConfig.from_preset(args.preset or "vitb16-yfcc15m", args.recipe, overrides)


def run(args) -> dict:
    from .loop import train

    cfg = config_from_args(args)
    return train(cfg, args.out, resume=args.resume, eval_fn=_eval_fn(cfg), stop_after=args.stop_after)


def _eval_fn(cfg: TrainConfig):
    if not (cfg.eval_every and cfg.eval_data):
        return None
    from .evaluation import zero_shot_hook

    return zero_shot_hook(cfg.eval_data)


def main(argv: Optional[List[str]] = None) -> int:
    from ..errors import MaskCLIPError

    parser = argparse.ArgumentParser(prog="python -m maskclip.train", description="Pretrain a language-image model.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        run(args)
    except (MaskCLIPError, OSError) as e:
        print(f"maskclip train: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    return 0
