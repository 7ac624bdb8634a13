"""What the study trains on: a model factory with its train, eval and calibration batches."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

ModelFactory = Callable[[], nn.Module]


@dataclass
class Task:
    """A model factory with train and eval batches (dicts of model kwargs with labels)."""

    name: str
    model: ModelFactory
    train: list
    eval: list
    calibration: list


def stdlib_files() -> list:
    """The standard library's top-level source files: the code, docstring and comment tasks' text."""
    import sysconfig
    from pathlib import Path

    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    if len(files) < 20:
        raise RuntimeError(f"found only {len(files)} standard-library modules under {sysconfig.get_paths()['stdlib']}")
    return files
