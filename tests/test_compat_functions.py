"""dlfast.compat's functions, gradient and util modules, and what each module's star import gives
(the book's names, written out here), against formulas written in these tests."""
import importlib

import numpy as np
import pytest

from dlfast import compat
from dlfast.compat import functions as F
from dlfast.compat import gradient as G
from dlfast.compat import util as U

_FUNCS = {"np", "identity_function", "step_function", "sigmoid", "sigmoid_grad", "relu",
          "relu_grad", "softmax", "sum_squared_error", "cross_entropy_error", "softmax_loss"}
_LAYERS = _FUNCS | {"im2col", "col2im", "Relu", "Sigmoid", "Affine", "SoftmaxWithLoss", "Dropout",
                    "BatchNormalization", "Convolution", "Pooling"}
_OPTS = {"np", "SGD", "Momentum", "Nesterov", "AdaGrad", "RMSprop", "Adam"}
# what `from common.<module> import *` gives with the book's modules (they star-import each other)
BOOK_NAMES = {
    "functions": _FUNCS,
    "gradient": {"np", "numerical_gradient", "numerical_gradient_2d"},
    "layers": _LAYERS,
    "optimizer": _OPTS,
    "multi_layer_net": _LAYERS | {"sys", "os", "OrderedDict", "numerical_gradient",
                                  "MultiLayerNet"},
    "multi_layer_net_extend": _LAYERS | {"sys", "os", "OrderedDict", "numerical_gradient",
                                         "MultiLayerNetExtend"},
    "trainer": _OPTS | {"sys", "os", "Trainer"},
    "util": {"np", "smooth_curve", "shuffle_dataset", "conv_output_size", "im2col", "col2im"},
}


@pytest.mark.parametrize("module", sorted(BOOK_NAMES))
def test_star_import_gives_the_books_names(module):
    ns = {}
    exec(f"from dlfast.compat.{module} import *", ns)
    assert set(ns) - {"__builtins__"} == BOOK_NAMES[module]
    assert ns["np"] is np
    mod = importlib.import_module(f"dlfast.compat.{module}")
    for name in BOOK_NAMES[module]:
        assert getattr(mod, name) is ns[name]


def test_package_star_import_has_everything():
    ns = {}
    exec("from dlfast.compat import *", ns)
    every = set().union(*BOOK_NAMES.values()) - {"sys", "os", "OrderedDict"}
    assert every <= set(ns)
    assert {"TwoLayerNet", "SimpleConvNet", "DeepConvNet", "mean_squared_error"} <= set(ns)
    assert ns["Relu"] is compat.layers.Relu and ns["MultiLayerNet"] is compat.MultiLayerNet


def test_dataset_mnist_star_import_gives_the_books_names(tmp_path, monkeypatch):
    """The book's dataset/mnist.py has no __all__: its star import is every public global."""
    monkeypatch.setenv("DLFAST_DATA", str(tmp_path))
    ns = {}
    exec("from dlfast.compat.dataset.mnist import *", ns)
    assert set(ns) - {"__builtins__"} == {
        "urllib", "os", "gzip", "pickle", "np", "url_base", "key_file", "dataset_dir",
        "save_file", "train_num", "test_num", "img_dim", "img_size", "download_mnist",
        "init_mnist", "load_mnist"}
    assert ns["np"] is np and ns["dataset_dir"] == str(tmp_path / "mnist")
    assert ns["save_file"] == str(tmp_path / "mnist" / "mnist.pkl")
    assert (ns["train_num"], ns["test_num"], ns["img_dim"], ns["img_size"]) == (
        60000, 10000, (1, 28, 28), 784)
    assert ns["url_base"].startswith("https://") and ns["url_base"].endswith("/")
    from dlfast.compat.dataset import mnist
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        mnist.nope


# ============================================================================ functions
def test_activations(backend):
    x = np.array([-800.0, -1.0, 0.0, 2.0, 800.0])
    np.testing.assert_allclose(F.sigmoid(x), [0.0, 1 / (1 + np.e), 0.5, 1 / (1 + np.exp(-2)), 1.0])
    np.testing.assert_array_equal(F.relu(x), [0, 0, 0, 2, 800])
    np.testing.assert_array_equal(F.step_function(x), [0, 0, 0, 1, 1])
    assert F.step_function(x).dtype.kind == "i"
    np.testing.assert_array_equal(F.relu_grad(x), [0, 0, 1, 1, 1])       # 1 at 0, as the book
    s = 1 / (1 + np.exp(-x[1:4]))
    np.testing.assert_allclose(F.sigmoid_grad(x[1:4]), (1 - s) * s)
    assert F.identity_function(x) is x
    # numbers give NumPy scalars; ints compute in float64, float32 stays float32
    assert isinstance(F.sigmoid(0.0), np.float64) and F.sigmoid(0.0) == 0.5
    assert isinstance(F.relu(-3), np.float64) and F.relu(-3) == 0.0
    assert F.sigmoid(np.arange(3)).dtype == np.float64
    assert F.relu(np.ones(3, np.float32)).dtype == np.float32
    assert np.isnan(F.relu(np.array([np.nan]))[0])


def test_softmax_last_axis(backend):
    rng = np.random.default_rng(0)
    for shape in [(5,), (3, 4), (2, 3, 6)]:
        x = rng.normal(size=shape) * 5
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        np.testing.assert_allclose(F.softmax(x), e / e.sum(axis=-1, keepdims=True), rtol=1e-12)
    big = np.array([[1010.0, 1000.0, 990.0]])
    assert np.all(np.isfinite(F.softmax(big))) and F.softmax(big).sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="axis"):
        F.softmax(3.0)


def test_losses():
    y = np.array([[0.1, 0.6, 0.3], [0.8, 0.1, 0.1]])
    want = -(np.log(0.6 + 1e-7) + np.log(0.8 + 1e-7)) / 2
    assert F.cross_entropy_error(y, np.array([1, 0])) == pytest.approx(want)
    assert F.cross_entropy_error(y, np.array([[0, 1, 0], [1, 0, 0]])) == pytest.approx(want)
    assert F.cross_entropy_error(y, np.array([[1], [0]])) == pytest.approx(want)   # (N, 1)
    assert F.cross_entropy_error(y[0], np.array([0, 1, 0])) == pytest.approx(-np.log(0.6 + 1e-7))
    assert F.cross_entropy_error(y[0], 1) == pytest.approx(-np.log(0.6 + 1e-7))
    assert F.sum_squared_error(np.array([1.0, 2.0]), np.array([0.0, 0.0])) == 2.5
    assert compat.mean_squared_error is F.sum_squared_error
    x = np.array([[2.0, 1.0, 0.1]])
    p = np.exp(x) / np.exp(x).sum()
    assert F.softmax_loss(x, np.array([0])) == pytest.approx(-np.log(p[0, 0] + 1e-7))
    with pytest.raises(TypeError, match="class indices"):
        F.cross_entropy_error(y, np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match="2 labels"):
        F.cross_entropy_error(y, np.array([0, 1, 2]))


# ============================================================================ gradient
def _f(x):
    return np.sum(x ** 3) + 2 * np.sum(x)


@pytest.mark.parametrize("shape", [(), (4,), (2, 3), (2, 1, 3)])
def test_numerical_gradient_any_shape(shape):
    x = np.linspace(-1, 1, int(np.prod(shape))).reshape(shape)
    x0 = x.copy()
    g = G.numerical_gradient(_f, x)
    np.testing.assert_allclose(g, 3 * x0 ** 2 + 2, rtol=1e-7, atol=1e-8)
    np.testing.assert_array_equal(x, x0)                  # restored
    assert g.shape == x.shape and g.dtype == x.dtype


def test_numerical_gradient_numbers_dicts_and_float32():
    assert G.numerical_gradient(lambda v: v ** 2, 3.0) == pytest.approx(6.0)
    params = {"w": np.array([1.0, -2.0]), "s": 0.5, "z": np.array(2.0)}

    def loss(_):
        return np.sum(params["w"] ** 2) + params["s"] ** 3 + 4 * params["z"]
    g = G.numerical_gradient(loss, params)
    np.testing.assert_allclose(g["w"], [2.0, -4.0], rtol=1e-7)
    assert g["s"] == pytest.approx(0.75) and g["z"] == pytest.approx(4.0)
    assert params["s"] == 0.5 and isinstance(params["s"], float)        # restored
    x32 = np.array([1.0, 2.0], np.float32)
    np.testing.assert_allclose(G.numerical_gradient(lambda v: np.sum(v * v), x32), [2, 4],
                               rtol=1e-2)


def test_numerical_gradient_restores_on_error_and_refuses_bad_input():
    x = np.array([1.0, 2.0])
    calls = []

    def boom(v):
        calls.append(v.copy())
        raise RuntimeError("stop")
    with pytest.raises(RuntimeError, match="stop"):
        G.numerical_gradient(boom, x)
    np.testing.assert_array_equal(x, [1.0, 2.0])
    with pytest.raises(TypeError, match="float array"):
        G.numerical_gradient(_f, np.array([1, 2]))
    ro = np.ones(2)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        G.numerical_gradient(_f, ro)
    with pytest.raises(TypeError, match="params\\['s'\\]"):
        G.numerical_gradient(_f, {"s": "text"})


def test_numerical_gradient_2d_calls_f_per_row():
    X = np.array([[1.0, 2.0], [3.0, -1.0]])
    seen = []

    def f(row):
        seen.append(row.shape)
        return np.sum(row ** 2)
    np.testing.assert_allclose(G.numerical_gradient_2d(f, X), 2 * X, rtol=1e-7)
    assert set(seen) == {(2,)}
    np.testing.assert_allclose(G.numerical_gradient_2d(f, X[0].copy()), 2 * X[0], rtol=1e-7)


# ============================================================================ util
def _im2col_loops(x, fh, fw, stride, pad):
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh, ow = (h + 2 * pad - fh) // stride + 1, (w + 2 * pad - fw) // stride + 1
    rows = []
    for b in range(n):
        for i in range(oh):
            for j in range(ow):
                rows.append(xp[b, :, i * stride:i * stride + fh, j * stride:j * stride + fw].ravel())
    return np.array(rows)


@pytest.mark.parametrize("fh,fw,stride,pad", [(3, 3, 1, 0), (3, 2, 2, 1), (2, 2, 2, 0), (5, 5, 1, 2)])
def test_im2col_col2im(fh, fw, stride, pad):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 3, 7, 6)).astype(np.float32)
    col = U.im2col(x, fh, fw, stride, pad)
    np.testing.assert_array_equal(col, _im2col_loops(x.astype(np.float64), fh, fw, stride, pad))
    assert col.dtype == np.float64
    c = rng.normal(size=col.shape)
    img = U.col2im(c, x.shape, fh, fw, stride, pad)
    assert img.shape == x.shape
    # col2im is the adjoint of im2col: <im2col(x), c> == <x, col2im(c)>
    assert np.sum(col * c) == pytest.approx(np.sum(x * img), rel=1e-10)
    with pytest.raises(ValueError, match="col must have shape"):
        U.col2im(c[1:], x.shape, fh, fw, stride, pad)


def test_smooth_curve_shuffle_and_sizes():
    x = np.linspace(0, 1, 40) ** 2
    k = np.kaiser(11, 2)
    padded = np.r_[x[10:0:-1], x, x[::-1][:10]]
    want = np.convolve(k / k.sum(), padded, mode="valid")[5:-5]
    np.testing.assert_allclose(U.smooth_curve(list(x)), want, rtol=1e-12)
    assert len(U.smooth_curve(x)) == len(x)
    np.testing.assert_allclose(U.smooth_curve(np.full(20, 3.0)), 3.0)
    with pytest.raises(ValueError, match="at least 11"):
        U.smooth_curve([1.0, 2.0])
    xs, ts = np.arange(20).reshape(10, 2), np.arange(10)
    np.random.seed(3)
    a = U.shuffle_dataset(xs, ts)
    np.random.seed(3)
    b = U.shuffle_dataset(xs, ts)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[0][:, 0] // 2, a[1])                 # pairs kept
    x4 = np.arange(5 * 8).reshape(5, 2, 2, 2)
    x4s, t4s = U.shuffle_dataset(x4, np.arange(5))
    np.testing.assert_array_equal(x4s[:, 0, 0, 0] // 8, t4s)            # 4-D images too
    assert U.conv_output_size(28, 5) == 24.0 and isinstance(U.conv_output_size(28, 5, 2), float)


# ============================================================================ signatures
_CONV = "{'filter_num': %d, 'filter_size': 3, 'pad': %d, 'stride': 1}"
BOOK_SIGNATURES = {       # the book's constructors and functions, as inspect.signature shows them
    "AdaGrad": "(lr=0.01)", "Adam": "(lr=0.001, beta1=0.9, beta2=0.999)", "Affine": "(W, b)",
    "BatchNormalization": "(gamma, beta, momentum=0.9, running_mean=None, running_var=None)",
    "Convolution": "(W, b, stride=1, pad=0)",
    "DeepConvNet": "(input_dim=(1, 28, 28), " + ", ".join(
        f"conv_param_{i}=" + _CONV % fp for i, fp in
        enumerate([(16, 1), (16, 1), (32, 1), (32, 2), (64, 1), (64, 1)], 1))
    + ", hidden_size=50, output_size=10)",
    "Dropout": "(dropout_ratio=0.5)", "Momentum": "(lr=0.01, momentum=0.9)",
    "MultiLayerNet": "(input_size, hidden_size_list, output_size, activation='relu', "
                     "weight_init_std='relu', weight_decay_lambda=0)",
    "MultiLayerNetExtend": "(input_size, hidden_size_list, output_size, activation='relu', "
                           "weight_init_std='relu', weight_decay_lambda=0, use_dropout=False, "
                           "dropout_ration=0.5, use_batchnorm=False)",
    "Nesterov": "(lr=0.01, momentum=0.9)", "Pooling": "(pool_h, pool_w, stride=2, pad=0)",
    "RMSprop": "(lr=0.01, decay_rate=0.99)", "Relu": "()", "SGD": "(lr=0.01)", "Sigmoid": "()",
    "SimpleConvNet": "(input_dim=(1, 28, 28), conv_param={'filter_num': 30, 'filter_size': 5, "
                     "'pad': 0, 'stride': 1}, hidden_size=100, output_size=10, "
                     "weight_init_std=0.01)",
    "SoftmaxWithLoss": "()",
    "Trainer": "(network, x_train, t_train, x_test, t_test, epochs=20, mini_batch_size=100, "
               "optimizer='SGD', optimizer_param={'lr': 0.01}, evaluate_sample_num_per_epoch=None, "
               "verbose=True)",
    "TwoLayerNet": "(input_size, hidden_size, output_size, weight_init_std=0.01)",
    "col2im": "(col, input_shape, filter_h, filter_w, stride=1, pad=0)",
    "conv_output_size": "(input_size, filter_size, stride=1, pad=0)",
    "cross_entropy_error": "(y, t)", "identity_function": "(x)",
    "im2col": "(input_data, filter_h, filter_w, stride=1, pad=0)", "numerical_gradient": "(f, x)",
    "numerical_gradient_2d": "(f, X)", "relu": "(x)", "relu_grad": "(x)",
    "shuffle_dataset": "(x, t)", "sigmoid": "(x)", "sigmoid_grad": "(x)", "smooth_curve": "(x)",
    "softmax": "(x)", "softmax_loss": "(X, t)", "step_function": "(x)", "sum_squared_error": "(y, t)",
}


@pytest.mark.parametrize("name", sorted(BOOK_SIGNATURES))
def test_signatures_are_the_books(name):
    """The book's parameters in its order with its defaults; additions only keyword-only
    (dtype= of the nets)."""
    import inspect
    sig = inspect.signature(getattr(compat, name))
    book = [p for p in sig.parameters.values() if p.kind != p.KEYWORD_ONLY]
    extra = [p for p in sig.parameters.values() if p.kind == p.KEYWORD_ONLY]
    assert str(sig.replace(parameters=book)) == BOOK_SIGNATURES[name]
    assert [p.name for p in extra] in ([], ["dtype"])
