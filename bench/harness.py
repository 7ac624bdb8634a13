"""Shared benchmark helpers: one results CSV here; timing and machine from ``layerprof.pipeline.benchmark``."""
from __future__ import annotations

import csv
import time
from pathlib import Path

from layerprof.pipeline.benchmark import interleaved, machine, plain_backward, sync  # noqa: F401 - re-exported

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.csv"


def append(rows: list[dict], path: Path = RESULTS) -> None:
    """Append result rows (any columns) to the one results CSV, with date and machine."""
    stamp = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine()}
    existing = []
    header: list[str] = []
    if path.exists():
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            existing = list(reader)
    for r in rows:
        for k in list(stamp) + list(r):
            if k not in header:
                header.append(k)
    with path.open("w", newline="") as f:
        # "\n", the file's own line ends: csv's default "\r\n" would rewrite every line on each append
        w = csv.DictWriter(f, fieldnames=header, lineterminator="\n")
        w.writeheader()
        for r in existing:
            w.writerow(r)
        for r in rows:
            w.writerow({**stamp, **r})


def profile_vs_plain(plain, profile, reps: int) -> dict:
    """``plain()`` and ``profile()`` (returning a card) interleaved, process CPU time, a warm-up round first:
    medians of plain, of the whole profile() call, and of the cards' own sweep and finalize seconds."""
    import statistics

    times, cards = {"plain": [], "profile": []}, []
    for rep in range(reps + 1):
        for name, fn in (("plain", plain), ("profile", lambda: cards.append(profile()))):
            t = time.process_time()
            fn()
            if rep:  # the first round warms up
                times[name].append(time.process_time() - t)
    return {"plain": statistics.median(times["plain"]), "profile": statistics.median(times["profile"]),
            "sweep": statistics.median(c.meta["sweep"]["seconds"] for c in cards[1:]),
            "finalize": statistics.median(c.meta["sweep"]["finalize_seconds"] for c in cards[1:]),
            "coupling": statistics.median((c.meta.get("coupling") or {}).get("seconds", 0.0) for c in cards[1:]),
            "card": cards[-1]}


def print_profile_table(r: dict, digits: int = 2) -> None:
    """The table bench_wide.py and bench_minilm.py print from ``profile_vs_plain``."""
    p = r["plain"]
    print("| figure | seconds | / plain |\n|---|---:|---:|")
    print(f"| plain frozen fwd+bwd | {p:.{digits}f} | 1.00 |")
    print(f"| sweep (taps + accumulation; card, wall) | {r['sweep']:.{digits}f} | {r['sweep'] / p:.2f} |")
    print(f"| finalize (card, wall) | {r['finalize']:.{digits}f} | {r['finalize'] / p:.2f} "
          f"(= {r['finalize'] / r['sweep']:.2f}× the sweep) |")
    if r.get("coupling"):
        print(f"| coupling matrix (card, wall) | {r['coupling']:.{digits}f} | {r['coupling'] / p:.2f} "
              f"(= {r['coupling'] / r['sweep']:.2f}× the sweep) |")
    print(f"| whole lp.profile() | {r['profile']:.{digits}f} | {r['profile'] / p:.2f} |")


def add_keep_pages(ap) -> None:
    """``--keep-pages``: call ``lp.keep_freed_pages()`` first, as the ``layerprof`` command does."""
    ap.add_argument("--keep-pages", action="store_true",
                    help="call lp.keep_freed_pages() first, as the layerprof command does (process-wide)")


def keep_pages_if_asked(args) -> None:
    if args.keep_pages:
        from layerprof.utils.allocator import keep_freed_pages

        assert keep_freed_pages(), "glibc's mallopt is not available here"
