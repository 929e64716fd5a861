"""Process tuning for the tunnel's hot path.

uvloop's TLS layer reads decrypted data into a fresh 256 KiB buffer on every read and then
shrinks it. glibc serves allocations that large with mmap, so every small message through a
TLS tunnel cost an mmap, an mremap, a munmap and the page faults between them: measured on
this project's benchmark machine, about 25 us of system time per round trip per process,
more than the relay's own Python work. Raising glibc's mmap threshold (and the trim
threshold, so the freed block is not handed straight back to the kernel) keeps those buffers
on the heap. See docs/tunnel.md for the figures.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

__all__ = ["tune_allocator"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 1024 * 1024  # above uvloop's 256 KiB read buffer
_TRIM_THRESHOLD = 8 * 1024 * 1024

_done = False


def tune_allocator() -> bool:
    """Apply the glibc settings once per process; True if they were applied (glibc only)."""
    global _done
    if _done:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(
            libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
        )
    except (OSError, AttributeError):
        return False
    _done = ok
    return ok
