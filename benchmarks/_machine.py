"""What every benchmark of this folder does first, and says about the machine.

``unpin_openblas()`` removes OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE from this process's
environment; call it before NumPy (or anything that loads an OpenBLAS) is imported. Some
environments pin OpenBLAS to old kernels with them (to dodge faults of old OpenBLAS builds), which
makes NumPy's matmul, the NumPy backend and the GEMM probes slower than the CPU allows. Tests and CI
keep the pin: only the benchmarks' own processes drop it.

``describe()`` is the line every table prints: the CPU model, the instruction set dlfast's
kernels use, the kernels each BLAS runs (threadpoolctl), and what was unpinned.
"""
import os

PINS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
_removed = {}


def unpin_openblas():
    """Drop the OpenBLAS pins from this process's environment (returns what was removed)."""
    for k in PINS:
        if k in os.environ:
            _removed[k] = os.environ.pop(k)
    return dict(_removed)


def cpu_model():
    """/proc/cpuinfo's model name with its family, model and stepping (a VM may name only the
    vendor line, e.g. "AMD EPYC"), else the platform's processor string."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if not sep:
                    if fields:
                        break                   # the first processor's block only
                    continue
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    if "model name" in fields:
        names = (("family", "cpu family"), ("model", "model"), ("stepping", "stepping"))
        ids = ", ".join(f"{k} {fields[n]}" for k, n in names if n in fields)
        return f"{fields['model name']} ({ids})" if ids else fields["model name"]
    import platform
    return platform.processor() or platform.machine()


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def isa():
    """The widest vector instruction set of the CPU that dlfast's compiled loops are cloned for."""
    flags = cpu_flags()
    for name, flag in (("AVX-512", "avx512f"), ("AVX2", "avx2"), ("SSE4.2", "sse4_2")):
        if flag in flags:
            return name
    return "baseline"


def blas_kernels():
    """[(library, internal API, version, kernels it runs, threads)] of the loaded BLAS libraries."""
    from threadpoolctl import threadpool_info
    return [(os.path.basename(i.get("filepath", "?")), i.get("internal_api"), i.get("version"),
             i.get("architecture"), i.get("num_threads"))
            for i in threadpool_info() if i.get("user_api") == "blas"]


def describe():
    import dlfast
    gemm = getattr(dlfast._config.active(), "SGEMM", "-")
    blas = "; ".join(f"{lib} {ver} {arch} kernels" for lib, _, ver, arch, _ in blas_kernels())
    unpinned = ", ".join(f"{k}={v}" for k, v in _removed.items()) or "none were set"
    return (f"CPU: {cpu_model()} ({os.cpu_count()} CPUs, {isa()}); dlfast float32 GEMM: {gemm}; "
            f"BLAS: {blas}; OpenBLAS pins removed: {unpinned}")


def info():
    """The same as a dict (for JSON files)."""
    return {"cpu": cpu_model(), "isa": isa(), "blas": blas_kernels(),
            "openblas_pins_removed": dict(_removed)}


def parser(doc, block_ms):
    """The timing scripts' common options: --threads, --rounds, --block-ms, --json."""
    import argparse
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--block-ms", type=float, default=block_ms)
    p.add_argument("--json", metavar="PATH")
    return p


# The pause before each timed block with 2+ threads. OpenBLAS's idle workers spin (yielding)
# for 2^28 TSC cycles after a call (0.11 s at 2.45 GHz) and steal a core from whatever runs
# next: a 100x784x50 dlfast forward at 2 threads took 649, 282 and 220 us when timed 0.05, 0.10
# and 0.15 s after 20 NumPy matmuls, 216-226 us after its own calls (AMD EPYC, 2 vCPUs).
# OpenMP's workers (dlfast's, PyTorch's) spin for a few ms only.
SETTLE_S = 0.25


def start(title, args):
    """Exit unless the compiled backend loads; set ``args.threads``; print the header (title,
    threads, rounds, load average, ``describe()``). Returns the settle pause before each block
    (SETTLE_S with several threads)."""
    import sys
    import dlfast
    if "cython" not in dlfast.available_backends():
        sys.exit("the compiled backend does not load: build it first (pip install -e .)")
    dlfast.set_num_threads(args.threads)
    print(f"# {title}: float32, {args.threads} threads, {args.rounds} rounds, load avg "
          f"{os.getloadavg()[0]:.2f}\n# {describe()}", flush=True)
    return SETTLE_S if args.threads > 1 else 0.0


def write_json(path, args, cases):
    """Write ``{machine, threads, rounds, date_utc, cases}`` (``cases``: a list of dicts)."""
    import json
    import time
    with open(path, "w") as f:
        json.dump({"machine": info(), "threads": args.threads, "rounds": args.rounds,
                   "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
                   "cases": cases}, f, indent=1)
