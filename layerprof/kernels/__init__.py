"""Triton accumulation kernels, imported as ``layerprof.kernels``.

Their sources live in the repository's top-level ``kernels/`` folder, beside ``csrc/``, so that
native code of every kind sits at the top. That folder is deliberately not a Python package:
a top-level ``kernels`` importable from a checkout would shadow Hugging Face's ``kernels``, which
transformers imports when it loads a model. A wheel copies the sources into this package
(``setup.py``'s ``build_py``); a checkout or an editable install finds them through ``__path__``.
"""
from pathlib import Path

_here = Path(__file__).resolve().parent
_sources = _here.parent.parent / "kernels"
if not (_here / "stats.py").is_file() and (_sources / "stats.py").is_file():
    __path__.append(str(_sources))  # noqa: F821 - a package's __path__ is defined by the import system
