"""Side-by-side timing: contenders alternate within each repeat; medians, spread and peak memory.

Other processes share the CPU, so a contender timed alone in a busy minute would look slow: here
every repeat runs each contender once (the order rotating from repeat to repeat), and the median
over repeats is reported with the min and max. Peak memory is the rise of the process's resident
set during a call: freed heap is returned first (``malloc_trim``), the kernel's high-water mark is
reset (``/proc/self/clear_refs``), and read back after the call. It counts every allocation (torch,
Python objects, Rust) and costs nothing inside the timed region.
"""
import ctypes
import os
import re
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

try:
    _LIBC = ctypes.CDLL("libc.so.6")
except OSError:  # not glibc: no trimming, peaks include reused heap
    _LIBC = None


def _status_mb(key: str) -> Optional[float]:
    try:
        with open("/proc/self/status") as f:
            match = re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.M)
    except OSError:
        return None
    return int(match.group(1)) / 1024 if match else None


def _reset_peak() -> Optional[float]:
    """Trim the heap, reset the peak RSS to the current RSS; return the current RSS (MB) or None."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    return _status_mb("VmRSS")


@dataclass
class Result:
    """Timings (s) and peak memory rises (MB) of one contender over the repeats."""

    name: str
    times: List[float] = field(default_factory=list)
    peaks: List[float] = field(default_factory=list)
    output: object = None

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def peak_mb(self) -> Optional[float]:
        return statistics.median(self.peaks) if self.peaks else None


def measure(fn: Callable[[], object], result: Result) -> None:
    """Run ``fn`` once, appending its wall time and peak memory rise to ``result``."""
    before = _reset_peak()
    start = time.perf_counter()
    result.output = fn()
    result.times.append(time.perf_counter() - start)
    peak = _status_mb("VmHWM")
    if before is not None and peak is not None:
        result.peaks.append(max(0.0, peak - before))


def alternate(contenders: Dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
              setup: Optional[Dict[str, Callable[[], Callable[[], object]]]] = None) -> Dict[str, Result]:
    """Time every contender ``repeats`` times, alternating, after ``warmup`` untimed rounds.

    ``contenders`` maps a name to a zero-argument call. ``setup`` (optional) maps a name to a
    function run untimed before each of its calls that returns the call to time instead (e.g. a
    fresh tokenizer, so its caches start cold every repeat).
    """
    names = list(contenders)
    results = {name: Result(name) for name in names}

    def call(name):
        return setup[name]() if setup and name in setup else contenders[name]

    for _ in range(warmup):
        for name in names:
            results[name].output = call(name)()
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            measure(call(name), results[name])
    return results


def loadavg() -> List[float]:
    return [round(x, 2) for x in os.getloadavg()]
