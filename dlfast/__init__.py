"""dlfast: classic deep-learning training on the CPU from plain NumPy, correct and fast.

Backends: ``set_backend("numpy" | "cython")``, ``get_backend()``, ``available_backends()``,
``with use_backend(name): ...``, or the ``DLFAST_BACKEND`` environment variable.
Threads: ``set_num_threads(n)`` / ``get_num_threads()``.
"""
from ._config import (available_backends, get_backend, get_num_threads, set_backend,
                      set_num_threads, use_backend)

__version__ = "0.1.0"

__all__ = ["available_backends", "get_backend", "get_num_threads", "set_backend",
           "set_num_threads", "use_backend", "__version__"]
