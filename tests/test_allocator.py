"""keep_freed_pages: glibc keeps freed memory for the next batch, and only where asked (layerprof/utils/allocator.py)."""
import json
import os
import resource
import subprocess
import sys

import pytest

from layerprof.utils import allocator
from layerprof.cli import commands as cli

# A child process (mallopt is process-wide): allocate a 64 MiB tensor and free it, as each batch of a
# sweep does, six times, and take the median of the rounds' minor page faults (first touches of pages
# the process did not have). Kept, glibc places the block in one of two heap slots over the first
# rounds, so one or two of the early rounds fault it in afresh (which one varies from run to run);
# the rest reuse it. The median is the steady state a sweep's batches see.
CHILD = r"""
import json, resource, statistics, torch
from layerprof.utils.allocator import keep_freed_pages
applied = keep_freed_pages()
def faults_of_one_alloc():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = torch.ones(16 * 2 ** 20)  # 64 MiB, written: every page touched
    del t
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
rounds = [faults_of_one_alloc() for _ in range(6)]
print(json.dumps({"applied": applied, "faults": statistics.median(rounds[1:])}))
"""
PAGES_64MIB = 64 * 2 ** 20 // resource.getpagesize()


def _child(keep: str) -> dict:
    env = {**os.environ, allocator.KEEP_PAGES_ENV: keep, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(allocator._glibc() is None, reason="glibc's mallopt only (Linux)")
def test_freed_pages_are_reused_only_when_kept():
    kept, default = _child("1"), _child("0")
    assert kept["applied"] is True and default["applied"] is False
    # glibc's default unmaps a freed 64 MiB block, so the next one faults in every page again ...
    assert default["faults"] > 0.9 * PAGES_64MIB
    # ... kept, the same pages come back from the heap already mapped.
    assert kept["faults"] < 0.05 * PAGES_64MIB


def test_the_command_keeps_pages_and_a_library_call_does_not(monkeypatch):
    calls = []
    monkeypatch.setattr(allocator, "keep_freed_pages", lambda: calls.append(1) or True)
    monkeypatch.setattr(sys, "argv", ["layerprof", "--help"])
    assert cli.main() == 0  # the `layerprof` command (argv from the process)
    assert calls == [1]
    assert cli.main(["--help"]) == 0  # called with arguments, as from Python: the caller's process
    assert calls == [1]


def test_no_op_where_glibc_is_missing(monkeypatch):
    monkeypatch.setattr(allocator, "_glibc", lambda: None)
    monkeypatch.delenv(allocator.KEEP_PAGES_ENV, raising=False)
    assert allocator.keep_freed_pages() is False


def test_doctor_says_whether_pages_are_kept(monkeypatch, capsys):
    monkeypatch.delenv(allocator.KEEP_PAGES_ENV, raising=False)
    assert cli.main(["doctor", "--json"]) == 0
    line = json.loads(capsys.readouterr().out)["allocator"]
    if allocator._glibc() is None:
        assert line.startswith("not glibc")
    else:
        assert line.startswith("glibc ") and "keeps freed pages" in line
        monkeypatch.setenv(allocator.KEEP_PAGES_ENV, "0")
        assert "returned to the system" in allocator.describe()
