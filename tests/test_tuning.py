"""The machine-dependent choices (dlfast/_backends/_tuning.py, docs/internals.md "Tuned per
machine"): the shape classes, the decisions from measurements, the cache (round trip, corrupt
files, the key, an unwritable folder), the environment overrides and their errors, `dlfast info`,
and bits identical for 1 and 2 threads under every per-class mask and a threshold of 1.

Fake probes stand in for the machine where the decision logic is tested; the real timers run
once with the own kernel "available" (on a CPU without either own kernel dlf_sgemm declines every
call and the BLAS runs both sides). Every cache lives in a temporary folder."""
import json
import os
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest

import dlfast
from dlfast._backends import _tuning as T

needs_cython = pytest.mark.skipif("cython" not in dlfast.available_backends(),
                                  reason="compiled backend not built")

BLAS = {"library": "scipy-openblas32 0.3.34 (dlfast's own)", "version": "0.3.34",
        "core": "Haswell"}
# own kernel speed relative to the BLAS per class (t_blas / t_own): a near-tie, a win, a loss
RATIO = {"small": 1.03, "skinny": 1.3, "large": 0.9}
# one core's L2 of the fake machine: probe sizes 4096 .. 2^20 (w and g, 8 bytes an element)
FAKE_L2 = 2 ** 23
SIZES = T.probe_sizes(FAKE_L2)
# 2 threads' speedup per probe size: wins from 32768 on, after a lone win at 8192
SPEEDUP = dict(zip(SIZES, (0.6, 1.3, 0.9, 1.25, 1.4, 1.5, 1.5, 1.6, 1.6)))
# Winograd's speed over the direct kernels on the timed convolution (counted work 1.8x less)
WINO_SPEED = {"float32": 0.9, "float64": 1.2}
NO_WINO = {"DLFAST_WINOGRAD": "off"}


def fake_probe(own="avx512f", blas=BLAS, threads_why=None, calls=None, l2=FAKE_L2):
    """A probe with deterministic timers (appending each call to `calls`)."""
    calls = [] if calls is None else calls
    shape_class = {s: c for c, s in zip(T.CLASSES, T.SHAPES)}

    def time_gemm(is_own, m, n, k, n_calls):
        calls.append("gemm")
        return n_calls * 1e-6 / (RATIO[shape_class[m, n, k]] if is_own else 1.0)

    def time_threads(threads, size, n_calls):
        calls.append("threads")
        return n_calls * size * 1e-9 / (SPEEDUP[size] if threads == 2 else 1.0)

    def time_conv(dtype, wino, n_calls):
        calls.append("conv")
        return n_calls * 1e-3 / (WINO_SPEED[dtype] if wino else 1.0)

    return SimpleNamespace(own_isa=own, cpus=2, l2_bytes=l2, threads_why=threads_why,
                           blas=dict(blas), time_gemm=time_gemm, time_threads=time_threads,
                           time_conv=time_conv, conv_counted=lambda dtype: 1.8)


def env_for(folder, **extra):
    return {"DLFAST_CACHE_DIR": str(folder), **extra}


# ------------------------------------------------------------------------------------ shape classes
def reference_class(m, n, k):
    return 0 if m * n * k < 2 ** 18 else 1 if min(n, k) <= 128 else 2


@needs_cython
def test_shape_class_is_a_pure_function_of_m_n_k():
    from dlfast._backends import _dense
    sizes = [2, 3, 16, 64, 127, 128, 129, 255, 256, 784, 1000, 4097]
    grid = [(m, n, k) for m in sizes for n in sizes for k in sizes]
    seen = {}
    for threads in (1, 2):
        dlfast.set_num_threads(threads)
        seen[threads] = [_dense.sgemm_class(*s) for s in grid]
    assert seen[1] == seen[2] == [reference_class(*s) for s in grid]
    assert _dense.sgemm_class(64, 64, 63) == 0 and _dense.sgemm_class(64, 64, 64) == 1
    assert _dense.sgemm_class(2 ** 16, 2 ** 16, 2 ** 16) == 2            # no int overflow
    for c, shape in enumerate(T.SHAPES):                                 # each class's probe
        assert _dense.sgemm_class(*shape) == c


# ------------------------------------------------------------------------------------ decisions
def test_decisions_from_measurements(tmp_path):
    t = T.decide(fake_probe(), env_for(tmp_path))
    assert t.sgemm_mask == 0b010                       # only the clear win; the near-tie: BLAS
    assert t.sgemm_why["skinny"].startswith("own AVX-512F kernel: 1.30x the BLAS on 64x100x784")
    assert t.sgemm_why["small"].startswith("BLAS: the own kernel 1.03x")
    assert t.min_work == 32768                         # 8192 wins alone: not twice in a row
    assert "measured" in t.min_work_why
    assert t.sgemm_summary() == "own AVX-512F kernel for skinny; BLAS for small, large"
    assert t.wino_mode == 0 and t.wino_eff == pytest.approx({"float32": 2.0, "float64": 1.5})
    assert "float64 1.50 (1.20x the direct speed, 1.80x less counted work)" in t.wino_why
    t = T.decide(fake_probe(own="avx2"), env_for(tmp_path))       # another key: measured again
    assert t.cache.startswith("measured now") and t.sgemm_mask == 0b010
    assert t.sgemm_summary() == "own AVX2 kernel for skinny; BLAS for small, large"


def test_winograd_efficiency_steers_the_choice():
    """efficiency = counted / measured speed; _conv picks Winograd where counted work x the
    efficiency is below the direct kernels' (DeepConvNet's 64-channel 8x8 layer: 2x less)."""
    meas = {"date": "2026-01-01", "shape": list(T.WINO_SHAPE), "dtypes": {
        "float32": {"direct_s": 2.0, "wino_s": 1.0, "counted": 1.6},
        "float64": {"direct_s": 1.0, "wino_s": 2.0, "counted": 1.6}}}
    eff, why = T.winograd_decision(meas)
    assert eff == pytest.approx({"float32": 0.8, "float64": 3.2}) and "2026-01-01" in why
    if "cython" not in dlfast.available_backends():
        return
    from dlfast._backends import _conv
    q = _conv._wino_counted(64, 64, 8, 8)
    assert 1.5 < q < 3
    try:
        for e, chosen in ((q * 0.9, True), (q * 1.1, False)):
            _conv._set_winograd_efficiency(e, e)
            assert _conv._wino_chosen(64, 64, 8, 8, 3, 3) is chosen
            assert _conv._wino_chosen(64, 64, 8, 8, 3, 3, double=False) is chosen
    finally:
        from dlfast._backends import cython_kernels
        cython_kernels._apply(cython_kernels.TUNING)
    with pytest.raises(ValueError, match="efficiencies must be positive"):
        _conv._set_winograd_efficiency(0.0, 1.0)


@pytest.mark.parametrize("speedups,expected", [
    ((0.5,) * 8 + (1.3,), 2 ** 20),                    # only the largest size wins
    ((0.5,) * 9, 2 ** 20),                             # never: the largest size
    ((1.5,) * 9, 4096),
    ((0.5, 1.3, 0.9, 1.3, 1.19, 1.3, 1.3, 1.3, 1.3), 2 ** 17),
])
def test_threshold_rule(speedups, expected):
    meas = {"date": "2026-01-01", "speedup": {str(s): r for s, r in zip(SIZES, speedups)}}
    assert T.min_work_decision(meas)[0] == expected


def test_probe_sizes_stay_in_one_cores_l2():
    assert SIZES == tuple(4096 << i for i in range(9))
    assert T.probe_sizes(512 * 1024) == (4096, 8192, 16384, 32768, 65536)
    assert T.probe_sizes(512 * 1024 + 8) == T.probe_sizes(1024 * 1024 - 8)[:5]
    assert T.probe_sizes(0) == T.probe_sizes(64 * 1024) == (4096, 8192, 16384)   # at least 3


def test_threshold_never_beyond_l2(tmp_path):
    """A machine whose 2 threads never win twice gets the largest L2-resident size, not a
    bandwidth-bound one; the L2 is part of the key, so another L2 is measured again."""
    calls = []
    t = T.decide(fake_probe(l2=128 * 1024, calls=calls), env_for(tmp_path))
    assert calls.count("threads") == 2 * 3 * (T.THREAD_SAMPLES + 1)     # 4096 .. 16384
    assert t.min_work == 16384 and t.key["l2"] == 128 * 1024           # 0.6x, 1.3x, 0.9x
    assert "never" in t.min_work_why
    t2 = T.decide(fake_probe(l2=256 * 1024), env_for(tmp_path))
    assert t2.cache.startswith("measured now") and t2.min_work == 32768  # the last size, 1.25x
    assert T.decide(fake_probe(l2=128 * 1024), env_for(tmp_path)).cache.startswith("read")


@pytest.mark.parametrize("sizes", [(8192, 16384, 32768), (4096, 8192), (4096, 8192, 32768)])
def test_stored_probe_sizes_must_double_from_4096(sizes):
    meas = {"date": "2026-01-01", "speedup": {str(s): 1.5 for s in sizes}}
    assert not T._valid("min_work", meas)
    meas["speedup"] = {str(s): 1.5 for s in (4096, 8192, 16384)}
    assert T._valid("min_work", meas)


def test_nothing_measured_without_avx512_or_threads(tmp_path):
    calls = []
    t = T.decide(fake_probe(own="", threads_why="1 CPU available to this process",
                            calls=calls), env_for(tmp_path, **NO_WINO))
    assert calls == [] and t.sgemm_mask == 0 and t.min_work == T.DEFAULT_MIN_WORK
    assert set(t.sgemm_why.values()) == {"BLAS: the CPU has neither AVX-512F nor AVX2 + FMA"}
    assert t.min_work_why == "default: 1 CPU available to this process"
    assert t.cache == "nothing to measure" and not os.listdir(tmp_path)


# ------------------------------------------------------------------------------------ the cache
def test_cache_round_trip(tmp_path):
    first = T.decide(fake_probe(), env_for(tmp_path))
    assert first.cache.startswith("measured now") and "saved to" in first.cache
    data = json.loads((tmp_path / T.FILE).read_text())
    assert data["format"] == T.FORMAT and list(data["entries"]) == [T.key_id(first.key)]
    calls = []
    again = T.decide(fake_probe(calls=calls), env_for(tmp_path))
    assert calls == []                                  # nothing measured: read back
    assert again.cache == f"read from {tmp_path / T.FILE}"
    assert again.as_dict() | {"cache": ""} == first.as_dict() | {"cache": ""}


MALFORMED_ENTRY = "an entry of this machine's key with malformed measurements"


@pytest.mark.parametrize("content", [
    b"\x00\xff not json", b"", b"[]", b'{"format": 1, "entries": []}',
    b'{"format": 999, "entries": {}}', MALFORMED_ENTRY])
def test_corrupt_cache_is_ignored_and_replaced(tmp_path, content):
    if content == MALFORMED_ENTRY:
        kid = T.key_id(T.machine_key(fake_probe()))
        content = json.dumps({"format": 1, "entries": {kid: {
            "sgemm": {"date": "x", "classes": {"small": "?"}},
            "min_work": {"date": "x", "speedup": {"4096": "fast"}},
            "winograd": {"date": "x", "shape": list(T.WINO_SHAPE),
                         "dtypes": {"float32": {"direct_s": 0, "wino_s": 1, "counted": 2}}}}}
        }).encode()
    (tmp_path / T.FILE).write_bytes(content)
    calls = []
    t = T.decide(fake_probe(calls=calls), env_for(tmp_path))
    assert {"gemm", "threads", "conv"} <= set(calls)    # measured again
    assert t.sgemm_mask == 0b010 and t.min_work == 32768
    assert T.decide(fake_probe(), env_for(tmp_path)).cache.startswith("read from")


def test_key_changes_with_the_blas_core_and_version(tmp_path):
    base = T.machine_key(fake_probe())
    other_core = T.machine_key(fake_probe(blas=dict(BLAS, core="SkylakeX")))
    other_version = T.machine_key(fake_probe(blas=dict(BLAS, version="0.3.35")))
    ids = {T.key_id(k) for k in (base, other_core, other_version)}
    assert len(ids) == 3
    assert T.key_id(base) == T.key_id(T.machine_key(fake_probe()))       # stable
    # a pinned and an unpinned OpenBLAS keep separate entries in one file
    T.decide(fake_probe(), env_for(tmp_path))
    calls = []
    T.decide(fake_probe(blas=dict(BLAS, core="SkylakeX"), calls=calls), env_for(tmp_path))
    assert calls
    entries = json.loads((tmp_path / T.FILE).read_text())["entries"]
    assert {e["key"]["blas"]["core"] for e in entries.values()} == {"Haswell", "SkylakeX"}


def test_unwritable_cache_folder_keeps_the_result_in_memory(tmp_path):
    (tmp_path / "file").write_text("a file, not a folder")
    t = T.decide(fake_probe(), env_for(tmp_path / "file" / "cache"))
    assert "kept in memory: cannot write" in t.cache
    assert t.sgemm_mask == 0b010 and t.min_work == 32768


def test_cache_folder_fallbacks():
    assert T.cache_dir({"DLFAST_CACHE_DIR": "/a", "XDG_CACHE_HOME": "/b"}) == "/a"
    assert T.cache_dir({"XDG_CACHE_HOME": "/b"}) == os.path.join("/b", "dlfast")
    assert T.cache_dir({}) == os.path.join(os.path.expanduser("~"), ".cache", "dlfast")


# ------------------------------------------------------------------------------------ environment
def test_environment_overrides(tmp_path):
    calls = []
    t = T.decide(fake_probe(calls=calls), env_for(tmp_path, DLFAST_SGEMM="own",
                                                  DLFAST_PARALLEL_MIN_WORK="5000",
                                                  DLFAST_WINOGRAD="on"))
    assert calls == [] and t.sgemm_mask == 0b111 and t.min_work == 5000 and t.wino_mode == 2
    assert t.wino_why == "always: set by DLFAST_WINOGRAD"
    assert t.cache == "nothing to measure"
    assert set(t.sgemm_why.values()) == {"own AVX-512F kernel: set by DLFAST_SGEMM=own"}
    assert t.min_work_why == "set by DLFAST_PARALLEL_MIN_WORK"
    t = T.decide(fake_probe(), env_for(tmp_path, DLFAST_SGEMM=" BLAS "))
    assert t.sgemm_mask == 0 and t.sgemm_why["large"] == "BLAS: set by DLFAST_SGEMM=blas"
    t = T.decide(fake_probe(own=""), env_for(tmp_path, DLFAST_SGEMM="own"))
    assert t.sgemm_mask == 0 and "nor AVX2 + FMA (DLFAST_SGEMM=own ignored)" in t.sgemm_why["small"]
    t = T.decide(fake_probe(own="avx2"), env_for(tmp_path, DLFAST_SGEMM="own"))
    assert set(t.sgemm_why.values()) == {"own AVX2 kernel: set by DLFAST_SGEMM=own"}
    assert T.decide(fake_probe(), env_for(tmp_path, DLFAST_SGEMM="auto")).sgemm_mask == 0b010
    t = T.decide(fake_probe(), env_for(tmp_path, DLFAST_WINOGRAD=" OFF "))
    assert t.wino_mode == 1 and t.wino_why == "never: set by DLFAST_WINOGRAD"


@pytest.mark.parametrize("name,value", [("DLFAST_SGEMM", "fast"), ("DLFAST_SGEMM", "1"),
                                        ("DLFAST_PARALLEL_MIN_WORK", "abc"),
                                        ("DLFAST_PARALLEL_MIN_WORK", "0"),
                                        ("DLFAST_PARALLEL_MIN_WORK", "-5"),
                                        ("DLFAST_PARALLEL_MIN_WORK", "1e5"),
                                        ("DLFAST_WINOGRAD", "yes")])
def test_bad_environment_values_raise_naming_the_variable(tmp_path, name, value):
    with pytest.raises(ValueError, match=f"{name} must be .*{value!r}"):
        T.decide(fake_probe(), env_for(tmp_path, **{name: value}))


def run(code_or_args, folder, **env):
    e = dict(os.environ, DLFAST_CACHE_DIR=str(folder), DLFAST_BACKEND="cython", **env)
    args = code_or_args if isinstance(code_or_args, list) else ["-c", code_or_args]
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=e,
                          timeout=120)


@needs_cython
def test_environment_reaches_every_compiled_module(tmp_path):
    code = """if 1:
        import dlfast
        from dlfast._backends import cython_kernels as c
        mods = [c._info, *c._mods]
        print(sorted({m._get_min_work() for m in mods}), c._mods[0].own_sgemm(),
              c.threads_for(4999), c.threads_for(5000) == c.max_threads())
    """
    r = run(code, tmp_path, DLFAST_PARALLEL_MIN_WORK="5000", DLFAST_SGEMM="blas")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["[5000]", "0", "1", "True"]


@needs_cython
def test_bad_environment_value_is_an_error_of_dlfast_info(tmp_path):
    r = run(["-m", "dlfast", "info"], tmp_path, DLFAST_SGEMM="fastest")
    assert r.returncode != 0
    assert "DLFAST_SGEMM must be auto, own or blas, got 'fastest'" in r.stderr


@needs_cython
def test_dlfast_info_reports_the_choices(tmp_path):
    r = run(["-m", "dlfast", "info"], tmp_path)
    assert r.returncode == 0, r.stderr
    rows = dict(line.split("  ", 1) for line in r.stdout.splitlines() if "  " in line)
    rows = {k.strip(): v.strip() for k, v in rows.items()}
    from dlfast._backends import _dense
    if not _dense.sgemm_available():
        assert rows["float32 GEMM"] == "BLAS: the CPU has neither AVX-512F nor AVX2 + FMA"
    assert rows["parallel threshold"].split()[1:4] == ["elements", "of", "work"]
    assert rows["tuning cache"].startswith(("measured now", "read from", "nothing to measure"))
    assert rows["Winograd 3x3 conv"].startswith("by work, where its counted work x the efficiency")
    r = run(["-m", "dlfast", "info", "--json"], tmp_path)
    t = json.loads(r.stdout)["tuning"]
    assert t["cache"] == f"read from {tmp_path / T.FILE}" or t["cache"] == "nothing to measure"
    assert set(t["sgemm"]) == set(T.CLASSES) and t["key"]["blas"]["core"] is not None


@needs_cython
def test_import_works_when_the_cache_folder_cannot_be_created(tmp_path):
    (tmp_path / "file").write_text("")
    r = run("from dlfast._backends import cython_kernels as c; print(c.TUNING.cache)",
            tmp_path / "file" / "cache")
    assert r.returncode == 0, r.stderr
    assert "kept in memory" in r.stdout or r.stdout.strip() == "nothing to measure"


@needs_cython
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_no_thread_calibration_in_a_forked_child(tmp_path):
    """A child made by os.fork runs no parallel region at import (libgomp may hang there)."""
    code = """if 1:
        import os, dlfast
        pid = os.fork()
        if pid == 0:
            from dlfast._backends import cython_kernels as c
            print(c.TUNING.min_work, c.TUNING.min_work_why, flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
    """
    r = run(code, tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "32768 default: in a child made by os.fork (see dlfast._config)"


# ------------------------------------------------------------------------------------ real timers
@needs_cython
def test_calibration_with_the_own_kernel_forced_available(tmp_path):
    """The real timers, the own kernel taken as available: the mask follows the stored
    measurements, the threshold is a probe size, and it takes well under a second."""
    from dlfast._backends import cython_kernels
    probe = cython_kernels._probe(own_isa="avx2")
    t0 = time.perf_counter()
    t = T.decide(probe, env_for(tmp_path))
    took = time.perf_counter() - t0
    entry = T.load(str(tmp_path / T.FILE), T.key_id(t.key))
    assert took < 2.0, took                            # ~0.1 s; generous on a shared machine
    assert "sgemm" in entry
    for c, name in enumerate(T.CLASSES):
        meas = entry["sgemm"]["classes"][name]
        assert meas["shape"] == list(T.SHAPES[c])
        assert (t.sgemm_mask >> c & 1) == (meas["blas_s"] / meas["own_s"] >= T.GEMM_MARGIN)
    if probe.threads_why is None:
        assert t.min_work in T.probe_sizes(probe.l2_bytes)
    # the GEMM it times is right either way
    from dlfast._backends import _dense
    rng = np.random.default_rng(1)
    a, b = rng.random((33, 70), np.float32), rng.random((70, 41), np.float32)
    for own in (True, False):
        c = np.full((33, 41), np.nan, np.float32)
        _dense._sgemm_run(own, a, b, c, 2)
        np.testing.assert_allclose(c, a.astype(np.float64) @ b, rtol=1e-5)


# ------------------------------------------------------------------------------------ determinism
@pytest.fixture
def every_thread_count_parallel():
    """Threshold 1 in every compiled module (2 threads run even the smallest blocks); restored."""
    from dlfast._backends import cython_kernels as c
    mods = [c._info, *c._mods]
    was = [m._get_min_work() for m in mods]
    for m in mods:
        m._set_min_work(1)
    yield
    for m, w in zip(mods, was):
        m._set_min_work(w)


# (batch, inputs, outputs): blocks of each class (small, skinny, large) and mixed; the backward's
# two GEMMs in one region (batch and outputs within 4x) or one region each
DENSE_SHAPES = [(67, 300, 10), (97, 784, 100), (203, 785, 131), (45, 129, 257), (3, 2, 5),
                (37, 300, 120), (300, 200, 90)]


@needs_cython
@pytest.mark.parametrize("mask", range(8))
def test_bits_identical_for_1_and_2_threads_under_every_mask(mask, every_thread_count_parallel):
    from dlfast import kernels as K
    from dlfast._backends import _dense
    was = _dense.own_sgemm()
    try:
        assert _dense._force_own_sgemm(mask) == mask
        for n, i, o in DENSE_SHAPES:
            rng = np.random.default_rng(n * 1000 + i + o)
            x = rng.standard_normal((n, i)).astype(np.float32)
            W = rng.standard_normal((i, o)).astype(np.float32)
            b = rng.standard_normal(o).astype(np.float32)
            dout = rng.standard_normal((n, o)).astype(np.float32)
            got = []
            for threads in (1, 2):
                dlfast.set_num_threads(threads)
                with dlfast.use_backend("cython"):
                    out = np.empty((n, o), np.float32)
                    K.dense_forward(x, W, b, out, "relu")
                    dz, dx = np.empty_like(out), np.empty_like(x)
                    dW, db = np.empty_like(W), np.empty_like(b)
                    K.dense_backward(dout, x, W, out, dz, dx, dW, db, "relu")
                got.append([a.tobytes() for a in (out, dz, dx, dW, db)])
            assert got[0] == got[1], (mask, n, i, o)
            np.testing.assert_allclose(out, np.maximum(x.astype(np.float64) @ W + b, 0),
                                       rtol=1e-4, atol=1e-3)
    finally:
        _dense._force_own_sgemm(was)
