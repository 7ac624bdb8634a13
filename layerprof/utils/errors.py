"""One error hierarchy: every error layerprof raises for bad input is a ``LayerprofError``.

Each message is one line that names the fix. The CLI prints it without a traceback and
exits 2. They subclass ``ValueError`` so that code written against earlier versions, which
caught ``ValueError``, keeps working.
"""
from __future__ import annotations


class LayerprofError(ValueError):
    """Bad input to layerprof; the message is one line and names the fix."""


class ProfileError(LayerprofError):
    """Bad input to a profiling sweep (model, batches, arguments)."""


class BatchError(ProfileError):
    """The user's model failed on one of their batches; the original error is chained.

    The message names the batch index and, where it can tell, the offending key.
    """


class PlacementError(LayerprofError):
    """A placement request that cannot be met; the message says what would fit."""


class CardFormatError(LayerprofError):
    """A card file that this version cannot read, or whose content is invalid."""


class ExportError(LayerprofError):
    """A plan that a format cannot carry without loss, or a value its consumer would refuse."""


class BudgetError(LayerprofError):
    """An invalid training budget; the message names the field and its valid range."""


class UsageError(LayerprofError):
    """A command-line request that cannot be carried out as given (checked before any work)."""


def dependency_error(package: str, needed_for: str, error: ImportError, install: str | None = None) -> ImportError:
    """An ``ImportError`` for ``needed_for`` that tells the truth about ``package``: not installed (and
    how to install it), or installed but failing to import, with the original error in the message —
    "pip install transformers" is bad advice when transformers is there and one of its own imports
    failed (a shadowing folder, a version clash)."""
    import importlib.util

    try:
        installed = importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # a half-imported parent package
        installed = True
    if not installed:
        return ImportError(f"{needed_for} needs {package}, which is not installed: "
                           f"pip install {install or package}")
    return ImportError(f"{needed_for} needs {package}, which is installed but failed to import "
                       f"({type(error).__name__}: {error})")
