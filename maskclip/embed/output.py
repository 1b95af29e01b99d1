"""The output folder of ``maskclip embed --data``, in clip-retrieval's ``clip inference`` layout.

    DIR/embed.json                      the run's settings (a rerun with others is refused)
    DIR/img_emb/img_emb_{N}.npy         [rows, E] L2-normalised image embeddings (fp16 by default)
    DIR/text_emb/text_emb_{N}.npy       [rows, E] caption embeddings, when the input has captions
    DIR/dense_emb/dense_emb_{N}.npy     [rows, E, h, w] patch features, with --dense
    DIR/metadata/metadata_{N}.parquet   image_path, key (and caption) per row, in row order
                                        (``.jsonl``, one object a line, without pyarrow)
    DIR/stats/stats_{N}.json            part N's rows and the inputs it skipped, with the reasons
    DIR/stats.json                      the whole run's counts, written at the end

``N`` is zero-padded to the digits of the part count. Every file is written atomically
(``maskclip.atomic``) and a part's metadata last, so a part is finished exactly when its metadata
exists and its arrays have the rows its stats say: a rerun skips finished parts and redoes the rest.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from ..atomic import atomic_write, atomic_write_text
from ..errors import InputError

FORMAT = "maskclip-embed"
ARRAYS = ("img_emb", "text_emb", "dense_emb")


def default_metadata_format() -> str:
    """``parquet`` when pyarrow is installed (``pip install maskclip[parquet]``), else ``jsonl``."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return "jsonl"
    return "parquet"


METADATA_FORMATS = ("parquet", "jsonl")  # parquet needs pyarrow (the [parquet] extra)


class OutputFolder:
    """Paths, the finished-part test and the atomic writes of one output folder with ``parts`` parts."""

    def __init__(self, root, parts: int, arrays: List[str], metadata_format: str):
        if metadata_format not in METADATA_FORMATS:
            raise InputError(f"metadata format must be one of {list(METADATA_FORMATS)}; got {metadata_format!r}")
        self.root, self.arrays, self.metadata_format = Path(root), list(arrays), metadata_format
        self.width = len(str(max(parts, 1)))  # clip-retrieval's padding: 10 parts -> 00..09

    def path(self, kind: str, n: int) -> Path:
        """The file of ``kind`` (one of ``ARRAYS``, ``"metadata"``, ``"stats"``) for part ``n``."""
        suffix = {"metadata": self.metadata_format, "stats": "json"}.get(kind, "npy")
        return self.root / kind / f"{kind}_{n:0{self.width}d}.{suffix}"

    def check_settings(self, settings: dict) -> None:
        """Refuse a folder holding a run with other settings; the caller writes them with ``write_settings``."""
        path = self.root / "embed.json"
        if not path.is_file():
            return
        try:
            found = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise InputError(f"cannot read {str(path)!r}: {e}") from e
        if found != settings:
            changed = sorted(k for k in set(found) | set(settings) if found.get(k) != settings.get(k))
            raise InputError(f"{str(self.root)!r} holds an embedding run with other settings ({', '.join(changed)}: "
                             f"{[found.get(k) for k in changed]} there, {[settings.get(k) for k in changed]} now); "
                             "rerun with the same settings to resume, or use another --out")

    def write_settings(self, settings: dict) -> None:
        atomic_write_text(self.root / "embed.json", json.dumps(settings, indent=2) + "\n")

    def finished(self, n: int) -> bool:
        """Whether part ``n`` was written completely (metadata and stats present, arrays of the right length)."""
        if not (self.path("metadata", n).is_file() and self.path("stats", n).is_file()):
            return False
        try:
            rows = json.loads(self.path("stats", n).read_text(encoding="utf-8"))["rows"]
            return all(np.load(self.path(kind, n), mmap_mode="r").shape[0] == rows for kind in self.arrays)
        except (OSError, ValueError, KeyError, TypeError):
            return False

    def clear(self, n: int) -> None:
        """Remove what a killed writer of part ``n`` left: temp files, and a part's metadata that did not finish."""
        for kind in (*self.arrays, "metadata", "stats"):
            final = self.path(kind, n)
            if final.parent.is_dir():
                for tmp in final.parent.glob(f".{final.name}.*.tmp"):
                    tmp.unlink(missing_ok=True)
        self.path("metadata", n).unlink(missing_ok=True)

    def write(self, n: int, arrays: Dict[str, np.ndarray], rows: List[dict], stats: dict) -> None:
        """Part ``n``: its arrays, its stats, then its metadata, each file atomically."""
        for kind in self.arrays:
            atomic_write(self.path(kind, n), lambda tmp, a=arrays[kind]: _save_npy(tmp, a))
        atomic_write_text(self.path("stats", n), json.dumps(stats) + "\n")
        atomic_write(self.path("metadata", n), lambda tmp: self._save_metadata(tmp, rows))

    def read_stats(self, n: int) -> Optional[dict]:
        path = self.path("stats", n)
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def read_metadata(self, n: int) -> List[dict]:
        """Part ``n``'s metadata rows, in row order."""
        path = self.path("metadata", n)
        if self.metadata_format == "parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]

    def _save_metadata(self, tmp: str, rows: List[dict]) -> None:
        if self.metadata_format == "jsonl":
            Path(tmp).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns = ["image_path", "key"] + (["caption"] if "text_emb" in self.arrays else [])
        schema = pa.schema([(c, pa.string()) for c in columns])
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp)


def _save_npy(tmp: str, array: np.ndarray) -> None:
    with open(tmp, "wb") as f:
        np.save(f, array)
