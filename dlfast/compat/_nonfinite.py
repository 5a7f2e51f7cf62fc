"""NaN and infinity inside ``dlfast.compat``: they propagate as in NumPy, with one warning.

Each compat object (net, layer, optimiser) warns once per kind of occurrence ("input",
"loss", "gradient") with a ``NonFiniteWarning``; later occurrences of that kind are silent.
"""
from __future__ import annotations

import warnings

__all__ = ["NonFiniteWarning", "warn_once"]

_MESSAGES = {
    "input": "a non-finite value (NaN or inf) in the input of {what}; it propagates as in NumPy",
    "loss": "the loss of {what} is not finite (NaN or inf); it propagates as in NumPy",
    "gradient": "a non-finite gradient (NaN or inf) reached {what}; the update propagates it "
                "as in NumPy",
}


class NonFiniteWarning(RuntimeWarning):
    """A NaN or infinity reached ``dlfast.compat``; it propagates (no exception)."""


def warn_once(owner, kind, stacklevel=3, what=None):
    """Warn about ``kind`` for ``owner`` (named ``what``, default its class) unless it already
    did; True when it warned."""
    seen = owner.__dict__.setdefault("_nonfinite_seen", set())
    if kind in seen:
        return False
    seen.add(kind)
    warnings.warn(_MESSAGES[kind].format(what=what or type(owner).__name__), NonFiniteWarning,
                  stacklevel=stacklevel)
    return True
