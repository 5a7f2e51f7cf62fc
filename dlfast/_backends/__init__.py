"""Kernel backends. Each module implements every primitive listed in ``dlfast.kernels.KERNELS``
with the same signature; ``dlfast.kernels`` validates arguments and dispatches here."""
