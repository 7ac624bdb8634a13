"""bench/gpu_check.sh's benchmark, dry-run on the CPU at tiny shapes.

No GPU has been lent to this project yet, and the first one comes with minutes of device time: a
Python error in bench/bench_gpu.py there would spend them. ``--smoke --device cpu`` runs every
section (ops vs the roofline, the model sweep per backend, the float64 finalize primitives, batched
against looped) on the backends this machine has; it measures nothing, it proves the code runs.
"""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_bench_gpu_runs_every_section_on_the_cpu(tmp_path):
    out = tmp_path / "rows.csv"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "bench_gpu.py", "--smoke", "--device", "cpu", "--csv", str(out)],
                          cwd=BENCH, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "FAILED" not in done.stdout, done.stdout + done.stderr[-3000:]
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    kinds = {r["bench"] for r in rows}
    assert kinds == {"gpu_ops", "gpu_sweep", "finalize_fp64", "finalize_batched"}, kinds
    sweeps = {r["pass"] for r in rows if r["bench"] == "gpu_sweep"}
    assert "plain" in sweeps and any(p.startswith("sweep:") for p in sweeps), sweeps
    batched = [r for r in rows if r["bench"] == "finalize_batched"]
    assert {r["op"] for r in batched} == {"eigvalsh", "cholesky", "solve_triangular (d x 1024)"}
    assert all(float(r["batched_s"]) > 0 and float(r["looped_s"]) > 0 for r in batched)


def test_gpu_check_scripts_parse():
    for script in ("gpu_check.sh", "gpu_wheels.sh"):
        done = subprocess.run(["bash", "-n", str(BENCH / script)], capture_output=True, text=True)
        assert done.returncode == 0, (script, done.stderr)
