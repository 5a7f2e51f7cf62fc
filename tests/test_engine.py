"""The training engine (dlfast._engine): every net's training step runs as a plan, made once and
run every step. Its results equal a plain checked step written here (every layer's checked
forward, the loss, every checked backward) bit for bit, on both backends, float32 and float64,
1 and 2 threads, for every layer kind; a change of anything the plan baked in makes a new plan;
bad input is rejected before anything changes."""
import copy
import pickle
import threading

import numpy as np
import pytest

import dlfast
from dlfast import _engine, kernels, optim
from dlfast.layers import (ELU, Activation, AvgPool2D, BatchNorm, Conv2D, Dense, Dropout, Flatten,
                           Layer, LeakyReLU, MaxPool2D, Maxout, MSELoss, PReLU, ReLU, RReLU, Sigmoid,
                           Softmax, SoftmaxCrossEntropy, Tanh)
from dlfast.net import MLP, MultiTaskNet, Sequential

CONFIGS = [dict(batchnorm=True, dropout=0.3), dict(), dict(activation="elu", dropout=0.2),
           dict(activation="tanh", batchnorm=True, weight_decay=1e-3),
           dict(activation="prelu", prelu_per_feature=True), dict(activation="prelu"),
           dict(activation="rrelu", dropout=0.2), dict(activation="maxout", maxout_pieces=3),
           dict(activation="sigmoid", batchnorm=True, bn_momentum_convention="textbook",
                dropout=0.4, dropout_inverted=False)]
IDS = ["bn-dropout", "plain", "elu-dropout", "tanh-bn-wd", "prelu-features", "prelu", "rrelu",
       "maxout", "textbook"]


@pytest.fixture
def plans(monkeypatch):
    """Counts the plans made."""
    count = [0]
    real = _engine.Plan.__init__

    def init(self, *args, **kwargs):
        count[0] += 1
        real(self, *args, **kwargs)

    monkeypatch.setattr(_engine.Plan, "__init__", init)
    return count


def _data(n=24, f=7, c=4, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, f)).astype(dtype), rng.integers(0, c, n)


def _backprop(layers, d, need_dx):
    first = next((i for i, l in enumerate(layers) if l.trainable and l.params), None)
    stop = 0 if need_dx else first
    if stop is None:
        return None
    for i in range(len(layers) - 1, stop - 1, -1):
        d = layers[i].backward(d, compute_dx=need_dx or i > stop)
    return d


def checked_step(net, x, t, sw=None):
    """The training step written plainly: checked layer calls only. Returns (loss, grads)."""
    if isinstance(net, MultiTaskNet):
        h = x
        for l in net.trunk:
            h = l.forward(h, True)
        total, acc = 0.0, None
        outs = {}
        for name, hl in net.heads.items():
            y = h
            for l in hl:
                y = l.forward(y, True)
            outs[name] = y
        sws = sw if isinstance(sw, dict) else {name: sw for name in net.heads}
        for name in net.heads:
            total += net.loss_weights[name] * net.loss_layers[name].forward(outs[name], t[name],
                                                                            sws.get(name))
        need_trunk = any(l.trainable and l.params for l in net.trunk)
        for name, hl in net.heads.items():
            d = _backprop(hl, net.loss_layers[name].backward(net.loss_weights[name]), need_trunk)
            if need_trunk:
                acc = d.copy() if acc is None else acc + d
        if need_trunk:
            _backprop(net.trunk, acc, False)
        return total, {k: v.copy() for k, v in net.grads.items()}
    h = x
    for l in net.layers:
        h = l.forward(h, True)
    loss = net.loss_layer.forward(h, t, sw)
    _backprop(net.layers, net.loss_layer.backward(1.0), False)
    return loss, {k: v.copy() for k, v in net.grads.items()}


def _records(net, checked=False):
    """Copies of the layers' forward records; ``checked``: of a checked step, as the engine
    records them (a convolution whose ReLU or leaky ReLU its op applies records the
    activation's output as its ``out``)."""
    layers = net.layers if not isinstance(net, MultiTaskNet) else net.layers
    losses = [net.loss_layer] if not isinstance(net, MultiTaskNet) else list(net.loss_layers.values())
    out = {}
    for i, layer in enumerate([*layers, *losses]):
        for k, v in (layer._fwd or {}).items():
            if isinstance(v, np.ndarray):
                out[f"r{i}.{k}"] = v.copy()
    if checked:
        for i in _conv_act_pairs(layers):
            out[f"r{i}.out"] = out[f"r{i + 1}.out"]
    return out


def _conv_act_pairs(layers):
    """Indices i where the engine fuses layers[i] (a convolution) with layers[i + 1] (a ReLU or
    leaky ReLU)."""
    return [i for i in range(len(layers) - 1)
            if type(layers[i]) is Conv2D and type(layers[i + 1]) in (Activation, ReLU, LeakyReLU)
            and layers[i + 1].activation in ("relu", "leaky_relu")]


def _compare(a, b, x, t, oa=None, ob=None, records=True, sw=None):
    """One engine step of a and one checked step of b (then each optimiser): the same loss,
    gradients, state (parameters, running statistics, counters) and layer records."""
    la, ga = a.loss_and_gradient(x, t, sw)
    lb, gb = checked_step(b, x, t, sw)
    lb += b.penalty()
    b._finish_grads(gb)
    assert la == lb
    assert ga.keys() == gb.keys()
    for k in ga:
        np.testing.assert_array_equal(ga[k], gb[k], err_msg=k)
    if records:
        ra, rb = _records(a), _records(b, checked=True)
        assert ra.keys() == rb.keys()
        for k in ra:
            np.testing.assert_array_equal(ra[k], rb[k], err_msg=k)
    if oa is not None:
        oa.update(a.params, ga)
        ob.update(b.params, gb)
    sa, sb = a.state_dict(), b.state_dict()
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)


def _compare_once(a, x, t, threads):
    """At ``threads``: one engine step of a against the checked step of b, a deep copy of a
    (``_compare``). Returns (b, a's plan's step names)."""
    b = copy.deepcopy(a)
    dlfast.set_num_threads(threads)
    _compare(a, b, x, t)
    return b, a._plans._plans[0].step_names()


def _same_bits_non_finite(a, b, x, t):
    """One engine step of a and one checked step of b, floating-point warnings off (the values
    may be non-finite): the same loss, gradients and layer records, bit for bit."""
    with np.errstate(all="ignore"):
        la, ga = a.loss_and_gradient(x, t)
        lb, gb = checked_step(b, x, t)
    np.testing.assert_array_equal(la, lb)
    for k in ga:
        np.testing.assert_array_equal(ga[k], gb[k], err_msg=k)
    ra, rb = _records(a), _records(b, checked=True)
    for k in ra:
        np.testing.assert_array_equal(ra[k], rb[k], err_msg=k)


def _threads(request):
    return getattr(request, "param", 0)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("kw", CONFIGS, ids=IDS)
def test_engine_step_equals_checked_step(backend, dtype, kw, threads, plans):
    a = MLP(13, [11, 9], 5, seed=1, dtype=dtype, **kw)
    b = copy.deepcopy(a)
    oa, ob = optim.Adam(lr=0.01), optim.Adam(lr=0.01)
    data, labels = _data(n=4 * 10, f=13, c=5, dtype=dtype)
    dlfast.set_num_threads(threads)
    for i in range(4):
        _compare(a, b, data[10 * i:10 * i + 10], labels[10 * i:10 * i + 10], oa, ob)
    assert plans[0] == 1
    if kw.get("dropout") or kw.get("activation") == "rrelu":
        assert [l.counter for l in a.layers if l.stochastic] == \
               [l.counter for l in b.layers if l.stochastic]


def test_compiled_plans_run_compiled_ops_only():
    """On the compiled backend every layer kind of dlfast runs as a compiled op: one program
    call per step, no Python between the kernels."""
    if "cython" not in dlfast.available_backends():
        pytest.skip("compiled backend not built")
    x, t = _data(n=10, f=13, c=5)
    with dlfast.use_backend("cython"):
        for kw in CONFIGS:
            net = MLP(13, [11, 9], 5, seed=1, **kw)
            net.loss_and_gradient(x, t)
            plan = net._plans._plans[0]
            assert type(plan.program).__name__ == "Program" and not hasattr(plan.program, "steps")
            kinds = {type(s[1]).__name__ for s in plan.steps}
            assert "LayerOp" not in kinds, kw
        net = Sequential([Dense(13, 8, seed=0), Softmax(), Dense(8, 5, seed=1)])
        net.loss_and_gradient(x, t)
        assert "LayerOp" not in {type(s[1]).__name__ for s in net._plans._plans[0].steps}


# Nets on images: (layers(dtype), image shape (C, H, W)). Every image layer kind, BN and dropout
# on 4-D, strides, padding, frozen and parameter-free first layers; "wide" starts threads.
CONV_NETS = {
    "simple-convnet": (lambda dt: [
        Conv2D(1, 4, 3, padding=1, seed=1, dtype=dt), ReLU(), MaxPool2D(2), Flatten(),
        Dense(64, 10, "relu", seed=2, dtype=dt), Dense(10, 5, seed=3, dtype=dt)], (1, 8, 8)),
    "bn-dropout-pools": (lambda dt: [
        Conv2D(2, 4, 3, seed=1, dtype=dt), BatchNorm(4, dtype=dt), Activation("tanh"),
        Dropout(0.3, seed=7), AvgPool2D(2, stride=1, padding=1),
        Conv2D(4, 3, (2, 3), stride=(2, 1), padding=(1, 0), seed=2, dtype=dt), ReLU(),
        MaxPool2D(3, stride=2, padding=1), Flatten(), BatchNorm(12, dtype=dt),
        Dense(12, 5, seed=3, dtype=dt)], (2, 7, 6)),
    "frozen-conv": (lambda dt: [
        Conv2D(1, 3, 3, seed=1, dtype=dt, trainable=False), ReLU(),
        AvgPool2D(2, padding=1, count_include_pad=False), Conv2D(3, 2, 2, seed=2, dtype=dt),
        Flatten(), Dense(18, 5, seed=3, dtype=dt)], (1, 8, 8)),
    "pool-first": (lambda dt: [
        MaxPool2D(2), Conv2D(2, 3, 2, bias=False, seed=1, dtype=dt), Activation("elu"),
        Flatten(), Dropout(0.2, seed=4), Dense(12, 5, seed=3, dtype=dt)], (2, 6, 6)),
    "bn-flatten-first": (lambda dt: [
        BatchNorm(2, dtype=dt), Flatten(), Dense(24, 5, seed=3, dtype=dt)], (2, 3, 4)),
    "wide": (lambda dt: [
        Conv2D(3, 8, 3, padding=1, seed=1, dtype=dt), BatchNorm(8, dtype=dt), ReLU(),
        MaxPool2D(2), Conv2D(8, 8, 3, padding=1, seed=2, dtype=dt), AvgPool2D(2), Flatten(),
        Dense(128, 5, seed=3, dtype=dt)], (3, 16, 16)),
}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("name", sorted(CONV_NETS))
def test_conv_engine_step_equals_checked_step(backend, dtype, name, threads, plans):
    """Nets on images (N, C, H, W): the engine's step is the checked step, bit for bit."""
    make, image = CONV_NETS[name]
    a = Sequential(make(dtype), seed=1)
    b = copy.deepcopy(a)
    n = 40 if name == "wide" else 8
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4 * n,) + image).astype(dtype)
    t = rng.integers(0, 5, 4 * n)
    oa, ob = optim.Adam(lr=0.01), optim.Adam(lr=0.01)
    dlfast.set_num_threads(threads)
    for i in range(4):
        _compare(a, b, x[n * i:n * i + n], t[n * i:n * i + n], oa, ob)
    assert plans[0] == 1
    assert [l.counter for l in a.layers if l.stochastic] == \
           [l.counter for l in b.layers if l.stochastic]


# A batch norm followed by a ReLU or leaky ReLU runs as one op (kernels.OPS "batchnorm" with
# ``activation``): (N, F) in row chunks (N > 256) or feature blocks (F > 256), and (N, C, H, W).
FUSED_SHAPES = [(300, 7), (5, 300), (3, 4, 5, 6), (2, 3)]
FUSED_ACTS = {"relu": lambda: ReLU(), "leaky": lambda: LeakyReLU(0.1),
              "leaky0": lambda: LeakyReLU(0.0), "activation-relu": lambda: Activation("relu")}


def _fused_net(shape, act, dtype):
    c = shape[1]
    layers = [BatchNorm(c, dtype=dtype), FUSED_ACTS[act](), BatchNorm(c, dtype=dtype),
              FUSED_ACTS[act]()]
    return Sequential(layers + ([Flatten()] if len(shape) > 2 else []),
                      loss=MSELoss(dtype=dtype), seed=1)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("act", sorted(FUSED_ACTS))
@pytest.mark.parametrize("shape", FUSED_SHAPES, ids=str)
def test_batchnorm_activation_runs_fused(backend, dtype, shape, act, threads):
    """A batch norm then a ReLU / leaky ReLU is one step of the plan, with the same bits as the
    checked layer calls (loss, gradients, records, running statistics), including where gamma
    and beta make the batch norm's output 0, -0, inf or NaN (the derivative is taken from
    z = gamma * xhat + beta as the activation takes it from its output)."""
    rng = np.random.default_rng(3)
    a = _fused_net(shape, act, dtype)
    for layer in a.layers[:4:2]:
        layer.params["gamma"][...] = rng.uniform(-2, 2, shape[1])
        layer.params["beta"][...] = rng.uniform(-1, 1, shape[1])
    b = copy.deepcopy(a)
    x = rng.standard_normal(shape).astype(dtype)
    t = rng.standard_normal((shape[0], int(np.prod(shape[1:])))).astype(dtype)
    dlfast.set_num_threads(threads)
    _compare(a, b, x, t)
    names = a._plans._plans[0].step_names()
    assert "layer 0 (BatchNorm) + layer 1 (" in names[0] and len(names) == 2 * 2 + 2, names
    for gamma, beta in ((0.0, 0.0), (0.0, -0.0), (np.inf, 0.0), (-np.inf, 1.0), (1.0, np.nan),
                        (0.0, np.inf)):
        for net in (a, b):
            net.layers[2].params["gamma"][0] = gamma
            net.layers[2].params["beta"][0] = beta
        _same_bits_non_finite(a, b, x, t)


POOLS = [dict(kernel_size=2), dict(kernel_size=3, stride=1),    # apart, overlapping
         dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=3, stride=3, padding=1)]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("act", sorted(FUSED_ACTS))
@pytest.mark.parametrize("pool", POOLS, ids=str)
@pytest.mark.parametrize("front", ["conv", "avgpool"])
def test_activation_before_a_maxpool_has_its_derivative_in_the_pool(backend, dtype, pool, act,
                                                                    threads, front):
    """A ReLU / leaky ReLU then a max-pool: the pool's backward applies the activation's
    derivative (no activation backward step), with the same bits as the checked layer calls,
    also where the activation's output is 0, -0, inf or NaN and where windows overlap (a cell
    that wins several windows sums their gradients first). After a convolution the
    convolution's op applies the activation (no step of its own) and the pool writes its own dx;
    after an average pool the activation's forward is its own step and the pool writes the
    activation's dx."""
    rng = np.random.default_rng(4)
    xs = (3, 2, 7, 7)
    ps = kernels.pool2d_output_shape((3, 4, 7, 7), pool["kernel_size"], pool.get("stride"),
                                     pool.get("padding", 0))
    front_layers = [Conv2D(2, 4, 3, padding=1, seed=1, dtype=dtype)] + (
        [AvgPool2D(1)] if front == "avgpool" else [])
    j = len(front_layers)                       # the activation's index
    a = Sequential(front_layers + [FUSED_ACTS[act](), MaxPool2D(**pool), Flatten(),
                                   Dense(int(np.prod(ps[1:])), 5, seed=2, dtype=dtype)], seed=1)
    x = rng.standard_normal(xs).astype(dtype)
    t = rng.integers(0, 5, xs[0])
    b, names = _compare_once(a, x, t, threads)
    assert not any(n.startswith(f"layer {j} (") and n.endswith(" backward") for n in names), names
    assert any(n.startswith(f"layer {j + 1} (MaxPool2D) + layer {j} (") for n in names), names
    if front == "conv":
        assert names[0].startswith("layer 0 (Conv2D) + layer 1 (") and len(names) == 2 * 3 + 2
        assert "dx" in a.layers[2]._ws and "dx" not in a.layers[1]._ws     # no dz for the conv
    else:
        assert f"layer {j} (" in names[j] and names[j].endswith(" forward"), names
        assert "dx" not in a.layers[j + 1]._ws  # the pool writes the activation's dx only
    for bias in (0.0, -0.0, np.inf, -np.inf, np.nan):
        for net in (a, b):          # channel 0 constant: ties in every window, or non-finite
            net.layers[0].params["W"][0] = 0.0
            net.layers[0].params["b"][0] = bias
        _same_bits_non_finite(a, b, x, t)


def _backends_and_threads_agree(make, x, t, dtype, check):
    """One step of ``make()`` (a net) on each backend: the compiled backend's gradients at 1
    thread close to the NumPy backend's, and the same bits at 2 threads; ``check(step_names)``
    holds for every plan."""
    if "cython" not in dlfast.available_backends():
        pytest.skip("compiled backend not built")

    def grads(backend, threads):
        net = make()
        dlfast.set_num_threads(threads)
        with dlfast.use_backend(backend):
            _, g = net.loss_and_gradient(x, t)
            assert check(net._plans._plans[0].step_names())
        return g

    ref, one, two = grads("numpy", 1), grads("cython", 1), grads("cython", 2)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
    for k in ref:
        np.testing.assert_allclose(one[k], ref[k], err_msg=k, **tol)
        np.testing.assert_array_equal(one[k], two[k], err_msg=k)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("act", sorted(FUSED_ACTS))
@pytest.mark.parametrize("stride", [1, 2], ids=["direct", "im2col"])
def test_conv_applies_the_following_activation(backend, dtype, act, stride, threads):
    """Conv -> ReLU / leaky ReLU, twice (the second with dx): each pair is one op whose forward
    writes the activation's output and whose backward applies its derivative first (into dz),
    with the same bits as the checked layer calls, on the direct path (stride 1, 3x3, 8 output
    channels) and through im2col + GEMM (stride 2), also for 0, -0, inf and NaN outputs."""
    rng = np.random.default_rng(5)
    xs = (4, 2, 9, 9)
    a = Sequential([Conv2D(2, 8, 3, padding=1, seed=1, dtype=dtype), FUSED_ACTS[act](),
                    Conv2D(8, 7, 3, stride=stride, seed=2, dtype=dtype), FUSED_ACTS[act](),
                    Flatten(), Dense(7 * (6 // stride + 1) ** 2, 5, seed=3, dtype=dtype)],
                   seed=1)
    x = rng.standard_normal(xs).astype(dtype)
    t = rng.integers(0, 5, xs[0])
    b, names = _compare_once(a, x, t, threads)
    assert names[:2] == [f"layer 0 (Conv2D) + layer 1 ({type(a.layers[1]).__name__}) forward",
                         f"layer 2 (Conv2D) + layer 3 ({type(a.layers[3]).__name__}) forward"]
    assert len(names) == 2 * 3 + 2, names
    assert a.layers[0]._fwd["out"] is a.layers[1]._fwd["out"]
    assert not a.layers[0]._ws.get("out") and not a.layers[2]._ws.get("out")   # none kept
    for bias in (0.0, -0.0, np.inf, -np.inf, np.nan):
        for net in (a, b):
            for k in (0, 2):
                net.layers[k].params["W"][0] = 0.0
                net.layers[k].params["b"][0] = bias
        _same_bits_non_finite(a, b, x, t)


@pytest.mark.parametrize("act", ["relu", "leaky"])
@pytest.mark.parametrize("stride", [1, 2], ids=["direct", "im2col"])
def test_conv_with_an_activation_agrees_across_backends_and_threads(dtype, act, stride):
    """The compiled conv op with an activation against the NumPy backend's, and its bits at 1
    and at 2 threads (with dz, and before a max-pool without)."""
    rng = np.random.default_rng(7)
    c2 = 10 // stride
    _backends_and_threads_agree(
        lambda: Sequential([Conv2D(3, 8, 3, padding=1, seed=1, dtype=dtype), FUSED_ACTS[act](),
                            Conv2D(8, 6, 3, stride=stride, seed=2, dtype=dtype),
                            FUSED_ACTS[act](), MaxPool2D(2), Flatten(),
                            Dense(6 * (c2 // 2) ** 2, 5, seed=3, dtype=dtype)], seed=1),
        rng.standard_normal((6, 3, 12, 12)).astype(dtype), rng.integers(0, 5, 6), dtype,
        lambda names: sum("Conv2D) + layer" in n for n in names) == 4)


@pytest.mark.parametrize("layers,fused", [
    (lambda: [Conv2D(2, 3, 3, seed=1), Activation("tanh")], 0),
    (lambda: [Conv2D(2, 3, 3, seed=1), Activation("identity")], 0),
    (lambda: [Conv2D(2, 3, 3, seed=1), ELU()], 0),
    (lambda: [Conv2D(2, 3, 3, seed=1), Dropout(0.2, seed=1), ReLU()], 0),
    (lambda: [Conv2D(2, 3, 3, seed=1), BatchNorm(3), ReLU()], 0),       # the batch norm's
    (lambda: [Conv2D(2, 3, 3, seed=1, trainable=False), ReLU(), Conv2D(3, 2, 2, seed=2)], 1),
    (lambda: [Conv2D(2, 3, 3, seed=1), LeakyReLU(0.2), Conv2D(3, 2, 2, seed=2), ReLU()], 2),
])
def test_conv_fuses_only_a_following_relu(backend, layers, fused):
    net = Sequential(layers() + [Flatten()], loss=MSELoss(), seed=1)
    x = np.random.default_rng(0).standard_normal((2, 2, 7, 7)).astype(np.float32)
    out = net.forward(x, False)
    loss, g = net.loss_and_gradient(x, np.zeros(out.shape, np.float32))
    names = net._plans._plans[0].step_names()
    assert sum("(Conv2D) + layer" in n and n.endswith("forward") for n in names) == fused, names
    ref = Sequential(copy.deepcopy(net.layers), loss=MSELoss(), seed=1)
    lr, gr = checked_step(ref, x, np.zeros(out.shape, np.float32))
    assert loss == lr
    for k in g:
        np.testing.assert_array_equal(g[k], gr[k], err_msg=k)


@pytest.mark.parametrize("act", ["relu", "leaky"])
def test_maxpool_with_the_derivative_agrees_across_backends_and_threads(dtype, act):
    """The fused pool op of the compiled backend against the NumPy backend's (float32 and
    float64, overlapping windows), and its bits at 1 and at 2 threads."""
    rng = np.random.default_rng(6)
    _backends_and_threads_agree(
        lambda: Sequential([Conv2D(2, 5, 3, seed=1, dtype=dtype), FUSED_ACTS[act](),
                            MaxPool2D(3, stride=1), Flatten(),
                            Dense(5 * 5 * 5, 5, seed=2, dtype=dtype)], seed=1),
        rng.standard_normal((4, 2, 9, 9)).astype(dtype), rng.integers(0, 5, 4), dtype,
        lambda names: any("derivative" in n for n in names))


@pytest.mark.parametrize("layers,fused", [
    (lambda: [Conv2D(2, 3, 3, seed=1), Activation("tanh"), MaxPool2D(2)], False),
    (lambda: [Conv2D(2, 3, 3, seed=1), ReLU(), AvgPool2D(2)], False),
    (lambda: [Conv2D(2, 3, 3, seed=1), ELU(), MaxPool2D(2)], False),
    (lambda: [ReLU(), MaxPool2D(2), Conv2D(2, 3, 2, seed=1)], False),      # no backward there
    (lambda: [Conv2D(2, 2, 3, seed=1), BatchNorm(2), ReLU(), MaxPool2D(2)], False),  # BN's
    (lambda: [Conv2D(2, 3, 3, seed=1), LeakyReLU(0.2), MaxPool2D(2)], True),
])
def test_only_a_relu_before_a_maxpool_fuses_into_it(backend, layers, fused):
    net = Sequential(layers() + [Flatten()], loss=MSELoss(), seed=1)
    x = np.random.default_rng(0).standard_normal((2, 2, 7, 7)).astype(np.float32)
    out = net.forward(x, False)
    net.loss_and_gradient(x, np.zeros(out.shape, np.float32))
    names = net._plans._plans[0].step_names()
    assert any("derivative" in n for n in names) == fused, names


@pytest.mark.parametrize("layers,fused", [
    (lambda: [BatchNorm(7), Activation("tanh")], False),       # not a fused activation
    (lambda: [BatchNorm(7), Activation("identity")], False),
    (lambda: [BatchNorm(7), Dropout(0.2, seed=1), ReLU()], False),
    (lambda: [Dense(7, 7, seed=1), ReLU(), BatchNorm(7)], False),
    (lambda: [BatchNorm(7), ELU()], False),
    (lambda: [BatchNorm(7), LeakyReLU(0.3), BatchNorm(7), ReLU()], True),
])
def test_batchnorm_fuses_only_a_following_relu(backend, layers, fused):
    net = Sequential(layers(), loss=MSELoss(), seed=1)
    x, _ = _data(n=6, f=7)
    net.loss_and_gradient(x, np.zeros((6, 7), np.float32))
    names = net._plans._plans[0].step_names()
    assert any("+" in n for n in names) == fused, names


def test_batchnorm_op_rejects_bad_fusion(backend):
    f = np.float32
    arrays = dict(gamma=np.ones(3, f), beta=np.zeros(3, f), out=np.empty((4, 3), f),
                  xhat=np.empty((4, 3), f), mean=np.empty(3, f), invstd=np.empty(3, f),
                  running_mean=None, running_var=None, dx=None, dgamma=None, dbeta=None,
                  momentum=0.1, eps=1e-5, unbiased=True)
    kernels.make_op("batchnorm", (4, 3), f, **arrays, y=np.empty((4, 3), f), activation="relu",
                    alpha=0.0)
    with pytest.raises(ValueError, match="activation"):
        kernels.make_op("batchnorm", (4, 3), f, **arrays, y=np.empty((4, 3), f),
                        activation="tanh", alpha=0.0)
    with pytest.raises(ValueError, match="y "):
        kernels.make_op("batchnorm", (4, 3), f, **arrays, y=None, activation="relu", alpha=0.0)
    with pytest.raises(ValueError, match="y "):
        kernels.make_op("batchnorm", (4, 3), f, **arrays, y=np.empty((4, 3), f),
                        activation="identity", alpha=0.0)
    with pytest.raises(ValueError, match="alpha"):
        kernels.make_op("batchnorm", (4, 3), f, **arrays, y=np.empty((4, 3), f),
                        activation="leaky_relu", alpha=-0.1)
    with pytest.raises(ValueError, match="shape"):
        kernels.make_op("batchnorm", (4, 3), f, **arrays, y=np.empty((4, 2), f),
                        activation="relu", alpha=0.0)


def test_compiled_conv_plans_run_compiled_ops_only():
    """On the compiled backend the image layers (and BN, dropout on 4-D) run as compiled ops."""
    if "cython" not in dlfast.available_backends():
        pytest.skip("compiled backend not built")
    seen = set()
    with dlfast.use_backend("cython"):
        for name, (make, image) in CONV_NETS.items():
            net = Sequential(make(np.float32), seed=0)
            x = np.random.default_rng(0).standard_normal((6,) + image).astype(np.float32)
            net.loss_and_gradient(x, np.arange(6) % 5)
            plan = net._plans._plans[0]
            assert type(plan.program).__name__ == "Program" and not hasattr(plan.program, "steps")
            kinds = {type(s[1]).__name__ for s in plan.steps}
            assert "LayerOp" not in kinds, name
            seen |= kinds
    assert {"Conv2DOp", "MaxPool2DOp", "AvgPool2DOp", "BatchNormOp", "DropoutOp"} <= seen
    assert "FlattenOp" not in seen          # after another op, Flatten is a view (no step)


def test_flatten_is_a_view_after_an_op_and_an_op_first(backend, plans):
    """Conv -> Flatten -> Dense: the Dense op reads the conv's output through a view and the
    conv's backward reads the Dense dx through one (no flatten step); Flatten first copies x.
    Both equal the checked layers' step (loss, gradients, records)."""
    x = np.random.default_rng(3).standard_normal((5, 2, 6, 6))
    t = np.arange(5) % 3
    for first in (False, True):
        layers = ([Flatten(), Dense(72, 3, seed=2, dtype=np.float64)] if first else
                  [Conv2D(2, 4, 3, padding=1, seed=1, dtype=np.float64), ReLU(), Flatten(),
                   Dense(144, 3, seed=2, dtype=np.float64)])
        a = Sequential(layers, seed=1)
        b = copy.deepcopy(a)
        _compare(a, b, x, t)
        plan = a._plans._plans[0]
        assert any("Flatten" in n for n in plan.step_names()) == first
        if not first:
            dense_src = [s[2] for s in plan.steps if s[0] == kernels.FWD][1]   # conv + ReLU
            assert dense_src.shape == (5, 144)
            assert np.shares_memory(dense_src, a.layers[1]._fwd["out"])     # ReLU's output



@pytest.mark.parametrize("name", ["wide", "bn-dropout-pools"])
def test_conv_training_is_the_same_on_1_and_2_threads(name):
    """Five compiled engine steps + Adam updates: identical parameters and statistics."""
    if "cython" not in dlfast.available_backends():
        pytest.skip("compiled backend not built")
    make, image = CONV_NETS[name]
    rng = np.random.default_rng(1)
    x = rng.standard_normal((40,) + image).astype(np.float32)
    t = rng.integers(0, 5, 40)
    states = []
    with dlfast.use_backend("cython"):
        for threads in (1, 2):
            dlfast.set_num_threads(threads)
            net, opt = Sequential(make(np.float32), seed=3), optim.Adam(lr=0.01)
            for _ in range(5):
                _, g = net.loss_and_gradient(x, t)
                opt.update(net.params, g)
            states.append(net.state_dict())
    for k in states[0]:
        assert states[0][k].tobytes() == states[1][k].tobytes(), k


@pytest.mark.parametrize("frozen", [False, True])
def test_multitask_conv_trunk_equals_checked_steps(backend, dtype, frozen):
    def make():
        trunk = [Conv2D(1, 3, 3, padding=1, seed=0, dtype=dtype), BatchNorm(3, dtype=dtype),
                 ReLU(), MaxPool2D(2), Flatten()]
        heads = {"a": [Dense(48, 3, seed=2, dtype=dtype)],
                 "b": [Dropout(0.2, seed=6), Dense(48, 4, seed=3, dtype=dtype)]}
        return MultiTaskNet(trunk, heads, loss_weights={"a": 0.5, "b": 1.5}, seed=5)
    a = make()
    if frozen:
        a.freeze(upto=1)
    b = copy.deepcopy(a)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((18, 1, 8, 8)).astype(dtype)
    ta, tb = rng.integers(0, 3, 18), rng.integers(0, 4, 18)
    oa, ob = optim.SGD(lr=0.1), optim.SGD(lr=0.1)
    for i in range(3):
        s = slice(6 * i, 6 * i + 6)
        _compare(a, b, x[s], {"a": ta[s], "b": tb[s]}, oa, ob)


def _random_stack(rng, dtype, f_in, n_out):
    """A random chain of layers of every kind (some frozen, some activations fused)."""
    acts = [None, "relu", "tanh", "sigmoid", "leaky_relu", "elu"]
    layers, width = [], f_in
    for _ in range(int(rng.integers(1, 4))):
        out = int(rng.integers(2, 9))
        if rng.random() < 0.2:
            layers.append(Maxout(width, out, int(rng.integers(1, 4)), dtype=dtype,
                                 seed=int(rng.integers(1000)), trainable=bool(rng.random() < 0.8)))
        else:
            layers.append(Dense(width, out, acts[int(rng.integers(len(acts)))], dtype=dtype,
                                seed=int(rng.integers(1000)),
                                trainable=bool(rng.random() < 0.8)))
        width = out
        for extra in rng.permutation(6)[:int(rng.integers(0, 4))]:
            if extra == 0:
                layers.append(BatchNorm(width, momentum=float(rng.uniform(0.05, 0.5)),
                                        dtype=dtype, trainable=bool(rng.random() < 0.8)))
            elif extra == 1:
                layers.append(Activation(acts[int(rng.integers(1, len(acts)))], dtype=dtype))
            elif extra == 2:
                layers.append(Dropout(float(rng.uniform(0.0, 0.8)), dtype=dtype,
                                      seed=int(rng.integers(1000))))
            elif extra == 3:
                layers.append(PReLU(width if rng.random() < 0.5 else 1, dtype=dtype,
                                    trainable=bool(rng.random() < 0.8)))
            elif extra == 4:
                layers.append(RReLU(seed=int(rng.integers(1000)), dtype=dtype))
            else:
                layers.append(Softmax(dtype=dtype))
    layers.append(Dense(width, n_out, dtype=dtype, seed=int(rng.integers(1000))))
    return layers


@pytest.mark.parametrize("seed", range(16))
def test_random_stacks_equal_checked_steps(backend, dtype, seed):
    """Random layer chains (every kind, frozen layers, in any order) give the checked steps'
    results bit for bit, and the state (running statistics, counters) follows."""
    rng = np.random.default_rng(seed)
    a = Sequential(_random_stack(rng, dtype, 5, 3), seed=seed)
    b = copy.deepcopy(a)
    x, t = _data(n=18, f=5, c=3, dtype=dtype, seed=seed)
    oa, ob = optim.Momentum(lr=0.05), optim.Momentum(lr=0.05)
    for i in range(3):
        _compare(a, b, x[6 * i:6 * i + 6], t[6 * i:6 * i + 6], oa, ob)


@pytest.mark.parametrize("frozen", [False, True])
def test_multitask_equals_checked_steps(backend, dtype, frozen, plans):
    def make():
        trunk = [Dense(7, 6, "relu", seed=0, dtype=dtype), BatchNorm(6, dtype=dtype),
                 Dropout(0.3, seed=4, dtype=dtype), Dense(6, 5, "tanh", seed=1, dtype=dtype)]
        heads = {"a": [Dense(5, 3, seed=2, dtype=dtype)],
                 "b": [PReLU(5, dtype=dtype), Dense(5, 4, seed=3, dtype=dtype)]}
        return MultiTaskNet(trunk, heads, loss_weights={"a": 0.7, "b": 1.3}, seed=5)
    a = make()
    if frozen:
        a.freeze(upto=2)
    b = copy.deepcopy(a)
    x, ta = _data(n=24, f=7, c=3, dtype=dtype)
    tb = np.random.default_rng(1).integers(0, 4, 24)
    oa, ob = optim.SGD(lr=0.1), optim.SGD(lr=0.1)
    for i in range(3):
        s = slice(8 * i, 8 * i + 8)
        _compare(a, b, x[s], {"a": ta[s], "b": tb[s]}, oa, ob)
    assert a.losses.keys() == {"a", "b"} and plans[0] == 1
    a.loss_weights["a"] = 2.0                       # a weight is baked in: a new plan
    b.loss_weights["a"] = 2.0
    _compare(a, b, x[:8], {"a": ta[:8], "b": tb[:8]})
    assert plans[0] == 2


class Scale(Layer):
    """A layer with only forward/backward (no kernel pair): out = 2 x."""

    def forward(self, x, train=True):
        self._fwd = {"out": x * 2}
        return self._fwd["out"]

    def backward(self, dout, compute_dx=True):
        return dout * 2 if compute_dx else None


class Doubled(ReLU):
    """Overrides forward: the engine must not run ReLU's kernel pair for it."""

    def forward(self, x, train=True):
        return super().forward(x * 2, train)

    def backward(self, dout, compute_dx=True):
        d = super().backward(dout, compute_dx)
        return None if d is None else d * 2


@pytest.mark.parametrize("middle", [Scale, Doubled])
def test_layers_without_a_kernel_pair_run_their_own_calls(backend, dtype, middle):
    """A layer with only forward/backward (or a subclass overriding them) runs in the plan as a
    ``layer`` op: the checked step's results."""
    def make():
        return Sequential([Dense(7, 5, seed=0, dtype=dtype), middle(dtype=dtype),
                           Dense(5, 4, seed=1, dtype=dtype)])
    a = make()
    b = copy.deepcopy(a)
    x, t = _data(dtype=dtype)
    for _ in range(3):
        _compare(a, b, x, t, records=False)
    kinds = {type(s[1]).__name__ for s in a._plans._plans[0].steps}
    assert "LayerOp" in kinds


def test_errors_in_a_python_layer_propagate(backend):
    class Broken(Scale):
        def forward(self, x, train=True):
            if train:
                raise ArithmeticError("broken forward")
            return super().forward(x, train)
    net = Sequential([Dense(7, 5, seed=0), Broken(), Dense(5, 4, seed=1)])
    x, t = _data()
    for _ in range(2):
        with pytest.raises(ArithmeticError, match="broken forward"):
            net.loss_and_gradient(x, t)


def test_changes_make_a_new_plan(backend, plans):
    net = MLP(7, [6, 5], 4, batchnorm=True, dropout=0.5, seed=0)
    dense, bn, act, drop = net.layers[:4]
    ref = copy.deepcopy(net)
    x, t = _data()
    x, t = x[:8], t[:8]
    _compare(net, ref, x, t)
    _compare(net, ref, x, t)
    assert plans[0] == 1
    changes = [
        lambda n: n.layers[0].params.__setitem__("W", n.layers[0].params["W"].copy()),
        lambda n: n.layers[0].grads.__setitem__("b", n.layers[0].grads["b"].copy()),
        lambda n: setattr(n.layers[1], "running_var", n.layers[1].running_var.copy()),
        lambda n: setattr(n.layers[1], "eps", 1e-3),
        lambda n: setattr(n.layers[2], "activation", "tanh"),
        lambda n: setattr(n.layers[3], "p", 0.25),
        lambda n: setattr(n.layers[3], "seed", 5),
        lambda n: n.freeze(1),
        lambda n: n.unfreeze(),
        lambda n: n.layers.__setitem__(2, Activation("elu")),
        lambda n: setattr(n.layers[-1], "__class__", type("Sub", (Dense,), {})),
    ]
    for i, change in enumerate(changes):
        change(net)
        change(ref)
        before = plans[0]
        _compare(net, ref, x, t)
        assert plans[0] == before + 1, f"change {i}: a new plan"
        _compare(net, ref, x, t)
        assert plans[0] == before + 1, f"change {i}: then it is kept"
        _, grads = net.loss_and_gradient(x, t)
        ref.loss_and_gradient(x, t)
        now = net.grads                             # the step's dict holds the net's arrays
        assert grads.keys() == now.keys() and all(grads[k] is now[k] for k in now), i
    before = plans[0]
    net.loss_and_gradient(x[:5], t[:5])             # another batch size: another plan
    net.loss_and_gradient(x, t)                     # back: the kept plan
    net.loss_and_gradient(x[:5], t[:5])
    assert plans[0] == before + 1
    other = "cython" if dlfast.get_backend() == "numpy" else "numpy"
    if other in dlfast.available_backends():
        with dlfast.use_backend(other):
            net.loss_and_gradient(x, t)
        assert plans[0] == before + 2


def test_program_step_scans_x_unless_the_caller_vouches(backend):
    """``Program.step(..., finite=True)`` skips its scan of x (the caller, e.g. dlfast.compat,
    has just checked x): a NaN then reaches the step; without it the step refuses x (None)."""
    net = MLP(4, [4], 3, seed=0)
    x, t = _data(f=4, c=3)
    x, t = x[:6], t[:6]
    net.loss_and_gradient(x, t)
    program = net._plan.program
    bad = x.copy()
    bad[2, 1] = np.nan
    assert program.step(bad, (t,)) is None
    assert program.step(bad, (t,), None, None, False) is None
    assert np.isnan(program.step(bad, (t,), None, None, True))
    assert np.isfinite(program.step(x, (t,), None, None, True))
    assert program.step(x[:5], (t[:5],), None, None, True) is None     # the shape still checked


def test_bad_input_is_rejected_before_anything_changes(backend):
    net = MLP(4, [4], 3, batchnorm=True, dropout=0.5, seed=0)
    x, t = _data(f=4, c=3)
    x, t = x[:6], t[:6]
    net.loss_and_gradient(x, t)
    before = {k: v.copy() for k, v in net.state_dict().items()}

    def unchanged():
        now = net.state_dict()
        for k in before:
            np.testing.assert_array_equal(now[k], before[k], err_msg=k)

    bad = x.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="x"):
        net.loss_and_gradient(bad, t)
    for bad_t in (np.array([0, 1, 2, 3, 0, 1]), np.array([0, 1, -1, 2, 0, 1])):
        with pytest.raises(ValueError, match=r"t labels must lie in \[0, 3\)"):
            net.loss_and_gradient(x, bad_t)
    with pytest.raises(ValueError, match="labels"):
        net.loss_and_gradient(x, t[:5])
    with pytest.raises(TypeError):
        net.loss_and_gradient(x, t.astype(np.float32))
    with pytest.raises(TypeError, match="float32"):
        net.loss_and_gradient(x.astype(np.float64), t)
    unchanged()                                     # no running statistic, counter or grad moved
    out0 = net.layers[0]._fwd["out"]                # an array the step writes, or a view of it
    for bad in (out0, out0[:]):
        with pytest.raises(ValueError, match="shares memory"):
            net.loss_and_gradient(bad, t)
    unchanged()
    g = net.layers[0].grads["W"]
    g.flags.writeable = False
    with pytest.raises(ValueError, match=r"layer 0 \(Dense\) dW is not writeable"):
        net.loss_and_gradient(x, t)
    g.flags.writeable = True
    unchanged()
    loss, _ = net.loss_and_gradient(x, t)
    assert np.isfinite(loss)


def test_every_label_form(backend):
    """int64 indices (copied into the loss's own buffer), other int dtypes, strided views and
    one-hot rows give the checked step's results; the step keeps no reference to t."""
    x, t = _data(n=12, f=5, c=3)
    x = x[:6]
    t = t[:6].copy()
    forms = [t, t.astype(np.int32), t.astype(np.uint8), np.repeat(t, 2)[::2],
             np.eye(3, dtype=np.float32)[t], np.eye(3, dtype=np.int64)[t]]
    a = MLP(5, [4], 3, batchnorm=True, seed=1)
    b = copy.deepcopy(a)
    oa, ob = optim.SGD(lr=0.1), optim.SGD(lr=0.1)
    for form in forms + forms:
        _compare(a, b, x, form, oa, ob, records=False)
    a.loss_and_gradient(x, t)
    labels = a.loss_layer._fwd["labels"].copy()
    t[:] = (t + 1) % 3                              # the caller's t changes after the step
    np.testing.assert_array_equal(a.loss_layer._fwd["labels"], labels)


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copies_drop_the_plans(backend, how):
    net = MLP(7, [6], 4, batchnorm=True, dropout=0.3, seed=0)
    x, t = _data()
    net.loss_and_gradient(x, t)
    c = copy.deepcopy(net) if how == "deepcopy" else pickle.loads(pickle.dumps(net))
    assert "_plans" not in c.__dict__
    la, ga = c.loss_and_gradient(x, t)
    lb, gb = net.loss_and_gradient(x, t)
    assert la == lb
    for k in ga:
        assert ga[k] is not gb[k]
        np.testing.assert_array_equal(ga[k], gb[k])
    mine = [{k: v.copy() for k, v in d.items()} for d in (net.params, net.grads)]
    c.loss_and_gradient(x * 2, t)                   # c's plan writes only c's arrays
    for d, m in zip((net.params, net.grads), mine):
        for k, v in d.items():
            np.testing.assert_array_equal(v, m[k], err_msg=k)


@pytest.mark.parametrize("first", ["batchnorm", "dropout", "activation", "prelu"])
def test_plans_from_a_layer_without_weights(backend, first):
    def stack():
        head = {"batchnorm": BatchNorm(7), "dropout": Dropout(0.3, seed=5),
                "activation": Activation("tanh"), "prelu": PReLU(7)}[first]
        return Sequential([head, Dense(7, 5, "relu", seed=1), Dropout(0.2, seed=2),
                           Dense(5, 3, seed=3)], seed=0)
    a = stack()
    b = copy.deepcopy(a)
    oa, ob = optim.SGD(lr=0.1), optim.SGD(lr=0.1)
    x, t = _data(n=18, f=7, c=3)
    for i in range(3):
        _compare(a, b, x[6 * i:6 * i + 6], t[6 * i:6 * i + 6], oa, ob)
    program = a._plans._plans[0].program
    out0 = a.layers[0]._fwd["out"]
    assert not program.accepts(out0) and not program.accepts(out0[2:])
    assert program.accepts(x[:6].copy()) and program.accepts(x[:6])


def test_one_net_from_two_threads_is_serialised(backend):
    """Two threads stepping one net take turns: every step's result is a whole step's."""
    net = MLP(20, [16], 4, batchnorm=True, seed=0)
    x, t = _data(n=32, f=20, c=4)
    net.loss_and_gradient(x, t)
    expect = checked_step(copy.deepcopy(net), x, t)[0]
    bad, errors = [], []

    def work():
        try:
            for _ in range(200):
                loss, _ = net.loss_and_gradient(x, t)
                if loss != expect and abs(loss - expect) > 0.5:    # BN running stats move only
                    bad.append(loss)
        except Exception as exc:        # pragma: no cover - reported below
            errors.append(exc)
    threads = [threading.Thread(target=work) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors and not bad
    la, _ = net.loss_and_gradient(x, t)
    assert la == pytest.approx(expect)


@pytest.mark.parametrize("kind", [ReLU, Sigmoid, Tanh, LeakyReLU, ELU])
def test_activation_layers_fuse_nothing_but_match(backend, kind):
    a = Sequential([Dense(7, 6, seed=0), kind(), Dense(6, 4, seed=1)])
    b = copy.deepcopy(a)
    x, t = _data()
    for _ in range(2):
        _compare(a, b, x, t)


def test_a_layer_twice_in_a_net_is_refused():
    d = Dense(5, 5, seed=0)
    with pytest.raises(ValueError, match="appears twice"):
        Sequential([d, ReLU(), d])
    loss = SoftmaxCrossEntropy()
    assert Sequential([Dense(5, 3, seed=0)], loss=loss).loss_layer is loss


class PyScale(Layer):
    """A layer with a parameter and only forward/backward: out = x * s, ds = sum(dout * x)."""

    def __init__(self, dtype=None):
        super().__init__(dtype)
        self.params["s"] = np.full(1, 1.5, self.dtype)
        self.grads["s"] = np.zeros(1, self.dtype)

    def forward(self, x, train=True):
        self._fwd = {"x": x}
        return x * self.params["s"]

    def backward(self, dout, compute_dx=True):
        self.grads["s"][0] = np.sum(dout * self._fwd["x"])
        return dout * self.params["s"] if compute_dx else None


@pytest.mark.parametrize("middle", [None, Scale, PyScale])
def test_gradient_returns_new_arrays_written_by_the_step(backend, dtype, middle):
    """net.gradient: the step's gradients in new arrays (straight from the ops when every
    gradient has an op slot, else copies), equal to loss_and_gradient's bit for bit; the layers'
    own gradient buffers are left as they were."""
    def make():
        mid = [] if middle is None else [middle(dtype=dtype)]
        return Sequential([Dense(7, 6, "relu", seed=0, dtype=dtype), BatchNorm(6, dtype=dtype),
                           PReLU(6, dtype=dtype), *mid, Dense(6, 4, seed=1, dtype=dtype)],
                          regularizer={"type": "L2", "lam": 0.01}, seed=2)
    a = make()
    b = copy.deepcopy(a)
    x, t = _data(dtype=dtype)
    for _ in range(3):
        own = {k: v.copy() for k, v in a.grads.items()}
        ga = a.gradient(x, t)
        _, gb = b.loss_and_gradient(x, t)
        assert ga.keys() == gb.keys()
        for k in ga:
            assert ga[k] is not a.grads[k] and ga[k].flags.owndata
            np.testing.assert_array_equal(ga[k], gb[k], err_msg=k)
            if middle is not PyScale:
                np.testing.assert_array_equal(a.grads[k], own[k], err_msg=k)
    assert a._plan.fresh == (middle is not PyScale)     # PyScale's gradient: copies
    kept = {k: v.copy() for k, v in ga.items()}
    a.gradient(x * 2, t)                            # the returned arrays are the caller's
    for k in ga:
        np.testing.assert_array_equal(ga[k], kept[k])


# ---------------------------------------------------------------------------- losses
LOSSES = ["softmax_xent", "mse", "mae", "huber", "sigmoid_bce", "mse-half-sum",
          "sigmoid_bce-multilabel"]


def _loss_net(name, dtype, **kw):
    """An MLP with loss ``name`` and its targets' maker (rng, n) -> t."""
    from dlfast.layers import HuberLoss, MSELoss
    loss = {"mse-half-sum": MSELoss(half=True, reduction="sum"),
            "huber": HuberLoss(delta=0.7)}.get(name, name.split("-")[0])
    out = {"softmax_xent": 4, "sigmoid_bce": 1, "sigmoid_bce-multilabel": 3}.get(name, 2)
    net = MLP(9, [8, 6], out, loss=loss, seed=3, dtype=dtype, **kw)

    def targets(rng, n):
        if name == "softmax_xent":
            return rng.integers(0, out, n)
        if name.startswith("sigmoid_bce"):
            t = (rng.random((n, out)) < 0.5).astype(dtype)
            return t[:, 0] if out == 1 else t
        return rng.standard_normal((n, out)).astype(dtype)
    return net, targets


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("name", LOSSES)
def test_losses_engine_step_equals_checked_step(backend, dtype, name, weighted, threads, plans):
    """Every loss, with and without sample weights (and both in turn), in the engine: the
    checked step's loss, gradients, records and state, bit for bit."""
    a, targets = _loss_net(name, dtype, batchnorm=True, dropout=0.2)
    b = copy.deepcopy(a)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((40, 9)).astype(dtype)
    t = targets(rng, 40)
    w = rng.random(40) * 3
    oa, ob = optim.Adam(lr=0.01), optim.Adam(lr=0.01)
    dlfast.set_num_threads(threads)
    for i in range(4):
        s = slice(10 * i, 10 * i + 10)
        sw = w[s] if weighted and i != 2 else None        # a weighted plan also runs unweighted
        _compare(a, b, x[s], t[s], oa, ob, sw=sw)
        assert (a.loss_layer._fwd["sw"] is None) == (sw is None)
    assert plans[0] == 1


def test_compiled_plans_run_compiled_loss_ops():
    if "cython" not in dlfast.available_backends():
        pytest.skip("compiled backend not built")
    rng = np.random.default_rng(0)
    seen = set()
    with dlfast.use_backend("cython"):
        for name in LOSSES:
            net, targets = _loss_net(name, np.float32)
            net.loss_and_gradient(rng.standard_normal((6, 9)).astype(np.float32),
                                  targets(rng, 6), np.ones(6))
            kinds = {type(s[1]).__name__ for s in net._plans._plans[0].steps}
            assert "LayerOp" not in kinds and "function" not in kinds, name
            seen |= kinds
    assert {"SoftmaxXentOp", "ValueLossOp"} <= seen


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("weights", ["none", "all", "per-head"])
def test_multitask_mixed_heads_equal_checked_steps(backend, dtype, weights, threads):
    """A classification head (softmax) and a regression head (huber) on one trunk, with sample
    weights for both, for one head or none."""
    from dlfast.layers import HuberLoss
    def make():
        trunk = [Dense(7, 6, "relu", seed=0, dtype=dtype), BatchNorm(6, dtype=dtype),
                 Dropout(0.2, seed=4, dtype=dtype)]
        heads = {"cls": [Dense(6, 3, seed=2, dtype=dtype)],
                 "reg": [Dense(6, 5, "tanh", seed=3, dtype=dtype), Dense(5, 2, seed=4, dtype=dtype)]}
        return MultiTaskNet(trunk, heads, loss_weights={"cls": 0.7, "reg": 1.3}, seed=5,
                            losses={"reg": HuberLoss(0.5)})
    a = make()
    b = copy.deepcopy(a)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((24, 7)).astype(dtype)
    tc, tr = rng.integers(0, 3, 24), rng.standard_normal((24, 2))
    w = rng.random(24)
    oa, ob = optim.SGD(lr=0.1), optim.SGD(lr=0.1)
    dlfast.set_num_threads(threads)
    for i in range(3):
        s = slice(8 * i, 8 * i + 8)
        sw = {"none": None, "all": w[s], "per-head": {"reg": w[s]}}[weights]
        _compare(a, b, x[s], {"cls": tc[s], "reg": tr[s].astype(dtype)}, oa, ob, sw=sw)
    assert set(a.accuracy(x, {"cls": tc, "reg": tr})) == {"cls"}
    assert set(a.r2(x, {"cls": tc, "reg": tr})) == {"reg"}


def test_every_target_form(backend):
    """Value targets: (N,) for one output, (N, 1), int, bool and float64 for a float32 net,
    strided views, read-only; weights of any real dtype, strided: the checked step's results;
    the step keeps no reference to t or the weights."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 9)).astype(np.float32)
    a, _ = _loss_net("sigmoid_bce", np.float32)
    b = copy.deepcopy(a)
    t = (rng.random(6) < 0.5).astype(np.float32)
    ro = t.copy()
    ro.flags.writeable = False
    forms = [t, t[:, None], t.astype(np.int64), t.astype(bool), t.astype(np.float64),
             np.repeat(t, 2)[::2], ro, np.asfortranarray(np.stack([t, t], 1))[:, :1]]
    w = rng.random(6)
    wforms = [None, w, np.repeat(w, 3)[::3], (w * 10).astype(np.int32), w.astype(np.float32)]
    oa, ob = optim.SGD(lr=0.1), optim.SGD(lr=0.1)
    for i, form in enumerate(forms):
        _compare(a, b, x, form, oa, ob, sw=wforms[i % len(wforms)])
    tt, ww = t.copy(), w.copy()
    a.loss_and_gradient(x, tt, ww)
    rec = {k: v.copy() for k, v in a.loss_layer._fwd.items() if isinstance(v, np.ndarray)}
    tt[:] = 1 - tt
    ww[:] = 0
    for k, v in rec.items():
        np.testing.assert_array_equal(a.loss_layer._fwd[k], v, err_msg=k)


@pytest.mark.parametrize("name", ["mse", "sigmoid_bce", "softmax_xent"])
def test_bad_targets_and_weights_are_rejected_before_anything_changes(backend, name):
    net, targets = _loss_net(name, np.float32, batchnorm=True, dropout=0.5)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 9)).astype(np.float32)
    t = targets(rng, 6)
    net.loss_and_gradient(x, t)
    before = {k: v.copy() for k, v in net.state_dict().items()}
    rec = {k: v.copy() for k, v in net.loss_layer._fwd.items() if isinstance(v, np.ndarray)}
    bad_w = [(np.array([1.0, 1, 1, -1, 1, 1]), r"sample_weight must be finite and >= 0, got "
                                                r"-1.0 in row 3"),
             (np.array([1.0, 1, np.nan, 1, 1, 1]), "got nan in row 2"),
             (np.zeros(6), "must not all be zero"), (np.ones(5), r"shape \(6,\)"),
             ([1.0] * 6, "numpy.ndarray")]
    bad_t = []
    if name != "softmax_xent":
        f = np.asarray(t, np.float32).copy()
        f[4] = np.nan
        bad_t += [(f, r"t must be finite, got \[nan.*\] in row 4"),
                  (np.zeros((6, 5), np.float32), r"t must have shape \(6, "),
                  (np.array(["a"] * 6), "real numbers")]
    if name == "sigmoid_bce":
        f = np.asarray(t, np.float32).copy()
        f[1] = 2.0
        bad_t += [(f, r"t must lie in \[0, 1\].*got \[2.0\] in row 1")]
    for w, msg in bad_w:
        with pytest.raises((ValueError, TypeError), match=msg):
            net.loss_and_gradient(x, t, w)
    for bt, msg in bad_t:
        with pytest.raises((ValueError, TypeError), match=msg):
            net.loss_and_gradient(x, bt)
    now = net.state_dict()
    for k in before:
        np.testing.assert_array_equal(now[k], before[k], err_msg=k)
    for k, v in rec.items():
        np.testing.assert_array_equal(net.loss_layer._fwd[k], v, err_msg=k)
    loss, _ = net.loss_and_gradient(x, t)
    assert np.isfinite(loss)


def test_program_load_targets_checks_before_copying(backend):
    net, targets = _loss_net("sigmoid_bce-multilabel", np.float64)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 9))
    t = targets(rng, 5)
    net.loss_and_gradient(x, t)
    plan = net._plans._plans[0]
    prog = plan.program
    keep = net.loss_layer._fwd["targets"].copy()
    bad = t.copy()
    bad[3, 1] = -0.5
    with pytest.raises(ValueError, match=r"in \[0, 1\], got \[.*-0.5.*\] in row 3"):
        prog.load_targets([bad])
    with pytest.raises(ValueError, match="row 1"):
        prog.load_targets([t], [np.array([1.0, -2, 1, 1, 1])])
    with pytest.raises(TypeError):
        prog.load_targets([t.astype(np.float32)])
    np.testing.assert_array_equal(net.loss_layer._fwd["targets"], keep)
    prog.load_targets(*plan.targets([1 - t], [np.full(5, 2.0)]))
    np.testing.assert_array_equal(net.loss_layer._fwd["targets"], 1 - t)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("first", ["relu", "sigmoid", "identity-no-bias"])
def test_a_non_finite_x_is_refused_whatever_the_first_layer_makes_of_it(backend, dtype, first,
                                                                         threads):
    """A non-finite x is refused even where the first layer would hide it (all-positive weights:
    -inf -> z = -inf -> relu 0, sigmoid 0; a zero weight row: inf * 0 = NaN), in any row block;
    z overflowing or a NaN weight with a finite x is no x error; a refused step leaves the
    state, the dropout counter and later steps as if it never came."""
    dlfast.set_num_threads(threads)
    n, f = 300, 9                                   # several row blocks on 2 threads

    def net():
        act = None if first == "identity-no-bias" else first
        s = Sequential([Dense(f, 6, activation=act, bias=act is not None, dtype=dtype, seed=1),
                        Dropout(0.3, seed=2), Dense(6, 3, dtype=dtype, seed=3)], dtype=dtype)
        W = s.layers[0].params["W"]
        W[...] = np.abs(W) + 0.1                    # all positive
        W[4] = 0                                    # inf * 0 = NaN
        return s

    a, b = net(), net()
    x, t = _data(n, f, 3, dtype)
    a.loss_and_gradient(x, t)
    b.loss_and_gradient(x, t)
    for r, j, v in ((0, 0, -np.inf), (n - 1, 8, np.inf), (n // 2 + 7, 4, np.inf),
                    (151, 4, -np.inf), (3, 2, np.nan)):
        bad = x.copy()
        bad[r, j] = v
        with pytest.raises(ValueError, match="x contains NaN or infinity"):
            a.loss_and_gradient(bad, t)
    assert a.layers[1].counter == b.layers[1].counter
    _compare(a, b, x[::-1].copy(), t[::-1].copy(), records=False)
    big = np.full_like(x, np.finfo(dtype).max / 4)  # z overflows: a result, not an x error
    with np.errstate(all="ignore"):
        a.loss_and_gradient(big, t)                 # runs (relu: an inf loss; sigmoid: finite)
    c = net()
    c.layers[0].params["W"][1, 1] = np.nan          # a NaN weight: z NaN, x finite
    with np.errstate(all="ignore"):
        loss, _ = c.loss_and_gradient(x, t)
    assert np.isnan(loss)
