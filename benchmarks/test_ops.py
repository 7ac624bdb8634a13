"""The accumulation ops, backend against backend: each op at one shape, the ratio to the torch backend's
time for the same call (the float64 reference is what the tests check them against, never timed here)."""
import pytest
import torch

from conftest import paired
from layerprof.stats import ops

ROWS, D_IN, D_OUT, K = 4096, 1024, 1024, 128
CPU = [b for b in ("cpp",) if ops.backends()[b].available]
GPU = [b for b in ("cuda", "triton") if ops.backends()[b].available]


def _args(name: str, device: str) -> tuple:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(ROWS, D_IN, generator=gen).to(device)
    g = torch.randn(ROWS, D_OUT, generator=gen).to(device)
    S, C = torch.zeros(D_IN, D_IN, device=device), torch.zeros(D_IN, D_OUT, device=device)
    return {"gram_update": (S, x), "cross_update": (C, x, g),
            "stats_update": (S, C, torch.zeros((), device=device), x, g),
            "sketch_update": (torch.zeros(D_IN, K, device=device), x, g,
                              torch.randn(D_OUT, K, generator=gen).to(device))}[name]


# Useful FLOPs of each call: S's upper triangle is the contract (half of XᵀX's 2·rows·d_in²).
FLOPS = {"gram_update": ROWS * D_IN ** 2, "cross_update": 2 * ROWS * D_IN * D_OUT,
         "stats_update": ROWS * D_IN ** 2 + 2 * ROWS * D_IN * D_OUT + 2 * ROWS * D_OUT,
         "sketch_update": 2 * ROWS * D_OUT * K + 2 * ROWS * D_IN * K}


def _bench(benchmark, backend: str, name: str, device: str):
    args = _args(name, device)
    benchmark.group = f"op {name}: {ROWS} rows, d_in {D_IN}, d_out {D_OUT}" + (f", k {K}" if "sketch" in name else "")
    paired(benchmark, lambda: ops.op(backend, name)(*args), lambda: ops.op("torch", name)(*args), rounds=5,
           info={"backend": backend, "flops": FLOPS[name], "baseline": "torch backend"})


@pytest.mark.parametrize("name", list(FLOPS))
@pytest.mark.parametrize("backend", CPU)
def test_op_cpu(benchmark, backend, name):
    _bench(benchmark, backend, name, "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", list(FLOPS))
@pytest.mark.parametrize("backend", GPU or ["cuda"])
def test_op_gpu(benchmark, backend, name):
    _bench(benchmark, backend, name, "cuda")
