"""The compiled backend's three machine-dependent choices, measured once per machine, cached and
overridable; the rules, the cache key and the variables are in docs/internals.md ("Tuned per
machine").

* ``sgemm_mask``: bit c set = the float32 GEMM calls of shape class c (``_dense.sgemm_class``)
  run on dlfast's own kernel (AVX-512F or AVX2 + FMA, whichever the CPU has: ``OWN``), else on
  the GEMM BLAS (``measure_sgemm``, ``sgemm_decision``).
* ``min_work``: the parallel threshold, elements of work below which a kernel stays on one
  thread (``measure_threads``, ``min_work_decision``). It changes thread counts, never results.
* ``wino_eff``: per dtype, Winograd F(2x2, 3x3)'s time per counted multiply-add over the direct
  convolution kernels' (``measure_winograd``, ``winograd_decision``): a 3x3 stride-1 forward or
  dx runs on Winograd where its counted work times this is below the direct kernels'.

``decide(probe)`` reads the cache (``tuning.json`` in ``cache_dir()``), measures what is missing
with the probe's timers, saves, and returns a ``Tuning``: the decisions and why. This module and
nothing else reads ``DLFAST_SGEMM``, ``DLFAST_PARALLEL_MIN_WORK``, ``DLFAST_WINOGRAD`` and
``DLFAST_CACHE_DIR``.
"""
import datetime
import hashlib
import json
import os
import statistics
import tempfile
import time

CLASSES = ("small", "skinny", "large")                         # _dense.sgemm_class: 0, 1, 2
CLASS_RULES = {"small": "m n k < 2^18", "skinny": "min(n, k) <= 128", "large": "otherwise"}
SHAPES = ((16, 64, 128), (64, 100, 784), (128, 256, 512))     # (m, n, k) timed per class
GEMM_MARGIN = 1.05
GEMM_SAMPLES = 7
GEMM_WORK = 1 << 21                # multiply-adds per sample (small products repeat)

DEFAULT_MIN_WORK = 32768
PROBE_FIRST = 4096                 # the least probe size (one parallel work item of _optim)
PROBE_BYTES = 8                    # bytes per probe element: w and g, float32
L2_FALLBACK = 256 * 1024           # one core's L2 where the system does not say
THREAD_MARGIN = 1.2
THREAD_SAMPLES = 7
THREAD_WORK = 1 << 20              # elements updated per sample

WINO_SHAPE = (16, 32, 14, 14, 32)  # N, C, H, W, F of the timed convolution (3x3, padding 1)
WINO_SAMPLES = 9
WINO_CALLS = 3                     # forwards per sample
DTYPES = ("float32", "float64")

OWN = {"avx512f": "own AVX-512F kernel", "avx2": "own AVX2 kernel"}  # _dense.sgemm_isa()
NO_OWN = "the CPU has neither AVX-512F nor AVX2 + FMA"

FILE = "tuning.json"
PARTS = ("sgemm", "min_work", "winograd")
FORMAT = 1
MAX_ENTRIES = 32


class Tuning:
    """The decisions and why: ``sgemm_mask``, ``sgemm_why`` (class name -> reason), ``own`` (the
    own kernel's ISA, "" for none), ``min_work``,
    ``min_work_why``, ``cache`` (where the measurements are kept, or why not), ``key``."""

    def __init__(self):
        self.sgemm_mask = 0
        self.sgemm_why = {}
        self.own = ""
        self.min_work = DEFAULT_MIN_WORK
        self.min_work_why = ""
        self.wino_mode = 0                 # _conv._set_winograd: 0 by work, 1 never, 2 always
        self.wino_eff = {d: 2.0 for d in DTYPES}
        self.wino_why = ""
        self.cache = ""
        self.key = {}

    def sgemm_summary(self):
        """One line: which kernel runs which class (the reason when it is the same for all)."""
        why = set(self.sgemm_why.values())
        if len(why) == 1:
            return why.pop()
        own = [c for i, c in enumerate(CLASSES) if self.sgemm_mask >> i & 1]
        blas = [c for c in CLASSES if c not in own]
        return "; ".join(f"{what} for {', '.join(cs)}" for what, cs in
                         ((OWN.get(self.own, "own kernel"), own), ("BLAS", blas)) if cs)

    def as_dict(self):
        return {"sgemm_mask": self.sgemm_mask, "sgemm": dict(self.sgemm_why), "own": self.own,
                "parallel_min_work": self.min_work, "parallel_min_work_why": self.min_work_why,
                "winograd": {"mode": ("by work", "never", "always")[self.wino_mode],
                             "efficiency": dict(self.wino_eff), "why": self.wino_why},
                "cache": self.cache, "key": dict(self.key)}


# ------------------------------------------------------------------------------------ environment
def _env_sgemm(env):
    v = env.get("DLFAST_SGEMM", "").strip().lower() or "auto"
    if v not in ("auto", "own", "blas"):
        raise ValueError(f"DLFAST_SGEMM must be auto, own or blas, got {env['DLFAST_SGEMM']!r}")
    return v


def _env_winograd(env):
    v = env.get("DLFAST_WINOGRAD", "").strip().lower() or "auto"
    if v not in ("auto", "on", "off"):
        raise ValueError(f"DLFAST_WINOGRAD must be auto, on or off, got {env['DLFAST_WINOGRAD']!r}")
    return v


def _env_min_work(env):
    v = env.get("DLFAST_PARALLEL_MIN_WORK", "").strip()
    if not v:
        return None
    try:
        n = int(v)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError("DLFAST_PARALLEL_MIN_WORK must be an integer >= 1 (elements of work), "
                         f"got {env['DLFAST_PARALLEL_MIN_WORK']!r}")
    return n


def cache_dir(env=None):
    env = os.environ if env is None else env
    if env.get("DLFAST_CACHE_DIR"):
        return env["DLFAST_CACHE_DIR"]
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "dlfast")


# ------------------------------------------------------------------------------------ machine key
ISA_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl")


def cpu_facts():
    """(CPU model string, the ISA flags of ``ISA_FLAGS`` it has) from /proc/cpuinfo, else
    platform's processor name and no flags."""
    model, flags = "", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                name, _, value = line.partition(":")
                name = name.strip()
                if name == "model name" and not model:
                    model = value.strip()
                elif name in ("flags", "Features") and not flags:
                    flags = set(value.split())
                if model and flags:
                    break
    except OSError:
        pass
    if not model:
        import platform
        model = platform.processor() or platform.machine()
    return model, sorted(f for f in ISA_FLAGS if f in flags)


def machine_key(probe):
    model, flags = cpu_facts()
    from .. import __version__
    return {"cpu": model, "isa": flags, "own": probe.own_isa, "cpus": probe.cpus,
            "l2": probe.l2_bytes, "dlfast": __version__, "blas": dict(probe.blas)}


def key_id(key):
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------ measuring
def _today():
    return datetime.date.today().isoformat()


def measure_sgemm(time_gemm):
    """{class: {"shape": [m, n, k], "own_s": t, "blas_s": t}}: medians of ``GEMM_SAMPLES``
    interleaved samples of ``time_gemm(own, m, n, k, calls)`` (seconds for `calls` products)."""
    out = {}
    for name, (m, n, k) in zip(CLASSES, SHAPES):
        calls = max(1, GEMM_WORK // (m * n * k))
        time_gemm(True, m, n, k, 1)                       # warm up: packing buffer, caches
        time_gemm(False, m, n, k, 1)
        own, blas = [], []
        for _ in range(GEMM_SAMPLES):
            own.append(time_gemm(True, m, n, k, calls) / calls)
            blas.append(time_gemm(False, m, n, k, calls) / calls)
        out[name] = {"shape": [m, n, k], "own_s": statistics.median(own),
                     "blas_s": statistics.median(blas)}
    return {"date": _today(), "classes": out}


def probe_sizes(l2_bytes):
    """The threshold's probe sizes: 4096 * 2^i up to the largest whose w and g fit one core's L2
    (`l2_bytes`; at least 4096, 8192, 16384). Beyond it 1 and 2 threads stream from L3 or memory,
    and r(s) measures bandwidth, not the cost of starting the second thread: on a 2-vCPU AMD EPYC
    (L2 512 KB) r stayed 1.1-1.3 from 2^17 to 2^20 elements, which put the threshold at 2^20 three
    runs in four and kept 200x100x256 GEMMs (1.87x faster on 2 threads) on one."""
    top = max(l2_bytes // PROBE_BYTES, PROBE_FIRST * 4)
    return tuple(PROBE_FIRST << i for i in range(32) if PROBE_FIRST << i <= top)


def measure_threads(time_threads, sizes):
    """{"speedup": {size: t1 / t2}}: the least of ``THREAD_SAMPLES`` interleaved samples of
    ``time_threads(threads, size, calls)`` (seconds for `calls` updates) per size of `sizes` and
    thread count (the least disturbed: another process on a core slows the 2-thread runs most)."""
    speedup = {}
    for s in sizes:
        calls = max(1, THREAD_WORK // s)
        time_threads(1, s, 1)
        time_threads(2, s, 1)
        t1, t2 = [], []
        for _ in range(THREAD_SAMPLES):
            t1.append(time_threads(1, s, calls))
            t2.append(time_threads(2, s, calls))
        speedup[str(s)] = min(t1) / max(min(t2), 1e-12)
    return {"date": _today(), "speedup": speedup}


def measure_winograd(time_conv, counted):
    """{"shape": WINO_SHAPE, "dtypes": {dtype: {"direct_s": t, "wino_s": t, "counted": q}}}:
    the least of ``WINO_SAMPLES`` interleaved samples (the least disturbed; a neighbour only adds
    time) of ``time_conv(dtype, wino, calls)`` (seconds for `calls` forwards of the WINO_SHAPE
    convolution on the default threads, direct or Winograd) and ``counted(dtype)``, the direct
    kernels' counted work over Winograd's for that shape."""
    out = {}
    for dt in DTYPES:
        time_conv(dt, False, 1)
        time_conv(dt, True, 1)
        direct, wino = [], []
        for _ in range(WINO_SAMPLES):
            direct.append(time_conv(dt, False, WINO_CALLS) / WINO_CALLS)
            wino.append(time_conv(dt, True, WINO_CALLS) / WINO_CALLS)
        out[dt] = {"direct_s": min(direct), "wino_s": min(wino), "counted": counted(dt)}
    return {"date": _today(), "shape": list(WINO_SHAPE), "dtypes": out}


# ------------------------------------------------------------------------------------ deciding
def winograd_decision(meas):
    """({dtype: efficiency}, reason) from ``measure_winograd``'s result: efficiency = counted /
    (direct_s / wino_s), Winograd's time per counted multiply-add over the direct kernels'."""
    eff, parts = {}, []
    n, c, h, w, f = meas["shape"]
    for dt in DTYPES:
        m = meas["dtypes"][dt]
        speed = m["direct_s"] / m["wino_s"]
        eff[dt] = m["counted"] / speed
        if not (0 < eff[dt] < 1e6):
            raise ValueError(f"efficiency {eff[dt]} out of range")
        parts.append(f"{dt} {eff[dt]:.2f} ({speed:.2f}x the direct speed, "
                     f"{m['counted']:.2f}x less counted work)")
    return eff, (f"where its counted work x the efficiency is below the direct kernels'; "
                 f"on {c}->{f} channels {h}x{w}: " + "; ".join(parts) +
                 f" (measured {meas['date']})")


def sgemm_decision(meas, isa):
    """(mask, {class: reason}) from ``measure_sgemm``'s result for the own kernel `isa`."""
    mask, why = 0, {}
    for i, name in enumerate(CLASSES):
        c = meas["classes"][name]
        m, n, k = c["shape"]
        r = c["blas_s"] / c["own_s"]
        if r >= GEMM_MARGIN:
            mask |= 1 << i
            why[name] = f"{OWN[isa]}: {r:.2f}x the BLAS on {m}x{n}x{k}"
        else:
            why[name] = f"BLAS: the own kernel {r:.2f}x on {m}x{n}x{k} (needs >= {GEMM_MARGIN}x)"
        why[name] += f" (m x n x k; measured {meas['date']})"
    return mask, why


def min_work_decision(meas):
    """(min_work, reason) from ``measure_threads``'s result."""
    sizes = sorted(int(s) for s in meas["speedup"])
    win = [meas["speedup"][str(s)] >= THREAD_MARGIN for s in sizes]
    for i, s in enumerate(sizes):
        if win[i] and (i + 1 == len(sizes) or win[i + 1]):
            return s, (f"measured {meas['date']}: the least size where 2 threads ran "
                       f">= {THREAD_MARGIN}x faster than 1, twice in a row")
    return sizes[-1], (f"measured {meas['date']}: 2 threads never ran >= {THREAD_MARGIN}x "
                       "faster than 1 twice in a row: the largest size tried")


def _valid(part, meas):
    """True when a stored measurement decides without error."""
    try:
        if part == "sgemm":
            sgemm_decision(meas, next(iter(OWN)))         # any kernel's name: the checks
            return all(meas["classes"][c]["own_s"] > 0 and list(meas["classes"][c]["shape"])
                       == list(s) for c, s in zip(CLASSES, SHAPES))
        if part == "winograd":
            winograd_decision(meas)
            return list(meas["shape"]) == list(WINO_SHAPE)
        min_work_decision(meas)
        sizes = sorted(int(s) for s in meas["speedup"])
        return sizes == list(PROBE_FIRST << i for i in range(len(sizes))) and len(sizes) >= 3
    except (KeyError, TypeError, ValueError, AttributeError, ZeroDivisionError, IndexError):
        return False


# ------------------------------------------------------------------------------------ the cache
def _read(path):
    """The file's entries dict; {} when missing, unreadable or malformed."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if isinstance(data, dict) and data.get("format") == FORMAT and \
                isinstance(data.get("entries"), dict):
            return data["entries"]
    except (OSError, ValueError, UnicodeDecodeError):
        pass
    return {}


def load(path, kid):
    """The valid parts of the entry `kid` ({"sgemm": ..., "min_work": ..., "winograd": ...}, any
    may be missing)."""
    entry = _read(path).get(kid)
    if not isinstance(entry, dict):
        return {}
    return {p: entry[p] for p in PARTS if p in entry and _valid(p, entry[p])}


def save(path, kid, key, parts):
    """Add `parts` to entry `kid` (parts stored meanwhile by another process win: every process
    then agrees); returns (the entry's parts, None) or (parts, why it could not be written)."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        entries = _read(path)
        old = entries.pop(kid, None)
        old = old if isinstance(old, dict) else {}
        merged = {p: old[p] if p in old and _valid(p, old[p]) else parts[p]
                  for p in PARTS if p in parts or (p in old and _valid(p, old[p]))}
        entries[kid] = dict(merged, key=key)
        while len(entries) > MAX_ENTRIES:
            entries.pop(next(iter(entries)))
        fd, tmp = tempfile.mkstemp(prefix=".tuning-", suffix=".json", dir=os.path.dirname(path))
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"format": FORMAT, "entries": entries}, f, indent=1)   # oldest first
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
        return merged, None
    except OSError as exc:
        return parts, f"{type(exc).__name__}: {exc}"


# ------------------------------------------------------------------------------------ deciding
def decide(probe, env=None):
    """The Tuning for this machine. `probe` (built by cython_kernels): ``own_isa`` (the own
    kernel the CPU runs, a key of ``OWN``, or ""), ``cpus``, ``l2_bytes`` (one core's L2, or
    ``L2_FALLBACK``), ``threads_why`` (None, or why 2 threads cannot be timed), ``blas`` (the GEMM
    BLAS's library, version, core), ``time_gemm``, ``time_threads``, ``time_conv`` and
    ``conv_counted``."""
    env = os.environ if env is None else env
    want_sgemm, env_work, want_wino = _env_sgemm(env), _env_min_work(env), _env_winograd(env)
    t = Tuning()
    t.key = machine_key(probe)
    kid = key_id(t.key)
    path = os.path.join(cache_dir(env), FILE)
    parts = load(path, kid)
    t.own = probe.own_isa
    wanted = [p for p, w in (("sgemm", want_sgemm == "auto" and bool(t.own)),
                             ("min_work", env_work is None and probe.threads_why is None),
                             ("winograd", want_wino == "auto")) if w]
    need = [p for p in wanted if p not in parts]
    if need:
        t0 = time.perf_counter()
        if "sgemm" in need:
            parts["sgemm"] = measure_sgemm(probe.time_gemm)
        if "min_work" in need:
            parts["min_work"] = measure_threads(probe.time_threads,
                                                probe_sizes(probe.l2_bytes))
        if "winograd" in need:
            parts["winograd"] = measure_winograd(probe.time_conv, probe.conv_counted)
        took = time.perf_counter() - t0
        parts, err = save(path, kid, t.key, parts)
        t.cache = (f"measured now ({took:.2f} s), saved to {path}" if err is None else
                   f"measured now ({took:.2f} s), kept in memory: cannot write {path} ({err})")
    elif wanted:
        t.cache = f"read from {path}"
    else:
        t.cache = "nothing to measure"

    if not t.own:
        why = f"BLAS: {NO_OWN}" + (" (DLFAST_SGEMM=own ignored)" if want_sgemm == "own" else "")
        t.sgemm_why = dict.fromkeys(CLASSES, why)
    elif want_sgemm != "auto":
        t.sgemm_mask = (1 << len(CLASSES)) - 1 if want_sgemm == "own" else 0
        why = (OWN[t.own] if want_sgemm == "own" else "BLAS") + \
            f": set by DLFAST_SGEMM={want_sgemm}"
        t.sgemm_why = dict.fromkeys(CLASSES, why)
    else:
        t.sgemm_mask, t.sgemm_why = sgemm_decision(parts["sgemm"], t.own)

    if env_work is not None:
        t.min_work, t.min_work_why = env_work, "set by DLFAST_PARALLEL_MIN_WORK"
    elif probe.threads_why is not None:
        t.min_work_why = f"default: {probe.threads_why}"
    else:
        t.min_work, t.min_work_why = min_work_decision(parts["min_work"])

    if want_wino != "auto":
        t.wino_mode = 2 if want_wino == "on" else 1
        t.wino_why = f"{'always' if want_wino == 'on' else 'never'}: set by DLFAST_WINOGRAD"
    else:
        t.wino_eff, t.wino_why = winograd_decision(parts["winograd"])
    return t
