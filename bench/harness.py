"""Shared benchmark helpers: one results CSV here; timing and machine from ``layerprof.benchmark``."""
from __future__ import annotations

import csv
import time
from pathlib import Path

from layerprof.benchmark import interleaved, machine, plain_backward, sync  # noqa: F401 - re-exported

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
        w = csv.DictWriter(f, fieldnames=header)
        w.writeheader()
        for r in existing:
            w.writerow(r)
        for r in rows:
            w.writerow({**stamp, **r})
