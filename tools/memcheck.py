"""Run the compiled-kernel tests under AddressSanitizer.

    python tools/memcheck.py [--src DIR] [--keep DIR] [pytest args...]

Builds the extension modules of the source tree ``--src`` (default: this repository) with
``-fsanitize=address -fno-omit-frame-pointer`` and Cython bounds checking on (CMake flags and
DLFAST_BOUNDSCHECK=ON: an out-of-bounds index raises IndexError; in an isolated build folder, the
development install is not touched), installs the wheel into a private folder, and runs the kernel
tests (default ``tests/test_kernels_*.py``, ``tests/test_sgemm.py`` (the own float32 GEMM),
``tests/test_fuzz_kernels.py`` and ``tests/test_engine.py``, the compiled training-step
programs, of this repository)
in a child interpreter with::

    LD_PRELOAD=$(gcc -print-file-name=libasan.so)   ASan runtime loaded before CPython
    ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:log_path=...  (CPython's blocks are not leaks;
                                                    reports go to files: pytest captures fd 2)
    PYTHONMALLOC=malloc                             every Python/NumPy block gets redzones

Any heap or stack overflow, use after free or double free in a kernel aborts the child with an
``ERROR: AddressSanitizer`` report. The script prints ``memcheck: N AddressSanitizer errors`` and
exits 0 only when the tests passed and N == 0. Linux with GCC (libasan) only.
"""
import argparse
import glob
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = "-fsanitize=address -fno-omit-frame-pointer"

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_wheel import build_and_install, child_run  # noqa: E402


def libasan():
    """Path of GCC's ASan runtime, or None."""
    try:
        p = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True,
                           check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return os.path.realpath(p) if os.path.isabs(p) and os.path.exists(p) else None


def build(src, work):
    """Build and install the ASan wheel of ``src`` under ``work``; returns the site folder."""
    return build_and_install(src, work, ["cmake.define.DLFAST_BOUNDSCHECK=ON",
                                         f"cmake.define.CMAKE_C_FLAGS={FLAGS}",
                                         "cmake.define.CMAKE_MODULE_LINKER_FLAGS=-fsanitize=address",
                                         "cmake.define.CMAKE_SHARED_LINKER_FLAGS=-fsanitize=address"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", default=ROOT, help="source tree to build (default: this repository)")
    ap.add_argument("--keep", help="work folder to use and keep (default: a temporary one)")
    args, pytest_args = ap.parse_known_args(argv)
    asan = libasan()
    if asan is None:
        print("memcheck: gcc's libasan.so not found", file=sys.stderr)
        return 2
    work = args.keep or tempfile.mkdtemp(prefix="dlfast-asan-")
    os.makedirs(work, exist_ok=True)
    site = build(os.path.abspath(args.src), work)
    pytest_args = [a if a.startswith("-") or not os.path.exists(a.split("::")[0]) else os.path.abspath(a)
                   for a in pytest_args]            # the child runs in the work folder
    tests = pytest_args or sorted(glob.glob(os.path.join(ROOT, "tests", "test_kernels_*.py"))) \
        + [os.path.join(ROOT, "tests", n) for n in ("test_sgemm.py", "test_fuzz_kernels.py",
                                                    "test_engine.py")]
    log = os.path.join(work, "asan-log")
    for old in glob.glob(log + ".*"):
        os.remove(old)
    env = dict(os.environ, LD_PRELOAD=asan, PYTHONMALLOC="malloc",
               ASAN_OPTIONS=f"detect_leaks=0:halt_on_error=1:allocator_may_return_null=1:"
                            f"log_path={log}")     # (pytest captures fd 2: reports go to files)
    run = child_run(site, "the AddressSanitizer build", tests, work, env,
                    capture_output=True, text=True)
    out = run.stdout + run.stderr
    for f in sorted(glob.glob(log + ".*")):
        with open(f, errors="replace") as fh:
            out += fh.read()
    sys.stdout.write(out[-20000:])
    errors = len(re.findall(r"ERROR: AddressSanitizer", out))
    print(f"memcheck: {errors} AddressSanitizer errors (pytest exit code {run.returncode})")
    return 0 if errors == 0 and run.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
