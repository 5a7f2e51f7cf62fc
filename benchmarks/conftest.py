"""Shared fixtures of the pytest-benchmark suite (not collected by the normal test run: the
pyproject's testpaths is ``tests``).

    python -m pytest benchmarks --benchmark-enable --benchmark-group-by=group
    python -m pytest benchmarks --benchmark-enable --benchmark-group-by=group --bench-full

* ``backend`` — param fixture "numpy" / "cython" running the test under that backend
  (``dlfast.use_backend``); a benchmark sets ``benchmark.group`` to primitive + size, so both
  backends of one size sit side by side in the report.
* ``--bench-full`` (or ``DLFAST_BENCH_FULL=1``): also run the params marked ``bench_full``
  (the full size grid); the default run keeps representative sizes only.
* ``--bench-threads N`` (or ``DLFAST_BENCH_THREADS``; default 2): ``dlfast.set_num_threads(N)``
  for the session (compiled kernels and every BLAS) and ``torch.set_num_threads(N)``.
"""
import os

import _machine

_machine.unpin_openblas()       # this process only, before NumPy loads its OpenBLAS

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import dlfast  # noqa: E402

BACKENDS = dlfast.available_backends()
FULL = pytest.mark.bench_full


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def pytest_addoption(parser):
    g = parser.getgroup("dlfast benchmarks")
    g.addoption("--bench-full", action="store_true", default=_env_flag("DLFAST_BENCH_FULL"),
                help="run the full size grid (params marked bench_full)")
    g.addoption("--bench-threads", type=int, default=int(os.environ.get("DLFAST_BENCH_THREADS", 2)),
                help="threads for dlfast, BLAS and torch (default 2)")


def pytest_report_header(config):
    return _machine.describe()


def pytest_configure(config):
    config.addinivalue_line("markers", "bench_full: part of the full grid only (--bench-full)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--bench-full"):
        return
    keep, drop = [], []
    for it in items:
        (drop if it.get_closest_marker("bench_full") else keep).append(it)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["dlfast_threads"] = config.getoption("--bench-threads")
    machine_info["dlfast_backends"] = BACKENDS
    machine_info["numpy"] = np.__version__
    try:
        import torch
        machine_info["torch"] = torch.__version__
    except ImportError:
        machine_info["torch"] = None


@pytest.fixture(scope="session", autouse=True)
def bench_threads(request):
    n = request.config.getoption("--bench-threads")
    if n < 1:
        raise pytest.UsageError(f"--bench-threads must be >= 1, got {n}")
    dlfast.set_num_threads(n)
    try:
        import torch
        torch.set_num_threads(n)
    except ImportError:
        pass
    yield n
    dlfast.set_num_threads(0)


@pytest.fixture(params=["numpy", "cython"])
def backend(request):
    """Run the benchmark under each backend (skipped when the compiled one is not built)."""
    if request.param not in BACKENDS:
        pytest.skip(f"backend {request.param} not built")
    with dlfast.use_backend(request.param):
        yield request.param
