"""One sweep per model at a time: a model being profiled is claimed, and a second claim is refused.

A sweep hooks every target module, freezes the parameters and switches the model to eval
mode; a second sweep on the same model (another thread, or a ``profile()`` called from
inside the first one's ``loss_fn``) would write its rows into the first one's statistics and
restore the model's flags in the wrong order. So ``profile()`` and ``Profiler.__enter__``
claim the model before they touch it; a claim by anyone else raises ``ProfileError`` and
leaves the model as it was. The claim is keyed by ``id(model)`` and held only while the
sweep runs.
"""
from __future__ import annotations

import contextlib
import threading

from ..utils.errors import ProfileError

_LOCK = threading.Lock()
_CLAIMS: dict[int, tuple[object, str]] = {}


def claim(model, owner: object) -> bool:
    """Claim ``model`` for ``owner``; False if ``owner`` already holds it (re-entrant), else True."""
    with _LOCK:
        held = _CLAIMS.get(id(model))
        if held is not None:
            if held[0] is owner:
                return False
            raise ProfileError(f"this model is already being profiled (by {held[1]}); profile it once at a time — "
                               "wait for the first sweep to finish, or profile a copy (copy.deepcopy(model))")
        _CLAIMS[id(model)] = (owner, f"thread {threading.current_thread().name!r}")
        return True


def release(model, owner: object) -> None:
    with _LOCK:
        held = _CLAIMS.get(id(model))
        if held is not None and held[0] is owner:
            del _CLAIMS[id(model)]


@contextlib.contextmanager
def claimed(model, owner: object):
    fresh = claim(model, owner)
    try:
        yield
    finally:
        if fresh:
            release(model, owner)
