"""Triton accumulation kernels (installed as ``layerprof.kernels``); see ``stats.py``."""
