"""`import layerprof` is cheap: no CUDA initialization, no transformers or peft import."""
import subprocess
import sys


def test_import_is_lean_and_never_initializes_cuda():
    code = ("import sys, layerprof, torch; "
            "assert not torch.cuda.is_initialized(); "
            "assert 'transformers' not in sys.modules and 'peft' not in sys.modules, sorted(sys.modules); "
            "print(sorted(layerprof.backends()))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "torch" in res.stdout


def lp_backends():
    import layerprof

    return layerprof.backends()


def test_doctor_reports_backends(capsys):
    from layerprof.cli.commands import main

    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    import torch

    assert "backend torch: available" in out
    # The cuda backend's line follows the machine: unavailable without a GPU, else available or a reason.
    line = next(l for l in out.splitlines() if "backend cuda:" in l)
    assert ("unavailable" in line) == (not torch.cuda.is_available() or not lp_backends()["cuda"].available)
