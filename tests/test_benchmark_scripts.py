"""Every script of benchmarks/ runs to its end on a tiny setting (one round, one call per block,
small sizes), so that a change of the API it drives cannot leave it broken until the next person
measures with it. Figures are never checked here: they come from full runs (benchmarks/README.md).
"""
import importlib.util
import os
import subprocess
import sys

import pytest

import dlfast

pytestmark = pytest.mark.slow

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
TINY = ["--rounds", "1", "--block-ms", "1"]

# (script, arguments, a string its output must hold, modules it needs)
SCRIPTS = [
    ("compare.py", TINY + ["--repeats", "1", "--threads", "1", "--no-torch", "--only", "step"],
     "step sgd b=1", ()),
    ("memory.py", TINY + ["--sizes", "1e4"], "dropout fwd", ()),
    ("step_breakdown.py", ["--steps", "3", "--batch", "8", "--loss", "mse", "--outputs", "2",
                           "--by-step"], "MSELoss", ()),
    ("profile_step.py", ["--steps", "3", "--batch", "8", "--top", "3"], "us/step", ()),
    ("conv_kernels.py", TINY + ["--batches", "1", "--threads", "1", "--only", "pool"],
     "maxpool", ()),
    ("engine.py", TINY + ["--only", "ways"], "", ()),
    ("two_cores.py", TINY + ["--batches", "8"], "backward", ("threadpoolctl",)),
    ("sklearn_compare.py", ["--quick", "--part", "1"], "regress", ("sklearn", "threadpoolctl")),
    ("tune_speedup.py", ["--quick", "--trials", "2", "--epochs", "1"], "", ()),
]


@pytest.mark.skipif(not os.path.isdir(BENCH), reason="benchmarks/ is not beside tests/")
@pytest.mark.skipif("cython" not in dlfast.available_backends(),
                    reason="the benchmarks time the compiled backend")
@pytest.mark.parametrize("script,args,expect,needs", SCRIPTS,
                         ids=[f"{s}:{i}" for i, (s, *_) in enumerate(SCRIPTS)])
def test_benchmark_script_runs(script, args, expect, needs):
    for mod in needs:
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"{mod} is not installed")
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "MPLBACKEND": "Agg"}
    r = subprocess.run([sys.executable, os.path.join(BENCH, script), *args], cwd=BENCH,
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, f"{script} {' '.join(args)} failed:\n{r.stdout[-2000:]}\n" \
                              f"{r.stderr[-4000:]}"
    assert expect in r.stdout, r.stdout[-2000:]
