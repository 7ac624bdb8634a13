"""Build layerprof: a pure-Python package, plus native kernels when their sources exist.

The extension hook: ``get_extensions`` compiles ``csrc/cpu/*.cpp`` (and ``csrc/cuda/*.cu``
when torch has CUDA) into ``layerprof._C`` with torch's cpp_extension. Set
``LAYERPROF_NO_EXT=1`` to skip it. Without a compiler or sources, the install is
pure Python and the ``torch`` backend is used (one clear warning, never an error).
Install torch first and build with ``pip install --no-build-isolation``: build
isolation would download a multi-GB torch.
"""
import os
import warnings
from glob import glob

from setuptools import find_packages, setup


def get_extensions():
    sources = sorted(glob("csrc/cpu/*.cpp"))
    if os.environ.get("LAYERPROF_NO_EXT") == "1" or not sources:
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        warnings.warn("torch is not importable at build time: installing layerprof without native kernels")
        return [], {}
    cuda_sources = sorted(glob("csrc/cuda/*.cu"))
    use_cuda = bool(cuda_sources) and torch.cuda.is_available() or os.environ.get("LAYERPROF_FORCE_CUDA") == "1"
    ext_cls = cpp_extension.CUDAExtension if use_cuda else cpp_extension.CppExtension
    ext = ext_cls("layerprof._C", sources + (cuda_sources if use_cuda else []),
                  extra_compile_args={"cxx": ["-O3", "-fopenmp"], "nvcc": ["-O3"]}, extra_link_args=["-fopenmp"])
    return [ext], {"build_ext": cpp_extension.BuildExtension}


ext_modules, cmdclass = get_extensions()

setup(
    name="layerprof",
    version="0.1.0",
    description="Which layers deserve a LoRA adapter: a one-sweep Layer Card profiler that configures PEFT",
    long_description=open("README.md", encoding="utf-8").read() if os.path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # Triton kernels live in the top-level kernels/ folder (DESIGN §2) and install as layerprof.kernels.
    packages=find_packages(include=["layerprof", "layerprof.*"]) + ["layerprof.kernels"],
    package_dir={"layerprof.kernels": "kernels"},
    package_data={"layerprof.bundled": ["shakespeare-gpt2/*.json", "shakespeare-gpt2/*.safetensors",
                                        "heldout_shakespeare.txt"]},
    # torch is deliberately unpinned: install it first (a CPU or CUDA build); a range the
    # installed torch satisfies makes pip install nothing more.
    install_requires=["torch>=2.1", "transformers>=4.45", "peft>=0.13", "numpy", "tqdm", "safetensors"],
    extras_require={"test": ["pytest>=7", "scipy"]},
    entry_points={"console_scripts": ["layerprof=layerprof.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
