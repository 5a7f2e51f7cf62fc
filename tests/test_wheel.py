"""`pip wheel .` builds a wheel that installs on its own and passes the kernel tests, compiled
with Cython bounds checking on (any out-of-bounds access would raise instead of corrupting memory).
Runs once per test session: a full build (about two minutes on 2 cores)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_boundschecked_wheel_passes_kernel_tests(tmp_path):
    if os.environ.get("DLFAST_SKIP_WHEEL_TEST"):
        pytest.skip("DLFAST_SKIP_WHEEL_TEST is set (for quick local runs; CI never sets it)")
    run = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "check_wheel.py"),
                          "--boundscheck", "--keep", str(tmp_path)],
                         capture_output=True, text=True, timeout=1500)
    tail = (run.stdout + run.stderr)[-4000:]
    assert run.returncode == 0, tail
    assert "testing the wheel installed in" in run.stdout
    assert " passed" in run.stdout and " failed" not in run.stdout, tail
