"""No per-step array allocation in the steady state of the compiled training step: workspaces,
gradients and optimiser state are reused. tracemalloc (NumPy reports its data buffers to it) over
50 steps of forward/backward/update after warm-up: no growth, and the peak stays far below the
smallest array of the step (a (100, 100) float32 temporary is 40 KB, a 784x100 weight 313 KB)."""
import tracemalloc

import numpy as np
import pytest

import dlfast
from dlfast import optim
from dlfast.net import MLP

pytestmark = pytest.mark.skipif("cython" not in dlfast.available_backends(),
                                reason="compiled backend not built")


@pytest.mark.parametrize("batch,bn,drop,name,loss,weighted", [
    (1, False, 0.0, "sgd", "softmax_xent", False), (100, True, 0.5, "adam", "softmax_xent", False),
    (100, False, 0.0, "momentum", "softmax_xent", False), (100, True, 0.0, "adam", "mse", True),
    (100, False, 0.2, "adam", "sigmoid_bce", True), (1, False, 0.0, "sgd", "huber", True),
    (100, False, 0.0, "sgd", "softmax_xent", True)])
def test_no_allocation_in_steady_state(batch, bn, drop, name, loss, weighted):
    with dlfast.use_backend("cython"):
        rng = np.random.default_rng(0)
        x = rng.standard_normal((batch, 784)).astype(np.float32)
        t = rng.integers(0, 10, batch) if loss == "softmax_xent" else \
            (rng.random((batch, 10)) < 0.5).astype(np.float32)
        w = rng.random(batch) + 0.5 if weighted else None
        net = MLP(784, [100] * 4, 10, batchnorm=bn, dropout=drop, seed=0, loss=loss)
        opt = optim.get(name)

        def step():
            _, g = net.loss_and_gradient(x, t, w)
            opt.update(net.params, g)

        for _ in range(5):
            step()
        tracemalloc.start()
        try:
            step()
            start, _ = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            for _ in range(50):
                step()
            end, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert end - start < 4096, f"traced memory grew by {end - start} B over 50 steps"
    assert peak - start < 8192, f"a step allocated {peak - start} B at its peak"
