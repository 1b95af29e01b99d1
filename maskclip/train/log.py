"""Training logs: one JSON object per line (``metrics.jsonl``), optional tensorboard, a progress bar.

Only rank 0 writes. Each record is written with a single ``write`` and flushed, so a crash can
at most cut the last line; on resume, records after the resumed step are dropped first, so the
file always describes one consistent run.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Dict

from ..atomic import atomic_write_text


class MetricsLog:
    def __init__(self, path: Path, enabled: bool = True, tensorboard: bool = False, progress: bool = False,
                 total_steps: int = 0, start_step: int = 0):
        self.path, self.enabled = Path(path), enabled
        self.writer = self.bar = None
        if not enabled:
            return
        self._truncate_after(start_step)
        self.file = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                print("maskclip train: tensorboard is not installed (pip install tensorboard); logging to "
                      f"{self.path} only", file=sys.stderr)
            else:
                self.writer = SummaryWriter(str(self.path.parent / "tensorboard"))
        if progress:
            try:
                from tqdm import tqdm
            except ImportError:
                pass
            else:
                self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def _truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
            if record.get("step", 0) <= step:
                kept.append(line)
        atomic_write_text(self.path, "".join(k + "\n" for k in kept))

    def log(self, record: Dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: _plain(v) for k, v in record.items()}
        self.file.write(json.dumps(clean) + "\n")
        self.file.flush()
        if self.writer is not None:
            for k, v in clean.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.writer.add_scalar(k, v, clean["step"])
        if self.bar is not None and "loss" in clean:
            self.bar.set_postfix(loss=f"{clean['loss']:.4f}", lr=f"{clean.get('lr', 0):.2e}")

    def advance(self, steps: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        self.file.close()
        if self.writer is not None:
            self.writer.close()
        if self.bar is not None:
            self.bar.close()


def _plain(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/Inf; keep the record readable by strict parsers
    return v
