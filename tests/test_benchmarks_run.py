"""The benchmark suite runs: every benchmark but the real LLM's, once each with timing off
(``--benchmark-disable``), so that `make bench` never fails on a Python error. It measures nothing."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytest.importorskip("pytest_benchmark", reason="the benchmark suite needs pytest-benchmark (`make bench` installs it)")


def test_every_benchmark_runs_once():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "pytest", "benchmarks", "-m", "not slow", "--benchmark-disable", "-q",
                           "-p", "no:cacheprovider"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "failed" not in done.stdout, done.stdout[-2000:]
