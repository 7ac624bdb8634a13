"""Build layerprof: a pure-Python package, plus native kernels when their sources exist.

``get_extensions`` compiles ``csrc/binding.cpp`` and ``csrc/cpu/*.cpp`` (plus ``csrc/cuda/``
when torch has CUDA and nvcc exists) into ``layerprof._C`` with torch's cpp_extension.
Set ``LAYERPROF_NO_EXT=1`` to skip it, ``LAYERPROF_NO_CUDA=1`` to build the CPU ops only. The build
falls back instead of failing: no CUDA headers, or CUDA sources that do not compile, give the CPU
ops alone; C++ that does not compile gives the pure-Python install with the ``torch`` backend (one
clear warning each, never an error). CUDA targets come from ``TORCH_CUDA_ARCH_LIST`` (default
``8.0;9.0+PTX``: PTX for newer GPUs); ``-fopenmp`` only where the compiler takes it.
Install torch first and build with ``pip install --no-build-isolation``: build
isolation would download a multi-GB torch.
"""
import os
import warnings
from glob import glob

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py


def _compiler_takes_openmp() -> bool:
    """Whether the C++ compiler builds an OpenMP program. csrc/cpu/stats.cpp parallelizes its gather
    with ATen's at::parallel_for, whose OpenMP backend is a header pragma: -fopenmp makes it
    parallel; a compiler without OpenMP (Apple clang without libomp) builds it serial instead."""
    import subprocess
    import tempfile

    cxx = os.environ.get("CXX", "c++")
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "omp.cpp")
        with open(src, "w") as f:
            f.write("#include <omp.h>\nint main() { return omp_get_max_threads() > 0 ? 0 : 1; }\n")
        try:
            done = subprocess.run([cxx, "-fopenmp", src, "-o", os.path.join(tmp, "omp")], capture_output=True,
                                  timeout=60)
        except (OSError, subprocess.SubprocessError):
            return False
        return done.returncode == 0


def _cuda_toolchain(cpp_extension) -> str | None:
    """None when the CUDA part can be built here, else why not (checked before compiling)."""
    home = cpp_extension.CUDA_HOME
    if home is None:
        return "no CUDA toolkit found (CUDA_HOME unset and no nvcc on PATH)"
    if not os.path.exists(os.path.join(home, "include", "cuda_runtime.h")):
        return f"CUDA headers not found under {home}/include (cuda_runtime.h); set CUDA_HOME to the toolkit"
    return None


def get_extensions():
    cpu_sources = ["csrc/binding.cpp"] + sorted(glob("csrc/cpu/*.cpp"))
    if os.environ.get("LAYERPROF_NO_EXT") == "1" or not os.path.exists("csrc/binding.cpp"):
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        warnings.warn("torch is not importable at build time: installing layerprof without native kernels")
        return [], {}
    cuda_sources = sorted(glob("csrc/cuda/*.cpp")) + sorted(glob("csrc/cuda/*.cu"))
    # CUDA kernels join the extension when torch has CUDA and the toolkit (nvcc and headers) is there,
    # or when forced; LAYERPROF_NO_CUDA=1 builds the CPU ops only.
    want_cuda = (torch.version.cuda is not None and os.environ.get("LAYERPROF_NO_CUDA") != "1") \
        or os.environ.get("LAYERPROF_FORCE_CUDA") == "1"
    use_cuda = False
    if want_cuda:
        why = _cuda_toolchain(cpp_extension)
        if why is None:
            use_cuda = True
        else:
            warnings.warn(f"building layerprof's CPU ops only: {why}")
    omp = ["-fopenmp"] if _compiler_takes_openmp() else []
    args = {"cxx": ["-O3", *omp]}
    if use_cuda:
        # torch's cpp_extension turns TORCH_CUDA_ARCH_LIST into -gencode flags; "+PTX" also embeds PTX,
        # which the driver JIT-compiles for GPUs newer than the list.
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
        args["nvcc"] = ["-O3"]
        ext = cpp_extension.CUDAExtension("layerprof._C", cpu_sources + cuda_sources, extra_compile_args=args,
                                          define_macros=[("WITH_CUDA", None)], extra_link_args=omp)
    else:
        ext = cpp_extension.CppExtension("layerprof._C", cpu_sources, extra_compile_args=args, extra_link_args=omp)
    return [ext], {"build_ext": _fallback_build(cpp_extension.BuildExtension, cpu_sources, omp)}


def _fallback_build(base, cpu_sources, omp):
    """``build_ext`` that falls back instead of failing: a CUDA part that does not compile -> the CPU ops
    alone (one warning); a C++ part that does not compile -> no extension, the pure-Python install
    with the torch backend (one warning)."""

    class FallbackBuild(base):
        def build_extension(self, ext):
            try:
                return super().build_extension(ext)
            except Exception as e:  # noqa: BLE001 - compiler and linker errors come in many types
                cuda = any(src.endswith(".cu") for src in ext.sources)
                if cuda:
                    warnings.warn(f"layerprof's CUDA kernels did not compile ({type(e).__name__}: "
                                  f"{str(e).strip().splitlines()[-1] if str(e).strip() else ''}); building the CPU "
                                  "ops only (backend 'cpp'; 'torch' on the GPU)")
                    ext.sources = list(cpu_sources)
                    ext.define_macros = [m for m in ext.define_macros if m[0] != "WITH_CUDA"]
                    ext.extra_compile_args = {"cxx": ["-O3", *omp]}
                    ext.libraries = [lib for lib in ext.libraries if "cuda" not in lib.lower()]
                    try:
                        return super().build_extension(ext)
                    except Exception as e2:  # noqa: BLE001
                        e = e2
                warnings.warn(f"layerprof's C++ extension did not compile ({type(e).__name__}); installing "
                              "without native kernels: the pure PyTorch backend runs everything (`layerprof "
                              "doctor` says so)")
                return None

    return FallbackBuild


class _BuildPyWithKernels(build_py):
    """``build_py`` that also copies the Triton sources of the top-level ``kernels/`` folder into
    ``layerprof/kernels/`` of the build. That folder is not a package of its own (a top-level
    ``kernels`` would shadow Hugging Face's); an editable install reads it in place instead
    (``layerprof/kernels/__init__.py``)."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = os.path.join(self.build_lib, "layerprof", "kernels")
        self.mkpath(target)
        for src in sorted(glob(os.path.join("kernels", "*.py"))):
            self.copy_file(src, os.path.join(target, os.path.basename(src)))


def _version() -> str:
    """The version string of layerprof/_version.py (one place for it; the package is not importable yet)."""
    import re

    text = open(os.path.join("layerprof", "_version.py"), encoding="utf-8").read()
    return re.search(r'__version__ = "([^"]+)"', text).group(1)


if __name__ == "__main__":  # pip runs setup.py as __main__; tests import its helpers
    ext_modules, cmdclass = get_extensions()

    setup(
        name="layerprof",
        version=_version(),
        description="Which layers deserve a LoRA adapter: a one-sweep Layer Card profiler that configures PEFT",
        long_description=open("README.md", encoding="utf-8").read() if os.path.exists("README.md") else "",
        long_description_content_type="text/markdown",
        python_requires=">=3.10",
        # Triton kernels live in the top-level kernels/ folder and install as layerprof.kernels (build_py above).
        packages=find_packages(include=["layerprof", "layerprof.*"]),
        # The bundled model only: the study's deeper checkpoints stay in the repository (studies/v1/checkpoints).
        package_data={"layerprof.model.bundled": ["shakespeare-gpt2/*.json", "shakespeare-gpt2/*.safetensors",
                                                  "heldout_shakespeare.txt"]},
        # torch is deliberately unpinned: install it first (a CPU or CUDA build); a range the
        # installed torch satisfies makes pip install nothing more.
        install_requires=["torch>=2.1", "transformers>=4.45", "peft>=0.13", "numpy", "tqdm", "safetensors", "pyyaml",
                          "matplotlib", "pydantic>=2",
                          # transformers reads GGUF files (`--model x.gguf`, `--model smollm2`) with it
                          "gguf",
                          # float64 LAPACK of finalize on the CPU (layerprof.stats.linalg) and its BLAS thread limit
                          "scipy", "threadpoolctl"],
        # triton runs its kernels on the CPU under TRITON_INTERPRET=1 in the tests.
        extras_require={"test": ["pytest>=7", "pytest-benchmark>=5", "hypothesis>=6",
                                 "triton; platform_system == \"Linux\" and platform_machine == \"x86_64\""]},
        entry_points={"console_scripts": ["layerprof=layerprof.cli:main"]},
        ext_modules=ext_modules,
        cmdclass={"build_py": _BuildPyWithKernels, **cmdclass},
    )
