"""Argument types and path checks for the CLI: bad values fail at parse time, before any sweep.

Each factory returns an ``argparse`` type function whose error names the flag, the valid
range and what was given, e.g. ``--batch-size must be an integer ≥ 1 (got 0)``. Paths are
checked for what the command will do with them (read a regular file, create a directory,
write a file), so that a wrong ``--out`` fails in a second, not after the sweep.
"""
from __future__ import annotations

import argparse
import math
import os
from pathlib import Path


def integer(flag: str, lo: int | None = None, hi: int | None = None):
    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be an integer{_range(lo, hi)} (got {text!r})") from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"{flag} must be an integer{_range(lo, hi)} (got {value})")
        return value
    return parse


def number(flag: str, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
           hi_open: bool = False):
    """A finite float in [lo, hi] (open ends where asked)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        bad = (not math.isfinite(value) or (lo is not None and (value < lo or (lo_open and value == lo)))
               or (hi is not None and (value > hi or (hi_open and value == hi))))
        if bad:
            left = "" if lo is None else ("> " if lo_open else "≥ ") + f"{lo:g}"
            right = "" if hi is None else ("< " if hi_open else "≤ ") + f"{hi:g}"
            rng = " and ".join(p for p in (left, right) if p)
            raise argparse.ArgumentTypeError(f"{flag} must be a finite number{' ' + rng if rng else ''} (got {text!r})")
        return value
    return parse


def _range(lo, hi) -> str:
    if lo is not None and hi is not None:
        return f" from {lo} to {hi}"
    if lo is not None:
        return f" ≥ {lo}"
    return f" ≤ {hi}" if hi is not None else ""


def input_file(flag: str, *, text: bool = False):
    """An existing regular file (UTF-8 and not empty when ``text``)."""
    def parse(value: str) -> str:
        path = Path(value)
        if not path.exists():
            raise argparse.ArgumentTypeError(f"{flag} {value!r} does not exist")
        if path.is_dir():
            raise argparse.ArgumentTypeError(f"{flag} {value!r} is a directory; pass a file")
        if not path.is_file():
            raise argparse.ArgumentTypeError(f"{flag} {value!r} is not a regular file (a FIFO or a device?)")
        if text:
            try:
                content = path.read_bytes().decode("utf-8")
            except UnicodeDecodeError as e:
                raise argparse.ArgumentTypeError(f"{flag} {value!r} is not UTF-8 text (byte {e.start}); convert it "
                                                 "(iconv -t utf-8) or pass another file") from None
            except OSError as e:
                raise argparse.ArgumentTypeError(f"{flag} {value!r} cannot be read ({e.strerror})") from None
            if not content.strip():
                raise argparse.ArgumentTypeError(f"{flag} {value!r} is empty; calibration needs text")
        return value
    return parse


def model_dir(flag: str):
    """A model `--model` can load (``layerprof.model.model_source.resolve``): "bundled", a packaged model
    ("smollm2"), a .gguf file or a folder holding one, a ``save_pretrained`` directory (config.json)
    or a PEFT adapter's (adapter_config.json)."""
    def parse(value: str) -> str:
        from ..utils.errors import UsageError
        from ..model.model_source import resolve

        try:
            resolve(value, flag)
        except UsageError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return value
    return parse


def output_dir(flag: str):
    """A directory that exists or can be created (no file in the way, a writable ancestor)."""
    def parse(value: str) -> str:
        if not value.strip():
            raise argparse.ArgumentTypeError(f"{flag} is empty; name an output directory")
        _check_creatable(Path(value), flag, want_dir=True)
        return value
    return parse


def output_file(flag: str):
    """A file path that can be written: not a directory, in a directory that exists or can be created."""
    def parse(value: str) -> str:
        if not value.strip():
            raise argparse.ArgumentTypeError(f"{flag} is empty; name an output file")
        path = Path(value)
        if path.is_dir() or value.endswith(os.sep):
            raise argparse.ArgumentTypeError(f"{flag} {value!r} is a directory; name a file (e.g. {value.rstrip(os.sep)}"
                                             f"{os.sep}lora_config.json)")
        _check_creatable(path.parent if str(path.parent) else Path("."), flag, want_dir=True)
        return value
    return parse


def _check_creatable(path: Path, flag: str, *, want_dir: bool) -> None:
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        what = "is a file" if probe == path else f"runs through the file {str(probe)!r}"
        raise argparse.ArgumentTypeError(f"{flag} {str(path)!r} {what}; name a directory")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{flag} {str(path)!r}: {str(probe)!r} is not writable")
