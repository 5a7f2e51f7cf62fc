#!/usr/bin/env python
"""cProfile of end-to-end training steps (the steps of ``compare.py``), to find where the time of
one step goes: Python overhead (validation, dict building, layer dispatch) vs the kernels.

    python benchmarks/profile_step.py --config sgd --batch 1 --backend cython --steps 2000
    python benchmarks/profile_step.py --config bn_adam --batch 100 --steps 500 --top 25

Prints the wall time per step without and with the profiler, then the functions sorted by
``--sort`` (tottime: time in the function itself; cumtime: including callees).
"""
import argparse
import cProfile
import io
import pstats
import sys
import time

import dlfast
from compare import dlfast_step, torch, torch_step


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", choices=("bn_adam", "sgd"), default="bn_adam")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--backend", choices=("cython", "numpy", "torch"), default="cython")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--sort", choices=("tottime", "cumtime"), default="tottime")
    a = p.parse_args(argv)
    if a.batch < 1 or a.steps < 1 or a.threads < 1:
        p.error("--batch, --steps and --threads must be >= 1")
    dlfast.set_num_threads(a.threads)
    if a.backend == "torch":
        if torch is None:
            sys.exit("PyTorch is not installed (pip install torch==2.13.0)")
        torch.set_num_threads(a.threads)
        step = torch_step(a.config, a.batch)
    else:
        step = dlfast_step(a.backend, a.config, a.batch)
    for _ in range(20):
        step()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    plain = (time.perf_counter() - t0) / a.steps
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    for _ in range(a.steps):
        step()
    prof.disable()
    profiled = (time.perf_counter() - t0) / a.steps
    print(f"# {a.config} batch {a.batch} backend {a.backend} threads {a.threads}: "
          f"{plain * 1e6:.1f} us/step ({profiled * 1e6:.1f} us/step under cProfile), {a.steps} steps")
    s = io.StringIO()
    st = pstats.Stats(prof, stream=s)
    st.sort_stats(a.sort).print_stats(a.top)
    lines = s.getvalue().splitlines()
    start = next(i for i, ln in enumerate(lines) if "ncalls" in ln)
    print("\n".join(ln.replace("/work/main/", "") for ln in lines[start - 1:] if ln.strip()),
          flush=True)


if __name__ == "__main__":
    main()
