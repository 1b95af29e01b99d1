"""Progress reporting: tqdm's bar when tqdm is installed (it is not a dependency), else a plain line printer."""
from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, Optional, TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], total: Optional[int] = None, desc: str = "", enabled: bool = True) -> Iterable[T]:
    """``items``, reporting progress on stderr while they are consumed (or silently if not ``enabled``)."""
    if not enabled:
        return items
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _printed(items, total, desc)
    return tqdm(items, total=total, desc=desc, leave=False, dynamic_ncols=True)


def _printed(items: Iterable[T], total: Optional[int], desc: str, every: float = 2.0) -> Iterator[T]:
    """Print ``desc: done/total`` at most every ``every`` seconds, and once at the end."""
    last, done = time.monotonic(), 0
    for done, item in enumerate(items, 1):
        yield item
        now = time.monotonic()
        if now - last >= every:
            print(f"{desc}: {done}/{total if total is not None else '?'}", file=sys.stderr, flush=True)
            last = now
    print(f"{desc}: {done}/{total if total is not None else done} done", file=sys.stderr, flush=True)
