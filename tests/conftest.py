"""Shared fixtures. With DLFAST_REQUIRE_COMPILED=1 (set by .ci/run) a missing compiled backend
fails the run instead of silently testing only NumPy. The compiled backend's tuning cache
(dlfast/_backends/_tuning.py) goes to a temporary folder, removed at exit, inherited by the
tests' subprocesses: a test run never writes the user's ~/.cache."""
import atexit
import os
import shutil
import tempfile

import numpy as np
import pytest

os.environ["DLFAST_CACHE_DIR"] = tempfile.mkdtemp(prefix="dlfast-test-cache-")
atexit.register(shutil.rmtree, os.environ["DLFAST_CACHE_DIR"], True)

import dlfast  # noqa: E402  (after DLFAST_CACHE_DIR)

BACKENDS = dlfast.available_backends()

if os.environ.get("DLFAST_REQUIRE_COMPILED", "").lower() in ("1", "true", "yes"):
    assert "cython" in BACKENDS, (
        "DLFAST_REQUIRE_COMPILED is set but the compiled backend did not import: "
        + str(dlfast._config._import_errors.get("cython")))


@pytest.fixture(params=["numpy", "cython"])
def backend(request):
    """Run the test under each backend (a missing compiled backend is a skip only when not required)."""
    if request.param not in BACKENDS:
        pytest.skip(f"backend {request.param} not built")
    with dlfast.use_backend(request.param):
        yield request.param


@pytest.fixture(params=[np.float32, np.float64], ids=["f32", "f64"])
def dtype(request):
    return np.dtype(request.param)


class _FuzzCounter:
    """Fuzzed cases per entry point and outcome ("ok" or the exception's type name)."""

    def __init__(self):
        self.counts = {}

    def add(self, entry, outcome):
        d = self.counts.setdefault(entry, {})
        d[outcome] = d.get(outcome, 0) + 1


@pytest.fixture(scope="session")
def fuzz_counter(tmp_path_factory):
    """Session counter of fuzzed cases; written to ``fuzz_counts.json`` in pytest's base temp dir
    (and to ``$DLFAST_FUZZ_REPORT`` when set) at the end of the session."""
    import json
    c = _FUZZ
    yield c
    text = json.dumps(c.counts, indent=1, sort_keys=True)
    (tmp_path_factory.getbasetemp() / "fuzz_counts.json").write_text(text)
    if os.environ.get("DLFAST_FUZZ_REPORT"):
        with open(os.environ["DLFAST_FUZZ_REPORT"], "w") as f:
            f.write(text)


_FUZZ = _FuzzCounter()


def pytest_terminal_summary(terminalreporter):
    """One line: fuzzed cases, entry points, and how many returned / raised."""
    if _FUZZ.counts:
        total = sum(sum(d.values()) for d in _FUZZ.counts.values())
        ok = sum(d.get("ok", 0) for d in _FUZZ.counts.values())
        terminalreporter.write_line(f"fuzz: {total} cases over {len(_FUZZ.counts)} entry points "
                                    f"({ok} returned, {total - ok} raised documented exceptions)")


@pytest.fixture(autouse=True)
def _restore_global_settings():
    """No test leaks a process-wide backend or thread count into the next one."""
    from dlfast import _config
    saved = _config._default[0], _config._threads[0]
    yield
    _config._default[0] = saved[0]
    if _config._threads[0] != saved[1]:
        _config.set_num_threads(saved[1])
