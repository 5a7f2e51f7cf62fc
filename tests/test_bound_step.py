"""Bound training steps (dlfast._bound): after one checked step, ``Sequential.loss_and_gradient``
replays the kernel calls without checks. Results equal the checked path bit for bit; any change
of input shape, backend, arrays, settings or layer class takes the checked path again; bad input
is still rejected."""
import copy
import pickle

import numpy as np
import pytest

import dlfast
from dlfast import _bound, optim
from dlfast.layers import Activation, BatchNorm, Dense, Dropout, PReLU, ReLU
from dlfast.net import MLP, Sequential

CONFIGS = [dict(batchnorm=True, dropout=0.3), dict(), dict(activation="elu", dropout=0.2),
           dict(activation="tanh", batchnorm=True, weight_decay=1e-3)]


@pytest.fixture
def runs(monkeypatch):
    """Counts BoundStep.run calls (bound steps taken)."""
    count = [0]
    real = _bound.BoundStep.run

    def run(self, x, t):
        count[0] += 1
        return real(self, x, t)

    monkeypatch.setattr(_bound.BoundStep, "run", run)
    return count


def _data(n=24, f=7, c=4, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, f)).astype(dtype), rng.integers(0, c, n)


def _step_pair(a, b, oa, ob, x, t):
    """One step of a (bound after its first step) and of b (always the checked path), each with
    its optimiser; loss, gradients and state must agree bit for bit."""
    la, ga = a.loss_and_gradient(x, t)
    oa.update(a.params, ga)
    b._bound = None
    lb, gb = b.loss_and_gradient(x, t)
    ob.update(b.params, gb)
    assert la == lb and ga.keys() == gb.keys()
    for k in ga:
        np.testing.assert_array_equal(ga[k], gb[k], err_msg=k)
    sa, sb = a.state_dict(), b.state_dict()
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)


@pytest.mark.parametrize("kw", CONFIGS, ids=["bn-dropout", "plain", "elu-dropout", "tanh-bn-wd"])
def test_bound_steps_equal_checked_steps(backend, dtype, kw, runs):
    a, b = (MLP(7, [6, 5], 4, seed=1, dtype=dtype, **kw) for _ in range(2))
    oa, ob = optim.Adam(lr=0.01), optim.Adam(lr=0.01)
    data, labels = _data(dtype=dtype)
    for i in range(6):
        x, t = data[4 * i:4 * i + 4], labels[4 * i:4 * i + 4]      # views, as a loader gives
        if i % 2:
            t = t.astype(np.int32)
        _step_pair(a, b, oa, ob, x, t)
        np.testing.assert_array_equal(a.loss_layer.probs, b.loss_layer.probs)
    assert runs[0] == 5 and a._bound.runnable


def test_layer_state_after_a_bound_step_is_the_steps(backend, runs):
    net = MLP(7, [6], 4, batchnorm=True, dropout=0.5, seed=2)
    x, t = _data()
    net.loss_and_gradient(x[:8], t[:8])
    x2 = x[8:16].copy()
    net.loss_and_gradient(x2, t[8:16])
    assert runs[0] == 1
    assert net.layers[0]._fwd["x"] is x2                      # a manual backward uses this step
    drop = next(l for l in net.layers if isinstance(l, Dropout))
    assert drop.counter == 2 * 8 * 6 and drop.mask.sum() > 0
    drop.hold_rng = True
    net.loss_and_gradient(x2, t[8:16])
    assert runs[0] == 2 and drop.counter == 2 * 8 * 6


def test_changes_take_the_checked_path(backend, runs):
    net = MLP(7, [6, 5], 4, batchnorm=True, dropout=0.5, seed=0)
    dense, bn, act, drop = net.layers[:4]
    x, t = _data()
    x, t = x[:8], t[:8]

    def step(xx=x, tt=t):
        return net.loss_and_gradient(xx, tt)

    step()
    step()
    assert runs[0] == 1
    other = "cython" if backend == "numpy" else "numpy"
    changes = [
        lambda: dense.params.__setitem__("W", dense.params["W"].copy()),
        lambda: dense.grads.__setitem__("b", dense.grads["b"].copy()),
        lambda: setattr(bn, "running_var", bn.running_var.copy()),
        lambda: setattr(bn, "eps", 1e-3),
        lambda: setattr(act, "activation", "tanh"),
        lambda: setattr(drop, "p", 0.25),
        lambda: setattr(drop, "seed", 5),
        lambda: net.freeze(1),
        lambda: net.unfreeze(),
        lambda: setattr(net.layers[-1], "__class__", type("Sub", (Dense,), {})),
    ]
    for i, change in enumerate(changes):
        change()
        before = runs[0]
        step()
        assert runs[0] == before, f"change {i}: the first step after it is checked"
        _, grads = step()
        assert runs[0] == before + 1, f"change {i}: then bound again"
        now = net.grads                             # the bound step's dict is the net's
        assert grads.keys() == now.keys() and all(grads[k] is now[k] for k in now), i
    before = runs[0]
    step(x[:5], t[:5])                                  # another batch size: checked
    step()                                              # back: checked (one key is kept)
    step()
    assert runs[0] == before + 1
    if other in dlfast.available_backends():
        with dlfast.use_backend(other):
            before = runs[0]
            step()
            assert runs[0] == before


def test_layers_without_a_bound_form_take_the_checked_path(backend, runs):
    class Doubled(ReLU):                          # overrides forward: never replayed
        def forward(self, x, train=True):
            return super().forward(x * 2, train)

    x, t = _data()
    for layers in ([Dense(7, 5, seed=0), PReLU(5), Dense(5, 4, seed=1)],
                   [Dense(7, 5, seed=0), Doubled(), Dense(5, 4, seed=1)]):
        net = Sequential(layers)
        ref = copy.deepcopy(net)
        for _ in range(3):
            la, ga = net.loss_and_gradient(x, t)
            ref._bound = None
            lb, gb = ref.loss_and_gradient(x, t)
            assert la == lb
            for k in ga:
                np.testing.assert_array_equal(ga[k], gb[k])
        assert runs[0] == 0 and not net._bound.runnable


def test_bad_input_in_bound_steps_is_rejected(backend, runs):
    net = MLP(4, [4], 3, batchnorm=True, seed=0)
    x, t = _data(f=4, c=3)
    x, t = x[:6], t[:6]
    net.loss_and_gradient(x, t)
    net.loss_and_gradient(x, t)
    assert runs[0] == 1
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
    out0 = net.layers[0]._fwd["out"]                 # (6, 4): it, or a view of it, as x overlaps
    for bad in (out0, out0[:]):
        with pytest.raises(ValueError, match="overlap"):
            net.loss_and_gradient(bad, t)
    assert runs[0] == 5                              # the three label errors and the float labels
    loss, _ = net.loss_and_gradient(x, t)           # bound again
    assert np.isfinite(loss) and runs[0] == 6


def test_bound_steps_take_every_label_form(backend, runs):
    """int64 indices (copied into the loss layer's own buffer), other int dtypes, strided views
    and one-hot rows give the checked step's results; the step keeps no reference to t."""
    x, t = _data(n=12, f=5, c=3)
    x = x[:6]
    t = t[:6].copy()
    forms = [t, t.astype(np.int32), t.astype(np.uint8), np.repeat(t, 2)[::2],
             np.eye(3, dtype=np.float32)[t], np.eye(3, dtype=np.int64)[t]]
    a, b = MLP(5, [4], 3, batchnorm=True, seed=1), MLP(5, [4], 3, batchnorm=True, seed=1)
    oa, ob = optim.SGD(lr=0.1), optim.SGD(lr=0.1)
    for form in forms + forms + [t]:
        _step_pair(a, b, oa, ob, x, form)
    assert runs[0] == 2 * len(forms)
    dl = a.loss_layer.backward(1.0).copy()
    t[:] = (t + 1) % 3                              # the caller's t changes after the step
    np.testing.assert_array_equal(a.loss_layer.backward(1.0), dl)


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copies_drop_the_bound_step(backend, how, runs):
    net = MLP(7, [6], 4, batchnorm=True, dropout=0.3, seed=0)
    x, t = _data()
    net.loss_and_gradient(x, t)
    net.loss_and_gradient(x, t)
    c = copy.deepcopy(net) if how == "deepcopy" else pickle.loads(pickle.dumps(net))
    assert c._bound is None and net._bound.runnable
    la, ga = c.loss_and_gradient(x, t)
    lb, gb = net.loss_and_gradient(x, t)
    assert la == lb
    for k in ga:
        assert ga[k] is not gb[k]
        np.testing.assert_array_equal(ga[k], gb[k])
    c.loss_and_gradient(x, t)                          # c is bound now
    mine = [{k: v.copy() for k, v in d.items()} for d in (net.params, net.grads)]
    c.loss_and_gradient(x * 2, t)                      # c's bound step writes only c's arrays
    assert runs[0] == 4                                # net: steps 2, 3; c: steps 2, 3
    for d, m in zip((net.params, net.grads), mine):
        for k, v in d.items():
            np.testing.assert_array_equal(v, m[k], err_msg=k)


def _random_stack(rng, dtype, f_in, n_out):
    """A random chain of bindable layers (some frozen, some activations fused into Dense)."""
    acts = [None, "relu", "tanh", "sigmoid", "leaky_relu", "elu"]
    layers, width = [], f_in
    for _ in range(int(rng.integers(1, 4))):
        out = int(rng.integers(2, 9))
        layers.append(Dense(width, out, acts[int(rng.integers(len(acts)))], dtype=dtype,
                            seed=int(rng.integers(1000)), trainable=bool(rng.random() < 0.8)))
        width = out
        for extra in rng.permutation(3)[:int(rng.integers(0, 4))]:
            if extra == 0:
                layers.append(BatchNorm(width, momentum=float(rng.uniform(0.05, 0.5)),
                                        dtype=dtype, trainable=bool(rng.random() < 0.8)))
            elif extra == 1:
                layers.append(Activation(acts[int(rng.integers(1, len(acts)))], dtype=dtype))
            else:
                layers.append(Dropout(float(rng.uniform(0.0, 0.8)), dtype=dtype,
                                      seed=int(rng.integers(1000))))
    layers.append(Dense(width, n_out, dtype=dtype, seed=int(rng.integers(1000))))
    return layers


@pytest.mark.parametrize("seed", range(12))
def test_random_stacks_bound_equal_checked(backend, dtype, seed, runs):
    """Random layer chains (frozen layers, BN, activations, dropout in any order): every bound
    step equals the checked step bit for bit, and state (running stats, counters) follows."""
    rng = np.random.default_rng(seed)
    layers = _random_stack(rng, dtype, 5, 3)
    a = Sequential(layers, seed=seed)
    b = copy.deepcopy(a)
    x, t = _data(n=18, f=5, c=3, dtype=dtype, seed=seed)
    oa, ob = optim.Momentum(lr=0.05), optim.Momentum(lr=0.05)
    for i in range(3):
        _step_pair(a, b, oa, ob, x[6 * i:6 * i + 6], t[6 * i:6 * i + 6])
    assert runs[0] == 2
    assert (a._bound._chain is not None) == (backend == "cython")     # a compiled chain ran


# ============================================================================ compiled chain
def _state(net):
    """Everything a step leaves: params, grads, buffers, the layers' forward records."""
    out = {f"p.{k}": v.copy() for k, v in net.state_dict().items()}
    out.update({f"g.{k}": v.copy() for k, v in net.grads.items()})
    for i, layer in enumerate([*net.layers, net.loss_layer]):
        for k, v in (layer._fwd or {}).items():
            out[f"r{i}.{k}"] = np.array(v, copy=True)
    return out


@pytest.mark.skipif("cython" not in dlfast.available_backends(), reason="compiled backend")
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("kw", CONFIGS + [dict(batchnorm=True, dropout=0.5, activation="relu")],
                         ids=["bn-dropout", "plain", "elu-dropout", "tanh-bn-wd", "relu-bn-dropout"])
def test_chain_equals_the_bound_calls(dtype, kw, threads):
    """The compiled chain (one C call per step) gives the bound Python calls' results bit for
    bit: loss, gradients, parameters after Adam, running statistics, dropout counters, records;
    odd widths, 1 and 2 threads, float32 and float64."""
    a, b = (MLP(37, [33, 17], 5, seed=3, dtype=dtype, **kw) for _ in range(2))
    oa, ob = optim.Adam(lr=0.01), optim.Adam(lr=0.01)
    data, labels = _data(n=3 * 45, f=37, c=5, dtype=dtype, seed=4)
    dlfast.set_num_threads(threads)
    try:
        with dlfast.use_backend("cython"):
            for i in range(3):
                x, t = data[45 * i:45 * i + 45], labels[45 * i:45 * i + 45]
                if b._bound is not None:
                    b._bound._chain = None                      # b: the bound calls
                la, ga = a.loss_and_gradient(x, t)
                lb, gb = b.loss_and_gradient(x, t)
                oa.update(a.params, ga)
                ob.update(b.params, gb)
                assert la == lb
                sa, sb = _state(a), _state(b)
                assert sa.keys() == sb.keys()
                for k in sa:
                    np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)
            assert a._bound._chain is not None and b._bound._chain is None
            if kw.get("dropout"):
                assert [l.counter for l in a.layers if isinstance(l, Dropout)] == \
                       [l.counter for l in b.layers if isinstance(l, Dropout)]
    finally:
        dlfast.set_num_threads(0)


@pytest.mark.skipif("cython" not in dlfast.available_backends(), reason="compiled backend")
@pytest.mark.parametrize("first", ["batchnorm", "dropout", "activation"])
def test_chain_from_a_layer_without_weights(first):
    """A chain whose first op is not a Dense (its input checked by bounds, x's shape from the
    key) gives the checked steps' results; the first layer's records follow."""
    def stack():
        head = {"batchnorm": BatchNorm(7), "dropout": Dropout(0.3, seed=5),
                "activation": Activation("tanh")}[first]
        return Sequential([head, Dense(7, 5, "relu", seed=1), Dropout(0.2, seed=2),
                           Dense(5, 3, seed=3)], seed=0)
    a, b = stack(), stack()
    oa, ob = optim.SGD(lr=0.1), optim.SGD(lr=0.1)
    x, t = _data(n=18, f=7, c=3)
    with dlfast.use_backend("cython"):
        for i in range(3):
            _step_pair(a, b, oa, ob, x[6 * i:6 * i + 6], t[6 * i:6 * i + 6])
        assert a._bound._chain is not None
        out0 = a.layers[0]._fwd["out"]
        assert not a._bound.accepts(out0) and not a._bound.accepts(out0[2:])
        assert a._bound.accepts(x[:6].copy()) and a._bound.accepts(x[:6])


@pytest.mark.skipif("cython" not in dlfast.available_backends(), reason="compiled backend")
def test_chain_in_use_leaves_the_step_to_the_calls(monkeypatch):
    """A chain already running (another thread; here re-entered from inside it) returns None and
    the step runs as bound calls, with the same result as the chain gives."""
    a, b = (MLP(6, [5], 3, dropout=0.4, seed=0) for _ in range(2))
    x, t = _data(n=8, f=6, c=3)
    with dlfast.use_backend("cython"):
        for net in (a, b):
            net.loss_and_gradient(x, t)
            net.loss_and_gradient(x, t)
        chain = a._bound._chain[0]
        drop = next(l for l in a.layers if isinstance(l, Dropout))
        seen = []

        def take(size, real=drop._take_counter):
            seen.append(chain.run(x, t))                     # re-entered: in use
            return real(size)

        monkeypatch.setattr(drop, "_take_counter", take, raising=False)
        la, ga = a.loss_and_gradient(x, t)              # chain: take -> inner run -> None
        lb, gb = b.loss_and_gradient(x, t)
    assert seen == [None] and la == lb
    for k in ga:
        np.testing.assert_array_equal(ga[k], gb[k], err_msg=k)
