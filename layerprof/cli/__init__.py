"""The ``layerprof`` command: ``card``, ``place``, ``report``, ``compare``, ``bench``, ``doctor`` …

``parser`` builds the arguments, ``args`` checks the values, ``commands`` runs them, ``doctor``
says what runs on this machine. ``python -m layerprof.cli`` and the ``layerprof`` script both call
``main``.
"""

from .commands import main

__all__ = ["main"]
