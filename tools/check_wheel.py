"""Build a dlfast wheel, install it into an isolated folder, and run the kernel tests against it.

    python tools/check_wheel.py [--boundscheck] [--no-openmp] [--keep DIR] [pytest args...]

The wheel is built by pip (``pip wheel .``, build isolation as on a fresh machine). With
``--boundscheck`` the Cython kernels are compiled with boundscheck/wraparound/initializedcheck on
(CMake option DLFAST_BOUNDSCHECK=ON), so an out-of-bounds access raises IndexError instead of
corrupting memory. With ``--no-openmp`` the kernels are built serial (DLFAST_OPENMP=OFF), proving
OpenMP optional at build time. The tests run in a child interpreter that imports dlfast from the installed wheel
only (the editable-install redirect of the development tree is removed from ``sys.meta_path``),
first with a tuning cache folder that cannot be created (the backend keeps its tuning in memory).
"""
import argparse
import glob
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHILD = r"""
import os, sys
sys.meta_path[:] = [f for f in sys.meta_path if 'ScikitBuild' not in type(f).__name__]
for k in [k for k in sys.modules if k == 'dlfast' or k.startswith('dlfast.')]:
    del sys.modules[k]
site, what = os.environ['DLFAST_WHEEL_SITE'], os.environ['DLFAST_WHEEL_WHAT']
# a tuning cache folder that cannot be created (under a file): the backend must still load
os.environ['DLFAST_CACHE_DIR'] = os.path.join(site, 'dlfast', '__init__.py', 'cache')
import dlfast, dlfast.kernels
assert dlfast.__file__.startswith(site), f'dlfast imported from {dlfast.__file__}, not {what}'
assert 'cython' in dlfast.available_backends(), dlfast._config._import_errors
from dlfast._backends import cython_kernels
print('OpenMP', 'on' if cython_kernels.openmp_enabled() else 'off')
print('tuning cache:', cython_kernels.TUNING.cache)
assert 'kept in memory' in cython_kernels.TUNING.cache or \
    cython_kernels.TUNING.cache == 'nothing to measure', cython_kernels.TUNING.cache
print('testing', what, 'in', site, flush=True)
import pytest
sys.exit(pytest.main(sys.argv[1:]))
"""


def build_and_install(src, work, config=()):
    """``pip wheel src`` (build isolation, build folder ``work/build``, extra ``-C`` settings
    ``config``) installed alone into ``work/site``; returns that folder."""
    wheel_dir, site = os.path.join(work, "wheel"), os.path.join(work, "site")
    for old in glob.glob(os.path.join(wheel_dir, "dlfast-*.whl")):
        os.remove(old)
    cmd = [sys.executable, "-m", "pip", "wheel", src, "--no-deps", "-q", "-w", wheel_dir,
           "-C", f"build-dir={os.path.join(work, 'build')}"]
    for c in config:
        cmd += ["-C", c]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    wheels = glob.glob(os.path.join(wheel_dir, "dlfast-*.whl"))
    if len(wheels) != 1:
        sys.exit(f"expected one wheel in {wheel_dir}, found {wheels}")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--upgrade",
                    "--target", site, wheels[0]], check=True)
    return site


def child_run(site, what, tests, cwd, env=None, **kw):
    """Run pytest on ``tests`` in a child interpreter that imports dlfast from ``site`` only
    (printing "testing {what} in {site}"); returns the CompletedProcess."""
    env = dict(env or os.environ, PYTHONPATH=site, DLFAST_WHEEL_SITE=site, DLFAST_WHEEL_WHAT=what,
               DLFAST_REQUIRE_COMPILED="1")
    env.pop("DLFAST_BACKEND", None)
    return subprocess.run([sys.executable, "-c", _CHILD, "-q", "-p", "no:cacheprovider", *tests],
                          cwd=cwd, env=env, **kw)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boundscheck", action="store_true")
    ap.add_argument("--no-openmp", action="store_true")
    ap.add_argument("--keep", help="work folder to use and keep (default: a temporary one)")
    args, pytest_args = ap.parse_known_args(argv)
    work = args.keep or tempfile.mkdtemp(prefix="dlfast-wheel-")
    os.makedirs(work, exist_ok=True)
    config = (["cmake.define.DLFAST_BOUNDSCHECK=ON"] if args.boundscheck else []) \
        + (["cmake.define.DLFAST_OPENMP=OFF"] if args.no_openmp else [])
    site = build_and_install(ROOT, work, config)
    tests = pytest_args or sorted(glob.glob(os.path.join(ROOT, "tests", "test_kernels_*.py")))
    return child_run(site, "the wheel installed", tests, work).returncode

if __name__ == "__main__":
    sys.exit(main())
