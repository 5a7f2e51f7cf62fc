#!/usr/bin/env python
"""Convolution and pooling kernels: dlfast-compiled vs dlfast-NumPy; and, on a build that has the
direct-loop experiment ``_conv._conv2d_forward_direct`` (``git log -S _conv2d_forward_direct``:
added, measured, removed), the compiled conv forward as im2col + GEMM vs that direct loop (the
figures that chose im2col + GEMM are in benchmarks/README.md).

Shapes (NCHW, float32 by default): the book's SimpleConvNet conv (C=1, 28x28, 30 filters 5x5,
stride 1, pad 0) and DeepConvNet's 3x3 convs (pad 1: 1->16 and 16->16 on 28x28, 16->32 on 14x14;
pad 2: 32->32 on 14x14; pad 1: 32->64 and 64->64 on 8x8), then three layers that are not the book's
(pad 1: 32->32 on 14x14, 32->64 and 64->64 on 7x7), each at batch 1 and 100; 2x2 stride-2 max and average pooling
on SimpleConvNet's (30, 24, 24) and DeepConvNet's (16, 28, 28) maps. ``bwd`` = dx, dW and db.
With PyTorch installed, the convolutions also run through ``torch.nn.functional.conv2d`` (forward,
no autograd) and ``torch.ops.aten.convolution_backward`` (dx, dW, db: the kernel autograd calls)
on the same arrays, on as many threads (``torch/cy`` > 1: dlfast faster).

Timing: each implementation runs blocks of calls (sized at calibration to ``--block-ms``); each
round times one block of every implementation in a rotating order (interleaved, so the load of a
shared machine falls on all alike), after a ``--settle-ms`` pause (250 ms, _machine.SETTLE_S:
spinning worker threads of the previous one go to sleep) and one untimed call; figures are
medians over ``--rounds`` rounds of the time per call, ratios medians of the per-round ratios.

    python benchmarks/conv_kernels.py                      # threads 1 and 2, batches 1 and 100
    python benchmarks/conv_kernels.py --threads 2 --rounds 15 --only conv
"""
import os

import _machine

_machine.unpin_openblas()       # OPENBLAS_CORETYPE, OPENBLAS_L2_SIZE: gone before NumPy loads

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import dlfast  # noqa: E402
from dlfast import kernels as K  # noqa: E402

from compare import on_backend  # noqa: E402

try:
    import torch  # noqa: E402
except ImportError:         # the torch column is left out
    torch = None

CONVS = [  # name, (C, H, W), F, kernel, stride, pad
    ("simple 1->30 5x5 28", (1, 28, 28), 30, 5, 1, 0),
    ("deep 1->16 3x3 28", (1, 28, 28), 16, 3, 1, 1),
    ("deep 16->16 3x3 28", (16, 28, 28), 16, 3, 1, 1),
    ("deep 16->32 3x3 14", (16, 14, 14), 32, 3, 1, 1),
    ("deep 32->32 3x3 14 pad 2", (32, 14, 14), 32, 3, 1, 2),   # -> 16x16
    ("deep 32->64 3x3 8", (32, 8, 8), 64, 3, 1, 1),
    ("deep 64->64 3x3 8", (64, 8, 8), 64, 3, 1, 1),
    # not the book's: its layers on 14x14 and 7x7 maps (pad 1)
    ("other 32->32 3x3 14", (32, 14, 14), 32, 3, 1, 1),
    ("other 32->64 3x3 7", (32, 7, 7), 64, 3, 1, 1),
    ("other 64->64 3x3 7", (64, 7, 7), 64, 3, 1, 1),
]
POOLS = [  # name, (C, H, W), kernel, stride
    ("simple pool 30x24x24 2x2", (30, 24, 24), 2, 2),
    ("deep pool 16x28x28 2x2", (16, 28, 28), 2, 2),
]


def conv_cases(batch, dt):
    from dlfast._backends import _conv
    rng = np.random.default_rng(0)
    for name, (c, h, w), f, k, s, p in CONVS:
        x = rng.standard_normal((batch, c, h, w)).astype(dt)
        W = (rng.standard_normal((f, c, k, k)) / np.sqrt(c * k * k)).astype(dt)
        b = np.zeros(f, dt)
        out = np.empty(K.conv2d_output_shape(x.shape, W.shape, s, p), dt)
        col = np.empty(K.conv2d_workspace_shape(x.shape, W.shape, s, p), dt)
        dout = rng.standard_normal(out.shape).astype(dt)
        dcol, dx, dW, db = np.empty_like(col), np.empty_like(x), np.empty_like(W), np.empty_like(b)
        K.conv2d_forward(x, W, b, out, col, s, p)

        def fwd(x=x, W=W, b=b, out=out, col=col, s=s, p=p):
            K.conv2d_forward(x, W, b, out, col, s, p)

        def bwd(dout=dout, x=x, W=W, col=col, dcol=dcol, dx=dx, dW=dW, db=db, s=s, p=p):
            K.conv2d_backward(dout, x, W, col, dcol, dx, dW, db, s, p)

        impls = {"numpy": on_backend("numpy", fwd), "cython": on_backend("cython", fwd)}
        bimpls = {"numpy": on_backend("numpy", bwd), "cython": on_backend("cython", bwd)}
        if hasattr(_conv, "_conv2d_forward_direct"):
            def direct(x=x, W=W, b=b, out=out, s=s, p=p):
                _conv._conv2d_forward_direct(x, W, b, out, (s, s), (p, p))
            impls["direct"] = direct
        if torch is not None:
            impls["torch"], bimpls["torch"] = torch_conv(x, W, b, dout, s, p)
        yield f"{name} b{batch}", "conv fwd", impls
        yield f"{name} b{batch}", "conv bwd", bimpls


def torch_conv(x, W, b, dout, s, p):
    """(forward, backward) of PyTorch's conv2d on tensors sharing the arrays' memory."""
    tx, tW, tb, td = (torch.from_numpy(a) for a in (x, W, b, dout))
    conv_bwd = torch.ops.aten.convolution_backward

    def fwd():
        with torch.no_grad():
            torch.nn.functional.conv2d(tx, tW, tb, s, p)

    def bwd():
        conv_bwd(td, tx, tW, [tb.shape[0]], [s, s], [p, p], [1, 1], False, [0, 0], 1,
                 [True, True, True])
    return fwd, bwd


def pool_cases(batch, dt):
    rng = np.random.default_rng(1)
    for name, (c, h, w), k, s in POOLS:
        x = rng.standard_normal((batch, c, h, w)).astype(dt)
        out = np.empty(K.pool2d_output_shape(x.shape, k, s), dt)
        arg = np.empty(out.shape, np.int64)
        dout = rng.standard_normal(out.shape).astype(dt)
        dx = np.empty_like(x)
        K.maxpool2d_forward(x, out, arg, k, s)
        ops = {
            "maxpool fwd": lambda x=x, out=out, arg=arg, k=k, s=s:
                K.maxpool2d_forward(x, out, arg, k, s),
            "maxpool bwd": lambda dout=dout, arg=arg, dx=dx, k=k, s=s:
                K.maxpool2d_backward(dout, arg, dx, k, s),
            "avgpool fwd": lambda x=x, out=out, k=k, s=s: K.avgpool2d_forward(x, out, k, s),
            "avgpool bwd": lambda dout=dout, dx=dx, k=k, s=s: K.avgpool2d_backward(dout, dx, k, s),
        }
        for op, fn in ops.items():
            yield f"{name} b{batch}", op, {"numpy": on_backend("numpy", fn),
                                           "cython": on_backend("cython", fn)}


def per_call(fn, reps):
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def measure(impls, rounds, block_ms, settle_ms):
    """{impl: [seconds per call, one per round]}; blocks sized once, order rotated per round."""
    reps = {}
    for name, fn in impls.items():
        fn()
        t = min(per_call(fn, 1) for _ in range(3))
        reps[name] = max(1, int(block_ms / 1e3 / max(t, 1e-7)))
    names = list(impls)
    times = {n: [] for n in names}
    for r in range(rounds):
        for n in names[r % len(names):] + names[:r % len(names)]:
            time.sleep(settle_ms / 1e3)
            impls[n]()
            times[n].append(per_call(impls[n], reps[n]))
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2", help="thread counts to run, comma-separated")
    ap.add_argument("--batches", default="1,100")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--block-ms", type=float, default=20.0)
    ap.add_argument("--settle-ms", type=float, default=_machine.SETTLE_S * 1e3,
                    help="pause before each block (150): the previous implementation's OpenMP "
                         "and OpenBLAS workers spin after use (PyTorch's too), and a shorter "
                         "pause made dlfast's 2-thread conv bwd up to 19x slower here")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--only", choices=["conv", "pool"], help="one kind of case")
    args = ap.parse_args()
    from threadpoolctl import threadpool_limits
    with dlfast.use_backend("cython"):       # registers the backend: set_num_threads reaches it
        from dlfast._backends import _conv, cython_kernels
    dt = np.dtype(args.dtype)
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"cpu: {_machine.cpu_model()}; load average {load}")
    with dlfast.use_backend("cython"):
        print(f"# {_machine.describe()}")
    print(f"numpy {np.__version__}; dlfast GEMM BLAS: {cython_kernels.GEMM_BLAS}; GEMM block "
          f"target P = {_conv.gemm_parts()}; dtype {dt.name}; {args.rounds} rounds, blocks of "
          f"~{args.block_ms:g} ms")
    for nt in (int(t) for t in args.threads.split(",")):
        dlfast.set_num_threads(nt)
        if torch is not None:
            torch.set_num_threads(nt)
        with threadpool_limits(limits=nt, user_api="blas"):   # NumPy's matmul on as many
            print(f"\n== {nt} thread{'s' if nt > 1 else ''} (medians, ms per call)")
            print(f"{'case':<30} {'op':<12} {'numpy':>9} {'cython':>9} {'torch':>9} "
                  f"{'direct':>9} {'np/cy':>7} {'torch/cy':>8} {'direct/cy':>9}")
            for batch in (int(b) for b in args.batches.split(",")):
                cases = []
                if args.only in (None, "conv"):
                    cases += list(conv_cases(batch, dt))
                if args.only in (None, "pool"):
                    cases += list(pool_cases(batch, dt))
                for case, op, impls in cases:
                    t = measure(impls, args.rounds, args.block_ms, args.settle_ms)
                    med = {n: statistics.median(v) * 1e3 for n, v in t.items()}
                    ratio = {n: statistics.median(a / c for a, c in zip(v, t["cython"]))
                             for n, v in t.items()}
                    d, tm = (f"{med[n]:9.3f}" if n in med else " " * 9
                             for n in ("direct", "torch"))
                    dr = f"{ratio['direct']:9.2f}" if "direct" in ratio else " " * 9
                    tr = f"{ratio['torch']:8.2f}" if "torch" in ratio else " " * 8
                    print(f"{case:<30} {op:<12} {med['numpy']:9.3f} {med['cython']:9.3f} {tm} "
                          f"{d} {ratio['numpy']:7.2f} {tr} {dr}", flush=True)
    dlfast.set_num_threads(0)


if __name__ == "__main__":
    main()
