"""Build layerprof: a pure-Python package, plus native kernels when their sources exist.

``get_extensions`` compiles ``csrc/binding.cpp`` and ``csrc/cpu/*.cpp`` (plus ``csrc/cuda/``
when torch has CUDA and nvcc exists) into ``layerprof._C`` with torch's cpp_extension.
Set ``LAYERPROF_NO_EXT=1`` to skip it, ``LAYERPROF_NO_CUDA=1`` to build the CPU ops only. Without a compiler or sources, the install is
pure Python and the ``torch`` backend is used (one clear warning, never an error).
Install torch first and build with ``pip install --no-build-isolation``: build
isolation would download a multi-GB torch.
"""
import os
import warnings
from glob import glob

from setuptools import find_packages, setup


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
    # CUDA kernels join the extension when torch has CUDA and nvcc is there (or when forced);
    # LAYERPROF_NO_CUDA=1 builds the CPU ops only.
    use_cuda = (torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
                and os.environ.get("LAYERPROF_NO_CUDA") != "1") or os.environ.get("LAYERPROF_FORCE_CUDA") == "1"
    args = {"cxx": ["-O3", "-fopenmp"]}
    if use_cuda:
        args["nvcc"] = ["-O3", "-gencode=arch=compute_80,code=sm_80",
                        "-gencode=arch=compute_90,code=sm_90"]
        ext = cpp_extension.CUDAExtension("layerprof._C", cpu_sources + cuda_sources, extra_compile_args=args,
                                          define_macros=[("WITH_CUDA", None)], extra_link_args=["-fopenmp"])
    else:
        ext = cpp_extension.CppExtension("layerprof._C", cpu_sources, extra_compile_args=args,
                                         extra_link_args=["-fopenmp"])
    return [ext], {"build_ext": cpp_extension.BuildExtension}


def _version() -> str:
    """The version string of layerprof/_version.py (one place for it; the package is not importable yet)."""
    import re

    text = open(os.path.join("layerprof", "_version.py"), encoding="utf-8").read()
    return re.search(r'__version__ = "([^"]+)"', text).group(1)


ext_modules, cmdclass = get_extensions()

setup(
    name="layerprof",
    version=_version(),
    description="Which layers deserve a LoRA adapter: a one-sweep Layer Card profiler that configures PEFT",
    long_description=open("README.md", encoding="utf-8").read() if os.path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # Triton kernels live in the top-level kernels/ folder (docs/method.md) and install as layerprof.kernels.
    packages=find_packages(include=["layerprof", "layerprof.*"]) + ["layerprof.kernels"],
    package_dir={"layerprof.kernels": "kernels"},
    package_data={"layerprof.bundled": ["shakespeare-gpt2/*.json", "shakespeare-gpt2/*.safetensors",
                                        "shakespeare-gpt2-deep/*.json", "shakespeare-gpt2-deep/*.safetensors",
                                        "heldout_shakespeare.txt"]},
    # torch is deliberately unpinned: install it first (a CPU or CUDA build); a range the
    # installed torch satisfies makes pip install nothing more.
    install_requires=["torch>=2.1", "transformers>=4.45", "peft>=0.13", "numpy", "tqdm", "safetensors", "pyyaml",
                      "matplotlib", "pydantic>=2"],
    # triton runs its kernels on the CPU under TRITON_INTERPRET=1 in the tests.
    extras_require={"test": ["pytest>=7", "scipy", "hypothesis>=6",
                             "triton; platform_system == \"Linux\" and platform_machine == \"x86_64\""]},
    entry_points={"console_scripts": ["layerprof=layerprof.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
