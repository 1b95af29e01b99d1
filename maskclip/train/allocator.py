"""Keep freed memory in the process on the CPU, so that a step's big tensors do not fault in every time.

glibc's malloc serves blocks above its mmap threshold (at most 32 MiB by default, raised dynamically)
with fresh ``mmap`` pages and returns them to the kernel on ``free``, and trims the heap top above
its trim threshold. A training step allocates and frees the same large activations every step, so
each one page-faults again: 70,000 minor faults per step for the ``shapes`` preset, 5-20 % of the
step's CPU time (the system time of the step; SLIP 0.8 s of 3.7 s). Raising both thresholds keeps
the memory for reuse; resident memory then stays at the step's peak, which a training process
reaches every step anyway.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers
_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "LD_PRELOAD")  # the user chose an allocator setting


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (and the data workers it forks).

    Does nothing (returns False) without glibc, or when the environment already sets malloc's
    thresholds or preloads another allocator (jemalloc, tcmalloc).
    """
    if any(os.environ.get(name) for name in _ENV):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # musl and others have no such thresholds
        return False
    # Some glibc versions refuse thresholds above their maximum mmap threshold (32 MiB on 64-bit).
    mmap_ok = mallopt(_M_MMAP_THRESHOLD, 1 << 30) or mallopt(_M_MMAP_THRESHOLD, 32 << 20)
    return bool(mmap_ok and mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1))
