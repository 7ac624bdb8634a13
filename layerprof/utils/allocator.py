"""Keep freed memory in the process: glibc's malloc tuned for the sweep's allocation pattern. A leaf.

Each batch of a sweep allocates and frees the same large activation and gradient tensors again.
glibc serves blocks above its mmap threshold (dynamic, at most 32 MiB) with a fresh ``mmap`` and
returns them with ``munmap``, and trims the heap's free top back to the OS, so every batch faults its
tensors' pages in anew. ``keep_freed_pages`` tells glibc (``mallopt``) to serve every block from its
heap and never to trim it, so freed pages are reused by the next batch: on the GPT-2-small shape the
sweep's minor faults fell from 306k to 25k per call and the sweep from 2.04× plain to 1.73×, at the
same peak memory (``bench/bench_allocator.py``, studies/v1/bench-notebook.md). The cost: the process keeps its
peak memory until it exits instead of handing it back after each batch, which is why the
``layerprof`` command applies it to its own process and a library caller decides for theirs.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

KEEP_PAGES_ENV = "LAYERPROF_KEEP_PAGES"  # "0" turns keep_freed_pages into a no-op

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4
TOP_PAD = 256 * 2 ** 20  # grow the heap in steps this large (fewer brk calls while it fills)


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        libc.gnu_get_libc_version  # only glibc has it (musl and others have no mallopt of this kind)
    except (OSError, AttributeError):
        return None
    return libc


def _wanted() -> bool:
    return os.environ.get(KEEP_PAGES_ENV, "1").strip() != "0"


def keep_freed_pages() -> bool:
    """Keep freed memory in this process for reuse (glibc on Linux); True if applied.

    No-op (False) elsewhere, or with ``LAYERPROF_KEEP_PAGES=0``. Process-wide and not undone: call it
    in a process that profiles, not in one that must return memory to the system afterwards."""
    libc = _glibc() if _wanted() else None
    if libc is None:
        return False
    ok = libc.mallopt(M_MMAP_MAX, 0)  # no mmap'd blocks: every block from the heap, reused when freed
    ok &= libc.mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1)  # never hand the heap's free top back
    ok &= libc.mallopt(M_TOP_PAD, TOP_PAD)
    return bool(ok)


def describe() -> str:
    """One line for ``layerprof doctor``: whether the ``layerprof`` command keeps freed pages here."""
    libc = _glibc()
    if libc is None:
        return "not glibc: the system allocator as it is (keep_freed_pages does nothing here)"
    libc.gnu_get_libc_version.restype = ctypes.c_char_p
    version = libc.gnu_get_libc_version().decode()
    if not _wanted():
        return f"glibc {version}: freed pages returned to the system ({KEEP_PAGES_ENV}=0)"
    return f"glibc {version}: the layerprof command keeps freed pages for reuse ({KEEP_PAGES_ENV}=0 turns it off)"
