"""Small helpers every stage may use, importing nothing else of layerprof.

The error types and ``dependency_error`` (``errors``), atomic file writes (``fileio``), the CPU
allocator's setting for long sweeps (``allocator``) and peak-memory measurement (``memory``).
"""
