"""Concurrency (issue 6): compiled kernels release the GIL; two models trained at once in two Python
threads end with exactly the parameters each gets when trained alone; a process pool (fork and
spawn) used after OpenMP has run in the parent does not hang (a forked child runs serial kernels:
``dlfast._config._serial_after_fork``)."""
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import dlfast
from dlfast import kernels as K
from dlfast import optim
from dlfast.datasets import load_digits
from dlfast.net import MLP

pytestmark = pytest.mark.skipif("cython" not in dlfast.available_backends(),
                                reason="compiled backend not built")


@pytest.fixture
def threads():
    yield
    dlfast.set_num_threads(0)


# ============================================================================ GIL release
def _big_call(name, dt=np.dtype(np.float32)):
    """A call of the kernel `name` on arrays large enough for 5-40 ms on one thread."""
    rng = np.random.default_rng(0)
    n, f = 4000, 2000
    A = rng.random((n, f), dtype=dt) - dt.type(0.5)
    B = rng.random((n, f), dtype=dt)
    O, H = np.empty_like(A), np.empty_like(A)
    v1, v2, v3, v4 = (rng.random(f, dtype=dt) + dt.type(0.5) for _ in range(4))
    e1, e2 = np.empty(f, dt), np.empty(f, dt)
    lab = rng.integers(0, f, n)
    sw = rng.random(n) + 0.5
    w, g = A.reshape(-1), B.reshape(-1)
    s1, s2 = np.zeros_like(w), np.zeros_like(w)
    if name == "bind_update":
        w2, g2, s3, s4 = w.copy(), g.copy(), s1.copy(), s2.copy()
    if name.startswith("dense"):
        x, W = A[:1200, :600].copy(), B[:600, :500].copy()
        out = np.empty((1200, 500), dt)
    if name in ("sumsq", "all_finite", "penalty"):       # fast reductions: 10+ ms a call
        big = np.full(32_000_000, 0.5, dt)
    if name.startswith("maxout"):
        mo, arg = np.empty((n, f // 2), dt), rng.integers(0, 2, (n, f // 2))
    if name.startswith("conv2d"):                        # DeepConvNet's 16 -> 16 3x3 conv
        X, Wc = A.reshape(-1)[:32 * 16 * 28 * 28].reshape(32, 16, 28, 28), B[:16, :144].copy()
        Wc = Wc.reshape(16, 16, 3, 3)
        cout, col = np.empty((32, 16, 28, 28), dt), np.empty((32, 144, 784), dt)
        K.conv2d_forward(X, Wc, None, cout, col, 1, 1)
    if name.endswith("pool2d_forward") or name.endswith("pool2d_backward"):
        X = A.reshape(-1)[:400 * 30 * 24 * 24].reshape(400, 30, 24, 24)
        pout, parg = np.empty((400, 30, 12, 12), dt), np.empty((400, 30, 12, 12), np.int64)
        pdx = O.reshape(-1)[:X.size].reshape(X.shape)
        K.maxpool2d_forward(X, pout, parg, 2)
    calls = {
        "dense_forward": lambda: K.dense_forward(x, W, None, out, "tanh"),
        "dense_backward": lambda: K.dense_backward(out, x, W, out, np.empty_like(out),
                                                   np.empty_like(x), np.empty_like(W),
                                                   np.empty(500, dt), "tanh"),
        "activation_forward": lambda: K.activation_forward(A, O, "elu", 1.0),
        "activation_backward": lambda: K.activation_backward(A, B, O, "tanh"),
        "prelu_forward": lambda: K.prelu_forward(A, v1, O),
        "prelu_backward": lambda: K.prelu_backward(A, B, v1, O, e1),
        "maxout_forward": lambda: K.maxout_forward(A, mo, arg),
        "maxout_backward": lambda: K.maxout_backward(mo, arg, O),
        "softmax_forward": lambda: K.softmax_forward(A, O),
        "softmax_backward": lambda: K.softmax_backward(A, B, O),
        "softmax_xent_forward": lambda: K.softmax_xent_forward(A, lab, O),
        "softmax_xent_backward": lambda: K.softmax_xent_backward(B, lab, O),
        "mse_forward": lambda: K.mse_forward(A, B, sw),
        "mse_backward": lambda: K.mse_backward(A, B, sw, O),
        "mae_forward": lambda: K.mae_forward(A, B, sw),
        "mae_backward": lambda: K.mae_backward(A, B, None, O),
        "huber_forward": lambda: K.huber_forward(A, B, None),
        "huber_backward": lambda: K.huber_backward(A, B, sw, O),
        "sigmoid_bce_forward": lambda: K.sigmoid_bce_forward(A, B, sw),
        "sigmoid_bce_backward": lambda: K.sigmoid_bce_backward(A, B, None, O),
        "batchnorm_stats": lambda: K.batchnorm_stats(A, e1, e2),
        "batchnorm_forward_train": lambda: K.batchnorm_forward_train(A, v1, v2, O, H, e1, e2, v3, v4),
        "batchnorm_forward_eval": lambda: K.batchnorm_forward_eval(A, v1, v2, v3, v4, 1e-5, O, H, e1),
        "batchnorm_backward": lambda: K.batchnorm_backward(A, B, v1, v2, O, e1, e2),
        "dropout_mask": lambda: K.dropout_mask(np.empty((n, f), np.uint8), 0.5, 1, 0),
        "dropout_apply": lambda: K.dropout_apply(A, (B > 0.5).view(np.uint8), 2.0, O),
        "random_uniform": lambda: K.random_uniform(O, 0.0, 1.0, 1, 0),
        "bernoulli_sample": lambda: K.bernoulli_sample(B, O, 1, 0),
        "sumsq": lambda: K.sumsq(big),
        "all_finite": lambda: K.all_finite(big),
        "penalty": lambda: K.penalty(big, 0.1, 0.1),
        "penalty_grad": lambda: K.penalty_grad(A, O, 0.1, 0.1),
        "max_norm": lambda: K.max_norm(O, 0.5),
        "sgd_update": lambda: K.sgd_update(w, g, lr=1e-3),
        "momentum_update": lambda: K.momentum_update(w, g, s1, lr=1e-3),
        "nesterov_update": lambda: K.nesterov_update(w, g, s1, lr=1e-3),
        "adagrad_update": lambda: K.adagrad_update(w, g, s1, lr=1e-3),
        "rmsprop_update": lambda: K.rmsprop_update(w, g, s1, lr=1e-3),
        "adam_update": lambda: K.adam_update(w, g, s1, s2, lr=1e-3, step=1),
        "bind_update": lambda: K.bind_update("adam", [w, w2], [g, g2], [(s1, s2), (s3, s4)],
                                             [0.0, 0.1]).update(1e-3),
        "conv2d_forward": lambda: K.conv2d_forward(X, Wc, None, cout, col, 1, 1),
        "conv2d_backward": lambda: K.conv2d_backward(cout, X, Wc, col, np.empty_like(col),
                                                     np.empty_like(X), np.empty_like(Wc),
                                                     np.empty(16, dt), 1, 1),
        "maxpool2d_forward": lambda: K.maxpool2d_forward(X, pout, parg, 2),
        "maxpool2d_backward": lambda: K.maxpool2d_backward(pout, parg, pdx, 2),
        "avgpool2d_forward": lambda: K.avgpool2d_forward(X, pout, 3, 2, 1),
        "avgpool2d_backward": lambda: K.avgpool2d_backward(pout, pdx, 3, 2, 1),
        "rbm_cd_update": lambda: K.rbm_cd_update(A[:1000, :1500], B[:1000, :500], B[1000:2000, :1500],
                                                 A[1000:2000, :500], H[:1500, :500].copy(),
                                                 np.zeros(1500, dt), np.zeros(500, dt), 1e-3),
    }
    return calls.get(name)


@pytest.mark.parametrize("name", K.KERNELS)
def test_kernel_releases_the_gil(name, threads):
    """A pure-Python heartbeat thread (a tick every ~0.5 ms) keeps ticking *during* the kernel
    calls on one OpenMP thread; were the GIL held, it would get at most one tick per call."""
    dlfast.set_num_threads(1)
    call = _big_call(name)
    assert call is not None, f"no GIL check for kernel {name!r}: add one to _big_call"
    with dlfast.use_backend("cython"):
        call()                                           # warm-up (page faults, BLAS init)
        stamps, stop = [], threading.Event()

        def beat():
            while not stop.is_set():
                stamps.append(time.perf_counter())
                time.sleep(0.0005)

        t = threading.Thread(target=beat)
        t.start()
        time.sleep(0.01)
        spans = []
        for _ in range(5):
            t0 = time.perf_counter()
            call()
            spans.append((t0, time.perf_counter()))
        stop.set()
        t.join()
    inside = sum(a < s < b for s in stamps for a, b in spans)
    ms = 1e3 * sum(b - a for a, b in spans)
    assert inside >= max(5, ms / 15), (f"{name}: {inside} heartbeat ticks during {ms:.1f} ms of "
                                       f"kernel calls (the GIL seems held)")


# ============================================================================ two models, two threads
def _train(seed, steps=40, batch=256):
    x, t = load_digits()
    x, t = x[:batch * 2], t[:batch * 2]
    model = MLP(64, [256, 128], 10, batchnorm=True, dropout=0.1, seed=seed)
    opt = optim.Adam(lr=1e-3)
    for s in range(steps):
        lo = (s % 2) * batch
        _, grads = model.loss_and_gradient(x[lo:lo + batch], t[lo:lo + batch])
        opt.update(model.params, grads)
    return {k: v.copy() for k, v in model.params.items()}


@pytest.mark.parametrize("nthreads", [1, 2])
def test_two_models_in_two_threads_match_sequential(nthreads, threads):
    dlfast.set_num_threads(nthreads)
    with dlfast.use_backend("cython"):
        alone = [_train(1), _train(2)]
    together = [None, None]

    def run(j):
        with dlfast.use_backend("cython"):
            together[j] = _train(j + 1)

    ts = [threading.Thread(target=run, args=(j,)) for j in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=300)
    for j in range(2):
        assert together[j] is not None, f"thread {j} failed"
        for k in alone[j]:
            assert np.array_equal(together[j][k], alone[j][k]), f"model {j + 1}: {k} differs"
    assert any(not np.array_equal(alone[0][k], alone[1][k]) for k in alone[0])  # two different runs


# ============================================================================ process pools
_POOL = textwrap.dedent("""
    import multiprocessing as mp, sys
    import numpy as np
    import dlfast
    from dlfast import kernels as K
    dlfast.set_backend("cython")
    dlfast.set_num_threads(2)

    def work(i):
        x = np.full((400, 400), 0.5 + i, np.float32)
        W = np.full((400, 300), 0.01, np.float32)
        out = np.empty((400, 300), np.float32)
        K.dense_forward(x, W, None, out, "tanh")
        m = np.empty(100000, np.uint8)
        K.dropout_mask(m, 0.5, i, 0)
        return float(out.sum()) + int(m.sum()), dlfast.get_num_threads()

    if __name__ == "__main__":
        ref = [work(i)[0] for i in range(4)]          # parallel regions in the parent first
        with mp.get_context(sys.argv[1]).Pool(2) as pool:
            got = pool.map(work, range(4))
        assert [g for g, _ in got] == ref, (got, ref)
        print("pool ok", sys.argv[1], "child threads", sorted({n for _, n in got}))
""")


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_process_pool_after_openmp_does_not_hang(method, tmp_path):
    script = tmp_path / "pool.py"
    script.write_text(_POOL)
    env = dict(os.environ, OMP_NUM_THREADS="2")
    try:
        run = subprocess.run([sys.executable, str(script), method], capture_output=True, text=True,
                             timeout=120, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"process pool ({method}) hung after OpenMP ran in the parent")
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"pool ok {method}" in run.stdout
    if method == "fork":
        assert "child threads [1]" in run.stdout     # forked children run serial kernels
    else:
        assert "child threads [2]" in run.stdout
