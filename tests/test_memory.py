"""Long runs keep resident memory flat (issue 6): 2,000 training steps of a small MLP (batch norm,
dropout, Adam with clipping) on the compiled backend, in a fresh interpreter
(``tools/long_run.py``); RSS after the warm-up and at the end differ by less than 512 KiB (a leak
of one float32 array of the 64x128 weight, 32 KiB, per step would add 53 MiB). The 20,000-step
figures are in docs/reliability.md."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import dlfast

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import long_run  # noqa: E402

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")


def test_rss_meter_sees_an_allocation():
    before = long_run.rss()
    a = np.ones(8 * 2 ** 20)        # 64 MiB, touched (above glibc's largest mmap threshold, 32 MiB:
    grown = long_run.rss() - before  # fresh pages, not ones freed by earlier tests)
    assert 62 * 2 ** 20 <= grown <= 70 * 2 ** 20, grown
    del a


def test_training_memory_is_flat():
    backend = "cython"
    if backend not in dlfast.available_backends():
        pytest.skip("compiled backend not built")
    run = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "long_run.py"), "--steps",
                          "2000", "--every", "250", "--warmup", "300", "--backend", backend,
                          "--json"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    r = json.loads(run.stdout)
    assert r["steps"] == 2000 and np.isfinite(r["loss"]) and r["loss"] < 0.5
    assert r["growth"] < 512 * 1024, (f"RSS grew {r['growth'] / 1024:.0f} KiB between step 300 and "
                                      f"step 2000: {r['rss']}")
    late = [b for s, b in r["rss"] if s >= 500]
    assert max(late) - min(late) < 512 * 1024, r["rss"]
