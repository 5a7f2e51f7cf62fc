"""The compiled kernels pass the kernel tests, the kernel fuzz suite and the engine tests under
AddressSanitizer with Cython bounds checking on (``tools/memcheck.py``: an isolated
``-fsanitize=address``, ``DLFAST_BOUNDSCHECK=ON`` wheel, CPython run with libasan preloaded). One build (about 1.5 minutes on 2 cores) plus the tests (under a minute).
Skipped with ``DLFAST_SKIP_WHEEL_TEST=1`` or ``DLFAST_SKIP_MEMCHECK=1`` (quick local runs; CI sets
neither), and where GCC's libasan is missing."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import memcheck  # noqa: E402


@pytest.mark.slow
def test_kernels_clean_under_address_sanitizer(tmp_path):
    if os.environ.get("DLFAST_SKIP_WHEEL_TEST") or os.environ.get("DLFAST_SKIP_MEMCHECK"):
        pytest.skip("DLFAST_SKIP_WHEEL_TEST / DLFAST_SKIP_MEMCHECK is set (CI sets neither)")
    if not sys.platform.startswith("linux") or memcheck.libasan() is None:
        pytest.skip("AddressSanitizer runtime (gcc's libasan.so) not available")
    run = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "memcheck.py"),
                          "--keep", str(tmp_path)], capture_output=True, text=True, timeout=900)
    tail = (run.stdout + run.stderr)[-4000:]
    assert "testing the AddressSanitizer build in" in run.stdout, tail
    assert "memcheck: 0 AddressSanitizer errors (pytest exit code 0)" in run.stdout, tail
    assert run.returncode == 0, tail
    assert " passed" in run.stdout and " failed" not in run.stdout, tail
