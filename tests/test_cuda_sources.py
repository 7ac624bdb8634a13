"""CUDA sources must not rot on machines without a GPU: compile them here.

* the kernels (csrc/cuda/stats.cu) include no torch header and compile standalone with
  the machine's nvcc for sm_90 — exactly as the issue asks;
* the torch-facing wrapper and the binding are syntax-checked against torch's headers
  with WITH_CUDA defined (the CPU build of torch lacks one generated CUDA header, which a
  one-line shim provides; nothing is linked).
Skipped, with the reason, only where nvcc or a C++ compiler is missing.
"""
import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
NVCC = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)
requires_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not installed")
requires_cxx = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not installed")


@requires_nvcc
@pytest.mark.parametrize("arch", ["sm_90", "sm_80"])
def test_kernels_compile_standalone_with_nvcc(tmp_path, arch):
    res = subprocess.run([NVCC, f"-arch={arch}", "-std=c++17", "-c", str(ROOT / "csrc/cuda/stats.cu"),
                          "-o", str(tmp_path / "stats.o")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "stats.o").stat().st_size > 0


@requires_cxx
@requires_nvcc
@pytest.mark.parametrize("source", ["csrc/cuda/stats_cuda.cpp", "csrc/binding.cpp"])
def test_torch_facing_cuda_code_compiles(tmp_path, source):
    homes = [os.environ.get("CUDA_HOME"), Path(NVCC).resolve().parent.parent, "/usr/local/cuda"]
    cuda_include = next((Path(h) / "include" for h in homes if h and (Path(h) / "include/cuda_runtime.h").exists()),
                        None)
    if cuda_include is None:
        pytest.skip("CUDA headers (cuda_runtime.h) not found beside nvcc or in /usr/local/cuda")
    shim = tmp_path / "c10/cuda/impl"
    shim.mkdir(parents=True)
    (shim / "cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    tinc = Path(torch.__file__).parent / "include"
    cmd = ["g++", "-std=c++20", "-fsyntax-only", "-w", "-DWITH_CUDA", "-DTORCH_EXTENSION_NAME=_C",
           f"-I{tmp_path}", f"-I{tinc}", f"-I{tinc / 'torch/csrc/api/include'}", f"-I{cuda_include}",
           f"-I{sysconfig.get_paths()['include']}", str(ROOT / source)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
