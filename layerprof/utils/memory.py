"""Peak memory, measured one way everywhere (the sweep's card, the study's LoRA runs, bench/), and bytes
as people read them. A leaf.

On CUDA the allocator's own peak (``max_memory_allocated``). On the CPU there is no allocator
peak: ``process_peak`` reads the process's lifetime peak RSS (an upper bound), and
``PeakMemory`` samples the resident set every millisecond while a block runs and reports
the peak above where it started.
"""
from __future__ import annotations

import resource
import sys
import threading

import torch


def human_bytes(n: float, digits: int = 2) -> str:
    """Bytes in the unit that shows them (never "0.00 GiB" for a few MB)."""
    for unit, size in (("TiB", 2 ** 40), ("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if abs(n) >= size:
            return f"{n / size:.{digits}f} {unit}"
    return f"{int(n)} B"


def rss() -> int:
    """The process's resident set size now, in bytes (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except OSError:
        return 0


def process_peak(device: torch.device) -> int:
    """Peak memory so far: CUDA's allocator peak on ``device``, else the process's peak RSS."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return int(peak if sys.platform == "darwin" else peak * 1024)


def peak_kind(device: torch.device) -> str:
    return "cuda max_memory_allocated" if device.type == "cuda" else "process peak RSS"


class PeakMemory:
    """``with PeakMemory(device) as m: ...`` then ``m.bytes``: the peak above the start of the block."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.bytes = 0

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            self.base = self.peak = rss()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, rss())

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self.base
        else:
            self._stop.set()
            self._thread.join()
            self.bytes = max(self.peak, rss()) - self.base


SOLVE_THREADS_ENV = "LAYERPROF_SOLVE_THREADS"


def solve_threads() -> int:
    """Threads for the float64 solves of finalize on the CPU.

    ``LAYERPROF_SOLVE_THREADS`` when set; else one thread when the machine is already busy (1-minute
    load average at or above its core count), where more BLAS threads than free cores slow every
    solve (bench/bench_threads.py: eigh 1536² took 2.09 s with 2 threads against 1.13 s with 1 on a
    2-core VM at load 3.6); else torch's current setting.
    """
    import os

    value = os.environ.get(SOLVE_THREADS_ENV)
    if value:
        try:
            n = int(value)
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"{SOLVE_THREADS_ENV} must be a positive int (threads), got {value!r}")
        return n
    cores = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0] >= cores
    except OSError:  # no load average on this platform
        busy = False
    return 1 if busy and cores > 1 else torch.get_num_threads()


class threads:
    """``with threads(n):`` torch's intra-op threads set to n inside the block, restored after."""

    def __init__(self, n: int):
        self.n = n

    def __enter__(self) -> int:
        self.before = torch.get_num_threads()
        if self.n != self.before:
            torch.set_num_threads(self.n)
        return self.n

    def __exit__(self, *exc) -> None:
        if torch.get_num_threads() != self.before:
            torch.set_num_threads(self.before)
