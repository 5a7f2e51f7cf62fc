"""Thread control: set_num_threads/get_num_threads, OMP_NUM_THREADS and threadpoolctl limits are
honoured, small arrays stay on one thread, and the fallback to NumPy is announced once."""
import os
import subprocess
import sys

import pytest

import dlfast

needs_cython = pytest.mark.skipif("cython" not in dlfast.available_backends(),
                                  reason="compiled backend not built")


def run(code, **env):
    e = dict(os.environ, **env)
    e.pop("DLFAST_REQUIRE_COMPILED", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return out


@needs_cython
def test_omp_num_threads_is_honoured():
    out = run("import dlfast; print(dlfast.get_num_threads())", OMP_NUM_THREADS="1")
    assert out.stdout.strip() == "1"


@needs_cython
def test_threadpoolctl_limit_is_honoured():
    from dlfast._backends import cython_kernels as C
    if not C.openmp_enabled():
        pytest.skip("built without OpenMP")
    from threadpoolctl import threadpool_limits
    with threadpool_limits(limits=1, user_api="openmp"):
        assert dlfast.get_num_threads() == 1
        assert C.threads_for(10**7) == 1


@needs_cython
def test_set_num_threads_and_small_work_threshold():
    from dlfast._backends import cython_kernels as C
    dlfast.set_num_threads(2)
    try:
        assert dlfast.get_num_threads() == 2
        assert C.threads_for(10) == 1                      # no parallel region for small arrays
        assert C.threads_for(10**7) == 2
    finally:
        dlfast.set_num_threads(0)


def test_fallback_warns_once_and_require_compiled_turns_it_into_an_error(tmp_path):
    # Hide the compiled modules by making their import fail: an empty package shadowing them.
    code = ("import sys, warnings, importlib\n"
            "sys.modules['dlfast._backends._dense'] = None\n"
            "warnings.simplefilter('always')\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    import dlfast\n"
            "    print(dlfast.get_backend()); print(dlfast.get_backend())\n"
            "print(sum('compiled backend unavailable' in str(x.message) for x in w))\n")
    out = run(code)
    assert out.stdout.split() == ["numpy", "numpy", "1"]
    e = dict(os.environ, DLFAST_REQUIRE_COMPILED="1")
    bad = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e,
                         timeout=120)
    assert bad.returncode != 0 and "DLFAST_REQUIRE_COMPILED" in bad.stderr


def test_dlfast_backend_environment_variable():
    out = run("import dlfast; print(dlfast.get_backend())", DLFAST_BACKEND="numpy")
    assert out.stdout.strip() == "numpy"
