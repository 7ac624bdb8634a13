"""The performance tables, from a saved run of the benchmark suite: tidy rows, and the Markdown the docs show.

    python benchmarks/tables.py                 # the newest run under benchmarks/runs/: print its tables
    python benchmarks/tables.py RUN.json --csv  # also append its tidy rows to benchmarks/results.csv
    python benchmarks/tables.py RUN.json --docs # rewrite the generated sections of README.md and docs/performance.md

A tidy row is one figure: run, date, machine, version, benchmark, group, parameters, metric, and its
min / median / max where the figure has rounds (seconds) or the median alone (ratios, phase seconds
recorded by the benchmark in ``extra_info``). The docs' tables are generated here and nowhere else;
``tests/test_benchmark_docs.py`` checks that the docs say what their run says.
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "benchmarks" / "runs"
RESULTS = ROOT / "benchmarks" / "results.csv"
FIELDS = ["run", "date", "machine", "layerprof", "clock", "benchmark", "group", "params", "metric", "unit",
          "min", "median", "max", "rounds"]
DOCS = {"smollm2": ROOT / "README.md", "all": ROOT / "docs" / "performance.md"}
_SECTION = re.compile(r"(<!-- bench:(?P<key>\w+) (?P<run>\S+) -->\n)(?P<body>.*?)(<!-- /bench:(?P=key) -->)", re.S)


def newest_run() -> Path:
    runs = sorted(RUNS.rglob("*.json"), key=lambda p: p.name)
    if not runs:
        raise SystemExit(f"no saved run under {RUNS.relative_to(ROOT)}: run `make bench` first")
    return runs[-1]


def load(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def rows(run: dict, name: str) -> list[dict]:
    """The run's figures as tidy rows (one figure a row)."""
    lp = run["machine_info"].get("layerprof", {})
    base = {"run": name, "date": run.get("datetime", ""), "machine": lp.get("machine", ""),
            "layerprof": lp.get("version", ""), "clock": lp.get("clock", "")}
    out = []
    for b in run["benchmarks"]:
        s = b["stats"]
        common = {**base, "benchmark": b["name"], "group": b.get("group") or "", "params": json.dumps(b.get("params") or {})}
        out.append({**common, "metric": "seconds", "unit": "s", "min": s["min"], "median": s["median"], "max": s["max"],
                    "rounds": s["rounds"]})
        for key, value in sorted(b.get("extra_info", {}).items()):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                unit = "s" if key.endswith("seconds") else ("×" if "ratio" in key else "")
                out.append({**common, "metric": key, "unit": unit, "min": "", "median": value, "max": "", "rounds": ""})
    return out


def _x(v) -> str:
    return "–" if v is None else f"{v:.2f}×"


def _s(v) -> str:
    return "–" if v is None else (f"{v:.1f}" if v >= 10 else f"{v:.3g}")


def smollm2_table(run: dict) -> str:
    """README's table: the real LLM's card against the plain pass, without and with a training budget."""
    bs = [b for b in run["benchmarks"] if b["name"].startswith("test_smollm2")]
    if not bs:
        return "(this run has no SmolLM2 benchmark: `make smollm2`, then `make bench`)\n"
    plain = bs[0]["extra_info"]["baseline_seconds"]
    lines = ["| pass | seconds | × plain |", "|---|---:|---:|",
             f"| plain frozen forward + backward (input gradients only) | {_s(plain)} | 1.00× |"]
    for b in sorted(bs, key=lambda b: b["extra_info"].get("budget_steps") or 0):
        e, steps = b["extra_info"], b["extra_info"].get("budget_steps")
        what = (f"`lp.profile(budget=…)`, {steps} steps: + simulated LoRA and warm-up" if steps
                else "`lp.profile()`: sweep + finalize")
        lines.append(f"| {what} | {_s(b['stats']['median'])} | {_x(e['ratio'])} |")
    e = next(b["extra_info"] for b in bs if not b["extra_info"].get("budget_steps"))
    ratio = _linear_flops(e)
    floor = f"; linear-layer FLOPs {_x(ratio)}" if ratio else ""
    lines += ["", f"Of the card's {_s(bs[0]['stats']['median'])} s: sweep {_s(e['sweep_seconds'])} s "
                  f"({_x(e['sweep_seconds'] / plain)} plain{floor}), finalize {_s(e['finalize_seconds'])} s."]
    return "\n".join(lines) + "\n"


def all_tables(run: dict) -> str:
    """docs/performance.md's tables: every benchmark of the run, grouped, with its ratio to its baseline."""
    groups: dict[str, list] = {}
    for b in run["benchmarks"]:
        groups.setdefault(b.get("group") or b["name"], []).append(b)
    lines = []
    for group, bs in groups.items():
        lines += [f"**{group}**", "", "| benchmark | median s (min–max, rounds) | baseline s | ratio | baseline | more |",
                  "|---|---:|---:|---:|---|---|"]
        for b in bs:
            s, e = b["stats"], b.get("extra_info", {})
            name = b["name"].removeprefix("test_")
            lines.append(f"| {name} | {_s(s['median'])} ({_s(s['min'])}–{_s(s['max'])}, {s['rounds']}) | "
                         f"{_s(e.get('baseline_seconds'))} | {_x(e.get('ratio'))} | "
                         f"{e.get('baseline', 'plain forward+backward' if 'baseline_seconds' in e else '–')} | {_more(s, e)} |")
        lines.append("")
    return "\n".join(lines)


def _linear_flops(e: dict) -> float | None:
    """The sweep's linear-layer FLOP ratio (``benchmarks/conftest.linear_flops_ratio``; older runs: ``sweep_flop_floor``)."""
    return e.get("sweep_linear_flops_ratio", e.get("sweep_flop_floor"))


def _more(stats: dict, e: dict) -> str:
    """The figures a benchmark adds beside its ratio: rates, phases, floors."""
    out = []
    if e.get("flops"):
        out.append(f"{e['flops'] / stats['median'] / 1e9:.1f} GFLOP/s")
    if e.get("sweep_ratio") is not None:
        ratio = _linear_flops(e)
        out.append(f"sweep {_x(e['sweep_ratio'])}" + (f" (linear-layer FLOPs {_x(ratio)})" if ratio else ""))
    for key, label in (("finalize_seconds", "finalize"), ("coupling_seconds", "coupling pass"),
                       ("simulate_seconds", "simulated LoRA"), ("warmup_seconds", "warm-up")):
        if e.get(key) is not None:
            out.append(f"{label} {_s(e[key])} s")
    return "; ".join(out) or "–"


def describe(run: dict, name: str) -> str:
    lp = run["machine_info"].get("layerprof", {})
    return (f"Run `{name}` ({run.get('datetime', '')[:16]}, layerprof {lp.get('version')}): {lp.get('machine')}; "
            f"clock: {lp.get('clock')}, {lp.get('threads')} thread(s).\n\n")


RENDER = {"smollm2": smollm2_table, "all": all_tables}


def section(key: str, run: dict, name: str) -> str:
    return describe(run, name) + RENDER[key](run)


def rewrite(text: str, run: dict | None = None, name: str | None = None) -> str:
    """``text`` with every generated section re-rendered: from ``run`` when given, else from the saved run
    each section names."""
    def sub(m):
        r, n = (run, name) if run is not None else (load(RUNS / m.group("run")), m.group("run"))
        return f"<!-- bench:{m.group('key')} {n} -->\n{section(m.group('key'), r, n)}<!-- /bench:{m.group('key')} -->"
    return _SECTION.sub(sub, text)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", nargs="?", type=Path, help="a saved run (default: the newest under benchmarks/runs)")
    ap.add_argument("--csv", action="store_true", help=f"append its tidy rows to {RESULTS.relative_to(ROOT)}")
    ap.add_argument("--docs", action="store_true", help="rewrite the generated sections of README.md and docs/performance.md")
    args = ap.parse_args(argv)
    path = (args.run or newest_run()).resolve()
    run, name = load(path), str(path.relative_to(RUNS)) if path.is_relative_to(RUNS) else str(path)
    sys.stdout.write(section("smollm2", run, name) + "\n" + all_tables(run))
    if args.csv:
        new = not RESULTS.exists()
        with RESULTS.open("a", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=FIELDS)
            if new:
                w.writeheader()
            w.writerows(rows(run, name))
    if args.docs:
        for doc in DOCS.values():
            doc.write_text(rewrite(doc.read_text(encoding="utf-8"), run=run, name=name), encoding="utf-8")


if __name__ == "__main__":
    main()
