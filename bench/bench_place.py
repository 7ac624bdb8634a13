"""Placement at scale: process time and peak traced memory of ``card.place`` on synthetic L-layer cards.

The card repeats the modules of one block of the bundled 16-block study card L times (one
Conv1D attention and MLP block per layer) with random layer scores, so that the greedy
candidate family (L(L+1)/2 layer sets) is as large as a real card of that depth would make it.

    python bench/bench_place.py                 # L = 1,000 and 10,000
    python bench/bench_place.py --layers 2000

Process CPU time of this process (steady on a shared machine), peak memory from tracemalloc
(numpy's buffers included). The hardening goal: a 10,000-layer card places in < 5 s, < 500 MB.
"""
from __future__ import annotations

import argparse
import json
import random
import time
import tracemalloc
from pathlib import Path

from layerprof.card.card import LayerCard

ROOT = Path(__file__).resolve().parent.parent


def synthetic_card(layers: int, seed: int = 0) -> LayerCard:
    base = json.loads((ROOT / "docs" / "study" / "deep" / "card_60steps.json").read_text(encoding="utf-8"))
    block = [m for m in base["modules"] if m["layer"] == 0]
    rnd = random.Random(seed)
    modules, rows = [], []
    for l in range(layers):
        modules += [{**m, "name": m["name"].replace("h.0.", f"h.{l}."), "layer": l} for m in block]
        rows.append({**base["layers"][0], "layer": l, "score": rnd.random()})
    for pos, i in enumerate(sorted(range(layers), key=lambda i: -rows[i]["score"]), start=1):
        rows[i]["rank"] = pos
    base["meta"].pop("coupling", None)
    return LayerCard.from_dict({**base, "modules": modules, "layers": rows})


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, nargs="+", default=[1000, 10000])
    args = ap.parse_args(argv)
    print("| layers | request | process time | peak traced memory | plan layers | front points |")
    print("|---:|---|---:|---:|---:|---:|")
    for L in args.layers:
        card = synthetic_card(L)
        for kw in ({"layers": 2}, {"budget": 0.3}, {"params": 10 ** 6}, {"objective": "cost", "target_gain": 0.5}):
            tracemalloc.start()
            t0 = time.process_time()
            plan = card.place(**kw)
            seconds = time.process_time() - t0
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            request = ", ".join(f"{k}={v}" for k, v in kw.items())
            print(f"| {L:,} | {request} | {seconds:.2f} s | {peak / 2 ** 20:.0f} MiB | {len(plan.layers):,} | "
                  f"{len(plan.front)} |")


if __name__ == "__main__":
    main()
