"""The CPU allocator's share of the sweep: GPT-2-small shape, glibc's default malloc against one that keeps its pages.

On the GPT-2-small shape (12 × 768, T = 512) the sweep's element-wise model ops ran several times
slower per call than in the plain pass: with the statistics' large buffers live, glibc keeps
returning freed pages to the OS, and every new activation tensor page-faults on first touch. This
runs the same measurement in child processes: glibc's defaults; ``MALLOC_MMAP_THRESHOLD_`` /
``MALLOC_TRIM_THRESHOLD_`` / ``MALLOC_TOP_PAD_`` set so that freed memory is kept; a call to
``layerprof.keep_freed_pages()`` first (glibc's ``mallopt`` at run time: what the ``layerprof``
command does); torch's transparent huge pages (``THP_MEM_ALLOC_ENABLE=1``; alone and with kept
pages); and, where the system has them, jemalloc and tcmalloc through ``LD_PRELOAD``. Each child
times, interleaved, process CPU time, one thread: plain frozen forward+backward, and ``lp.profile``
up to the end of the sweep (finalize is stubbed out: it is the same in both and timed elsewhere),
coupling off. It counts the minor page faults of each pass (first touches of fresh pages; median
per call), times the process's first sweep on its own (the one call a ``layerprof card`` makes; it
also faults in the statistics' buffers) and reads the child's peak resident set (what keeping freed
pages costs in memory).

    OMP_NUM_THREADS=1 python bench/bench_allocator.py [--reps 2]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from harness import add_keep_pages, keep_pages_if_asked, machine

KEEP_PAGES = {"MALLOC_MMAP_THRESHOLD_": "4000000000", "MALLOC_TRIM_THRESHOLD_": "4000000000",
              "MALLOC_TOP_PAD_": "1000000000"}
# torch's own switch: CPU allocations of 2 MiB and more aligned to 2 MiB and madvise'd as transparent huge
# pages (the kernel's THP mode "madvise" or "always"), so a first touch faults in 2 MiB instead of 4 KiB.
HUGE_PAGES = {"THP_MEM_ALLOC_ENABLE": "1"}


def child(reps: int) -> dict:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    import layerprof as lp
    import layerprof.pipeline.build as build
    from layerprof.pipeline.benchmark import plain_backward

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=12, n_embd=768, n_head=12, n_positions=512, vocab_size=8192,
                                       resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)).eval()
    ids = [torch.randint(0, 8192, (2, 512)) for _ in range(2)]
    batches = [{"input_ids": b, "attention_mask": torch.ones_like(b), "labels": b} for b in ids]

    class SweepDone(Exception):
        pass

    def stop(*args, **kwargs):
        raise SweepDone

    build.finalize = stop  # this process only: time the sweep, not the solves

    def sweep():
        try:
            lp.profile(model, batches, progress=False, coupling=False)
        except SweepDone:
            pass

    import resource

    times = {"plain": [], "sweep": []}
    faults = {"plain_faults": [], "sweep_faults": []}  # minor page faults: pages touched for the first time
    for rep in range(reps + 1):
        for name, fn in (("plain", lambda: plain_backward(model, batches)), ("sweep", sweep)):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t = time.process_time()
            fn()
            if rep:
                times[name].append(time.process_time() - t)
                faults[f"{name}_faults"].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
            elif name == "sweep":
                first = time.process_time() - t  # the process's first sweep, as one `layerprof card` runs it
    out = {k: statistics.median(v) for k, v in {**times, **faults}.items()}
    out["first_sweep"] = first
    out["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return out


def preloaded_allocators() -> list[tuple[str, dict]]:
    """jemalloc and tcmalloc through LD_PRELOAD, where the system has them (Debian: apt-get install
    libjemalloc2 libtcmalloc-minimal4); a row is printed only for those found."""
    import ctypes.util

    found = []
    for label, lib in (("jemalloc (LD_PRELOAD)", "jemalloc"), ("tcmalloc (LD_PRELOAD)", "tcmalloc_minimal")):
        name = ctypes.util.find_library(lib)
        path = next((os.path.join(d, name) for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu",
                                                      "/usr/lib", "/usr/local/lib")
                     if name and os.path.exists(os.path.join(d, name))), None)
        if path:
            found.append((label, {"LD_PRELOAD": path}))
    return found


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    add_keep_pages(ap)
    args = ap.parse_args(argv)
    if args.child:
        keep_pages_if_asked(args)
        print(json.dumps(child(args.reps)))
        return

    print(f"{machine()}\nGPT-2-small shape, 2 batches × 2 × 512 tokens, process CPU time, median of {args.reps}\n")
    print("| malloc | plain s | sweep s | sweep / plain | first sweep s | page faults, plain | page faults, sweep "
          "| peak RSS |\n|---|---:|---:|---:|---:|---:|---:|---:|")
    rows = [("glibc defaults", {}, []), ("keeps freed pages (MALLOC_*_ env)", KEEP_PAGES, []),
            ("layerprof.keep_freed_pages() (mallopt; the CLI's default)", {}, ["--keep-pages"]),
            ("torch huge pages (THP_MEM_ALLOC_ENABLE=1)", HUGE_PAGES, []),
            ("huge pages and keeps freed pages", {**HUGE_PAGES, **KEEP_PAGES}, []),
            *((label, extra, []) for label, extra in preloaded_allocators())]
    for label, extra, flags in rows:
        env = {**os.environ, **extra, "OMP_NUM_THREADS": "1"}
        out = subprocess.run([sys.executable, __file__, "--child", "--reps", str(args.reps), *flags], env=env,
                             capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        r = json.loads(out)
        print(f"| {label} | {r['plain']:.2f} | {r['sweep']:.2f} | {r['sweep'] / r['plain']:.2f} | "
              f"{r['first_sweep']:.2f} | {r['plain_faults']:,.0f} | {r['sweep_faults']:,.0f} | "
              f"{r['peak_rss'] / 2 ** 30:.2f} GiB |", flush=True)


if __name__ == "__main__":
    main()
