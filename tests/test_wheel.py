"""`pip wheel .` builds a wheel that installs on its own and passes the kernel tests, here without
OpenMP (serial kernels; OpenMP is optional at build time): a full build (one to three minutes on 2
cores). The bounds-checked build (Cython boundscheck on) is tests/test_memcheck.py's, which is
also a wheel installed on its own (tools/memcheck.py)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
@pytest.mark.parametrize("flag,openmp", [("--no-openmp", "off")])
def test_wheel_passes_kernel_tests(tmp_path, flag, openmp):
    if os.environ.get("DLFAST_SKIP_WHEEL_TEST"):
        pytest.skip("DLFAST_SKIP_WHEEL_TEST is set (for quick local runs; CI never sets it)")
    run = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "check_wheel.py"), flag,
                          "--keep", str(tmp_path)],
                         capture_output=True, text=True, timeout=1500)
    tail = (run.stdout + run.stderr)[-4000:]
    assert run.returncode == 0, tail
    assert "testing the wheel installed in" in run.stdout
    if openmp:
        assert f"OpenMP {openmp}" in run.stdout
    assert " passed" in run.stdout and " failed" not in run.stdout, tail
