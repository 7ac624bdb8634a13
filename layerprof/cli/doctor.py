"""What `layerprof doctor` reports: versions, devices and which accumulation backends run here (and why not)."""
from __future__ import annotations


def environment() -> dict:
    """Versions of layerprof and its stack, the devices, and every backend's availability with its reason."""
    import importlib.util
    import platform

    import torch

    from .._version import __version__
    from ..utils.allocator import describe as allocator
    from ..stats.ops import backends

    devices = [{"device": "cpu", "name": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            prop = torch.cuda.get_device_properties(i)
            devices.append({"device": f"cuda:{i}", "name": prop.name, "memory_bytes": prop.total_memory,
                            "capability": f"{prop.major}.{prop.minor}"})
    versions = {}
    for pkg in ("transformers", "peft", "triton", "numpy", "matplotlib"):
        try:
            versions[pkg] = __import__(pkg).__version__
        except ImportError as e:  # absent (None), or installed and broken: say why
            versions[pkg] = None if importlib.util.find_spec(pkg) is None else f"fails to import: {e}"
    info = {"layerprof": __version__, "python": platform.python_version(), "torch": torch.__version__,
            **versions, "cuda_available": torch.cuda.is_available(), "allocator": allocator(), "devices": devices,
            "backends": {n: {"available": s.available, "reason": s.reason} for n, s in backends().items()}}
    return info
